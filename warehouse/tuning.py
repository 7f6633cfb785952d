"""What a tune writes to the warehouse (`tuning_runs`, `tuning_trials`, `tuned_settings`) and what a nightly reads
back: one write when a tune starts, one when it ends (`open_writer` copies the whole file each time)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from warehouse.reader import open_reader
from warehouse.runs import UTC_TIME, Schema
from warehouse.sql import fetch, run_statement
from warehouse.writer import open_writer

log = logging.getLogger(__name__)

TRIAL_COLUMNS: Schema = {
    "tuning_run_id": pl.String,
    "model": pl.String,
    "trial": pl.Int32,
    "state": pl.String,
    "settings": pl.String,
    "objective": pl.String,
    "value": pl.Float64,
    "ndcg": pl.Float64,
    "rmse": pl.Float64,
    "epochs": pl.Int32,
    "seconds": pl.Float64,
    "resumed": pl.Boolean,
    "note": pl.String,
}
CHOSEN_COLUMNS: Schema = {
    "dataset_key": pl.String,
    "tuning_run_id": pl.String,
    "model": pl.String,
    "settings": pl.String,
    "objective": pl.String,
    "validation_value": pl.Float64,
    "first_value": pl.Float64,
    "chosen_at": UTC_TIME,
}
UPDATE_COLUMNS: Schema = {
    "tuning_run_id": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "finished_at": UTC_TIME,
    "seconds": pl.Float64,
    "n_users": pl.Int64,
    "n_users_full": pl.Int64,
    "n_items": pl.Int64,
    "n_fit": pl.Int64,
    "n_validation": pl.Int64,
    "models": pl.List(pl.String),
    "n_trials": pl.Int32,
    "n_pruned": pl.Int32,
    "n_resumed": pl.Int32,
}


@dataclass(frozen=True)
class TuningStart:
    """A tune's row as it starts."""

    tuning_run_id: str
    flow_run_id: str | None
    dataset_key: str
    source: str
    source_sha256: str
    dataset_layout: str
    budget_seconds: float
    max_trials: int
    sample_users: int | None
    config_json: str


def start_tuning(path: Path, start: TuningStart, started_at: datetime) -> None:
    """Insert the tune as `running`, first marking tunes a killed process left `running` as failed (call it
    holding the tune lock, flows/lock.py)."""
    row = pl.DataFrame(
        [{**start.__dict__, "started_at": started_at, "config": start.config_json}],
        schema_overrides={"started_at": UTC_TIME, "sample_users": pl.Int32, "flow_run_id": pl.String},
    ).drop("config_json")
    with open_writer(path) as con:
        run_statement(
            con,
            "mark_tuning_abandoned",
            params={
                "finished_at": started_at,
                "reason": f"abandoned: its process ended (found by {start.tuning_run_id})",
            },
        )
        run_statement(con, "start_tuning_run", {"tuning_run": row})


def _as(frame: pl.DataFrame, schema: Schema) -> pl.DataFrame:
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def finish_tuning(path: Path, update: dict[str, Any], trials: pl.DataFrame, chosen: pl.DataFrame) -> None:
    """Record the tune's outcome, its trials and the settings it chose (none when it failed), in one write."""
    frame = pl.DataFrame([{name: update.get(name) for name in UPDATE_COLUMNS}], schema=UPDATE_COLUMNS)
    with open_writer(path) as con:
        run_statement(
            con,
            "finish_tuning_run",
            {
                "tuning_update": frame,
                "trials": _as(trials, TRIAL_COLUMNS),
                "chosen": _as(chosen, CHOSEN_COLUMNS),
            },
        )


@dataclass(frozen=True)
class TunedSettings:
    """The newest settings a tune chose for a dataset: by model, and which tune chose them."""

    tuning_run_id: str
    by_model: dict[str, dict[str, Any]]


def tuned_settings(path: Path, dataset_key: str) -> TunedSettings | None:
    """The newest successful tune's settings for `dataset_key`; None when the warehouse has none (or no warehouse)."""
    if not path.exists():
        return None
    with open_reader(path) as con:
        try:
            rows = fetch(con, "tuned_settings_for", {"dataset_key": dataset_key})
        except duckdb.CatalogException:  # a warehouse from before tuning
            return None
    if rows.height == 0:
        return None
    by_model = {row["model"]: json.loads(row["settings"]) for row in rows.iter_rows(named=True)}
    return TunedSettings(rows["tuning_run_id"][0], by_model)
