"""Ingest: fetch a MovieLens archive, cache it by content, unzip it safely and parse it to parquet.

The work is in `fetch.py`, `unzip.py`, `parse.py` (with the formats in `movielens.py`); `stage.py` holds the
stage's Prefect tasks. This module is what the rest of the pipeline imports; it loads `stage.py` (and with it
Prefect) only when one of its names is used, so that `recs run` checks a local archive with `unzip.py` before
Prefect loads.

Layout under `data_dir`:

- `archives/<sha256>.zip`: downloaded archives, kept only once complete and verified;
- `archives/sources.json`: per source URL, the sha256, ETag and Last-Modified of its last download, so an
  unchanged source is answered by a conditional request (304) instead of a second download;
- `datasets/<sha256>/{ratings,items}.parquet` and `meta.json`: the parsed archive, so it is parsed once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import Archive, fetch_archive, sha256_of
from tasks.ingest.parse import PARSER_VERSION, Dataset, load_dataset

if TYPE_CHECKING:
    from tasks.ingest.stage import (
        config_for_data_task,
        fetch_archive_task,
        fetch_with_retries,
        load_dataset_task,
        source_hint,
        with_default_source,
    )

__all__ = [
    "PARSER_VERSION",
    "Archive",
    "Dataset",
    "IngestError",
    "config_for_data_task",
    "fetch_archive",
    "fetch_archive_task",
    "fetch_with_retries",
    "load_dataset",
    "load_dataset_task",
    "sha256_of",
    "source_hint",
    "with_default_source",
]


def __getattr__(name: str) -> Any:
    """The stage's names (the others are imported above): `stage.py`, and Prefect with it, loads on first use."""
    if name in __all__:
        return getattr(importlib.import_module("tasks.ingest.stage"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
