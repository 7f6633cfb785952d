"""The search: for each model with a search space (`ModelSpec.search`), an Optuna study of seeded TPE trials scored
on the validation split, pruned by epoch where the model trains in epochs, within a budget, resumable.

Studies are kept in a journal file beside the warehouse (`<warehouse>.tuning.journal`): a tune that is killed
keeps its finished trials, and the next tune on the same data resumes the same studies (a trial it was running
is marked failed and run again). A study is named by the dataset, its bytes and what its trials are scored on,
so a week's new data starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import polars as pl
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tasks.config import PipelineConfig
from tasks.models import MODELS, ModelFitError, Range
from tasks.naming import setting
from tasks.tune.data import TuningData
from tasks.tune.trial import EVERY_EPOCHS, BudgetSpent, Objective, paired_gain, run_trial, suggest

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial comes from here instead

# Trials the sampler draws at random before TPE models the results, and before the pruner compares.
STARTUP_TRIALS = 8
# Every this many finished trials, the best so far is tried one size up (`_step_up`).
STEP_UP_EVERY = 10


class TuningBudgetError(ValueError):
    """The budget cannot fit one trial."""


@dataclass
class ModelSearch:
    """One model's study after this search: its trials (resumed ones included) and what it chose."""

    model: str
    objective: Objective
    study: str
    trials: pl.DataFrame  # one row per finished trial (`trials_frame`)
    chosen: dict[str, Any] = field(default_factory=dict)  # the best trial's settings, carried to the full data
    best_value: float | None = None
    first_value: float | None = None  # the config's own settings (the study's first trial)
    stopped_by: str = "trial cap"  # or "budget"
    chosen_trial: int | None = None  # the best trial, or 0 (the settings given) when it is not better beyond noise
    gain_z: float | None = None  # the best trial's paired gain over the settings given, in standard errors
    best: dict[str, Any] = field(default_factory=dict)  # the best trial's settings, as searched

    @property
    def chosen_value(self) -> float | None:
        """The chosen trial's validation value."""
        return self.first_value if self.chosen_trial == 0 else self.best_value


def journal(path: Path) -> JournalStorage:
    """The studies' storage: an append-only journal file (Optuna's file lock guards it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def searched_settings(model: str, config: PipelineConfig) -> dict[str, Range]:
    """`model`'s search space less the settings the config gives explicitly (those stay as given)."""
    given = config.params_for(model).model_fields_set
    return {name: where for name, where in MODELS[model].search.items() if name not in given}


