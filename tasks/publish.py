"""Publish to DuckDB: the run's lifecycle in `runs`, its metrics and loss history, and the lists.

Every write goes to a staging copy that replaces the warehouse file in one rename (`connect`).
Everything is written through Arrow (frames are registered as views and inserted with one statement) and
every value is a bound parameter; the only names formatted into SQL are column names from `RUN_COLUMNS` and
the inspection tables' fixed names and columns.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.ingest import Dataset

log = logging.getLogger(__name__)

# Columns of `runs` a run may set after it starts (see warehouse/schema/001_tables.sql).
RUN_COLUMNS = frozenset(
    {
        "source", "source_sha256", "dataset_layout", "n_ratings", "n_users", "n_items", "n_train", "n_test",
        "model", "device", "train_seconds", "train_ratings_per_second", "stage_seconds",
        "as_of", "protocol", "gate_baseline_run_id", "gate_reason", "n_bad_rows", "n_duplicate_ratings",
    }
)  # fmt: skip


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """One write at a time per warehouse, whatever writes it (runs already hold the run lock, tasks/lock.py)."""
    with open(path.with_name(path.name + ".write-lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # writes are short: wait for the other one to finish
        yield


def _fold_wal(path: Path) -> None:
    """Checkpoint a WAL left beside the warehouse (by a writer of the in-place era killed mid-write), so that
    copying the file alone copies everything committed."""
    if path.with_name(path.name + ".wal").exists():
        with warehouse.connect(path, read_only=False) as con:
            con.execute("CHECKPOINT")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Write to the warehouse by copy and replace: readers never wait and never see a half-written state.

    The block writes to a staging copy of the file (schema applied). When it ends without error, the copy is
    checkpointed, synced and renamed over the warehouse in one step: a reader has the old file open or opens
    the new one, and a process killed at any moment leaves the old file or the new one, never a mix. When
    the block fails, the copy is deleted and the warehouse is as it was.

    Only the pipeline writes the file; readers open it read-only (README, "Reading it from other processes").
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _write_lock(path):
        for leftover in path.parent.glob(f"{path.name}.*.staging*"):  # from a writer killed mid-write
            leftover.unlink()
        staging = path.with_name(f"{path.name}.{os.getpid()}.staging")
        if path.exists():
            _fold_wal(path)
            with warehouse.connect(path, read_only=True):  # a shared lock: no one writes it in place meanwhile
                shutil.copyfile(path, staging)
        con = duckdb.connect(str(staging))
        try:
            for script in warehouse.schema_scripts():
                con.execute(script)
            yield con
            con.execute("CHECKPOINT")
        except BaseException:
            con.close()
            staging.unlink(missing_ok=True)
            staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
            raise
        con.close()
        if staging.with_name(staging.name + ".wal").exists():  # the rename would leave its contents behind
            raise RuntimeError(f"DuckDB left a WAL beside {staging} after CHECKPOINT; {path} was not replaced")
        _fsync(staging)
        os.replace(staging, path)
        _fsync(path.parent)


def _set_run_fields(con: duckdb.DuckDBPyConnection, run_id: str, fields: dict[str, Any]) -> None:
    unknown = set(fields) - RUN_COLUMNS - {"status", "error", "finished_at"}
    if unknown:
        raise ValueError(f"runs has no column(s) {sorted(unknown)}")
    if not fields:
        return
    values = [json.dumps(v) if k == "stage_seconds" else v for k, v in fields.items()]
    assignments = ", ".join(f"{name} = ?" for name in fields)
    con.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*values, run_id])


def start_run(path: Path, run_id: str, flow_run_id: str | None, config_json: str, started_at: datetime) -> int:
    """Insert the run as `running`, first marking runs left `running` by a dead process as failed.

    Call it only while holding the run lock (tasks/lock.py): then no other run on this warehouse is alive,
    and any `running` row is one whose process was killed or crashed before it could record an outcome.

    Returns:
        How many abandoned runs were marked failed.
    """
    with connect(path) as con:
        abandoned = con.execute(
            "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE status = 'running' RETURNING run_id",
            [started_at, f"abandoned: its process ended without recording an outcome (found by run {run_id})"],
        ).fetchall()
        if abandoned:
            log.warning("marked %d abandoned run(s) failed: %s", len(abandoned), ", ".join(r for (r,) in abandoned))
        con.execute(
            "INSERT INTO runs (run_id, flow_run_id, started_at, status, config) VALUES (?, ?, ?, 'running', ?)",
            [run_id, flow_run_id, started_at, config_json],
        )
    return len(abandoned)


def record_facts(path: Path, run_id: str, facts: dict[str, Any]) -> None:
    """Set what the run has learnt about itself so far (dataset size, device, timings...)."""
    with connect(path) as con:
        _set_run_fields(con, run_id, facts)


def record_metrics(path: Path, run_id: str, model: str, metrics: pl.DataFrame) -> None:
    """Store a model's metrics (`metric`, `k`, `value`), replacing any the run stored for it before.

    Written as soon as evaluation ends, so a run that fails or is held back later still has them.
    """
    rows = metrics.select(pl.lit(run_id).alias("run_id"), pl.lit(model).alias("model"), "metric", "k", "value")
    with connect(path) as con:
        con.register("new_metrics", rows.to_arrow())
        con.execute("DELETE FROM run_metrics WHERE run_id = ? AND model = ?", [run_id, model])
        con.execute("INSERT INTO run_metrics SELECT run_id, model, metric, k, value FROM new_metrics")


def record_history(path: Path, run_id: str, model: str, history: pl.DataFrame) -> None:
    """Append a model's training loss per epoch (`epoch`, `split`, `loss`); closed-form models have none."""
    if history.height == 0:
        return
    rows = history.select(pl.lit(run_id).alias("run_id"), pl.lit(model).alias("model"), "epoch", "split", "loss")
    with connect(path) as con:
        con.register("new_history", rows.to_arrow())
        con.execute("INSERT INTO training_history (run_id, model, epoch, split, loss) SELECT * FROM new_history")


