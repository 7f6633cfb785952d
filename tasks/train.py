"""Train a registered model (tasks/models) and keep what its training recorded (saved by tasks/checkpoint.py)."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Device, PipelineConfig
from tasks.cpu_threads import cpu_threads
from tasks.memory import release_freed_memory
from tasks.models import MODELS, Interactions, ModelFitError, ModelParams, ModelSpec, Recommender
from tasks.models.base import EpochHook, InitialRows, ShardedFit, index_tensors
from tasks.reindex import IdMaps
from tasks.run_folder import RunFolder, read_ratings
from tasks.split import holdout_files
from warehouse.runs import HISTORY_SCHEMA  # the loss history as training_history stores it

__all__ = ["ModelFitError", "TrainedModel", "fit", "pick_device"]  # ModelFitError: re-exported

log = logging.getLogger(__name__)


def pick_device(requested: Device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not available is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[requested]:
        raise RuntimeError(f"config device={requested!r}, but torch reports no {requested} device on this machine")
    return torch.device(requested)


def use_tf32_matmuls(device: torch.device) -> None:
    """On CUDA (Ampere and later), run float32 matrix products in TF32: scoring's users x items products, several
    times faster. Its 10-bit mantissa moves a logit by about 1e-3 relative, which can swap only near-ties in a
    top-10. Training is unaffected: its SGD step has no matrix product (and no mixed precision: fp16 would
    round the small per-rating updates away)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


