"""The run's writes as Prefect tasks: each trained model's results, and the publish or the rejection.

The writes themselves (a staging copy of the warehouse renamed over it, Arrow frames, statements from
warehouse/statements/) are in warehouse/runs.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.ingest import Dataset
from warehouse.runs import ListExtras, ListFiles, ModelRecord, mark_rejected, publish, record_model


@task(name="record-model", cache_policy=NO_CACHE, task_run_name="record-{model}")
def record_model_task(path: Path, run_id: str, model: str, record: ModelRecord) -> None:
    """One write per trained model: its metrics, loss history and inspection tables (`record_model`)."""
    record_model(path, run_id, model, record)


@task(name="reject", cache_policy=NO_CACHE)
def reject_task(
    path: Path, run_id: str, facts: dict[str, Any], keep_runs: int = 0, extras: ListExtras | None = None
) -> None:
    """Record the run as rejected by the quality gate (`mark_rejected`), with its lists' metrics when it made lists;
    the published lists stay."""
    mark_rejected(path, run_id, facts, keep_runs, extras)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    path: Path,
    run_id: str,
    recommendations: pl.DataFrame | ListFiles,
    dataset: Dataset,
    facts: Callable[[], dict[str, Any]],
    refit_histories: dict[str, pl.DataFrame],
    keep_runs: int = 0,
    user_metrics: pl.DataFrame | None = None,
    extras: ListExtras | None = None,
) -> datetime:
    """Publish the lists, their reasons and the fallback list with the parsed dataset's catalogue, in one write
    (`publish`), pruning the detail tables to the last `keep_runs` published runs.

    `facts` is called when the write is ready, so the publish stage's own seconds are in what it stores."""
    return publish(
        path, run_id, recommendations, dataset.items(), facts, refit_histories, keep_runs, user_metrics, extras
    )
