"""A model registered from a test module, no other file touched, is trained, evaluated, gated and published by
`recs run` like the built-in ones, with its own settings as options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tasks.models import MODELS, ModelSpec, register
from tasks.models.closed_form import Popularity, PopularityParams, fit_popularity
from tasks.models.embedding import DotParams, EmbeddingDot, fit_dot

REPO = Path(__file__).resolve().parents[1]


def _recs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`recs` in a process that imports tests/toy_model.py first (as a plugin would be imported)."""
    code = "import sys, tests.toy_model; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_a_registered_model_gets_its_options(tmp_path):
    shown = _recs("run", "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "--toy-power" in shown.stdout and "toy" in shown.stdout.split("--models")[1][:400]


@pytest.mark.slow  # a whole run
def test_a_registered_model_is_trained_evaluated_and_published(ml100k_zip, tmp_path):
    run = _recs(
        "run",
        "--source",
        str(ml100k_zip),
        "--models",
        "toy,popularity",
        "--model",
        "toy",
        "--toy-power",
        "0.5",
        "--data-dir",
        str(tmp_path / "data"),
        "--warehouse",
        str(tmp_path / "w.duckdb"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        model, config = con.execute("SELECT model, config FROM runs WHERE status = 'succeeded'").fetchone()
        compared = con.execute("SELECT DISTINCT model FROM run_metrics ORDER BY model").fetchall()
        n_lists = con.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchone()[0]
    assert model == "toy" and '"toy":{"power":0.5}' in config.replace(" ", "")
    assert compared == [("popularity",), ("toy",)] and n_lists == 943
    # the same ranking as popularity (a power keeps the order): its lists are popularity's
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        ndcg = dict(con.execute("SELECT model, value FROM run_metrics WHERE metric = 'ndcg'").fetchall())
    assert ndcg["toy"] == pytest.approx(ndcg["popularity"])


def test_registering_refuses_a_taken_name_and_a_late_registration():
    with pytest.raises(ValueError, match="expected a new lower-case identifier"):
        register("popularity", ModelSpec(Popularity, PopularityParams, fit_popularity, "again"))
    import tasks.config  # noqa: F401  (composed from the registry: a model registered now could not be configured)

    with pytest.raises(RuntimeError, match="before tasks.config is imported"):
        register("late", ModelSpec(Popularity, PopularityParams, fit_popularity, "too late"))
    assert "late" not in MODELS


def test_a_spec_that_claims_a_warm_start_its_fit_cannot_take_is_refused():
    with pytest.raises(TypeError, match="missing: warm_epochs, refit_epochs, init"):
        ModelSpec(EmbeddingDot, DotParams, fit_dot, "dot cannot start warm", warm_start=True)
