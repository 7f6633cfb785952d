"""Faults through the whole nightly flow: what a run records, what it publishes, and what it never leaks.

Each test starts from a warehouse with a good run published and checks that a faulty run leaves those
lists in place and says what went wrong in `runs`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile

import duckdb
import polars as pl
import pytest

from flows.nightly import nightly
from tasks.config import PipelineConfig
from tests.helpers import REPO, query_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FAST = {"model": "popularity", "refit_on_all": False}  # the faults under test happen around training, not in it


@pytest.fixture
def published(ml100k_zip, tmp_path):
    """A warehouse with one good run published; returns its config and run id."""
    config = PipelineConfig(source=str(ml100k_zip), warehouse=tmp_path / "W.duckdb", data_dir=tmp_path / "D", **FAST)
    return config, nightly(config).run_id


def _last_run(config: PipelineConfig) -> tuple:
    return query_rows(
        config.warehouse,
        "SELECT status, error, n_bad_rows, n_duplicate_ratings FROM runs ORDER BY started_at DESC LIMIT 1",
    )[0]


def _lists_untouched(config: PipelineConfig, good_run: str) -> None:
    assert query_rows(config.warehouse, "SELECT run_id, count(*) FROM recommendations GROUP BY run_id") == [
        (good_run, 9430)
    ]


def test_download_faults_are_retried_with_backoff_then_the_run_fails_naming_the_source(published, faulty_server):
    config, good_run = published
    server = faulty_server(b"", "503")
    started = time.perf_counter()
    with pytest.raises(Exception, match="HTTP 503"):
        nightly(config.with_overrides({"source": server.url, "download": {"retries": 2, "retry_delay_seconds": 0.2}}))
    assert len(server.requests) == 3  # the first try and two retries
    assert time.perf_counter() - started >= 0.3  # waited 0.2 s then 0.4 s, each jittered to 0.63-1.5x
    status, error, *_ = _last_run(config)
    assert status == "failed" and server.url in error and "HTTP 503" in error
    _lists_untouched(config, good_run)


def test_a_retry_after_a_cut_short_download_uses_only_the_complete_archive(published, faulty_server, ml100k_zip):
    config, _ = published
    server = faulty_server(ml100k_zip.read_bytes(), "short", failures=1)
    result = nightly(config.with_overrides({"source": server.url, "download": {"retry_delay_seconds": 0}}))
    assert result.status == "succeeded" and len(server.requests) == 2
    archives = sorted(p.name for p in (config.data_dir / "archives").iterdir())
    assert archives == ["f6399316c2793efe71b296b24c481a4a3e888982b85f93ffb392adc221391eb8.zip", "sources.json"]


def test_sha256_mismatch_fails_the_run_before_parsing(published):
    config, good_run = published
    parsed_before = set((config.data_dir / "datasets").iterdir())
    with pytest.raises(Exception, match="expected 0{64}; refused"):
        nightly(config.model_copy(update={"source_sha256": "0" * 64}))
    assert set((config.data_dir / "datasets").iterdir()) == parsed_before
    assert _last_run(config)[0] == "failed"
    _lists_untouched(config, good_run)


def _csv_archive_with_bad_and_repeated_rows(ml100k_dataset, path):
    """ML-100k as a ratings.csv with three malformed rows and two re-ratings appended."""
    ratings = ml100k_dataset.ratings().with_columns(pl.col("rating").cast(pl.Int64))
    body = io.BytesIO()
    ratings.write_csv(body, include_header=False)
    extra = "1,1,NaN,900000000\n2,2,4\n3,three,4,900000000\n1,1,2,999999999\n2,13,1,999999999\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "ml-latest/ratings.csv", b"userId,movieId,rating,timestamp\n" + body.getvalue() + extra.encode()
        )
    return path


def test_bad_rows_fail_the_run_by_default_and_drop_records_the_counts(published, ml100k_dataset, tmp_path):
    config, good_run = published
    archive = _csv_archive_with_bad_and_repeated_rows(ml100k_dataset, tmp_path / "bad.zip")
    with pytest.raises(
        Exception, match=r"3 bad ratings row\(s\), first: ml-latest/ratings.csv line 100002: field 'rating' is 'NaN'"
    ):
        nightly(config.model_copy(update={"source": str(archive)}))
    status, error, *_ = _last_run(config)
    assert status == "failed" and "ratings.csv line 100003: has 3 fields, expected 4" in error
    assert "ratings.csv line 100004: field 'item_id' is 'three', expected a whole number" in error
    _lists_untouched(config, good_run)

    result = nightly(config.model_copy(update={"source": str(archive), "on_bad_rows": "drop"}))
    assert result.status == "succeeded"
    assert _last_run(config) == ("succeeded", None, 3, 2)
    assert query_rows(config.warehouse, "SELECT n_ratings FROM runs WHERE run_id = ?", [result.run_id]) == [
        (100_000,)
    ]  # 2 pairs re-rated


def test_a_diverging_model_fails_the_run_and_publishes_nothing(published):
    config, good_run = published
    with pytest.raises(Exception, match="training loss became nan in epoch 1"):
        nightly(
            config.with_overrides({"model": "dot_bias", "models": ["dot_bias"], "dot_bias": {"learning_rate": 1000.0}})
        )
    status, error, *_ = _last_run(config)
    assert status == "failed" and error.startswith("ModelFitError: training loss became nan")
    _lists_untouched(config, good_run)


def test_credentials_in_the_source_url_never_reach_logs_or_the_warehouse(ml100k_zip, faulty_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    good = faulty_server(ml100k_zip.read_bytes(), "none")
    failing = faulty_server(b"", "503")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "DEBUG"}
    outputs = []
    # guards against: a pre-signed URL's query string (S3's signature and token) kept whole anywhere
    signed = "?X-Amz-Credential=AKIAs3cret&X-Amz-Signature=s3cret0sig&X-Amz-Security-Token=s3cret1tok"
    for server, expected_rc in ((good, 0), (failing, 1)):
        source = server.url.replace("http://", "http://alice:s3cret@") + signed
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "run",
                "--source",
                source,
                "--warehouse",
                str(tmp_path / "W.duckdb"),
                "--data-dir",
                str(tmp_path / "D"),
                "--model",
                "popularity",
                "--no-refit-on-all",
                "--download-retries",
                "1",
                "--download-retry-delay-seconds",
                "0",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == expected_rc, run.stderr[-3000:]
        outputs.append(run.stdout + run.stderr)
    assert "http://***@127.0.0.1" in outputs[1]  # the failure names the source, without its credentials
    assert "X-Amz-Signature=***" in outputs[1]
    assert all("s3cret" not in output for output in outputs)
    with duckdb.connect(str(tmp_path / "W.duckdb"), read_only=True) as con:
        runs = con.execute("SELECT status, source, error, config::VARCHAR FROM runs ORDER BY started_at").fetchall()
        every_table = [
            con.execute(f"SELECT * FROM {table}").fetchall() for (table,) in con.execute("SHOW TABLES").fetchall()
        ]
    assert [r[0] for r in runs] == ["succeeded", "failed"] and runs[0][1].startswith("http://***@127.0.0.1")
    assert runs[0][1].endswith("/ml-100k.zip?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***")
    assert "s3cret" not in repr(runs) and "s3cret" not in repr(every_table)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaked = [p for p in written if b"s3cret" in p.read_bytes()]
    assert leaked == []  # run folders (config.json), checkpoints, parsed data, sources.json, the logs, the warehouse
    assert [p for p in written if p.stat().st_mode & 0o007] == []  # and none of it is readable by other users
    with get_client(sync_client=True) as client:  # what Prefect keeps of the runs: their parameters
        parameters = [run.parameters for run in client.read_flow_runs() if run.parameters.get("config")]
    assert parameters and "s3cret" not in repr(parameters)
