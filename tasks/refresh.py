"""Has the source changed? The refresh flow's check, before it tells the nightly deployment to run.

The archive is fetched with `fetch_archive`, which asks an http(s) server with the last ETag and
Last-Modified it sent (a 304 costs no download) and hashes whatever comes back, so a server that drops
its validators still cannot make an unchanged archive look new. The sha256 last announced per source is
kept in `data_dir/refresh/announced.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from tasks.config import PipelineConfig, redact
from tasks.ingest import fetch_archive
from tasks.run_folder import atomic_write

RATINGS_UPDATED = "recs.ratings.updated"  # the event the nightly deployment's trigger expects


def source_resource_id(source: str) -> str:
    """The event resource naming a source: `recs.source.<url without credentials>`."""
    return f"recs.source.{redact(source)}"


@dataclass(frozen=True)
class SourceCheck:
    source: str  # redacted
    sha256: str
    previous_sha256: str | None  # the last one announced; None if never

    @property
    def changed(self) -> bool:
        return self.sha256 != self.previous_sha256


def _announced_path(data_dir: Path) -> Path:
    return data_dir / "refresh" / "announced.json"


def _announced(data_dir: Path) -> dict[str, str]:
    path = _announced_path(data_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def check_source(config: PipelineConfig) -> SourceCheck:
    """Fetch the source (conditionally) and compare its sha256 with the last one announced."""
    archive = fetch_archive(config.source, config.data_dir, None, config.download.timeout_seconds)
    source = redact(config.source)
    return SourceCheck(source, archive.sha256, _announced(config.data_dir).get(source))


def remember_announced(data_dir: Path, check: SourceCheck) -> None:
    """Record that `check.sha256` was announced, so the next check only fires on a newer archive."""
    announced = {**_announced(data_dir), check.source: check.sha256}
    with atomic_write(_announced_path(data_dir)) as partial:
        partial.write_text(json.dumps(announced, indent=2))


@task(name="check-source", retries=2, retry_delay_seconds=30)
def check_source_task(config: PipelineConfig) -> SourceCheck:
    """Prefect wrapper of `check_source` (retried: a flaky network should not skip a night)."""
    return check_source(config)