@dataclass
class UnseenFallback:
    """What a rating model predicts for a user or an item it has no training rating of: the global mean and
    the known biases (the `bias` model's prediction), as `dot_bias` and `bias` already do by construction.
    Without it `dot` predicts a near-zero dot product there and the kNN models 0, clipped to 1 star."""

    baseline: Recommender  # the `bias` model fitted on the same ratings (CPU)
    known_users: torch.Tensor  # bool per user index: had a training rating
    known_items: torch.Tensor  # bool per item index

    @classmethod
    def fit(cls, interactions: Interactions, config: PipelineConfig) -> UnseenFallback:
        baseline, _ = MODELS["bias"].fit(interactions, config.params_for("bias"), torch.device("cpu"))
        users, items, _ = index_tensors(interactions.ratings, torch.device("cpu"))
        known_users = torch.bincount(users, minlength=interactions.n_users) > 0
        return cls(baseline.eval(), known_users, torch.bincount(items, minlength=interactions.n_items) > 0)

    def fill(self, predicted: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """`predicted` with the baseline's prediction wherever the user or the item was never seen."""
        unseen = ~(self.known_users[users] & self.known_items[items])
        if unseen.any():
            predicted = predicted.clone()
            predicted[unseen] = self.baseline(users[unseen], items[unseen]).float()
        return predicted

    def state(self) -> dict:
        return {
            "baseline": self.baseline.state_dict(),
            "init_args": self.baseline.init_args,
            "known_users": self.known_users,
            "known_items": self.known_items,
        }

    @classmethod
    def from_state(cls, state: dict) -> UnseenFallback:
        baseline = MODELS["bias"].module(**state["init_args"])
        baseline.load_state_dict(state["baseline"])
        return cls(baseline.eval(), state["known_users"], state["known_items"])


@dataclass
class TrainedModel:
    """A fitted model with what its training recorded."""

    name: str  # the registry's name (tasks/models)
    module: Recommender
    device: torch.device
    history: pl.DataFrame  # epoch, split ("train" | "validation" | "refit"), loss; empty for closed-form models
    seconds: float
    n_ratings: int
    rating_scale: tuple[float, float]  # lowest and highest rating seen in training
    # For a rating model whose prediction for an unseen user or item means nothing (`predicts_unseen` False:
    # dot, item_knn): the `bias` model fitted on the same ratings and which users and items had any
    fallback: UnseenFallback | None = None

    @property
    def predicts_ratings(self) -> bool:
        return self.module.predicts_ratings

    @property
    def n_users(self) -> int:
        return self.module.init_args["n_users"]

    @property
    def ratings_per_second(self) -> float:
        passes = max(cast(int, self.history["epoch"].max() or 0), 1)  # closed-form models read the ratings once
        return self.n_ratings * passes / self.seconds if self.seconds > 0 else float("nan")

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
        """Predicted ratings of (user, item) index pairs, on the CPU, clipped to the rating scale."""
        if not self.predicts_ratings:
            raise TypeError(f"model {self.name} ranks items; it does not predict ratings")
        self.module.eval()
        parts = [
            self.module(users[s : s + chunk].to(self.device), items[s : s + chunk].to(self.device)).float().cpu()
            for s in range(0, len(users), chunk)
        ]
        predicted = torch.cat(parts) if parts else torch.empty(0)
        if self.fallback is not None:
            predicted = self.fallback.fill(predicted, users.cpu(), items.cpu())
        return predicted.clamp(*self.rating_scale)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of `users` (indices, on the model's device) against every item; a rating model's are its
        predicted ratings, clipped to the scale."""
        self.module.eval()
        scores = self.module.score_users(users)
        return scores.clamp(*self.rating_scale) if self.predicts_ratings else scores

    @torch.no_grad()
    def rank_users(self, users: torch.Tensor) -> torch.Tensor:
        """An increasing function of `score_users`, cheaper; `rank_to_score` maps its top values back."""
        self.module.eval()
        return self.module.rank_users(users)

    def rank_to_score(self, values: torch.Tensor) -> torch.Tensor:
        """Scores of the values `rank_users` gave; a rating model's are predicted ratings, clipped to the scale
        as `predict` clips them (a neighbour average or a bias sum can run past 5 stars)."""
        scores = self.module.rank_to_score(values)
        return scores.clamp(*self.rating_scale) if self.predicts_ratings else scores


def fit(
    train: pl.DataFrame,
    n_users: int,
    n_items: int,
    config: PipelineConfig,
    validation: pl.DataFrame | None = None,
    history_label: str = "train",
    name: str = "dot_bias",
    init: InitialRows | None = None,
    on_epoch: EpochHook | None = None,
) -> TrainedModel:
    """Fit the registered model `name` on indexed ratings with its hyperparameters from `config`.

    Args:
        train: `user_idx`, `item_idx`, `rating`.
        n_users: size of the user vocabulary (indices are < n_users).
        n_items: size of the item vocabulary.
        config: the hyperparameters, seed and device.
        validation: held-out ratings whose loss the gradient-trained models record after each epoch.
        history_label: the `split` the training loss is recorded under ("train", or "refit").
        name: which model (tasks/models MODELS).
        init: a warm start's initial rows (tasks/warm.py; ials and dot_bias): the fit then runs `warm_epochs`.
        on_epoch: called after each epoch with the module, for a model that `reports_epochs` (a tuning trial).

    Raises:
        ModelFitError: when a gradient-trained model's loss becomes NaN or infinite.
    """
    if train.height == 0:
        raise ValueError("no training ratings")
    device = pick_device(config.device)
    use_tf32_matmuls(device)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    scale = (config.rating_scale[0], config.rating_scale[1]) if config.rating_scale else None
    interactions = Interactions(train, n_users, n_items, scale)
    spec, params = MODELS[name], fit_params(config, name, warm=init is not None)
    with cpu_threads(config.cpu_threads) if device.type == "cpu" else nullcontext(None) as threads:
        log.info("fitting %s on %s%s", name, device, f", torch threads: {threads}" if threads else "")
        fit_model, extra = _the_fit(spec, init, on_epoch)
        module, rows = fit_model(
            interactions, params, device, validation, seed=config.seed, label=history_label, **extra
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    release_freed_memory()  # what the fit's working copies held, before the next stage allocates
    needs_fallback = module.predicts_ratings and not module.predicts_unseen  # see `TrainedModel.fallback`
    fallback = UnseenFallback.fit(interactions, config) if needs_fallback else None
    facts = FitFacts(time.perf_counter() - started, interactions.ratings.height, interactions.rating_range)
    return trained_model(name, module, device, rows, facts, fallback)


def _the_fit(spec: ModelSpec, init: InitialRows | None, on_epoch: EpochHook | None) -> tuple[Any, dict[str, Any]]:
    """The fit to call and its extra arguments: a warm start's (it takes `init`), else the model's own (with
    `on_epoch` where the model reports epochs)."""
    if init is not None:
        return spec.warm_fit(), {"init": init}
    return spec.fit, ({"on_epoch": on_epoch} if on_epoch is not None and spec.reports_epochs else {})


def train_by_shards(
    folder: RunFolder,
    maps: IdMaps,
    config: PipelineConfig,
    name: str,
    phase: str,
    init: InitialRows | None,
    sharded: ShardedFit,
) -> TrainedModel:
    """`train_phase` of a model that trains by shards (`ModelSpec.sharded`, on a cluster), on the CPU: the phase's
    ratings are read to write the shards' files and dropped before the epochs run, so that this process holds
    none of them while the shards train (1.2 GB at 100M ratings)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    params = fit_params(config, name, warm=init is not None)
    with cpu_threads(config.cpu_threads) as threads:
        log.info("fitting %s by shards, torch threads here: %d", name, threads)
        prepared = sharded.prepare(phase_interactions(folder, maps, config, phase), params, config.seed, init)
        release_freed_memory()  # the ratings, before the epochs
        module, rows = sharded.fit(prepared, phase)
    facts = FitFacts(time.perf_counter() - started, prepared.n_ratings, prepared.rating_range)
    return trained_model(name, module, torch.device("cpu"), rows, facts, None)


def phase_interactions(folder: RunFolder, maps: IdMaps, config: PipelineConfig, phase: str) -> Interactions:
    """The ratings a phase fits on (`phase_files`; its validation ratings are not read) with the vocabularies."""
    scale = (config.rating_scale[0], config.rating_scale[1]) if config.rating_scale else None
    return Interactions(read_ratings(phase_files(folder, config, phase)[0]), maps.n_users, maps.n_items, scale)


def fit_params(config: PipelineConfig, name: str, warm: bool) -> ModelParams:
    """The model's parameters for a fit: a warm start (`warm`) runs its `warm_epochs` as the epochs."""
    params = config.params_for(name)
    if not warm:
        return params
    return params.model_copy(update={"epochs": MODELS[name].warm_params(params).warm_epochs})


@dataclass(frozen=True)
class FitFacts:
    """What a fit's record keeps of its ratings and its time."""

    seconds: float
    n_ratings: int
    rating_range: tuple[float, float]


def trained_model(
    name: str,
    module: Recommender,
    device: torch.device,
    rows: list[dict],
    facts: FitFacts,
    fallback: UnseenFallback | None,
) -> TrainedModel:
    """What a fit returns, with the unseen-pair fallback a rating model needs; logs the fit's throughput."""
    model = TrainedModel(
        name,
        module.eval(),
        device,
        pl.DataFrame(rows, schema=HISTORY_SCHEMA),
        facts.seconds,
        facts.n_ratings,
        facts.rating_range,
        fallback,
    )
    log.info(
        "trained %s on %d ratings on %s in %.1fs (%.0f ratings/s)",
        name,
        model.n_ratings,
        device,
        facts.seconds,
        model.ratings_per_second,
    )
    return model


def train_phase(
    folder: RunFolder,
    maps: IdMaps,
    config: PipelineConfig,
    name: str,
    phase: str = "train",
    init: InitialRows | None = None,
    sharded: ShardedFit | None = None,
) -> TrainedModel:
    """`fit` of model `name` for one phase of a run, on the run folder's ratings (`phase_ratings`).

    phase "train" (and "gate", the published configuration trained for the quality gate) fits on the training
    split, holding out `validation_fraction` of it for a validation loss; phase "refit" fits on all ratings,
    with no holdout. `init`: a warm start's initial rows (tasks/warm.py); `sharded`: the model's fit by shards
    (`train_by_shards`, on a cluster) instead of its fit in this process.
    """
    if sharded is not None:
        return train_by_shards(folder, maps, config, name, phase, init, sharded)
    fit_on, validation = phase_ratings(folder, config, phase)
    return fit(fit_on, maps.n_users, maps.n_items, config, validation, phase, name, init)


@task(name="train", cache_policy=NO_CACHE, task_run_name="train-{name}-{phase}")
def train_task(
    folder: RunFolder,
    maps: IdMaps,
    config: PipelineConfig,
    name: str,
    phase: str = "train",
    init: InitialRows | None = None,
) -> TrainedModel:
    """Prefect wrapper of `train_phase` (its ratings are read inside it: a task run keeps its arguments)."""
    return train_phase(folder, maps, config, name, phase, init)


def phase_ratings(folder: RunFolder, config: PipelineConfig, phase: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The ratings a phase fits on and its validation ratings (`user_idx`, `item_idx`, `rating`), read from
    `phase_files`."""
    fit_on, validation = phase_files(folder, config, phase)
    return read_ratings(fit_on), read_ratings(validation) if validation is not None else None


def phase_files(folder: RunFolder, config: PipelineConfig, phase: str) -> tuple[Path, Path | None]:
    """The files of the ratings a phase fits on and of its validation ratings: "train" and "gate" hold out
    `validation_fraction` of the training split (`tasks.split.holdout`, from the files `holdout_files` writes out of
    core, so the whole split is never read to cut it); "refit" fits on all ratings, with none held out."""
    if phase not in ("train", "gate"):
        return folder.ratings, None
    if config.validation_fraction == 0:
        return folder.train, None
    return holdout_files(folder, config.validation_fraction, config.seed, config.out_of_core)
