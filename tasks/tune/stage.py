"""The tune flow's stages as Prefect tasks (flows/tune.py wires them): thin wrappers over tasks/tune."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.ingest.parse import Dataset
from tasks.reindex import ratings_as_of, reindex
from tasks.split import split_ratings
from tasks.tune.data import TuningData, tuning_data
from tasks.tune.search import ModelSearch, journal, search
from tasks.tune.tuned import dataset_key, with_tuned
from warehouse.tuning import tuned_settings

log = logging.getLogger(__name__)


def training_split(dataset: Dataset, config: PipelineConfig) -> tuple[pl.DataFrame, int]:
    """The training split a nightly run on this data would fit on (same reindex, split method, share and seed)
    and the catalogue's size; the test split is dropped here, before anything reads it."""
    ratings = dataset.ratings() if config.as_of is None else ratings_as_of(dataset.ratings(), config.as_of)
    indexed, maps = reindex(ratings)
    train, _ = split_ratings(indexed, config.split, config.effective_test_fraction, config.seed)
    return train, maps.n_items


@task(name="tuning-data", cache_policy=NO_CACHE)
def tuning_data_task(dataset: Dataset, config: PipelineConfig) -> TuningData:
    """The search's fit and validation parts, carved from the training split (`tuning_data`)."""
    train, n_items = training_split(dataset, config)
    data = tuning_data(train, n_items, config)
    log.info(
        "searching on %d of %d users (%d interactions to fit, %d to validate), %d items",
        data.n_users,
        data.n_users_full,
        data.fit.height,
        data.validation.height,
        data.n_items,
    )
    return data


@task(name="search", cache_policy=NO_CACHE)
def search_task(
    data: TuningData,
    config: PipelineConfig,
    journal_path: Path,
    dataset_key: str,
    sha256: str,
    previous: dict[str, dict[str, Any]] | None,
) -> list[ModelSearch]:
    """Optuna's studies for the models (`search`), in the journal at `journal_path`."""
    return search(data, config, journal(journal_path), dataset_key, sha256, previous)


@task(name="tuned-settings", cache_policy=NO_CACHE)
def tuned_config_task(config: PipelineConfig, dataset: Dataset) -> tuple[PipelineConfig, str | None, dict]:
    """The config with the newest settings `recs tune` chose for this dataset (`with_tuned`: settings given
    explicitly win), unless `tuned` is off; returns it, the tune's id (None when none applied) and what it took."""
    if config.tuned == "off":
        return config, None, {}
    key = dataset_key(config, dataset.layout)
    tuned = tuned_settings(config.warehouse, key)
    if tuned is None:
        log.info("no tune of this dataset (key %s) in %s: the models' defaults apply", key, config.warehouse)
        return config, None, {}
    adjusted, taken = with_tuned(config, tuned.by_model)
    if not taken:
        log.info("tune %s's settings are all given explicitly here: not applied", tuned.tuning_run_id)
        return config, None, {}
    log.info("settings from tune %s (--tuned off ignores them): %s", tuned.tuning_run_id, json.dumps(taken))
    return adjusted, tuned.tuning_run_id, taken
