"""Warm starts: tonight's factors start from the last published run's, matched by the dataset's own ids.

With `warm_start`, a run that trains `ials` or `dot_bias` looks up the last run that published (any dataset: a
nightly's archive grows, so its SHA-256 changes) and the checkpoint it kept of the same model and phase:
`model-<name>-refit.pt` for tonight's refit, `model-<name>-train.pt` for tonight's split fit. Each user and item
found in both keeps its vectors (and biases); new ones start from the seeded random draw; the fit then runs the
model's `warm_epochs` instead of its `epochs`.

The split fit is warm-started only on the `temporal` split. There, last night's training ratings are each
user's earliest 75% up to last night, and tonight's test ratings are each user's latest 25% up to tonight: none
of them was trained on, so the evaluation stays honest. A random or stratified split draws tonight's test set
anew and last night's fit has seen much of it, which would flatter the warm model: on those splits only the
refit (what is published) starts warm, and the evaluated split fit starts cold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.checkpoint import Checkpoint
from tasks.config import PipelineConfig
from tasks.models import MODELS
from tasks.models.base import InitialRows
from tasks.reindex import IdMaps
from tasks.run_folder import RunFolder
from tasks.train import TrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStart:
    """A previous fit's state, with the ids its rows belong to."""

    run_id: str
    state: dict[str, torch.Tensor]
    init_args: dict
    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def load(cls, path: Path, run_id: str) -> WarmStart:
        checkpoint = Checkpoint.load(path)
        return cls(run_id, checkpoint.state_dict, checkpoint.init_args, checkpoint.user_ids, checkpoint.item_ids)

    def initial_rows(self, maps: IdMaps) -> InitialRows:
        """Every per-user and per-item state tensor's rows for the users and items found tonight too, placed at
        tonight's indices (tensors named `user_*` / `item_*`; the others, such as a sigmoid's range, are left)."""
        rows: InitialRows = {}
        for side, ids, tonight in (("user", self.user_ids, maps.users), ("item", self.item_ids, maps.items)):
            before = pl.DataFrame({"id": ids, "before": np.arange(len(ids))})
            tonight = tonight.rename({f"{side}_id": "id"})
            if before.schema["id"] != tonight.schema["id"]:  # whole-number ids then, text now (or the reverse)
                before, tonight = (frame.with_columns(pl.col("id").cast(pl.String)) for frame in (before, tonight))
            matched = tonight.join(before, on="id")
            now = torch.from_numpy(matched[f"{side}_idx"].to_numpy().astype(np.int64))
            then = torch.from_numpy(matched["before"].to_numpy().astype(np.int64))
            for name, tensor in self.state.items():
                if name.startswith(f"{side}_") and tensor.shape[0] == len(ids):
                    rows[name] = (now, tensor[then])
        return rows

    def describe(self, maps: IdMaps) -> str:
        users = int(np.isin(maps.users["user_id"].to_numpy(), self.user_ids).sum())
        items = int(np.isin(maps.items["item_id"].to_numpy(), self.item_ids).sum())
        return (
            f"warm start from run {self.run_id}: {users:,} of {maps.n_users:,} users and {items:,} of "
            f"{maps.n_items:,} items keep their vectors"
        )


def warm_phase(config: PipelineConfig, phase: str) -> bool:
    """Whether a phase's fit starts warm: the refit always (with `warm_start`), the split fit on a temporal split
    only (see the module docstring), the gate's reference fit never."""
    return config.warm_start and (phase == "refit" or (phase == "train" and config.split == "temporal"))


def starts_warm(config: PipelineConfig, name: str, phase: str) -> bool:
    """Whether `name`'s fit of `phase` starts from the last published run's vectors: a model that takes an initial
    state, in a phase that starts warm (`warm_phase`)."""
    return MODELS[name].warm_start and warm_phase(config, phase)


def find_warm_start(path: Path, run_id: str, name: str, phase: str, config: PipelineConfig) -> WarmStart | None:
    """The last published run's checkpoint of `name` for `phase`, when it is there and has tonight's settings;
    None (a cold start, said in the log) otherwise."""
    if not path.exists():
        return None
    with warehouse.open_reader(path) as con:
        last = warehouse.fetch(con, "warm_start_run", {"run_id": run_id})
    if last.height == 0:
        log.info("warm start: no run has published yet; %s starts cold", name)
        return None
    published = last["run_id"][0]
    checkpoint = RunFolder.of(config.data_dir, published).checkpoint(phase, name)
    if not checkpoint.exists():
        log.info("warm start: run %s kept no %s checkpoint (%s); %s starts cold", published, phase, checkpoint, name)
        return None
    warm = WarmStart.load(checkpoint, published)
    factors = MODELS[name].warm_params(config.params_for(name)).factors
    if warm.init_args.get("factors") != factors:
        log.info(
            "warm start: run %s's %s has %s factors, tonight's %d; it starts cold",
            published,
            name,
            warm.init_args.get("factors"),
            factors,
        )
        return None
    return warm


def warm_start(config: PipelineConfig, run_id: str, name: str, phase: str, maps: IdMaps) -> InitialRows | None:
    """The initial rows of `name`'s `phase` fit when it starts warm (`starts_warm`; the lookup is a task run),
    else None."""
    return warm_start_task(config, run_id, name, phase, maps) if starts_warm(config, name, phase) else None


def split_fit_start(
    config: PipelineConfig, name: str, phase: str, split_fit: TrainedModel | None
) -> tuple[InitialRows, PipelineConfig] | None:
    """The refit's initial rows from tonight's split fit (same id maps: every row, at its own index) and the config
    it runs under (the model's `refit_epochs` as the passes of a fit that starts warm), when the model refits from
    it (benchmarks/stars.py); else None (a cold refit)."""
    if phase != "refit" or split_fit is None or not MODELS[name].warm_start:
        return None
    epochs = MODELS[name].warm_params(config.params_for(name)).refit_epochs
    if epochs is None:
        return None
    log.info("%s refit: starts from this run's split fit, %d epochs", name, epochs)
    rows: InitialRows = {
        table: (torch.arange(tensor.shape[0]), tensor.detach().cpu())
        for table, tensor in split_fit.module.state_dict().items()
        if table.startswith(("user_", "item_"))
    }
    return rows, config.with_overrides({name: {"warm_epochs": epochs}})


def keeps_checkpoint(config: PipelineConfig, name: str, phase: str) -> bool:
    """Whether `name`'s fit of `phase` is saved for the next night's warm start: with `warm_start`, a model that
    starts warm keeps its split fit (a later temporal run starts from it) and its refit; the gate's fit is never
    read back."""
    return config.warm_start and MODELS[name].warm_start and phase in ("train", "refit")


@task(name="warm-start", cache_policy=NO_CACHE, task_run_name="warm-start-{name}-{phase}")
def warm_start_task(config: PipelineConfig, run_id: str, name: str, phase: str, maps: IdMaps) -> InitialRows | None:
    """The initial rows of `name`'s `phase` fit (`find_warm_start`), or None for a cold start."""
    warm = find_warm_start(config.warehouse, run_id, name, phase, config)
    if warm is None:
        return None
    log.info("%s %s: %s", name, phase, warm.describe(maps))
    return warm.initial_rows(maps)
