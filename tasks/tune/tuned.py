"""Which dataset a tune's settings belong to, and a nightly's config with them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.config import PipelineConfig, local_path, redact
from tasks.ingest.own_data import read_settings


def source_identity(source: str) -> str:
    """A source as tuned settings are keyed by it: a local file by its absolute path, a URL without credentials."""
    path = local_path(source)
    return str(path.resolve()) if path is not None else redact(source)


def dataset_key(config: PipelineConfig, layout: str) -> str:
    """The key of the data a config reads: its source, the layout found there and how it is read (columns,
    feedback, member, table or query). The same archive read another way, or another archive, gets another key,
    so one dataset's tuned settings never apply to another."""
    identity = {"source": source_identity(config.source), "layout": layout, "read": read_settings(config).key}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def with_tuned(config: PipelineConfig, tuned: dict[str, dict[str, Any]]) -> tuple[PipelineConfig, dict[str, Any]]:
    """`config` with the tuned settings of the models it trains, except the settings it gives explicitly (a flag,
    a deployment's config or a run's overrides win); returns the config and the settings taken, by model."""
    taken: dict[str, Any] = {}
    for model, settings in tuned.items():
        if model not in config.models:
            continue
        given = config.params_for(model).model_fields_set
        if kept := {name: value for name, value in settings.items() if name not in given}:
            taken[model] = kept
    return (config.with_overrides(taken) if taken else config), taken
