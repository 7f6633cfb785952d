"""The nightly flow's operations under a real (test) Prefect API: the quality gate, the run lock, replays,
artifacts, and the refresh flow's event."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from prefect.artifacts import Artifact

from flows.cli import main
from flows.lock import RunLockedError, run_lock
from flows.nightly import nightly
from flows.refresh import refresh
from tasks.config import PipelineConfig
from tests.helpers import REPO, query_rows, write_zip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_gate_rejects_a_bad_run_and_keeps_the_good_runs_lists(ml100k_zip, tmp_path, capsys):
    warehouse_path = tmp_path / "W.duckdb"
    common = [
        "--source",
        str(ml100k_zip),
        "--warehouse",
        str(warehouse_path),
        "--data-dir",
        str(tmp_path / "D"),
        "--model",
        "dot_bias",
    ]

    assert main(["run", *common]) == 0
    # the same configuration again: nothing to compare on the same split, the recorded metrics within the drift tolerance
    assert main(["run", *common]) == 0
    (again,) = query_rows(warehouse_path, "SELECT gate_reason FROM runs ORDER BY started_at DESC LIMIT 1")[0]
    assert again.startswith(
        "this run trains the published configuration (dot_bias) with the same settings; within 50.0% of run "
    )
    (good,) = query_rows(warehouse_path, "SELECT DISTINCT run_id FROM recommendations")[0]
    good_lists = query_rows(warehouse_path, "SELECT user_id, item_id, rank FROM recommendations ORDER BY ALL")

    # One epoch at learning rate 0: the untrained model.
    state = nightly(
        PipelineConfig(
            source=str(ml100k_zip),
            warehouse=warehouse_path,
            data_dir=tmp_path / "D",
            model="dot_bias",
            dot_bias={"epochs": 1, "learning_rate": 0.0},
        ),
        return_state=True,
    )
    bad = state.result()
    assert state.is_completed() and state.name == "Rejected" and "rmse rose" in state.message
    assert bad.status == "rejected" and bad.n_recommendations == 0
    status, reason, baseline = query_rows(
        warehouse_path, "SELECT status, gate_reason, gate_baseline_run_id FROM runs WHERE run_id = ?", [bad.run_id]
    )[0]
    assert status == "rejected" and "rmse rose from 0.9" in reason and "ndcg@10 fell" in reason and baseline == good
    assert (
        f"against the published configuration (dot_bias, run {good}) on this run's split, trained here (dot_bias)"
        in reason
    )
    assert query_rows(warehouse_path, "SELECT DISTINCT run_id FROM recommendations") == [(good,)]
    assert query_rows(warehouse_path, "SELECT user_id, item_id, rank FROM recommendations ORDER BY ALL") == good_lists
    assert query_rows(warehouse_path, "SELECT count(*) FROM run_metrics WHERE run_id = ?", [bad.run_id]) == [
        (9,)
    ]  # 8 + fit_seconds

    # The summary artifact carries the deltas; the table and the two charts are there too.
    summary = Artifact.get("nightly-run-summary")
    assert f"run `{bad.run_id}`: rejected" in summary.data and "Δ previous run" in summary.data
    assert Artifact.get("nightly-run-metrics").type == "table"
    for key, png in (("nightly-loss-curve", "loss.png"), ("nightly-metric-trend", "trend.png")):
        link = Artifact.get(key).data
        assert "(file:///" in link and link.endswith(f"/{bad.run_id}/{png})")  # markdown: [text](link)
        assert (tmp_path / "D" / "runs" / bad.run_id / png).stat().st_size > 5_000

    # --force publishes it anyway, and says so; `recs run` exits 3 on a rejection.
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                *common,
                "--dot-bias-epochs",
                "1",
                "--dot-bias-learning-rate",
                "0",
                "--refit-on-all",
                "--no-refit-on-all",
            ]
        )
        == 3
    )
    out = capsys.readouterr().out
    assert "rejected by the quality gate" in out and "--gate-tolerance" in out
    assert (
        "metrics of the candidate model, dot_bias, on the test split (not published)" in out
        and "published model" not in out
    )
    # The flags of settings that moved into a model's group still work for a release, each with a warning naming its new flag.
    assert main(["run", *common, "--epochs", "1", "--learning-rate", "0", "--no-refit-on-all", "--force"]) == 0
    err = capsys.readouterr().err
    assert "epochs (--epochs) is deprecated" in err and "use dot_bias.epochs (--dot-bias-epochs)" in err
    assert "use dot_bias.learning_rate (--dot-bias-learning-rate)" in err
    (forced,) = query_rows(warehouse_path, "SELECT DISTINCT run_id FROM recommendations")[0]
    assert forced != good
    assert (
        "overridden by force"
        in query_rows(warehouse_path, "SELECT gate_reason FROM runs WHERE run_id = ?", [forced])[0][0]
    )


def test_the_gate_holds_every_run_to_the_published_lists_whichever_model_and_spelling(ml100k_zip, tmp_path):
    where = {"warehouse": tmp_path / "W.duckdb", "data_dir": tmp_path / "D"}
    first = nightly(PipelineConfig(source=str(ml100k_zip), models=["ials", "item_knn"], **where))
    assert first.status == "succeeded" and first.model == "ials"
    # stored with the lists: per user, the published model's nDCG and the rating model's errors
    stored = query_rows(
        tmp_path / "W.duckdb", "SELECT model, metric, count(*) FROM user_metrics GROUP BY ALL ORDER BY ALL"
    )
    assert stored == [("ials", "ndcg", 943), ("item_knn", "n_ratings", 943), ("item_knn", "squared_error", 943)]

    # popularity and bias only, the same archive as a file:// URL: one dataset, one history, and worse lists
    url = ml100k_zip.resolve().as_uri()
    second = nightly(PipelineConfig(source=url, models=["popularity", "bias"], **where), return_state=True).result()
    assert second.status == "rejected" and second.model == "popularity"
    # held to the published configuration (ials, item_knn's stars), trained for the gate on this run's split
    assert (
        "ndcg@10 fell from 0.49" in second.gate
        and "95% interval of the paired ndcg@10 difference over 943 users" in second.gate
    )
    assert (
        f"against the published configuration (ials with item_knn's stars, run {first.run_id}) on this run's split, trained here (ials, item_knn)"
        in second.gate
    )

    # item_knn was trained by the first run, but it is the published ials lists that it must match
    third = nightly(PipelineConfig(source=str(ml100k_zip), model="item_knn", **where), return_state=True).result()
    assert third.status == "rejected" and "ndcg@10 fell from 0.49" in third.gate and "trained here (ials)" in third.gate
    # ... and item_knn's collapse from the recorded 0.49 is beyond even the drift tolerance
    assert "(--gate-drift-tolerance)) against run " + first.run_id + "'s recorded metrics" in third.gate
    rows = query_rows(where["warehouse"], "SELECT status, gate_baseline_run_id FROM runs ORDER BY started_at")
    assert rows == [("succeeded", None), ("rejected", first.run_id), ("rejected", first.run_id)]
    assert query_rows(where["warehouse"], "SELECT DISTINCT run_id FROM recommendations") == [(first.run_id,)]


def test_a_replay_never_replaces_the_live_lists(ml100k_zip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "live.duckdb"
    common = ["--source", str(ml100k_zip), "--data-dir", str(tmp_path / "D"), "--model", "popularity"]
    assert main(["run", *common, "--warehouse", str(live)]) == 0
    lists = query_rows(live, "SELECT run_id, user_id, item_id, rank FROM recommendations ORDER BY ALL")
    replay = ["backfill", "--start", "1998-01-01", "--end", "1998-01-15", "--every", "14d", *common]
    capsys.readouterr()

    assert main([*replay, "--warehouse", str(live)]) == 2
    err = capsys.readouterr().err
    assert f"{live} holds lists published by live runs" in err and "--warehouse warehouse/replay.duckdb" in err
    assert query_rows(live, "SELECT run_id, user_id, item_id, rank FROM recommendations ORDER BY ALL") == lists
    assert query_rows(live, "SELECT count(*) FROM runs") == [(1,)]

    assert main(replay) == 0  # into its own warehouse
    assert "replaying 2 dates into warehouse/replay.duckdb" in capsys.readouterr().out
    replayed = tmp_path / "warehouse" / "replay.duckdb"
    assert query_rows(replayed, "SELECT count(*) FROM runs WHERE as_of IS NOT NULL") == [(2,)]
    assert (tmp_path / "warehouse" / "replay-trend.png").exists()  # its chart beside it, not the live trend.png
    assert not (tmp_path / "warehouse" / "trend.png").exists()
    assert query_rows(live, "SELECT run_id, user_id, item_id, rank FROM recommendations ORDER BY ALL") == lists


def test_a_second_run_on_the_same_warehouse_is_refused_clearly(ml100k_zip, tmp_path):
    warehouse_path = tmp_path / "W.duckdb"
    config = PipelineConfig(source=str(ml100k_zip), warehouse=warehouse_path, data_dir=tmp_path / "D", model="ease")
    with run_lock(warehouse_path, owner="the-running-night"):
        with pytest.raises(RunLockedError, match="the-running-night"):
            nightly(config)
    assert not warehouse_path.exists()  # refused before touching anything
    assert nightly(config).status == "succeeded"  # and free again afterwards


def test_as_of_run_sees_only_older_ratings(ml100k_zip, tmp_path):
    warehouse_path = tmp_path / "W.duckdb"
    cutoff = datetime(1997, 12, 31, 23, 59, 59, tzinfo=UTC)
    result = nightly(
        PipelineConfig(
            source=str(ml100k_zip),
            warehouse=warehouse_path,
            data_dir=tmp_path / "D",
            as_of=cutoff,
            models=["dot_bias", "item_knn"],
            dot_bias={"epochs": 2},
        )
    )
    n_ratings, as_of, protocol = query_rows(
        warehouse_path, "SELECT n_ratings, as_of, protocol FROM runs WHERE run_id = ?", [result.run_id]
    )[0]
    assert 40_000 < n_ratings < 70_000 and as_of == cutoff and protocol.startswith("temporal ")
    users = query_rows(warehouse_path, "SELECT count(DISTINCT user_id) FROM recommendations")[0][0]
    assert users == result.facts["n_users"] < 943


def test_refresh_announces_a_changed_source_once(ml100k_zip, tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ml100k_zip, site / "ml-100k.zip")
    config = PipelineConfig(source=f"{serve(site).url}/ml-100k.zip", data_dir=tmp_path / "D")
    assert refresh(config) is True
    assert refresh(config) is False


def test_lists_that_collapse_against_the_live_ones_are_not_published_unless_forced(ml100k_zip, tmp_path):
    where = {"warehouse": tmp_path / "W.duckdb", "data_dir": tmp_path / "D", "model": "bias"}
    live = nightly(PipelineConfig(source=str(ml100k_zip), **where))
    live_lists = query_rows(where["warehouse"], "SELECT user_id, item_id, rank FROM recommendations ORDER BY ALL")
    # the same archive cut to its first users' ratings: a new dataset, so the gate has nothing to compare with
    with zipfile.ZipFile(ml100k_zip) as archive:
        lines = archive.read("ml-100k/u.data").decode().splitlines()
        items = archive.read("ml-100k/u.item")

    def cut(users: set[str]) -> str:
        kept = [line for line in lines if line.split("\t")[0] in users]
        return str(
            write_zip(
                tmp_path / f"{len(users)}-users.zip", {"ml-100k/u.data": "\n".join(kept), "ml-100k/u.item": items}
            )
        )

    # one user, who rated every item of the cut: no list at all, so the run fails and nothing is replaced
    with pytest.raises(Exception, match="its lists show 0 distinct items"):
        nightly(PipelineConfig(source=cut({"1"}), **where))
    # two users: lists for 2 of the 943 live users
    collapsed = nightly(PipelineConfig(source=cut({"1", "2"}), **where), return_state=True).result()
    assert collapsed.status == "rejected" and collapsed.n_recommendations == 0
    assert collapsed.gate.startswith("its lists cover 2 users against the live lists' 943 and ")
    assert f"(run {live.run_id}), under the 50% share min_list_share (--min-list-share) allows" in collapsed.gate
    assert (
        query_rows(where["warehouse"], "SELECT user_id, item_id, rank FROM recommendations ORDER BY ALL") == live_lists
    )
    forced = nightly(PipelineConfig(source=cut({"1", "2"}), force=True, **where))
    assert forced.status == "succeeded" and forced.gate.startswith("overridden by force: its lists cover 2 users")
    assert query_rows(where["warehouse"], "SELECT count(DISTINCT user_id) FROM recommendations") == [(2,)]


def test_a_changed_protocol_is_judged_against_the_live_lists_not_waved_through(ml100k_zip, tmp_path):
    # guards against: with ials published, `--seed 43` and a broken dot_bias exiting 0 ("nothing is published for this
    # dataset and protocol yet") and its lists (nDCG@10 0.015) replaced the live ones; --as-of and --k did the same.
    where = {"source": str(ml100k_zip), "warehouse": tmp_path / "W.duckdb", "data_dir": tmp_path / "D"}
    live = nightly(PipelineConfig(**where))
    assert live.status == "succeeded" and live.model == "ials"
    live_lists = query_rows(
        where["warehouse"], "SELECT run_id, user_id, item_id, rank FROM recommendations ORDER BY ALL"
    )
    broken = {"model": "dot_bias", "dot_bias": {"epochs": 1, "learning_rate": 0.0}}
    for change, protocol in (
        ({"seed": 43}, "stratified test=0.25 seed=43 k=10"),
        ({"k": 5}, "stratified test=0.25 seed=42 k=5"),
        ({"as_of": datetime(1998, 3, 1, tzinfo=UTC)}, "temporal test=0.25 seed=42 k=10"),
    ):
        run = nightly(PipelineConfig(**where, **broken, **change), return_state=True).result()
        assert run.status == "rejected", (change, run.gate)
        assert run.gate.startswith(
            f"the published lists (run {live.run_id}) were made under another protocol "
            f"('stratified test=0.25 seed=42 k=10', this run's '{protocol}')"
        )
        assert "trained here (ials, dot_bias)" in run.gate and "fell from" in run.gate
        assert (
            query_rows(where["warehouse"], "SELECT run_id, user_id, item_id, rank FROM recommendations ORDER BY ALL")
            == live_lists
        )
    # the published configuration under a new seed is itself: it publishes, saying why
    reseeded = nightly(PipelineConfig(**where, seed=43))
    assert (
        reseeded.status == "succeeded"
        and "this run trains the published configuration (ials with dot_bias's stars) with the same settings"
        in reseeded.gate
    )
    # and --force still replaces live lists under a new protocol, in so many words
    forced = nightly(PipelineConfig(**where, **broken, seed=44, force=True))
    assert forced.status == "succeeded" and forced.gate.startswith("overridden by force: the published lists (run ")


def test_a_run_past_its_time_limit_is_cancelled_and_keeps_the_lists(ml100k_zip, tmp_path):
    from flows.deadline import RunCancelled

    where = {"source": str(ml100k_zip), "warehouse": tmp_path / "W.duckdb", "data_dir": tmp_path / "D"}
    live = nightly(PipelineConfig(**where, model="popularity"))
    started = datetime.now(UTC)
    with pytest.raises(
        RunCancelled, match=r"the run took longer than run_timeout_seconds \(--run-timeout-seconds\) 3s"
    ):
        nightly(PipelineConfig(**where, model="dot_bias", dot_bias={"epochs": 1000}, run_timeout_seconds=3))
    took = (datetime.now(UTC) - started).total_seconds()
    assert took < 30  # 1000 epochs take minutes
    status, error = query_rows(where["warehouse"], "SELECT status, error FROM runs ORDER BY started_at DESC LIMIT 1")[0]
    assert (
        status == "cancelled"
        and error == "the run took longer than run_timeout_seconds (--run-timeout-seconds) 3s and was ended"
    )
    assert query_rows(where["warehouse"], "SELECT DISTINCT run_id FROM recommendations") == [(live.run_id,)]
    assert nightly(PipelineConfig(**where, model="popularity")).status == "succeeded"  # the run lock was let go


def _recs_run(tmp_path, *flags: str) -> tuple[subprocess.Popen, Path]:
    """`recs run` in its own process, on its own temporary Prefect API (no PREFECT_API_URL), its console to a file."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    console = tmp_path / f"console-{len(list(tmp_path.glob('console-*')))}.txt"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "-v",  # the epochs on the console: _training waits for them
            "--warehouse",
            str(tmp_path / "W.duckdb"),
            "--data-dir",
            str(tmp_path / "D"),
            *flags,
        ],
        cwd=REPO,
        env=env,
        stdout=console.open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, console