def record_inspection(
    path: Path, run_id: str, model: str, item_biases: pl.DataFrame | None, similar_items: pl.DataFrame | None
) -> None:
    """Store a model's inspection tables for the run (tasks/inspect.py), replacing any it stored before."""
    with connect(path) as con:
        for table, frame, columns in (
            ("item_biases", item_biases, "item_id, bias, mean_rating, n_ratings"),
            ("similar_items", similar_items, "item_id, rank, similar_item_id, score"),
        ):
            if frame is None:
                continue
            con.register("new_rows", frame.to_arrow())
            con.execute(f"DELETE FROM {table} WHERE run_id = ? AND model = ?", [run_id, model])
            con.execute(f"INSERT INTO {table} SELECT ?, ?, {columns} FROM new_rows", [run_id, model])
            con.unregister("new_rows")


def publish(
    path: Path, run_id: str, recommendations: pl.DataFrame, items: pl.DataFrame, facts: dict[str, Any]
) -> datetime:
    """Replace the published lists and the catalogue and mark the run succeeded, in one write (`connect`).

    Args:
        path: the warehouse file.
        run_id: the publishing run.
        recommendations: `user_id`, `item_id`, `rank`, `score`.
        items: `item_id`, `title`, `genres`, `year`.
        facts: last `runs` fields to set (stage timings...).

    Returns:
        The `generated_at` stamped on the rows.
    """
    generated_at = utc_now()
    with connect(path) as con:
        con.register("new_recommendations", recommendations.select("user_id", "item_id", "rank", "score").to_arrow())
        con.register("new_items", items.select("item_id", "title", "genres", "year").to_arrow())
        con.execute("DELETE FROM recommendations")
        con.execute(
            "INSERT INTO recommendations SELECT user_id, item_id, rank, score, ?, ? FROM new_recommendations",
            [run_id, generated_at],
        )
        con.execute("DELETE FROM items")
        con.execute("INSERT INTO items SELECT item_id, title, genres, year FROM new_items")
        _set_run_fields(con, run_id, {**facts, "status": "succeeded", "finished_at": utc_now()})
    log.info("published %d recommendations for run %s", recommendations.height, run_id)
    return generated_at


def mark_failed(path: Path, run_id: str, error: str, facts: dict[str, Any]) -> None:
    """Record the run as failed with its error; the published lists are not touched."""
    with connect(path) as con:
        _set_run_fields(con, run_id, {**facts, "status": "failed", "error": error, "finished_at": utc_now()})


def mark_rejected(path: Path, run_id: str, facts: dict[str, Any]) -> None:
    """Record the run as rejected by the quality gate (`facts` carries `gate_reason`); the lists are not touched."""
    with connect(path) as con:
        _set_run_fields(con, run_id, {**facts, "status": "rejected", "finished_at": utc_now()})


@task(name="record-facts", cache_policy=NO_CACHE)
def record_facts_task(path: Path, run_id: str, facts: dict[str, Any]) -> None:
    """Prefect wrapper of `record_facts`."""
    record_facts(path, run_id, facts)


@task(name="record-metrics", cache_policy=NO_CACHE)
def record_metrics_task(path: Path, run_id: str, model: str, metrics: pl.DataFrame) -> None:
    """Prefect wrapper of `record_metrics`."""
    record_metrics(path, run_id, model, metrics)


@task(name="record-history", cache_policy=NO_CACHE)
def record_history_task(path: Path, run_id: str, model: str, history: pl.DataFrame) -> None:
    """Prefect wrapper of `record_history`."""
    record_history(path, run_id, model, history)


@task(name="reject", cache_policy=NO_CACHE)
def reject_task(path: Path, run_id: str, facts: dict[str, Any]) -> None:
    """Prefect wrapper of `mark_rejected`."""
    mark_rejected(path, run_id, facts)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    path: Path, run_id: str, recommendations: pl.DataFrame, dataset: Dataset, facts: dict[str, Any]
) -> datetime:
    """Prefect wrapper of `publish`, with the parsed dataset's catalogue as the items."""
    return publish(path, run_id, recommendations, dataset.items(), facts)
