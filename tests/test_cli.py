"""The `recs` command line speaks in flags: unknown flags get the closest one, bad list elements and cross-field
rules name their flags, a missing local source is refused before Prefect starts, a failed run prints one
line and where its log is, and the reader commands fit a 120-column terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from datetime import UTC

import polars as pl
import pytest

from flows.cli import RUNS_DROP_ORDER, main
from flows.console import text_table
from tasks.config import PipelineConfig
from tests.helpers import REPO


def _err(capsys, argv: list[str], status: int = 2) -> str:
    assert main(argv) == status
    return capsys.readouterr().err


def test_an_unknown_flag_suggests_the_closest_one(capsys):
    err = _err(capsys, ["run", "--modles", "ease"])
    assert err.startswith("recs run: unknown option --modles (did you mean --models?)")
    assert "usage:" not in err  # one line, not the 60-option usage
    assert "did you mean --top-n?" in _err(capsys, ["run", "--top_n", "5"])
    assert "unknown option --warehose (did you mean --warehouse?)" in _err(capsys, ["runs", "--warehose", "x.duckdb"])
    assert "invalid choice: 'rnu'" in (err := _err(capsys, ["rnu"])) and "(did you mean run?)" in err
    assert "(did you mean stratified?)" in _err(capsys, ["run", "--split", "stratifed"])


def test_a_model_setting_has_its_models_flag_and_the_old_flags_say_what_replaced_them(capsys):
    assert "recs run: --dot-bias-factors: '0': Input should be greater than or equal to 1" in _err(
        capsys, ["run", "--dot-bias-factors", "0"]
    )
    assert "did you mean --ease-chunk-users?" in _err(capsys, ["run", "--ease-chunk-usres", "64"])
    err = _err(capsys, ["run", "--factors", "abc"])  # deprecated, and a bad value: both said
    assert err.splitlines() == [
        "recs run: warning: factors (--factors) is deprecated and will be removed in the next release; use "
        "dot_bias.factors (--dot-bias-factors)",
        "recs run: --dot-bias-factors: 'abc': Input should be a valid integer, unable to parse string as an integer",
    ]


def test_grouped_settings_keep_their_options_and_the_renamed_ones_say_what_replaced_them(capsys):
    # the gate's and the download's options kept their names; the cluster's moved under --cluster-*
    err = _err(capsys, ["run", "--gate-tolerance", "-1", "--download-retries", "11"])
    assert "recs run: --gate-tolerance: '-1': Input should be greater than or equal to 0" in err
    assert "recs run: --download-retries: '11': Input should be less than or equal to 10" in err
    err = _err(capsys, ["run", "--cluster", "ftp://x", "--shard-users", "30"])
    assert err.splitlines()[:2] == [
        "recs run: warning: --cluster is deprecated and will be removed in the next release; use --cluster-address",
        "recs run: warning: shard_users (--shard-users) is deprecated and will be removed in the next release; use "
        "cluster.shard_users (--cluster-shard-users)",
    ]
    assert "recs run: --cluster-address: 'ftp://x': 'ftp://x' is not a cluster: expected local:N" in err
    with pytest.warns(FutureWarning) as caught:
        config = PipelineConfig.model_validate({"cluster": "local:2", "gate_max_churn": 0.4})
    assert (config.cluster.address, config.gate.max_churn) == ("local:2", 0.4)
    said = [str(warning.message) for warning in caught]
    assert any("the setting cluster as an address is deprecated" in line and "cluster.address" in line for line in said)
    assert any("the setting gate_max_churn is deprecated" in line for line in said)


def test_a_source_that_cannot_work_is_refused_before_anything_starts(tmp_path, capsys):
    no_columns = tmp_path / "events.csv"
    no_columns.write_text("when,what\n2024-01-01,click\n")
    where = ["--warehouse", str(tmp_path / "w.duckdb"), "--data-dir", str(tmp_path / "D")]
    assert main(["run", "--source", str(no_columns), *where]) == 2
    assert capsys.readouterr().err == (
        f"recs run: --source: '{no_columns}': header when,what: no user column (a name such as "
        "user/userid/users/visitorid); name it with user_column (--user-column)\n"
    )
    wrong_header = tmp_path / "wrong-header.zip"
    with zipfile.ZipFile(wrong_header, "w") as archive:
        archive.writestr("ml/ratings.csv", "user,item,stars\n1,2,3\n")
    assert main(["run", "--source", str(wrong_header), *where]) == 2
    assert capsys.readouterr().err == (
        f"recs run: --source: '{wrong_header}': ml/ratings.csv line 1: header is user,item,stars, "
        "expected userId,movieId,rating,timestamp\n"
    )
    assert not (tmp_path / "w.duckdb").exists() and not (tmp_path / "D").exists()  # no run began, nothing written
    # a host with no DNS answer: one line with the offline form, before anything starts
    assert main(["run", "--source", "http://no-such-host.invalid/ml-100k.zip", *where]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "recs run: --source: the host 'no-such-host.invalid' of 'http://no-such-host.invalid/ml-100k.zip' cannot be "
        "resolved (no DNS answer). If this machine has no internet access, set source (--source) to a local copy of "
        "the archive, e.g. `recs run --source path/to/ml-100k.zip` (a path or a file:// URL)"
    ]


def test_the_source_from_the_environment_is_checked_and_named_like_the_flag(tmp_path, capsys, monkeypatch):
    where = ["--warehouse", str(tmp_path / "w.duckdb"), "--data-dir", str(tmp_path / "D")]
    monkeypatch.setenv("RECS_SOURCE", str(tmp_path / "gone.zip"))
    assert main(["run", *where]) == 2
    assert capsys.readouterr().err == f"recs run: RECS_SOURCE: no such file '{tmp_path / 'gone.zip'}'\n"
    monkeypatch.setenv("RECS_SOURCE", "ftp://host/ml.zip")
    assert main(["run", *where]) == 2
    assert "recs run: RECS_SOURCE: 'ftp://host/ml.zip': source 'ftp://host/ml.zip': scheme 'ftp'" in (
        capsys.readouterr().err
    )
    assert main(["run", "--source", str(tmp_path / "flag.zip"), *where]) == 2  # the flag wins
    assert capsys.readouterr().err == f"recs run: --source: no such file '{tmp_path / 'flag.zip'}'\n"


def test_readers_refuse_a_warehouse_that_does_not_exist(tmp_path, capsys):
    typo = tmp_path / "typo" / "recs.duckdb"
    for command in (["runs"], ["recommend", "1"], ["trend"], ["sql", "SELECT 1"]):
        assert main([*command, "--warehouse", str(typo)]) == 1
        assert capsys.readouterr().err.startswith(f"recs {command[0]}: warehouse {typo} does not exist")
    assert not typo.parent.exists()


def test_a_bad_list_element_is_named_with_its_flag(capsys):
    err = _err(capsys, ["run", "--models", "ease,bpr2"])
    assert err.strip() == (
        "recs run: --models: 'bpr2' is not one of dot_bias, dot, mlp, user_knn, item_knn, bpr, ials, ease, "
        "bias, popularity (did you mean bpr?)"
    )
    assert "recs run: --mlp-hidden: 'abc' in the list: Input should be a valid integer" in _err(
        capsys, ["run", "--mlp-hidden", "128,abc"]
    )
    assert "recs run: --top-n: 'x': Input should be a valid integer" in _err(capsys, ["run", "--top-n", "x"])


def test_rules_across_settings_name_their_flags(capsys):
    err = _err(capsys, ["run", "--model", "ease", "--models", "dot_bias,bpr"])
    assert "model (--model) is 'ease'" in err and "models (--models) dot_bias,bpr" in err
    assert "models (--models) names a model twice" in _err(capsys, ["run", "--models", "ease,ease"])


def test_a_missing_local_source_is_refused_before_prefect_starts(tmp_path):
    for source, said in (
        (str(tmp_path / "ml-100k.zp"), "no such file"),
        (str(tmp_path), "holds no file of interactions"),
    ):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--source", source],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("recs run: --source: ") and said in done.stderr
        assert "prefect" not in (done.stdout + done.stderr).lower()  # no temporary API was started
        assert time.monotonic() - started < 20


def test_checking_a_local_archive_loads_neither_prefect_nor_the_stage(tmp_path):
    archive = tmp_path / "wrong-header.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml/ratings.csv", "user,item,stars\n1,2,3\n")
    check = (
        "import sys; from tasks.ingest.unzip import local_archive_problem; "
        f"print(local_archive_problem(__import__('pathlib').Path({str(archive)!r}))); "
        "print(sorted(m for m in ('prefect', 'tasks.ingest.stage') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "[]" and "header is user,item,stars" in done.stdout, done.stderr


def test_overrides_change_some_fields_and_keep_the_rest():
    deployment = PipelineConfig.model_validate({"models": ["ease", "bpr"], "mlp": {"epochs": 3}, "top_n": 7})
    run = deployment.with_overrides({"top_n": 20, "mlp": {"dropout": 0.3}})
    assert (run.models, run.top_n, run.mlp.epochs, run.mlp.dropout) == (["ease", "bpr"], 20, 3, 0.3)
    assert deployment.with_overrides(None) is deployment
    assert deployment.with_overrides({"as_of": "1998-01-01"}).split == "temporal"  # as for any as_of run
    with pytest.raises(ValueError, match="top_nn"):
        deployment.with_overrides({"top_nn": 20})
    with pytest.raises(ValueError, match="not among the models trained"):
        deployment.with_overrides({"model": "dot"})  # the deployment's models stay: dot is not trained


def test_text_tables_fit_the_width_by_cutting_the_widest_column():
    frame = pl.DataFrame({"run_id": ["20261123T152730Z-f0e9fd"], "rmse": [0.9079712], "reason": ["x" * 200]})
    fitted = text_table(frame, 60).splitlines()
    assert max(map(len, fitted)) <= 60 and fitted[2].endswith("…") and "0.908" in fitted[2]
    assert max(map(len, text_table(frame, None).splitlines())) > 200  # --wide: every cell whole


def test_recs_runs_fits_any_terminal_leaving_out_columns_in_the_stated_order():
    runs = pl.DataFrame(
        {
            "run_id": ["20261123T152730Z-f0e9fd"] * 2,
            "status": ["succeeded", "rejected"],
            "started_at": ["2026-11-23 15:27"] * 2,
            "as_of": ["1998-01-01"] * 2,
            "seconds": [47.5, 9.1],
            "model": ["dot_bias", "popularity"],
            "rmse": [0.9079712, None],
            "ndcg": [0.4883, 0.2492],
            "reason": ["published: nDCG@10 0.4883 vs 0.4880 published, within the noise " * 2, "held back"],
        }
    )
    for width, left_out in ((200, []), (120, ["as_of"]), (80, ["as_of", "seconds", "rmse", "run_id"])):
        lines = text_table(runs, width, RUNS_DROP_ORDER).splitlines()
        assert max(map(len, lines)) <= width, (width, lines)
        assert {name for name in runs.columns if name not in lines[0].split()} == set(left_out)
        assert lines[2].split()[:2] == (
            ["20261123T152730Z-f0e9fd", "succeeded"] if "run_id" not in left_out else ["succeeded", "2026-11-23"]
        )
        assert "published: nDCG@10 0.48" in lines[2]  # the reason stays readable
    narrowest = text_table(runs, 30, RUNS_DROP_ORDER).splitlines()
    assert max(map(len, narrowest)) <= 30 and narrowest[2].startswith("succeed")


@pytest.mark.slow
def test_a_run_says_a_line_per_stage_and_verbose_says_everything(tmp_path, ml100k_zip):
    def run(*extra: str) -> subprocess.CompletedProcess:
        where = ["--data-dir", str(tmp_path / "data"), "--warehouse", str(tmp_path / "W.duckdb")]
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--source", str(ml100k_zip), *where, "--top-n", "5", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    brief = run()
    assert brief.returncode == 0, brief.stderr
    said, *logged = brief.stderr.splitlines()
    assert said == f"recs run: {tmp_path / 'W.duckdb'} does not exist: this run creates a new warehouse there"
    stages = [line.split(" - ", 1)[1] for line in logged]
    assert stages == [
        "stage ingest",
        "stage reindex",
        "stage rules",
        "stage split",
        "stage train: dot_bias (1 of 3), then its evaluation",
        "stage train: ials (2 of 3), then its evaluation",
        "stage train: ease (3 of 3), then its evaluation",  # 1,682 items: ease joins the default models
        "stage gate",
        "stage refit",
        "stage recommend",
        "stage publish",
    ]
    log = next((tmp_path / "data" / "logs").glob("recs-run-*.log")).read_text()
    assert "epoch 20/20" in log and "Finished in state Completed()" in log  # everything, in the file
    verbose = run("-v")
    assert verbose.returncode == 0 and "epoch 20/20" in verbose.stderr and len(verbose.stderr.splitlines()) > 60
    assert "creates a new warehouse" not in verbose.stderr  # it exists now


@pytest.mark.slow
def test_a_failed_run_prints_one_line_and_where_the_log_is(tmp_path, faulty_server):
    unreachable = faulty_server(b"", "refused").url
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--source",
            unreachable,
            "--download-retries",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--warehouse",
            str(tmp_path / "W.duckdb"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    console = done.stdout + done.stderr
    assert "Traceback" not in console
    reason = [line for line in done.stderr.splitlines() if line.startswith("recs run: the run failed: ")]
    assert len(reason) == 1 and "ConnectError" in reason[0]
    assert "set source (--source) to a local copy of the archive" in reason[0]
    (log_line,) = [line for line in done.stderr.splitlines() if "the full log, tracebacks included, is" in line]
    log_file = REPO / log_line.rsplit(" is ", 1)[1]
    assert log_file.parent == tmp_path / "data" / "logs"
    assert "Traceback" in log_file.read_text() and "ConnectError" in log_file.read_text()


@pytest.mark.slow
def test_reader_commands_fit_120_columns_and_sql_is_read_only(ml100k_zip, tmp_path, capsys, prefect_harness):
    warehouse_path = tmp_path / "W.duckdb"
    common = ["--source", str(ml100k_zip), "--warehouse", str(warehouse_path), "--data-dir", str(tmp_path / "D")]
    assert main(["run", *common, "--model", "popularity", "--no-refit-on-all"]) == 0
    assert main(["run", *common, "--model", "bias", "--top-n", "0"]) == 2  # a bad option: nothing runs
    capsys.readouterr()

    assert main(["runs", "--warehouse", str(warehouse_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and max(map(len, table)) <= 120 and table[2].split()[1] == "succeeded"
    assert main(["runs", "--json", "--warehouse", str(warehouse_path)]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["status"] == "succeeded" and run["model"] == "popularity" and "nothing is published" in run["reason"]

    query = "SELECT count(*) AS n, count(DISTINCT user_id) AS users FROM recommendations"
    assert main(["sql", query, "--warehouse", str(warehouse_path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["9430", "943"]
    assert main(["sql", query, "--csv", "--warehouse", str(warehouse_path)]) == 0
    assert capsys.readouterr().out == "n,users\n9430,943\n"
    assert (
        main(
            [
                "sql",
                "SELECT title, genres FROM items WHERE item_id = $id",
                "--param",
                "id=50",
                "--json",
                "--warehouse",
                str(warehouse_path),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [
        {"title": "Star Wars (1977)", "genres": ["Action", "Adventure", "Romance", "Sci-Fi", "War"]}
    ]
    assert (
        main(["sql", "--file", str(REPO / "warehouse/queries/latest_runs.sql"), "--warehouse", str(warehouse_path)])
        == 0
    )
    capsys.readouterr()

    assert main(["sql", "DELETE FROM recommendations", "--warehouse", str(warehouse_path)]) == 1
    assert capsys.readouterr().err == (
        "recs sql: the warehouse is opened read-only: `recs sql` reads; writes belong to `recs run`\n"
    )
    # a user with no list of their own: what recommendations_for serves them, marked as such
    assert main(["recommend", "99999", "--warehouse", str(warehouse_path)]) == 0
    out = capsys.readouterr().out
    assert "user 99999 has no list of their own" in out and "recommendations_for(99999)" in out
    assert out.splitlines()[3].split()[:3] == ["1", "50", "Star"]  # Star Wars (1977), the most rated
    # the reading commands need neither torch nor Prefect: they answer in well under a second
    # (`python benchmarks/readers.py` prints how long)
    for command in (["runs"], ["recommend", "42"], ["sql", "SELECT 1"]):
        code = (
            "import sys; from flows.cli import RUNS_DROP_ORDER, main; code = main(sys.argv[1:]); "
            "print('heavy:', [m for m in ('torch', 'prefect') if m in sys.modules], code)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, *command, "--warehouse", str(warehouse_path)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert done.stdout.splitlines()[-1] == "heavy: [] 0", (command, done.stdout[-300:], done.stderr[-300:])
    # a reader whose pipe closes early (`| head`) stops quietly
    piped = subprocess.run(
        f"{sys.executable} -m flows.cli sql 'SELECT * FROM range(200000)' --warehouse {warehouse_path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert (piped.stdout, piped.stderr) == ("range\n", "")
    assert main(["sql", "SELECT count(*) FROM recommendations", "--csv", "--warehouse", str(warehouse_path)]) == 0
    assert capsys.readouterr().out.endswith("\n9430\n")


def test_recs_runs_tells_a_dead_run_from_a_live_one(tmp_path, capsys):
    from datetime import datetime

    from flows.lock import run_lock
    from warehouse.runs import start_run

    path = tmp_path / "w.duckdb"
    start_run(path, "killed", None, "{}", datetime(2026, 1, 1, tzinfo=UTC))  # its process is gone
    assert main(["runs", "--json", "--warehouse", str(path)]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert (
        run["status"] == "failed" and "abandoned: its process ended" in run["reason"] and "recs runs" in run["reason"]
    )

    with run_lock(path, owner="live"):  # a live run holds the lock: its `running` row is the truth
        start_run(path, "live", None, "{}", datetime(2026, 1, 2, tzinfo=UTC))
        assert main(["runs", "--json", "--warehouse", str(path)]) == 0
        statuses = {r["run_id"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert statuses == {"live": "running", "killed": "failed"}

    # the live run is killed in turn; any reading command finds it dead, here `recs sql`
    query = "SELECT status, error FROM runs WHERE run_id = 'live'"
    assert main(["sql", query, "--json", "--warehouse", str(path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "failed" and "found by recs sql" in row["error"]
