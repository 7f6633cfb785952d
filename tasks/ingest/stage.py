"""The ingest stage's Prefect tasks (fetch with retries, parse), and where a run finds its source when its config
names none. Imported through `tasks.ingest`, which loads this module only when one of its names is used."""

from __future__ import annotations

import logging

import polars as pl
from prefect import task
from prefect.runtime import deployment
from prefect.tasks import exponential_backoff
from prefect.variables import Variable
from pydantic import ValidationError

from tasks.config import PipelineConfig
from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import Archive, fetch_archive
from tasks.ingest.own_data import read_settings
from tasks.ingest.parse import Dataset, load_dataset
from tasks.sources import (
    DEPLOYMENT_SOURCE_HINT,
    OFFLINE_HINT,
    SOURCE_ENVIRONMENT,
    SOURCE_VARIABLE,
    local_path,
    redact,
    source_from_environment,
)

log = logging.getLogger(__name__)


def source_hint(source: str) -> str:
    """How to point the run at a source it can reach: a deployment's run by its variable or parameters, any other
    at a local copy of a URL it cannot reach (`recs run --source`)."""
    if deployment.id:
        return f". {DEPLOYMENT_SOURCE_HINT}"
    return f". {OFFLINE_HINT}" if local_path(source) is None else ""


def with_default_source(config: PipelineConfig) -> PipelineConfig:
    """`config` as it is when it names its source; otherwise with the source the environment variable RECS_SOURCE
    names, else the Prefect Variable recs_source, read now: a deployment's source changes without a redeploy.
    With neither, the config keeps its default, ML-100k's URL."""
    if "source" in config.model_fields_set:
        return config
    origin, source = f"the environment variable {SOURCE_ENVIRONMENT}", source_from_environment()
    if source is None:
        origin, value = f"the Prefect Variable {SOURCE_VARIABLE}", Variable.get(SOURCE_VARIABLE)
        source = str(value) if value else None
    if source is None:
        return config
    log.info("source %s, from %s", redact(source), origin)
    try:
        return config.with_overrides({"source": source})
    except ValidationError as exc:  # said where the value was set, not as the config's field
        raise ValueError(f"the source in {origin}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from exc


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
            raise IngestError(f"{exc}{source_hint(config.source)}") from exc
        raise


@task(name="parse-archive")
def load_dataset_task(archive: Archive, config: PipelineConfig) -> Dataset:
    """Prefect wrapper of `load_dataset` (cached on disk by the archive's sha256, and the read settings for a
    team's own data)."""
    return load_dataset(
        archive,
        config.data_dir,
        config.on_bad_rows,
        config.max_extracted_bytes,
        read_settings(config),
        config.out_of_core.memory_mb,
    )


@task(name="settings-for-data")
def config_for_data_task(config: PipelineConfig, dataset: Dataset) -> PipelineConfig:
    """`PipelineConfig.for_data` for the dataset read: ease beside the default models when the catalogue is small
    enough, the models its feedback can train, refusals for what its lack of a time column rules out; said in the
    log when the models change."""
    n_items = pl.scan_parquet(dataset.ratings_path).select(pl.col("item_id").n_unique()).collect().item()
    adjusted = config.for_data(dataset.feedback, dataset.has_timestamps, n_items)
    if "ease" in adjusted.models and "ease" not in config.models:
        log.info("%d items: ease joins the models (its items x items matrix fits ease.max_matrix_bytes)", n_items)
    if adjusted.rating_models() != config.rating_models():
        log.info(
            "implicit feedback: training %s (%s predict ratings, and there are none)",
            ", ".join(adjusted.models),
            ", ".join(config.rating_models()),
        )
    return adjusted
