"""What a nightly run writes to the warehouse, each call one write (`open_writer`: a whole-file copy).

A run writes at its start (`start_run`), once per trained model (`record_model`: metrics, loss history and
inspection tables together) and once at its end: `publish`, `mark_rejected` or `mark_failed`. Everything
goes through Arrow frames registered for the statements in `statements/` to select from.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from warehouse.sql import ID_COLUMNS, ids_as_text, query, run_statement, schema_scripts
from warehouse.writer import open_writer

# A frame's column types, as polars takes them (a DataType or its class).
Schema = Mapping[str, "pl.DataType | type[pl.DataType]"]

log = logging.getLogger(__name__)

# The columns of `runs` a run sets after it starts (schema/001_tables.sql, 003, 005, 006, 008, 010), with their types.
UTC_TIME = pl.Datetime("us", "UTC")
RUN_FIELDS: Schema = {
    "status": pl.String,
    "error": pl.String,
    "finished_at": UTC_TIME,
    "source": pl.String,
    "source_sha256": pl.String,
    "dataset_layout": pl.String,
    "n_ratings": pl.Int64,
    "n_users": pl.Int64,
    "n_items": pl.Int64,
    "n_train": pl.Int64,
    "n_test": pl.Int64,
    "model": pl.String,
    "device": pl.String,
    "train_seconds": pl.Float64,
    "train_ratings_per_second": pl.Float64,
    "stage_seconds": pl.String,
    "as_of": UTC_TIME,
    "protocol": pl.String,
    "gate_baseline_run_id": pl.String,
    "gate_reason": pl.String,
    "n_bad_rows": pl.Int64,
    "n_duplicate_ratings": pl.Int64,
    "rating_model": pl.String,
    "cluster": pl.String,
    "cluster_workers": pl.Int64,
    "tuning_run_id": pl.String,
    "tuned_settings": pl.String,
    "config": pl.String,
}

ITEM_BIASES_SCHEMA = {"item_id": pl.Int64, "bias": pl.Float64, "mean_rating": pl.Float64, "n_ratings": pl.Int64}
SIMILAR_ITEMS_SCHEMA = {"item_id": pl.Int64, "rank": pl.Int16, "similar_item_id": pl.Int64, "score": pl.Float32}
HISTORY_SCHEMA = {"epoch": pl.Int32, "split": pl.String, "loss": pl.Float64}  # also what tasks/train.py records


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ModelRecord:
    """One trained model's results in a run, written together by `record_model`."""

    metrics: pl.DataFrame | None  # metric, k, value
    history: pl.DataFrame | None = None  # epoch, split, loss; none for closed-form models
    item_biases: pl.DataFrame | None = None  # item_id, bias, mean_rating, n_ratings; None: the model has none
    similar_items: pl.DataFrame | None = None  # item_id, rank, similar_item_id, score; None: no embeddings


USER_METRICS_SCHEMA = {"model": pl.String, "user_id": pl.Int64, "metric": pl.String, "value": pl.Float64}
METRICS_SCHEMA = {"metric": pl.String, "k": pl.Int32, "value": pl.Float64}
FALLBACK_SCHEMA = {"item_id": pl.Int64, "rank": pl.Int16, "score": pl.Float32}
REASONS_SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "reason_rank": pl.Int16,
    "reason_item_id": pl.Int64,
    "contribution": pl.Float32,
}


@dataclass(frozen=True)
class ListExtras:
    """What a run publishes beside its lists, in the same write: the reasons behind each item (a frame, when the
    lists are one; a cluster's shards' files are in `ListFiles.reason_paths`), the list for unknown users and the
    lists' beyond-accuracy metrics (kept under the published `model`)."""

    reasons: pl.DataFrame | None = None  # REASONS_SCHEMA
    fallback: pl.DataFrame | None = None  # FALLBACK_SCHEMA
    list_metrics: pl.DataFrame | None = None  # METRICS_SCHEMA
    model: str = ""
    known_users: pl.DataFrame | None = None  # user_id: every user with ratings (those without a list are recorded)


def _typed(frame: pl.DataFrame | None, schema: Schema) -> pl.DataFrame:
    """`frame` in `schema`'s columns and types (an empty one when None), its id columns as the source has them:
    whole numbers or text (schema/ types them BIGINT until text ids arrive)."""
    if frame is None:
        return pl.DataFrame(schema=schema)
    return frame.select(
        pl.col(column) if column in ID_COLUMNS else pl.col(column).cast(dtype) for column, dtype in schema.items()
    )


