"""A run whose config names no source reads RECS_SOURCE, else the Prefect Variable recs_source, when it starts: a
deployment's source changes without editing deploy/prefect.yaml. Against the session's Prefect test server."""

from __future__ import annotations

import pytest
from prefect.variables import Variable

from tasks.config import PipelineConfig
from tasks.ingest import with_default_source
from tasks.sources import ML_100K_URL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]  # the harness starts a server


@pytest.fixture
def source_variable():
    yield "recs_source"
    Variable.unset("recs_source")


def test_the_variable_then_the_environment_name_the_source_a_config_leaves_out(source_variable, monkeypatch):
    monkeypatch.delenv("RECS_SOURCE", raising=False)
    deployment = PipelineConfig.model_validate({"data_dir": "data", "top_n": 5})  # as deploy/prefect.yaml has it
    assert with_default_source(deployment).source == ML_100K_URL  # neither set

    Variable.set(source_variable, "/srv/recs/ml-100k.zip", overwrite=True)
    from_variable = with_default_source(deployment)
    assert (from_variable.source, from_variable.top_n) == ("/srv/recs/ml-100k.zip", 5)

    monkeypatch.setenv("RECS_SOURCE", "file:///mnt/ratings.zip")  # the worker's environment wins
    assert with_default_source(deployment).source == "file:///mnt/ratings.zip"

    named = PipelineConfig(source="https://example.org/ml.zip")  # a config or run that names one keeps it
    assert with_default_source(named).source == "https://example.org/ml.zip"
    overridden = deployment.with_overrides({"top_n": 7})
    assert with_default_source(overridden).source == "file:///mnt/ratings.zip"


def test_a_bad_source_in_the_variable_is_refused_by_name(source_variable, monkeypatch):
    monkeypatch.delenv("RECS_SOURCE", raising=False)
    Variable.set(source_variable, "s3://bucket/ml.zip", overwrite=True)
    with pytest.raises(
        ValueError, match="the source in the Prefect Variable recs_source: source 's3://bucket/ml.zip': scheme 's3'"
    ):
        with_default_source(PipelineConfig())
