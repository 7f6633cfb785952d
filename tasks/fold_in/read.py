"""Read what changed since the published run: fetch the source (or `fold_in.new_rows`), parse it as the nightly does,
and compare it with the run's data (tasks/fold_in/changes.py); what is the nightly's job is refused here.

An unchanged source costs a hash: its SHA-256 equals the published run's, or the last fold-in's into that run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.fold_in.changes import Changes, changes_from_new_rows, changes_in_source
from tasks.ingest import IngestError, fetch_archive, load_dataset
from tasks.ingest.own_data import read_settings
from tasks.naming import setting
from tasks.run_folder import RunFolder
from tasks.sources import redact

log = logging.getLogger(__name__)


class NothingNew(RuntimeError):
    """Nothing to fold in: no published lists, or nothing changed since."""


@dataclass(frozen=True)
class Read:
    """What a fold-in read: the changes (None when there are none, `nothing_new` says why) and the source."""

    changes: Changes | None
    source: str  # credentials removed
    sha256: str
    nothing_new: str = ""

    @property
    def record(self) -> dict[str, str]:
        return {"source": self.source, "source_sha256": self.sha256}


class FoldInRefused(RuntimeError):
    """What changed is the nightly's job (the data moved too much for the published model to stand)."""


def read_changes(config: PipelineConfig, base: dict[str, Any], folder: RunFolder) -> Read:
    """The changes since run `base["run_id"]` (its row from `fold_in_base`): none when the source is the one the run
    or the last fold-in into it read, or holds nothing the run's data lacks."""
    new_rows = config.fold_in.new_rows
    source = new_rows or config.source
    try:
        archive = fetch_archive(source, config.data_dir, None, config.download.timeout_seconds)
        if archive.sha256 in (base["folded_sha256"], None if new_rows else base["source_sha256"]):
            seen = "the last fold-in's" if archive.sha256 == base["folded_sha256"] else f"run {base['run_id']}'s"
            why = f"{redact(source)} is unchanged since {seen} (sha256 {archive.sha256[:12]})"
            return Read(None, redact(source), archive.sha256, why)
        settings = read_settings(config)
        dataset = load_dataset(archive, config.data_dir, config.on_bad_rows, config.max_extracted_bytes, settings)
    except IngestError as exc:  # said of the setting that named the file, when it is not the source
        if new_rows:
            raise IngestError(f"{setting('fold_in.new_rows')}: {exc}") from exc
        raise
    if new_rows:
        changes = changes_from_new_rows(dataset.ratings(), folder, dataset.feedback == "implicit")
    else:
        changes = changes_in_source(pl.scan_parquet(dataset.ratings_path), folder)
    if changes.users.len() == 0:
        why = f"{redact(source)} has no interaction that run {base['run_id']}'s data lacks"
        return Read(None, redact(source), archive.sha256, why)
    return Read(changes, redact(source), archive.sha256)


def refuse_large_changes(changes: Changes, config: PipelineConfig) -> None:
    """FoldInRefused when more of the run's rows changed, or are gone, than the settings allow: its history was
    rewritten, which only a refit answers."""
    settings, rows = config.fold_in, max(changes.n_published_rows, 1)
    for count, what, name, bound in (
        (changes.n_changed_rows, "now hold another rating", "fold_in.max_changed_rows", settings.max_changed_rows),
        (changes.n_removed_rows, "are gone from the source", "fold_in.max_removed_rows", settings.max_removed_rows),
    ):
        if count / rows > bound:
            raise FoldInRefused(
                f"{count:,} of the published run's {changes.n_published_rows:,} rows {what} ({count / rows:.1%}, over "
                f"{setting(name)} {bound:g}): a rewritten or truncated export is a job for the nightly, which refits "
                "every vector and checks the data whole"
            )


@task(name="read-changes", cache_policy=NO_CACHE)
def read_changes_task(config: PipelineConfig, base: dict[str, Any], folder: RunFolder) -> Read:
    """Prefect wrapper of `read_changes`."""
    read = read_changes(config, base, folder)
    log.info("read %s: %s", read.source, read.changes.describe() if read.changes else read.nothing_new)
    return read
