"""The fold-in flow: users new or changed since the published run get their lists from its model within minutes.

read the live run -> read what changed (the source against the run's data, or `fold_in.new_rows`) -> refuse what is
the nightly's job -> fold the users into the published model and make their lists -> take the run lock, check the
live run is still the same, publish their lists (nobody else's) and record the fold-in, in one write.

It wires the stages in tasks/fold_in/ and warehouse/fold_ins.py and does nothing else (docs/operations.md, "New and
changed users between nights").
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
import warehouse
from flows.deadline import cancellation_reason, run_deadline
from flows.lock import RunLockedError, run_lock
from tasks.config import PipelineConfig, describe_overrides
from tasks.fold_in.changes import Changes
from tasks.fold_in.fold import CannotFoldIn, PublishedModel, fold_in_lists_task
from tasks.fold_in.read import FoldInRefused, NothingNew, read_changes_task, refuse_large_changes
from tasks.run_folder import RunFolder
from warehouse.fold_ins import PublishedRunChanged, fold_in_base, publish_fold_in, record_fold_in
from warehouse.runs import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldInResult:
    """What a fold-in returns (and `recs fold-in` prints)."""

    fold_in_id: str
    status: str  # "published"; "nothing new", "skipped" (the model cannot fold in): not recorded; "refused"
    summary: str
    record: dict[str, Any]


@flow(name="fold-in", log_prints=True)
def fold_in(
    config: PipelineConfig = PipelineConfig(), source: str | None = None, overrides: dict[str, Any] | None = None
) -> FoldInResult:
    """Fold the users new or changed since the published run into its model and publish their lists only.

    Args:
        config: the nightly's config (its source, how to read it, data_dir, warehouse) with `fold_in`'s settings.
        source: replaces `config.source`, as for the nightly (an event trigger sets it).
        overrides: config fields to change, e.g. `{"fold_in": {"new_rows": "/srv/exports/today.csv"}}`.
    """
    from tasks.ingest import with_default_source

    started, record = time.perf_counter(), _new_record()
    config = with_default_source(config.with_overrides(overrides).with_source(source))
    config = config.model_copy(update={"warehouse": warehouse.resolved(config.warehouse)})
    if overrides:
        print(describe_overrides(overrides))
    warehouse.no_world_access()
    with run_deadline(config.run_timeout_seconds):
        try:
            return _fold_in(config, record, started)
        except NothingNew as nothing:
            print(f"fold-in: {nothing}; nothing published")
            return FoldInResult(record["fold_in_id"], "nothing new", str(nothing), record)
        except CannotFoldIn as cannot:
            print(f"fold-in: {cannot}; nothing published")
            return FoldInResult(record["fold_in_id"], "skipped", str(cannot), record)
        except (FoldInRefused, PublishedRunChanged, RunLockedError) as refused:
            return _refused(config, record, str(refused))
        except BaseException as error:
            reason = cancellation_reason(error) or f"{type(error).__name__}: {error}"
            _record_quietly(config, {**record, "status": "failed", "reason": reason})
            raise


def _new_record() -> dict[str, Any]:
    return {
        "fold_in_id": f"{utc_now():%Y%m%dT%H%M%SZ}-fold-{secrets.token_hex(3)}",
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "started_at": utc_now(),
    }


def _fold_in(config: PipelineConfig, record: dict[str, Any], started: float) -> FoldInResult:
    base = fold_in_base(config.warehouse)
    if base is None:
        raise NothingNew(f"{config.warehouse} has no published lists yet: the nightly publishes first")
    published = PublishedModel(RunFolder.of(config.data_dir, base["run_id"]), base["model"], base["rating_model"])
    record.update(run_id=base["run_id"], model=base["model"], rating_model=base["rating_model"])
    published.check()
    read = read_changes_task(config, base, published.folder)
    record.update(read.record)
    if read.changes is None:
        raise NothingNew(read.nothing_new)
    changes = read.changes
    record.update(_counts(changes))
    refuse_large_changes(changes, config)
    print(f"fold-in into run {base['run_id']} ({base['model']}): {changes.describe()}")
    stored = PipelineConfig.from_stored(base["config"]).model_copy(update={"device": config.device})
    folded = fold_in_lists_task(published, changes.histories, stored)
    record.update(n_new_items=folded.n_new_items, n_users_on_fallback=folded.users_on_fallback.len())
    if folded.n_new_items:
        print(
            f"fold-in: {folded.n_new_items:,} items are newer than run {base['run_id']}'s model: they cannot be "
            "recommended until the nightly fits them"
        )
    owner = f"fold-in {record['fold_in_id']}"
    wait, setting = config.fold_in.lock_timeout_seconds, "fold_in.lock_timeout_seconds"
    with run_lock(config.warehouse, owner, wait, brief=True, timeout_setting=setting):
        publish_fold_in(config.warehouse, record, folded.lists, folded.reasons, folded.users)
    summary = (
        f"fold-in {record['fold_in_id']}: published {folded.lists.height:,} rows for {folded.users.height:,} users "
        f"({record['n_users_added']:,} new, {record['n_users_changed']:,} changed) from run {base['run_id']}'s "
        f"model in {time.perf_counter() - started:.2f}s"
    )
    print(summary)
    return FoldInResult(record["fold_in_id"], "published", summary, record)


def _counts(changes: Changes) -> dict[str, int]:
    return {
        "n_new_rows": changes.n_new_rows,
        "n_changed_rows": changes.n_changed_rows,
        "n_removed_rows": changes.n_removed_rows,
        "n_users_added": changes.new_users.len(),
        "n_users_changed": changes.changed_users.len(),
    }


def _refused(config: PipelineConfig, record: dict[str, Any], reason: str) -> FoldInResult:
    print(f"fold-in refused: {reason}")
    _record_quietly(config, {**record, "status": "refused", "reason": reason})
    return FoldInResult(record["fold_in_id"], "refused", reason, record)


def _record_quietly(config: PipelineConfig, record: dict[str, Any]) -> None:
    """Record a fold-in that published nothing; a warehouse that cannot be written is logged, never raised over the
    reason itself."""
    try:
        record_fold_in(config.warehouse, record)
    except Exception:
        log.exception("could not record fold-in %s in %s", record["fold_in_id"], config.warehouse)
