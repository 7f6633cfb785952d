"""Ingest: fetch a MovieLens archive, cache it by content, unzip it safely and parse it to parquet.

The work is in `fetch.py`, `unzip.py`, `parse.py` (with the formats in `movielens.py`); this module holds
the stage's Prefect tasks and what the rest of the pipeline imports.

Layout under `data_dir`:

- `archives/<sha256>.zip`: downloaded archives, kept only once complete and verified;
- `archives/sources.json`: per source URL, the sha256, ETag and Last-Modified of its last download, so an
  unchanged source is answered by a conditional request (304) instead of a second download;
- `datasets/<sha256>/{ratings,items}.parquet` and `meta.json`: the parsed archive, so it is parsed once.
"""

from __future__ import annotations

from prefect import task
from prefect.tasks import exponential_backoff

from tasks.config import PipelineConfig, setting
from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import Archive, fetch_archive, sha256_of
from tasks.ingest.parse import PARSER_VERSION, Dataset, load_dataset

__all__ = [
    "PARSER_VERSION",
    "Archive",
    "Dataset",
    "IngestError",
    "fetch_archive",
    "fetch_archive_task",
    "fetch_with_retries",
    "load_dataset",
    "load_dataset_task",
    "sha256_of",
]

# The first run on a machine without internet access meets this: the default source is GroupLens's URL.
OFFLINE_HINT = (
    f"If this machine has no internet access, set {setting('source')} to a local copy of the archive, "
    "e.g. `recs run --source path/to/ml-100k.zip` (a path or a file:// URL)"
)


def _retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry network faults and 5xx, not a 404 or a sha256 mismatch."""
    try:
        state.result()
    except IngestError as exc:
        return exc.retryable
    except Exception:
        return False
    return False


@task(name="fetch-archive", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient)
def fetch_archive_task(config: PipelineConfig) -> Archive:
    """Prefect wrapper of `fetch_archive`; see `fetch_with_retries` for the retries."""
    return fetch_archive(config.source, config.data_dir, config.source_sha256, config.download.timeout_seconds)


def fetch_with_retries(config: PipelineConfig) -> Archive:
    """Run `fetch_archive_task`, retrying transient faults `config.download.retries` times.

    The wait doubles from `config.download.retry_delay_seconds`; Prefect's jitter draws each wait between
    0.63 and 1.5 times its value, keeping the average.
    """
    fetch = fetch_archive_task.with_options(
        retries=config.download.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.download.retry_delay_seconds),
    )
    try:
        return fetch(config)
    except IngestError as exc:
        if exc.unreachable:  # said once, when the retries are spent, not in every retry's log line
            raise IngestError(f"{exc}. {OFFLINE_HINT}") from exc
        raise


@task(name="parse-archive")
def load_dataset_task(archive: Archive, config: PipelineConfig) -> Dataset:
    """Prefect wrapper of `load_dataset` (cached on disk by the archive's sha256)."""
    return load_dataset(archive, config.data_dir, config.on_bad_rows, config.max_extracted_bytes)
