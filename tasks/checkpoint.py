"""A model's checkpoint: its weights with the id maps and config it was trained under and what its training recorded.

One file format, written by `Checkpoint.save` (atomically) and read once by `Checkpoint.load`: a training deployment
hands its model back this way, a cluster's shards read the model they score with, a later night's warm start reads
its vectors, and a published run can be reproduced from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.models import MODELS, Recommender
from tasks.reindex import IdMaps
from tasks.run_folder import atomic_write
from tasks.train import TrainedModel, UnseenFallback, use_tf32_matmuls
from warehouse.runs import HISTORY_SCHEMA


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds."""

    model: str  # the registry's name (tasks/models)
    init_args: dict[str, Any]  # `MODELS[model].module(**init_args)` rebuilds the shapes
    state_dict: dict[str, torch.Tensor]  # on the CPU
    user_ids: np.ndarray  # the dataset's id of each user index
    item_ids: np.ndarray
    config: dict[str, Any]  # the run's config as JSON (credentials removed)
    training: dict[str, Any]  # what the fit recorded: history, seconds, n_ratings, rating_scale, device, fallback

    @classmethod
    def of(cls, model: TrainedModel, maps: IdMaps, config: PipelineConfig) -> Checkpoint:
        return cls(
            model.name,
            model.module.init_args,
            {name: tensor.cpu() for name, tensor in model.module.state_dict().items()},
            maps.users["user_id"].to_numpy().copy(),
            maps.items["item_id"].to_numpy().copy(),
            config.model_dump(mode="json"),
            {
                "history": model.history.to_dict(as_series=False),
                "seconds": model.seconds,
                "n_ratings": model.n_ratings,
                "rating_scale": list(model.rating_scale),
                "device": str(model.device),
                "fallback": model.fallback.state() if model.fallback is not None else None,
            },
        )

    def save(self, path: Path) -> None:
        stored = {
            "model": self.model,
            "init_args": self.init_args,
            "state_dict": self.state_dict,
            "user_ids": _stored_ids(self.user_ids),
            "item_ids": _stored_ids(self.item_ids),
            "config": self.config,
            "training": self.training,
        }
        with atomic_write(path) as partial:
            torch.save(stored, partial)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return cls(
            stored["model"],
            stored["init_args"],
            stored["state_dict"],
            _loaded_ids(stored["user_ids"]),
            _loaded_ids(stored["item_ids"]),
            stored["config"],
            stored["training"],
        )

    def module(self) -> Recommender:
        """The fitted module, on the CPU, in eval mode."""
        module = MODELS[self.model].module(**self.init_args)
        module.load_state_dict(self.state_dict)
        return module.eval()

    def maps(self) -> IdMaps:
        def index(ids: np.ndarray, side: str) -> pl.DataFrame:
            return pl.DataFrame({f"{side}_idx": pl.int_range(len(ids), eager=True).cast(pl.Int32), f"{side}_id": ids})

        return IdMaps(index(self.user_ids, "user"), index(self.item_ids, "item"))

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig.from_stored(self.config)

    def trained_model(self, device: torch.device) -> TrainedModel:
        """The `TrainedModel` saved, moved to `device` (`training["device"]` says where it was trained)."""
        use_tf32_matmuls(device)
        training, fallback = self.training, self.training.get("fallback")  # no fallback in older checkpoints
        return TrainedModel(
            self.model,
            self.module().to(device),
            device,
            pl.DataFrame(training["history"], schema=HISTORY_SCHEMA),
            training["seconds"],
            training["n_ratings"],
            (training["rating_scale"][0], training["rating_scale"][1]),
            UnseenFallback.from_state(fallback) if fallback else None,
        )


def _stored_ids(ids: np.ndarray) -> torch.Tensor | list[str]:
    """Whole-number ids as a tensor; text ids (a team's SKUs) as a list of strings, which torch's safe loader
    (`weights_only`) reads as well."""
    return torch.from_numpy(ids) if ids.dtype.kind in "iu" else [str(i) for i in ids]


def _loaded_ids(stored: torch.Tensor | list[str]) -> np.ndarray:
    return stored.numpy() if isinstance(stored, torch.Tensor) else np.array(stored, dtype=str)


def save_checkpoint(model: TrainedModel, maps: IdMaps, config: PipelineConfig, path: Path) -> None:
    """Save weights, id maps and config together, so the run can be reproduced or re-published."""
    Checkpoint.of(model, maps, config).save(path)


def load_trained_model(path: Path, device: torch.device) -> tuple[TrainedModel, str]:
    """The `TrainedModel` a checkpoint holds, moved to `device`, and the device it was trained on."""
    checkpoint = Checkpoint.load(path)
    return checkpoint.trained_model(device), checkpoint.training["device"]


@task(name="save-checkpoint", cache_policy=NO_CACHE)
def save_checkpoint_task(model: TrainedModel, maps: IdMaps, config: PipelineConfig, path: Path) -> None:
    """Prefect wrapper of `save_checkpoint`."""
    save_checkpoint(model, maps, config, path)
