"""`recs tune` end to end, with real Prefect runs and a real warehouse: the nightly on the same data takes the
tuned settings (a flag still wins), the nightly on other data and with --tuned off does not, and a tune killed by
SIGKILL is resumed by the next one without repeating its finished trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import optuna
import pytest
from optuna.trial import TrialState

from flows.cli import main

pytestmark = pytest.mark.slow

CHEAP = ["--models", "ials", "--ials-epochs", "4"]  # epochs given: fixed in the search, and a quick night


def _rows(warehouse, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_nightly_takes_the_tuned_settings_of_its_own_dataset(ml100k_zip, tmp_path, capsys, prefect_harness):
    warehouse = tmp_path / "W.duckdb"
    where = ["--warehouse", str(warehouse), "--data-dir", str(tmp_path / "D")]
    tune = ["tune", "--source", str(ml100k_zip), *where, *CHEAP, "--tune-max-trials", "4", "--tune-confidence", "0"]
    assert main(tune) == 0
    out = capsys.readouterr().out
    assert "ials: 4 trials" in out and "the nightly runs on this data take these settings" in out
    ((tune_id, status, n_trials),) = _rows(warehouse, "SELECT tuning_run_id, status, n_trials FROM tuning_runs")
    assert (status, n_trials) == ("succeeded", 4)
    assert (tmp_path / "D" / "tuning" / tune_id / "best-validation.png").stat().st_size > 0  # the artifact's plot
    ((chosen,),) = _rows(warehouse, "SELECT CAST(settings AS VARCHAR) FROM tuned_settings WHERE model = 'ials'")
    chosen = json.loads(chosen)
    assert set(chosen) == {"factors", "regularization", "unobserved_weight_ratio"}  # epochs were given

    night = ["run", *where, *CHEAP, "--no-refit-on-all", "--min-list-share", "0"]
    assert main([*night, "--source", str(ml100k_zip), "--ials-factors", "16"]) == 0  # a flag wins over the tune
    assert f"settings tuned for this data by tune {tune_id}" in capsys.readouterr().out
    other = tmp_path / "elsewhere" / "ml-100k.zip"  # the same bytes from another source: another dataset
    other.parent.mkdir()
    shutil.copy(ml100k_zip, other)
    assert main([*night, "--source", str(other)]) == 0
    assert main([*night, "--source", str(ml100k_zip), "--tuned", "off"]) == 0
    runs = _rows(
        warehouse,
        "SELECT tuning_run_id, CAST(tuned_settings AS VARCHAR), CAST(config AS VARCHAR) FROM runs ORDER BY started_at",
    )
    (taken_id, taken, config), (other_id, _, _), (off_id, _, off_config) = runs
    assert taken_id == tune_id and other_id is None and off_id is None
    ials = json.loads(config)["ials"]
    assert ials["factors"] == 16 and "factors" not in json.loads(taken)["ials"]
    assert ials["regularization"] == chosen["regularization"]
    assert json.loads(off_config)["ials"]["regularization"] == 0.02  # the default


def _finished_trials(journal) -> int:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    studies = optuna.get_all_study_summaries(storage)
    if not studies:
        return 0
    study = optuna.load_study(study_name=studies[0].study_name, storage=storage)
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_a_killed_tune_is_resumed_without_repeating_its_trials(ml100k_zip, tmp_path, capsys, prefect_harness):
    warehouse = tmp_path / "W.duckdb"
    where = ["--warehouse", str(warehouse), "--data-dir", str(tmp_path / "D")]
    args = ["tune", "--source", str(ml100k_zip), *where, *CHEAP]
    journal = tmp_path / "W.duckdb.tuning.journal"
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, "--tune-max-trials", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    try:
        deadline = time.monotonic() + 120
        while (journal.exists() and _finished_trials(journal) >= 3) is False:
            assert process.poll() is None and time.monotonic() < deadline, "the tune ended before it was killed"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = _finished_trials(journal)
    assert main([*args, "--tune-max-trials", str(done + 2)]) == 0
    assert f"ials: {done + 2} trials" in capsys.readouterr().out
    killed, resumed = _rows(
        warehouse, "SELECT status, reason, n_resumed, n_trials FROM tuning_runs ORDER BY started_at"
    )
    assert killed[0] == "failed" and killed[1].startswith("abandoned")
    assert resumed[:1] == ("succeeded",) and resumed[2:] == (done, done + 2)
    trials = _rows(warehouse, "SELECT trial, resumed FROM tuning_trials WHERE state != 'fail' ORDER BY trial")
    assert len({t for t, _ in trials}) == len(trials) == done + 2  # no trial number twice
    assert sum(r for _, r in trials) == done  # the finished trials were kept, not run again
