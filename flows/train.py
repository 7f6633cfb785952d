"""Training as its own flow, so a team can run it on a GPU work pool while the rest of the nightly stays on CPU.

The `train` deployment (deploy/prefect.yaml, pool `recs-gpu`) runs `train`; the nightly flow calls it
through `run_deployment` when `config.train_deployment` names it, and waits. The two exchange files through
the run's folder (`data_dir/runs/<run_id>`), so both workers must see the same `data_dir` (a shared or
network file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl
from prefect import flow
from prefect.deployments import run_deployment

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
from tasks.config import ModelName, PipelineConfig
from tasks.reindex import IdMaps
from tasks.train import TrainedModel, checkpoint_path, load_trained_model, pick_device, save_checkpoint_task, train_task
from tasks.warm import starts_warm, warm_start_task

__all__ = ["Phase", "checkpoint_path", "train", "train_on_deployment"]  # checkpoint_path: re-exported

Phase = Literal["train", "refit", "gate"]

# What each phase trains on, saved in the run's folder by the nightly flow.
PHASE_INPUT = {"train": "train.parquet", "refit": "ratings.parquet", "gate": "train.parquet"}


@flow(name="train", log_prints=True)
def train(config: PipelineConfig, run_dir: Path, phase: Phase = "train", model: ModelName = "dot_bias") -> str:
    """Fit one model on a run's saved ratings and save the checkpoint next to them.

    Args:
        config: the nightly run's config (device `auto` picks this worker's GPU).
        run_dir: the nightly run's folder, on storage this worker shares with the nightly's.
        phase: `train` fits on `train.parquet` (the evaluation model), `refit` on `ratings.parquet`, `gate` on
            `train.parquet` with the published run's settings (the quality gate's side of the comparison).
        model: which of the config's models.

    Returns:
        The checkpoint's path.
    """
    maps = IdMaps.load(run_dir)
    ratings = pl.read_parquet(run_dir / PHASE_INPUT[phase])
    # the last published run's checkpoint, found here: the nightly flow leaves the warm start to this flow
    init = warm_start_task(config, run_dir.name, model, phase, maps) if starts_warm(config, model, phase) else None
    trained = train_task(ratings, maps, config, model, phase=phase, init=init)
    path = checkpoint_path(run_dir, phase, model)
    save_checkpoint_task(trained, maps, config, path)
    return str(path)


def train_on_deployment(
    ratings: pl.DataFrame, config: PipelineConfig, run_dir: Path, phase: Phase, model: str
) -> tuple[TrainedModel, str]:
    """Train through `config.train_deployment` and load the result here (for evaluation and scoring).

    Returns:
        The model, on this process's best device, and the device it was trained on (e.g. `cuda:0`).

    Raises:
        RuntimeError: the training flow run did not complete; the message names it and its state.
    """
    assert config.train_deployment is not None
    if phase == "refit" and not (run_dir / PHASE_INPUT[phase]).exists():
        ratings.write_parquet(run_dir / PHASE_INPUT[phase])
    flow_run = run_deployment(
        config.train_deployment,
        parameters={
            "config": config.model_dump(mode="json"),
            "run_dir": str(run_dir.resolve()),
            "phase": phase,
            "model": model,
        },
        timeout=None,  # wait as long as training takes; the deployment's own timeout applies
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        message = flow_run.state.message if flow_run.state else ""
        raise RuntimeError(
            f"training deployment {config.train_deployment!r} run {flow_run.name} ended {state}: {message}"
        )
    # `auto` here: the config's device names the training worker's (say cuda), which this one may lack.
    return load_trained_model(checkpoint_path(run_dir, phase, model), pick_device("auto"))
