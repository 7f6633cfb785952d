"""Publishing under faults: a publisher SIGKILLed at each point of its write, and SQL readers in
other processes querying while runs publish one after another."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import duckdb
import pytest

from tests.helpers import REPO
from tests.warehouse_worker import ITEMS, TOP_N, lists
from warehouse.runs import publish, start_run, utc_now

N_USERS = 20_000

# Every test here kills processes or polls other processes for seconds: the slow tier.
pytestmark = pytest.mark.slow


def _worker(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.warehouse_worker", *map(str, args)], cwd=REPO)


def _published(path) -> tuple[list, list]:
    """(run_id, rows, users, items titled) per published run, and every run's (run_id, status, error)."""
    with duckdb.connect(str(path), read_only=True) as con:
        lists_ = con.execute(
            "SELECT r.run_id, count(*), count(DISTINCT r.user_id), count(t.title) FROM recommendations r "
            "LEFT JOIN items t USING (item_id) GROUP BY r.run_id"
        ).fetchall()
        runs = con.execute("SELECT run_id, status, error FROM runs ORDER BY run_id").fetchall()
    return lists_, runs


@pytest.mark.parametrize(
    "point",
    [
        "COPY",
        "DELETE FROM recommendations",
        "INSERT INTO recommendations",
        "DELETE FROM items",
        "INSERT INTO items",
        "UPDATE runs",
        "CLOSE",
        "REPLACE",
        "REPLACED",
    ],
)
def test_sigkill_while_publishing_keeps_the_old_lists_or_completes_the_new(point, tmp_path):
    path = tmp_path / "W.duckdb"
    start_run(path, "a-old", None, "{}", utc_now())
    publish(path, "a-old", lists(N_USERS, seed=1), ITEMS, {})
    start_run(path, "b-new", None, "{}", utc_now())

    child = _worker("publish-and-die", path, "b-new", N_USERS, point)
    assert child.wait(timeout=120) == -9, "the publisher was not killed"

    complete = [("a-old", N_USERS * TOP_N, N_USERS, N_USERS * TOP_N)]
    lists_, runs = _published(path)  # opens cleanly: DuckDB replays or drops the WAL
    if point == "REPLACED":  # killed once the new file is in place: the new lists, complete, and the run succeeded
        assert lists_ == [("b-new", *complete[0][1:])] and runs[1][1] == "succeeded"
        return
    assert lists_ == complete
    assert runs == [("a-old", "succeeded", None), ("b-new", "running", None)]  # stale, never succeeded

    start_run(path, "c-next", None, "{}", utc_now())  # the next run, holding the run lock, sees it abandoned
    _, runs = _published(path)
    assert runs[1][:2] == ("b-new", "failed") and runs[1][2].startswith("abandoned: its process ended")
    assert runs[2][:2] == ("c-next", "running")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 0.35])
def test_sigkill_at_any_moment_of_repeated_publishes_leaves_one_complete_list(delay, tmp_path):
    path = tmp_path / "W.duckdb"
    # The published run before the worker's run-001, run-002, ...: ids that sort in the order the runs start,
    # which the last assertion relies on ("run-old" sorted after them and failed it whenever one had published).
    start_run(path, "run-000", None, "{}", utc_now())
    publish(path, "run-000", lists(N_USERS, seed=99), ITEMS, {})
    report = tmp_path / "report.json"
    child = _worker("publish-repeatedly", path, 50, N_USERS, report)
    started = report.with_name("report.json.started")
    deadline = time.monotonic() + 120
    while not started.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the worker has published once: the kill below lands within its loop
    assert started.exists(), "the worker never published"
    time.sleep(delay)  # at different moments of the following publishes
    child.kill()
    child.wait(timeout=60)
    assert not report.exists(), "the worker finished its 50 publishes before the kill: nothing was tested"
    lists_, runs = _published(path)
    assert len(lists_) == 1 and lists_[0][1:] == (N_USERS * TOP_N, N_USERS, N_USERS * TOP_N)
    status = dict((run_id, status) for run_id, status, _ in runs)
    assert status[lists_[0][0]] == "succeeded"
    assert all(s != "succeeded" for run_id, s in status.items() if run_id > lists_[0][0])  # later runs never published


def test_readers_in_other_processes_see_complete_old_or_new_lists(tmp_path):
    path = tmp_path / "W.duckdb"
    start_run(path, "run-first", None, "{}", utc_now())
    publish(path, "run-first", lists(N_USERS, seed=0), ITEMS, {})
    stop = tmp_path / "stop"
    readers = [_worker("read-until", path, stop, N_USERS, tmp_path / f"reader-{i}.json") for i in range(3)]
    writer = _worker("publish-repeatedly", path, 8, N_USERS, tmp_path / "writer.json")
    try:
        assert writer.wait(timeout=300) == 0, "the publisher failed: a reader kept it out past its wait"
    finally:
        stop.touch()
        for reader in readers:
            reader.wait(timeout=120)
    assert [reader.returncode for reader in readers] == [0, 0, 0], "a reader gave up waiting"
    reports = [json.loads((tmp_path / f"reader-{i}.json").read_text()) for i in range(3)]
    assert [r["errors"] for r in reports] == [[], [], []]  # every answer was one run's complete lists
    seen = {run_id for r in reports for run_id in r["seen"]}
    assert len(seen) >= 3, f"readers saw only {seen}: they did not overlap the publishes"
    waits = [w for r in reports for w in r["waits"]]
    publish_seconds = json.loads((tmp_path / "writer.json").read_text())["publish_seconds"]
    print(
        f"\n{len(waits)} reads, longest wait {max(waits):.2f}s; publishes took {min(publish_seconds):.2f}-{max(publish_seconds):.2f}s"
    )
    assert max(waits) < 30  # bounded: a write holds the file for about a second here
    assert _published(path)[0][0][0] == "run-008"  # the last of 8 (the worker counts from run-001)


def test_a_wal_left_by_a_killed_in_place_writer_is_kept(tmp_path):
    path = tmp_path / "W.duckdb"
    start_run(path, "a-old", None, "{}", utc_now())
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import duckdb, os, signal, sys; con = duckdb.connect(sys.argv[1]); "
                "con.execute('CREATE TABLE kept AS SELECT 42 AS answer'); os.kill(os.getpid(), signal.SIGKILL)"
            ),
            str(path),
        ]
    )
    assert killed.returncode == -9 and path.with_name("W.duckdb.wal").exists()
    start_run(path, "b-next", None, "{}", utc_now())  # copies the file: the WAL must be folded in first
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT answer FROM kept").fetchall() == [(42,)]
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(2,)]