def _training(process: subprocess.Popen, console: Path) -> list[psutil.Process]:
    """Wait until the run trains; its child processes then (Prefect's temporary API among them)."""
    deadline = time.monotonic() + 120
    while "epoch 5/" not in console.read_text():
        assert process.poll() is None and time.monotonic() < deadline, console.read_text()[-3000:]
        time.sleep(0.2)
    return psutil.Process(process.pid).children(recursive=True)


def test_sigterm_ends_a_run_within_seconds_and_no_kill_leaves_a_process_or_scratch_behind(ml100k_zip, tmp_path):
    # guards against: SIGTERM taking about 140 s; SIGKILL leaving Prefect's temporary API (220 MB) running, and a scratch folder
    long_run = ["--source", str(ml100k_zip), "--models", "dot_bias", "--dot-bias-epochs", "1000"]
    process, console = _recs_run(tmp_path, *long_run)
    children = _training(process, console)
    assert any("uvicorn" in " ".join(child.cmdline()) for child in children)
    asked = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 4 and time.monotonic() - asked < 15
    assert "recs run: the run was cancelled: ended by SIGTERM (the process was asked to stop)" in console.read_text()
    assert psutil.wait_procs(children, timeout=15)[1] == []
    assert query_rows(tmp_path / "W.duckdb", "SELECT status, error FROM runs") == [
        ("cancelled", "ended by SIGTERM (the process was asked to stop)")
    ]

    process, console = _recs_run(tmp_path, *long_run)
    children = _training(process, console)
    process.kill()
    process.wait(timeout=30)
    assert psutil.wait_procs(children, timeout=15)[1] == []  # the temporary API died with its parent
    # what a run killed while parsing leaves: its scratch folder, removed by the next run's ingest
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    scratch = tmp_path / "D" / "datasets" / f".scratch-{finished.stdout.strip()}-0123456789ab-x"
    (scratch / "raw").mkdir(parents=True)
    process, console = _recs_run(tmp_path, "--source", str(ml100k_zip), "--model", "popularity")
    assert process.wait(timeout=300) == 0, console.read_text()[-3000:]
    assert not scratch.exists()
    statuses = query_rows(tmp_path / "W.duckdb", "SELECT status, error FROM runs ORDER BY started_at")
    assert [status for status, _ in statuses] == ["cancelled", "failed", "succeeded"]
    assert statuses[1][1].startswith("abandoned: its process ended")
