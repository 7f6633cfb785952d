"""What a fold-in writes (flows/fold_in.py): its users' lists in place of theirs, and its row in `fold_ins`.

Both go in one write (`open_writer`: a staging copy renamed over the file), after checking, inside that write, that
the run whose model the users were folded into is still the one whose lists are live: a nightly that published
meanwhile leaves the fold-in nothing to publish, and its lists never mix with vectors of another run.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from warehouse.runs import REASONS_SCHEMA, UTC_TIME, Schema, stamped, stamped_lists, utc_now
from warehouse.sql import fetch, run_statement
from warehouse.writer import open_writer

FOLD_IN_SCHEMA: Schema = {
    "fold_in_id": pl.String,
    "flow_run_id": pl.String,
    "started_at": UTC_TIME,
    "finished_at": UTC_TIME,
    "status": pl.String,
    "reason": pl.String,
    "run_id": pl.String,
    "model": pl.String,
    "rating_model": pl.String,
    "source": pl.String,
    "source_sha256": pl.String,
    "n_new_rows": pl.Int64,
    "n_changed_rows": pl.Int64,
    "n_removed_rows": pl.Int64,
    "n_users_added": pl.Int32,
    "n_users_changed": pl.Int32,
    "n_users_on_fallback": pl.Int32,
    "n_new_items": pl.Int32,
    "n_recommendations": pl.Int32,
    "seconds": pl.Float64,
}


class PublishedRunChanged(RuntimeError):
    """Another run published while the fold-in ran: its lists were left as they are."""


def fold_in_base(path: Path) -> dict[str, Any] | None:
    """The live run a fold-in folds into (`queries/fold_in_base.sql`), or None when nothing is published."""
    from warehouse.reader import open_reader

    if not path.exists():
        return None
    with open_reader(path) as con:
        rows = fetch(con, "fold_in_base")
    return rows.row(0, named=True) if rows.height else None


def _record(record: dict[str, Any]) -> pl.DataFrame:
    """The fold-in's row, finished now: `seconds` from its start to this write."""
    finished = utc_now()
    record = {**record, "finished_at": finished, "seconds": (finished - record["started_at"]).total_seconds()}
    row = {name: [record.get(name)] for name in FOLD_IN_SCHEMA}
    return pl.DataFrame(row, schema=FOLD_IN_SCHEMA)


def publish_fold_in(
    path: Path,
    record: dict[str, Any],
    lists: pl.DataFrame,
    reasons: pl.DataFrame,
    users: pl.DataFrame,
) -> datetime:
    """Replace the lists (and reasons) of `users` by `lists` and record the fold-in as published, in one write.

    Args:
        record: the fold-in's `fold_ins` row; its `run_id` must still be the live run.
        lists: user_id, item_id, rank, score, predicted_rating.
        users: user_id of every user folded in (one with no rows in `lists` has rated every allowed item).

    Raises:
        PublishedRunChanged: another run published since the fold-in read the live one; nothing was written.
    """
    run_id, generated_at = record["run_id"], utc_now()
    rows = stamped_lists(lists, run_id, generated_at).with_columns(fold_in_id=pl.lit(record["fold_in_id"]))
    frames = {
        "folded_users": users.select("user_id"),
        "new_recommendations": rows,
        "new_reasons": stamped(reasons, REASONS_SCHEMA, run_id),
    }
    with open_writer(path) as con:
        live_run = fetch(con, "live_run")
        live = live_run["run_id"][0] if live_run.height else None
        if live != run_id:
            raise PublishedRunChanged(
                f"run {live} published while this fold-in folded users into run {run_id}'s model: nothing was "
                "published (its lists are newer; the next fold-in folds into its model)"
            )
        run_statement(con, "publish_fold_in", frames, params={"run_id": run_id})
        published = {**record, "status": "published", "n_recommendations": lists.height}
        run_statement(con, "record_fold_in", {"fold_in": _record(published)})
    return generated_at


def record_fold_in(path: Path, record: dict[str, Any]) -> None:
    """Record a fold-in that published nothing (refused or failed, `record["reason"]` says why)."""
    with open_writer(path) as con:
        run_statement(con, "record_fold_in", {"fold_in": _record(record)})
