"""One trial of the search: a model fitted with the settings the sampler suggests, scored on the validation split.

A ranking model is scored by validation nDCG@k (higher is better), a rating model by validation RMSE (lower). A
model that `reports_epochs` (ials) is scored every `EVERY_EPOCHS` epochs too, so that the pruner can stop a trial
that is clearly behind the others at the same epoch, and the budget can cut a trial short.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import optuna
import polars as pl
import torch

from tasks.config import PipelineConfig
from tasks.evaluate import evaluate, evaluate_users
from tasks.models import MODELS, Range, Recommender
from tasks.train import TrainedModel, fit
from tasks.tune.data import TuningData
from warehouse.runs import HISTORY_SCHEMA

# Scoring a trial costs a pass over users x items: every few epochs, not every epoch.
EVERY_EPOCHS = 4


class BudgetSpent(optuna.TrialPruned):
    """The search's budget ran out during a trial: the trial is cut (recorded as pruned) and the search ends."""


@dataclass(frozen=True)
class Objective:
    """What a model's trials are scored by: validation nDCG@k for a ranking model, RMSE for a rating model."""

    metric: str
    direction: Literal["maximize", "minimize"]

    @classmethod
    def of(cls, model: str) -> Objective:
        return cls("rmse", "minimize") if MODELS[model].predicts_ratings else cls("ndcg", "maximize")


def suggest(trial: optuna.Trial, model: str, searched: dict[str, Range]) -> dict[str, Any]:
    """The settings `trial` suggests for `model`, one per searched setting."""
    values: dict[str, Any] = {}
    for name, where in searched.items():
        if where.choices:
            values[name] = trial.suggest_categorical(name, list(where.choices))
        elif where.integer:
            values[name] = trial.suggest_int(name, int(where.low), int(where.high), log=where.log)
        else:
            values[name] = trial.suggest_float(name, where.low, where.high, log=where.log)
    return values


def validation_metrics(model: TrainedModel, data: TuningData, config: PipelineConfig) -> dict[str, float]:
    """A fitted model's metrics on the validation split (those it has: no RMSE for a ranking model)."""
    metrics = evaluate(model, data.fit, data.validation, data.n_items, config)
    return {row["metric"]: row["value"] for row in metrics.iter_rows(named=True) if row["value"] is not None}


def _in_progress(module: Recommender, name: str, data: TuningData) -> TrainedModel:
    """A ranking model's module part-way through its fit, to be scored (its vectors are buffers, updated in place)."""
    device = next(iter(module.buffers()), torch.zeros(0)).device
    history = pl.DataFrame(schema=HISTORY_SCHEMA)
    return TrainedModel(name, module.eval(), device, history, 0.0, data.fit.height, (0.0, 1.0))


def run_trial(
    trial: optuna.Trial, model: str, settings: dict[str, Any], data: TuningData, config: PipelineConfig, deadline: float
) -> float:
    """Fit `model` with `settings` on the fit part and return its objective on the validation part. Each metric
    and the seconds go to the trial's user attributes.

    Raises:
        optuna.TrialPruned: the pruner stopped it at an epoch; `BudgetSpent` when the budget ran out.
    """
    objective = Objective.of(model)
    trial_config = config.with_overrides({model: settings})
    started = time.perf_counter()

    def at_epoch(epoch: int, module: Recommender) -> None:
        if time.monotonic() > deadline:
            raise BudgetSpent(f"the budget ran out at epoch {epoch}")
        if epoch % EVERY_EPOCHS == 0 and epoch < trial_config.params_for(model).epochs:  # type: ignore[attr-defined]
            value = validation_metrics(_in_progress(module, model, data), data, trial_config)[objective.metric]
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("seconds", time.perf_counter() - started)
                raise optuna.TrialPruned(f"validation {objective.metric} {value:.4f} at epoch {epoch}")

    trained = fit(data.fit, data.n_users, data.n_items, trial_config, name=model, on_epoch=at_epoch)
    metrics = validation_metrics(trained, data, trial_config)
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("seconds", time.perf_counter() - started)
    return metrics[objective.metric]


def paired_gain(
    model: str, given: dict[str, Any], best: dict[str, Any], data: TuningData, config: PipelineConfig
) -> float:
    """How many standard errors the `best` settings beat the `given` ones by on the confirmation split (the sample
    split again with another seed): both fitted on its fit part, the per-user differences of the objective on its
    validation part paired by user (nDCG@k; a rating model's summed squared error, negated so that better is
    positive)."""
    objective = Objective.of(model)
    per_user = []
    for settings in (given, best):
        trial_config = config.with_overrides({model: settings})
        trained = fit(data.confirm_fit, data.n_users, data.n_items, trial_config, name=model)
        values = evaluate_users(trained, data.confirm_fit, data.confirm_validation, data.n_items, config)[1]
        metric = "ndcg" if objective.metric == "ndcg" else "squared_error"
        per_user.append(values.filter(pl.col("metric") == metric).select("user_idx", "value"))
    paired = per_user[0].join(per_user[1], on="user_idx", suffix="_best")
    gain = (paired["value_best"] - paired["value"]).to_numpy()
    if objective.direction == "minimize":
        gain = -gain
    spread = gain.std(ddof=1) / math.sqrt(len(gain)) if len(gain) > 1 else 0.0
    return float(gain.mean() / spread) if spread > 0 else (math.inf if gain.mean() > 0 else 0.0)
