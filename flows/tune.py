"""The tune flow: ingest -> the training split (the test split dropped unread) -> a user sample and its validation
split -> Optuna's studies per model within the budget -> the chosen settings in the warehouse (tuned_settings),
which the nightly runs on the same data then take.

It wires stages together; the search is tasks/tune, the writes warehouse/tuning.py. One tune at a time per
warehouse (its own lock: nightly runs go on meanwhile).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import flow
from prefect.runtime import flow_run

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
import warehouse
from flows.deadline import cancellation_reason, run_deadline
from flows.lock import TUNE_LOCK, run_lock
from flows.runlog import new_run_id
from tasks.config import PipelineConfig, describe_overrides
from tasks.ingest import config_for_data_task, fetch_with_retries, load_dataset_task, with_default_source
from tasks.tune.report import tuning_report_task
from tasks.tune.search import ModelSearch
from tasks.tune.stage import search_task, tuning_data_task
from tasks.tune.tuned import dataset_key
from warehouse.runs import utc_now
from warehouse.tuning import CHOSEN_COLUMNS, TRIAL_COLUMNS, TuningStart, finish_tuning, start_tuning, tuned_settings


@dataclass(frozen=True)
class TuneResult:
    """What a finished tune returns (and `recs tune` prints)."""

    tuning_run_id: str
    dataset_key: str
    chosen: dict[str, dict[str, Any]]  # by model: the settings a nightly on this data takes
    summary: str


@flow(name="tune", log_prints=True)
def tune(
    config: PipelineConfig = PipelineConfig(), source: str | None = None, overrides: dict[str, Any] | None = None
) -> TuneResult:
    """Search the settings of the models a nightly would train on this data and record the best in the warehouse.

    Args:
        config: the nightly's config (its `tune` group sets the budget, the trial cap and the user sample).
        source, overrides: as for the nightly flow.
    """
    config = with_default_source(config.with_overrides(overrides).with_source(source))
    config = config.model_copy(update={"warehouse": warehouse.resolved(config.warehouse)})
    if overrides:
        print(describe_overrides(overrides))
    warehouse.no_world_access()
    owner = flow_run.name or "tune"
    with (
        run_deadline(config.run_timeout_seconds),
        run_lock(config.warehouse, owner, config.lock_timeout_seconds, suffix=TUNE_LOCK),
    ):
        return _tune_run(config)


def _tune_run(config: PipelineConfig) -> TuneResult:
    tuning_run_id, started = new_run_id(), time.monotonic()
    archive = fetch_with_retries(config)
    dataset = load_dataset_task(archive, config)
    key = dataset_key(config, dataset.layout)
    config = config_for_data_task(config, dataset)
    start = TuningStart(
        tuning_run_id,
        str(flow_run.id) if flow_run.id else None,
        key,
        archive.source,
        archive.sha256,
        dataset.layout,
        config.tune.budget_seconds,
        config.tune.max_trials,
        config.tune.sample_users,
        config.model_dump_json(),
    )
    start_tuning(config.warehouse, start, utc_now())
    update: dict[str, Any] = {"tuning_run_id": tuning_run_id}
    try:
        data = tuning_data_task(dataset, config)
        update |= {"n_users": data.n_users, "n_users_full": data.n_users_full, "n_items": data.n_items}
        update |= {"n_fit": data.fit.height, "n_validation": data.validation.height}
        previous = tuned_settings(config.warehouse, key)
        journal_path = config.warehouse.with_name(config.warehouse.name + ".tuning.journal")
        searches = search_task(data, config, journal_path, key, archive.sha256, previous.by_model if previous else None)
    except BaseException as error:
        reason = cancellation_reason(error)
        status, said = ("cancelled", reason) if reason else ("failed", f"{type(error).__name__}: {error}")
        update |= {"status": status, "reason": said, "finished_at": utc_now(), "seconds": time.monotonic() - started}
        finish_tuning(config.warehouse, update, _trials(tuning_run_id, []), _chosen(key, tuning_run_id, []))
        raise
    return _finish(config, tuning_run_id, key, searches, update, started)


def _trials(tuning_run_id: str, searches: list[ModelSearch]) -> pl.DataFrame:
    """Every study's trials as `tuning_trials` stores them."""
    frames = [
        s.trials.with_columns(
            pl.lit(tuning_run_id).alias("tuning_run_id"), pl.lit(s.objective.metric).alias("objective")
        )
        for s in searches
    ]
    return pl.concat(frames).select(list(TRIAL_COLUMNS)) if frames else pl.DataFrame(schema=TRIAL_COLUMNS)


def _chosen(key: str, tuning_run_id: str, searches: list[ModelSearch]) -> pl.DataFrame:
    """What each study chose, as `tuned_settings` stores it (none for a study without a complete trial)."""
    rows = [
        {
            "dataset_key": key,
            "tuning_run_id": tuning_run_id,
            "model": s.model,
            "settings": json.dumps(s.chosen, sort_keys=True),
            "objective": s.objective.metric,
            "validation_value": s.chosen_value,
            "first_value": s.first_value,
            "chosen_at": utc_now(),
        }
        for s in searches
        if s.chosen
    ]
    return pl.DataFrame(rows, schema=CHOSEN_COLUMNS)


def _finish(
    config: PipelineConfig,
    tuning_run_id: str,
    key: str,
    searches: list[ModelSearch],
    update: dict[str, Any],
    started: float,
) -> TuneResult:
    """Record the outcome, trials and choices in one write; the report's artifacts; the result."""
    trials = _trials(tuning_run_id, searches)
    seconds = time.monotonic() - started
    stopped = sorted({s.stopped_by for s in searches})
    update |= {
        "status": "succeeded",
        "reason": f"stopped by the {' and the '.join(stopped)}" if stopped else "no model has settings to search",
        "finished_at": utc_now(),
        "seconds": seconds,
        "models": [s.model for s in searches],
        "n_trials": trials.filter(pl.col("state") != "fail").height,
        "n_pruned": trials.filter(pl.col("state") == "pruned").height,
        "n_resumed": trials.filter(pl.col("resumed")).height,
    }
    finish_tuning(config.warehouse, update, trials, _chosen(key, tuning_run_id, searches))
    header = (
        f"tune {tuning_run_id} of dataset {key}: {update['n_trials']} trials in {seconds:.0f}s on {update['n_users']:,} of "
        f"{update['n_users_full']:,} users ({update['reason']})"
    )
    folder = config.data_dir / "tuning" / tuning_run_id
    summary = tuning_report_task(tuning_run_id, searches, folder, header)
    print(summary)
    return TuneResult(tuning_run_id, key, {s.model: s.chosen for s in searches if s.chosen}, summary)
