"""Training as its own flow, so a team can run it on a GPU work pool while the rest of the nightly stays on CPU.

The `train` deployment (deploy/prefect.yaml, pool `recs-gpu`) runs `train`; the nightly flow calls it
through `run_deployment` when `config.train_deployment` names it, and waits. The two exchange files through
the run's folder (`data_dir/runs/<run_id>`), so both workers must see the same `data_dir` (a shared or
network file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
from tasks.checkpoint import load_trained_model, save_checkpoint_task
from tasks.config import PipelineConfig
from tasks.reindex import IdMaps
from tasks.run_folder import RunFolder
from tasks.train import TrainedModel, pick_device, train_task
from tasks.warm import warm_start

__all__ = ["Phase", "train", "train_on_deployment"]

Phase = Literal["train", "refit", "gate"]


@flow(name="train", log_prints=True)
def train(config: PipelineConfig, run_dir: Path, phase: Phase = "train", model: str = "dot_bias") -> str:
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
    folder, maps = RunFolder(run_dir), IdMaps.load(run_dir)
    # the last published run's checkpoint, found here: the nightly flow leaves the warm start to this flow
    init = warm_start(config, folder.run_id, model, phase, maps)
    trained = train_task(folder, maps, config, model, phase=phase, init=init)
    path = folder.checkpoint(phase, model)
    save_checkpoint_task(trained, maps, config, path)
    return str(path)


def train_on_deployment(config: PipelineConfig, folder: RunFolder, phase: str, model: str) -> tuple[TrainedModel, str]:
    """Train through `config.train_deployment` and load the result here (for evaluation and scoring).

    Returns:
        The model, on this process's best device, and the device it was trained on (e.g. `cuda:0`).

    Raises:
        RuntimeError: the training flow run did not complete; the message names it and its state.
    """
    assert config.train_deployment is not None
    flow_run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync here: no event loop runs
        config.train_deployment,
        parameters={
            "config": config.model_dump(mode="json"),
            "run_dir": str(folder.path.resolve()),
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
    return load_trained_model(folder.checkpoint(phase, model), pick_device("auto"))