def _keyed(frame: pl.DataFrame | None, schema: Schema, run_id: str, model: str) -> pl.DataFrame:
    """`frame` (or an empty one of `schema`) with `run_id` and `model` columns in front."""
    frame = _typed(frame, schema)
    return frame.select(pl.lit(run_id).alias("run_id"), pl.lit(model).alias("model"), pl.all())


def _run_update(run_id: str, fields: dict[str, Any]) -> pl.DataFrame:
    unknown = set(fields) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"runs has no settable column(s) {sorted(unknown)}")
    row = {name: [fields.get(name)] for name in RUN_FIELDS}
    if row["stage_seconds"][0] is not None:
        row["stage_seconds"] = [json.dumps(row["stage_seconds"][0])]
    return pl.DataFrame({"run_id": [run_id], **row}, schema={"run_id": pl.String, **RUN_FIELDS})


class WarehouseContractError(RuntimeError):
    """The warehouse lacks a column the pipeline writes (dropped or altered by hand)."""


def _columns(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    columns: dict[str, set[str]] = {}
    for table, column in con.execute(query("table_columns")).fetchall():
        columns.setdefault(table, set()).add(column)
    return columns


@functools.cache
def _schema_columns() -> dict[str, set[str]]:
    """Every table's columns as the schema scripts make them, on an empty in-memory database (once a process)."""
    with duckdb.connect() as blank:
        for script in schema_scripts():
            blank.execute(script)
        return _columns(blank)


def check_contract(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Fail, naming them, when the warehouse's tables lack columns that the schema (schema/*.sql) gives them: a
    run checks this at its start, before any training, rather than failing at publish.

    Raises:
        WarehouseContractError: the tables and their missing columns.
    """
    expected, present = _schema_columns(), _columns(con)
    missing = {table: sorted(columns - present.get(table, set())) for table, columns in expected.items()}
    missing = {table: columns for table, columns in missing.items() if columns}
    if missing:
        said = "; ".join(f"{table} lacks {', '.join(columns)}" for table, columns in sorted(missing.items()))
        raise WarehouseContractError(
            f"{path}: {said}: columns the pipeline writes (warehouse/schema/). Was the table altered by hand? Add them "
            "back (ALTER TABLE ... ADD COLUMN, docs/warehouse.md has each column's type) or publish to a new "
            "warehouse (--warehouse). Nothing was trained or changed."
        )


def start_run(path: Path, run_id: str, flow_run_id: str | None, config_json: str, started_at: datetime) -> int:
    """Insert the run as `running`, first marking runs left `running` by a dead process as failed.

    Call it only while holding the run lock (flows/lock.py): then no other run on this warehouse is alive,
    and any `running` row is one whose process was killed or crashed before it could record an outcome.

    Raises:
        WarehouseContractError: a table lacks a column the pipeline writes (`check_contract`); nothing is written.

    Returns:
        How many abandoned runs were marked failed.
    """
    new_run = pl.DataFrame(
        {"run_id": [run_id], "flow_run_id": [flow_run_id], "started_at": [started_at], "config": [config_json]},
        schema={"run_id": pl.String, "flow_run_id": pl.String, "started_at": UTC_TIME, "config": pl.String},
    )
    with open_writer(path) as con:
        check_contract(con, path)
        abandoned = _mark_abandoned(con, f"run {run_id}", started_at)
        run_statement(con, "insert_run", {"new_run": new_run})
    return len(abandoned)


def mark_abandoned(path: Path, found_by: str) -> list[str]:
    """Mark every run still `running` failed, as abandoned by its dead process; returns their ids.

    Call it only while holding the run lock (flows/lock.py: `settle_dead_runs`), as for `start_run`."""
    with open_writer(path) as con:
        return _mark_abandoned(con, found_by, utc_now())


def _mark_abandoned(con: duckdb.DuckDBPyConnection, found_by: str, now: datetime) -> list[str]:
    rows = run_statement(con, "mark_abandoned", params={"found_by": found_by, "now": now})
    abandoned = [run_id for (run_id,) in rows]
    if abandoned:
        log.warning("marked %d abandoned run(s) failed: %s", len(abandoned), ", ".join(abandoned))
    return abandoned


def record_model(path: Path, run_id: str, model: str, record: ModelRecord) -> None:
    """Store one model's metrics, loss history and inspection tables for the run, replacing any it stored before.

    Written as soon as the model is evaluated, so a run that fails or is held back later still has them.
    """
    frames = {
        "model_key": pl.DataFrame({"run_id": [run_id], "model": [model]}),
        "new_metrics": _keyed(record.metrics, METRICS_SCHEMA, run_id, model),
        "new_history": _keyed(record.history, HISTORY_SCHEMA, run_id, model),
        "new_item_biases": _keyed(record.item_biases, ITEM_BIASES_SCHEMA, run_id, model),
        "new_similar_items": _keyed(record.similar_items, SIMILAR_ITEMS_SCHEMA, run_id, model),
    }
    with open_writer(path) as con:
        run_statement(con, "record_model", frames)


@dataclass(frozen=True)
class ListFiles:
    """Lists kept as parquet files (`user_id`, `item_id`, `rank`, `score`, `predicted_rating`), as a cluster's
    shards write them: counted and published by DuckDB over the files, never gathered into one frame."""

    paths: tuple[str, ...]
    n_rows: int
    n_users: int
    n_items: int
    reason_paths: tuple[
        str, ...
    ] = ()  # the shards' reasons (user_id, item_id, reason_rank, reason_item_id, contribution)

    @classmethod
    def count(cls, paths: list[Path], reason_paths: list[Path] | None = None) -> ListFiles:
        files = [str(path) for path in paths]
        with duckdb.connect() as con:
            counted = con.execute(query("list_file_counts"), {"files": files}).fetchone()
        assert counted is not None  # an aggregate returns one row
        n_rows, n_users, n_items = counted
        return cls(tuple(files), n_rows, n_users, n_items, tuple(str(path) for path in reason_paths or ()))


def list_counts(lists: pl.DataFrame | ListFiles) -> tuple[int, int, int]:
    """Rows, users and distinct items of lists, in a frame or in files."""
    if isinstance(lists, ListFiles):
        return lists.n_rows, lists.n_users, lists.n_items
    return lists.height, lists["user_id"].n_unique(), lists["item_id"].n_unique()


def publish(
    path: Path,
    run_id: str,
    recommendations: pl.DataFrame | ListFiles,
    items: pl.DataFrame,
    facts: dict[str, Any] | Callable[[], dict[str, Any]],
    refit_histories: dict[str, pl.DataFrame] | None = None,
    keep_runs: int = 0,
    user_metrics: pl.DataFrame | None = None,
    extras: ListExtras | None = None,
) -> datetime:
    """Replace the published lists, their reasons, the fallback list and the catalogue and mark the run succeeded,
    in one write.

    Args:
        path: the warehouse file.
        run_id: the publishing run.
        recommendations: `user_id`, `item_id`, `rank`, `score`, and `predicted_rating` when a rating model
            predicted the stars (NULL without one); a frame, or the files a cluster's shards wrote.
        items: `item_id`, `title`, `genres`, `year`.
        facts: last `runs` fields to set (stage timings...), or a function returning them, called after the
            lists are inserted (so timings include the write's work).
        refit_histories: per model refitted on all ratings (the published one, the one behind the stars),
            its loss per epoch, kept as split 'refit'.
        keep_runs: retention of the per-run detail tables: the runs since the last `keep_runs` published
            runs keep theirs (statements/prune_details.sql); 0 keeps all.
        user_metrics: `model`, `user_id`, `metric`, `value`: the per-user values behind the judged metrics.
        extras: the lists' reasons (when they are a frame), the fallback list and the lists' metrics.

    Returns:
        The `generated_at` stamped on the rows.
    """
    generated_at = utc_now()
    extras = extras or ListExtras()
    frames = {
        "new_items": items.select("item_id", "title", "genres", "year"),
        "new_fallback": stamped(extras.fallback, FALLBACK_SCHEMA, run_id).with_columns(
            generated_at=pl.lit(generated_at).cast(UTC_TIME)
        ),
        "new_list_metrics": _keyed(extras.list_metrics, METRICS_SCHEMA, run_id, extras.model),
        "new_known_users": stamped(extras.known_users, {"user_id": pl.Int64}, run_id),
        "new_history": pl.concat(
            [_keyed(history, HISTORY_SCHEMA, run_id, name) for name, history in (refit_histories or {}).items()]
            or [_keyed(None, HISTORY_SCHEMA, run_id, "")]  # no refit: an empty frame of the same columns
        ),
        "new_user_metrics": _typed(user_metrics, USER_METRICS_SCHEMA).select(pl.lit(run_id).alias("run_id"), pl.all()),
    }
    with open_writer(path) as con:
        _replace_lists(con, recommendations, extras.reasons, run_id, generated_at)
        run_statement(con, "publish", frames)
        final = facts() if callable(facts) else facts
        update = _run_update(run_id, {**final, "status": "succeeded", "finished_at": utc_now()})
        run_statement(con, "update_run", {"run_update": update})
        run_statement(con, "prune_details", params={"keep_runs": keep_runs})
    log.info("published %d recommendations for run %s", list_counts(recommendations)[0], run_id)
    return generated_at


def _replace_lists(
    con: duckdb.DuckDBPyConnection,
    recommendations: pl.DataFrame | ListFiles,
    reasons: pl.DataFrame | None,
    run_id: str,
    generated_at: datetime,
) -> None:
    """The live lists and their reasons replaced by the run's: from its shards' files in one statement, or from
    frames."""
    if isinstance(recommendations, ListFiles):
        if pl.read_parquet_schema(recommendations.paths[0]).get("user_id") == pl.String:
            ids_as_text(con)
        params = {
            "files": list(recommendations.paths),
            "reason_files": list(recommendations.reason_paths),
            "run_id": run_id,
            "generated_at": generated_at,
        }
        if not recommendations.reason_paths:  # read_parquet needs a file: an empty one of the reasons' columns
            params["reason_files"] = [_empty_reasons_file(Path(recommendations.paths[0]).parent)]
        run_statement(con, "publish_lists_from_files", params=params)
        return
    lists = stamped_lists(recommendations, run_id, generated_at)
    run_statement(
        con, "publish_lists", {"new_recommendations": lists, "new_reasons": stamped(reasons, REASONS_SCHEMA, run_id)}
    )


def stamped_lists(recommendations: pl.DataFrame, run_id: str, generated_at: datetime) -> pl.DataFrame:
    """Lists as `recommendations` holds them: with the run that scored them and when (`predicted_rating` NULL
    without a rating model)."""
    stars = pl.col("predicted_rating") if "predicted_rating" in recommendations.columns else pl.lit(None)
    return recommendations.select(
        "user_id",
        "item_id",
        "rank",
        "score",
        pl.lit(run_id).alias("run_id"),
        pl.lit(generated_at).cast(UTC_TIME).alias("generated_at"),
        stars.cast(pl.Float32).alias("predicted_rating"),
    )


def stamped(frame: pl.DataFrame | None, schema: Schema, run_id: str) -> pl.DataFrame:
    """`frame` (or an empty one of `schema`) in `schema`'s columns and types, with the `run_id`."""
    frame = _typed(frame, schema)
    return frame.with_columns(run_id=pl.lit(run_id))


def _empty_reasons_file(folder: Path) -> str:
    path = folder / "no-reasons.parquet"
    pl.DataFrame(schema=REASONS_SCHEMA).write_parquet(path)
    return str(path)


def record_facts(path: Path, run_id: str, facts: dict[str, Any], keep_runs: int = 0) -> None:
    """Set what the run has learnt about itself (dataset size, device, timings...), in a write of its own
    (which applies the detail tables' retention when `keep_runs` is set)."""
    with open_writer(path) as con:
        _update_run(con, run_id, facts, keep_runs)


def _update_run(con: duckdb.DuckDBPyConnection, run_id: str, facts: dict[str, Any], keep_runs: int) -> None:
    run_statement(con, "update_run", {"run_update": _run_update(run_id, facts)})
    if keep_runs:
        run_statement(con, "prune_details", params={"keep_runs": keep_runs})


def mark_failed(path: Path, run_id: str, error: str, facts: dict[str, Any], status: str = "failed") -> None:
    """Record the run as failed (or `cancelled`: ended by a signal or its time limit) with its error or reason;
    the published lists are not touched."""
    record_facts(path, run_id, {**facts, "status": status, "error": error, "finished_at": utc_now()})


def mark_rejected(
    path: Path, run_id: str, facts: dict[str, Any], keep_runs: int = 0, extras: ListExtras | None = None
) -> None:
    """Record the run as rejected by the quality gate (`facts` carries `gate_reason`), with its lists' metrics when
    it made lists (`extras`); the published lists are not touched."""
    with open_writer(path) as con:
        if extras is not None and extras.list_metrics is not None:
            metrics = _keyed(extras.list_metrics, METRICS_SCHEMA, run_id, extras.model)
            run_statement(con, "record_list_metrics", {"new_list_metrics": metrics})
        _update_run(con, run_id, {**facts, "status": "rejected", "finished_at": utc_now()}, keep_runs)