def study_name(dataset_key: str, sha256: str, model: str, config: PipelineConfig) -> str:
    """What a study's trial values depend on: the data, the model, the split and sample, the fixed settings."""
    fixed = config.params_for(model).model_dump(exclude=set(searched_settings(model, config)))
    scored_on = [config.split, config.seed, config.k, config.tune.sample_users, config.tune.validation_fraction, fixed]
    digest = hashlib.sha256(json.dumps(scored_on, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{dataset_key}-{sha256[:12]}-{model}-{digest}"


def _settle_interrupted(study: optuna.Study) -> int:
    """Trials a killed tune left running (the tune lock is held: no one else runs them) are marked failed."""
    stale = [trial for trial in study.get_trials(deepcopy=False) if trial.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(stale)


def _start_points(
    study: optuna.Study, model: str, data: TuningData, config: PipelineConfig, previous: dict[str, Any] | None
) -> None:
    """A new study tries the config's own settings first, then the settings the last tune chose (when any): both are
    meant for a nightly's data, so both are carried back to the search's (`carried`)."""
    if study.trials:
        return
    study.enqueue_trial(carried(model, _given(model, config), data, back=True))
    searched = searched_settings(model, config)
    if previous and (points := {name: previous[name] for name in searched if name in previous}):
        study.enqueue_trial(carried(model, points, data, back=True), skip_if_exists=True)


def _given(model: str, config: PipelineConfig) -> dict[str, Any]:
    """The config's own values of the settings searched: what a nightly runs when the tune finds nothing better."""
    own = config.params_for(model).model_dump()
    return {name: own[name] for name in searched_settings(model, config)}


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _study(storage: JournalStorage, name: str, objective: Objective, seed: int) -> optuna.Study:
    """The study `name` (created, or loaded to resume): seeded TPE, and a pruner that stops a trial whose
    validation value at an epoch is in the worst quarter of the trials' at that epoch."""
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction=objective.direction,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, multivariate=True),
        pruner=optuna.pruners.PercentilePruner(25.0, n_startup_trials=STARTUP_TRIALS, n_warmup_steps=EVERY_EPOCHS),
        load_if_exists=True,
    )


def search_model(
    storage: JournalStorage,
    name: str,
    model: str,
    data: TuningData,
    config: PipelineConfig,
    deadline: float,
    previous: dict[str, Any] | None = None,
) -> ModelSearch:
    """Run `model`'s study until `tune.max_trials` trials are finished (resumed ones count) or `deadline`
    (time.monotonic()) passes; the first trial of a new study runs whole, whatever the deadline.

    Raises:
        TuningBudgetError: the study's first trial took longer than the whole budget.
    """
    objective = Objective.of(model)
    study = _study(storage, name, objective, config.seed)
    if interrupted := _settle_interrupted(study):
        log.info("%s: %d trial(s) of an interrupted tune will be run again", model, interrupted)
    _start_points(study, model, data, config, previous)
    resumed = {t.number for t in _finished(study)}
    if resumed:
        log.info("%s: resuming study %s: %d trial(s) finished before", model, name, len(resumed))
    stopped_by = _run_trials(study, model, data, config, deadline)
    return _outcome(study, model, objective, name, resumed, data, config, stopped_by)


def _run_trials(study: optuna.Study, model: str, data: TuningData, config: PipelineConfig, deadline: float) -> str:
    """Ask, fit, score and tell until the trial cap or the deadline; returns which stopped it."""
    searched = searched_settings(model, config)
    while (finished := len(_finished(study))) < config.tune.max_trials:
        if time.monotonic() > deadline:
            return "budget"
        if finished >= STARTUP_TRIALS and finished % STEP_UP_EVERY == 0:
            _step_up(study, searched)
        first = finished == 0
        trial = study.ask()
        settings = suggest(trial, model, searched)
        started = time.monotonic()
        try:
            value = run_trial(trial, model, settings, data, config, math.inf if first else deadline)
        except BudgetSpent:
            study.tell(trial, state=TrialState.PRUNED)
            return "budget"
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("%s trial %d pruned: %s", model, trial.number, json.dumps(settings))
            continue
        except ModelFitError as exc:  # settings the model cannot fit (non-finite vectors): a failed trial
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            continue
        study.tell(trial, value)
        seconds = time.monotonic() - started
        log.info("%s trial %d: validation %.4f (%.1fs) %s", model, trial.number, value, seconds, json.dumps(settings))
        if first and seconds > config.tune.budget_seconds:
            raise TuningBudgetError(
                f"{setting('tune.budget_seconds')} {config.tune.budget_seconds:g} cannot fit one trial: {model}'s "
                f"first trial took {seconds:.1f}s; give at least {math.ceil(seconds * 2)}s (its result is kept for "
                "the next tune)"
            )
    return "trial cap"


def _step_up(study: optuna.Study, searched: dict[str, Range]) -> None:
    """Queue the best trial so far one size up in each searched `Range.capacity` setting (ials's factors), unless a
    trial has tried that point. Once a size leads, TPE seldom draws a larger one with settings that suit it, and a
    trial's data (a quarter of each user's interactions held out, a user sample) undersells capacity that a
    nightly's larger fit would use: on the Amazon pairs the best 128-factor trial scored validation nDCG@10 0.0574
    (0.0822 on the test split), the same settings at 256 factors 0.0579 (0.0854), where TPE's own 256-factor
    trials were at most 0.0496."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return
    best = study.best_trial.params
    for name, where in searched.items():
        if where.capacity and best.get(name) in where.choices[:-1]:
            larger = where.choices[where.choices.index(best[name]) + 1]
            study.enqueue_trial({**best, name: larger}, skip_if_exists=True)


def _outcome(
    study: optuna.Study,
    model: str,
    objective: Objective,
    name: str,
    resumed: set[int],
    data: TuningData,
    config: PipelineConfig,
    stopped_by: str,
) -> ModelSearch:
    """The study's trials and its choice: the best trial, unless it does not beat the settings given beyond noise
    on the confirmation split (`paired_gain`, `tune.confidence`), carried to the full data."""
    trials = trials_frame(study, model, resumed)
    result = ModelSearch(model, objective, name, trials, stopped_by=stopped_by)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return result
    best = study.best_trial
    result.best_value, result.best = best.value, dict(best.params)
    first = next((t for t in complete if t.number == 0), None)
    result.first_value = first.value if first is not None else None
    result.chosen_trial = best.number
    if first is not None and best.number != 0:
        result.gain_z = paired_gain(model, first.params, best.params, data, config)
        if result.gain_z < config.tune.min_gain_z:  # within noise of the settings given: keep them
            log.info(
                "%s: the best trial beats the settings given by %.2f standard errors only: kept", model, result.gain_z
            )
            result.chosen_trial = 0
    if result.chosen_trial == 0 and first is not None:
        result.chosen = _given(model, config)  # as given (trial 0 ran them carried to the search's data)
    else:
        result.chosen = carried(model, best.params, data)
    return result


def carried(model: str, values: dict[str, Any], data: TuningData, back: bool = False) -> dict[str, Any]:
    """Settings chosen on the search's data as they apply to a nightly's, by each setting's `Range.carry` (`back`:
    a nightly's settings as they apply to the search's data): ials's count-scaled penalty divided by the ratio of
    each user's interactions (the penalty a user gets stays what it was in the search), ease's l2 times the ratio
    of users (it is weighed against the Gram matrix's sums over users), the others as they are (ials's unobserved
    weight is searched as a multiple of the density rule)."""
    space = MODELS[model].search
    factor = {"times users": data.users_growth, "over interactions per user": 1 / data.per_user_growth}
    power = -1 if back else 1
    return {
        name: value * factor[space[name].carry] ** power if name in space and space[name].carry != "as is" else value
        for name, value in values.items()
    }


TRIALS_SCHEMA = pl.Schema(
    {
        "model": pl.String,
        "trial": pl.Int64,
        "state": pl.String,
        "settings": pl.String,
        "value": pl.Float64,
        "ndcg": pl.Float64,
        "rmse": pl.Float64,
        "epochs": pl.Int64,
        "seconds": pl.Float64,
        "resumed": pl.Boolean,
        "note": pl.String,
    }
)


def trials_frame(study: optuna.Study, model: str, resumed: set[int]) -> pl.DataFrame:
    """The study's finished trials (complete, pruned, failed), one row each, as `tuning_trials` stores them."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING or trial.state == TrialState.WAITING:
            continue
        pruned_at = trial.last_step if trial.state == TrialState.PRUNED else None
        rows.append(
            {
                "model": model,
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "settings": json.dumps(trial.params, sort_keys=True),
                "value": trial.value if trial.state == TrialState.COMPLETE else _last_reported(trial),
                "ndcg": trial.user_attrs.get("ndcg"),
                "rmse": trial.user_attrs.get("rmse"),
                "epochs": pruned_at if pruned_at is not None else trial.params.get("epochs"),
                "seconds": trial.user_attrs.get("seconds")
                or (trial.duration.total_seconds() if trial.duration else None),
                "resumed": trial.number in resumed,
                "note": trial.user_attrs.get("error"),
            }
        )
    return pl.DataFrame(rows, schema=TRIALS_SCHEMA)


def _last_reported(trial: FrozenTrial) -> float | None:
    return trial.intermediate_values[trial.last_step] if trial.last_step is not None else None


def search(
    data: TuningData,
    config: PipelineConfig,
    storage: JournalStorage,
    dataset_key: str,
    sha256: str,
    previous: dict[str, dict[str, Any]] | None = None,
) -> list[ModelSearch]:
    """Every model of `config.models` with something to search, ranking models first (they make the lists), each
    given an equal share of the budget left when it starts (a model done early leaves its time to the next)."""
    models = sorted(
        (m for m in config.models if searched_settings(m, config)), key=lambda m: MODELS[m].predicts_ratings
    )
    started = time.monotonic()
    results = []
    for i, model in enumerate(models):
        left = config.tune.budget_seconds - (time.monotonic() - started)
        deadline = time.monotonic() + max(left, 0.0) / (len(models) - i)
        name = study_name(dataset_key, sha256, model, config)
        results.append(search_model(storage, name, model, data, config, deadline, (previous or {}).get(model)))
    return results
