"""Processes for the warehouse fault tests: a publisher that SIGKILLs itself at a chosen point, a publisher
that publishes again and again, and a SQL reader that checks every answer it gets.

Run as `python -m tests.warehouse_worker <command> ...` from the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

import warehouse
import warehouse.runs as runs

TOP_N = 10
ITEMS = pl.DataFrame(
    {
        "item_id": list(range(1, 101)),
        "title": [f"Film {i}" for i in range(1, 101)],
        "genres": [["Drama"]] * 100,
        "year": [1990] * 100,
    }
)


def lists(n_users: int, seed: int) -> pl.DataFrame:
    """Every user's top-10, different for each seed."""
    users = pl.int_range(1, n_users + 1, eager=True).repeat_by(TOP_N).explode()
    ranks = pl.Series([*range(1, TOP_N + 1)] * n_users)
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": (users * 7 + ranks * 13 + seed) % 100 + 1,
            "rank": ranks,
            "score": (5.0 - ranks * 0.1).cast(pl.Float32),
        }
    )


class _KillingConnection:
    """A DuckDB connection that SIGKILLs its own process just before running the statement named `point`."""

    def __init__(self, con, point: str) -> None:
        self._con, self._point = con, point

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, sql, *args):
        # `sql`: a statement's text, or the parsed Statement that warehouse.sql.statements gives
        text = sql.query if isinstance(sql, duckdb.Statement) else sql
        if (
            "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
            .strip()
            .startswith(self._point)
        ):
            _die()
        return self._con.execute(sql, *args)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def publish_and_die(path: Path, run_id: str, n_users: int, point: str) -> None:
    """Publish the lists of `run_id` (already started), SIGKILLed at `point`: while copying the warehouse to
    its staging file (COPY), before a statement that starts with `point`, after the block (CLOSE: before the
    checkpoint), just before the staging file replaces the warehouse (REPLACE) or just after (REPLACED)."""
    real_writer, real_copy, real_replace = runs.open_writer, shutil.copyfile, os.replace

    def copy_half_and_die(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[: Path(src).stat().st_size // 2])
        _die()

    def replace(src, dst):
        if point == "REPLACE":
            _die()
        real_replace(src, dst)
        if point == "REPLACED":
            _die()

    shutil.copyfile = copy_half_and_die if point == "COPY" else real_copy
    os.replace = replace

    @contextmanager
    def open_writer(p: Path) -> Iterator:
        with real_writer(p) as con:
            yield _KillingConnection(con, point)
            if point == "CLOSE":
                _die()

    runs.open_writer = open_writer
    runs.publish(path, run_id, lists(n_users, seed=len(run_id)), ITEMS, {})


def publish_repeatedly(path: Path, n_runs: int, n_users: int, report: Path) -> None:
    """Publish `n_runs` runs one after another; write how long each took. `report` + ".started" appears once the
    first publish is done, so a test can kill the loop mid-way rather than after a guessed delay."""
    seconds = []
    for i in range(n_runs):
        started = time.perf_counter()
        run_id = f"run-{i + 1:03d}"  # after the test's own run-000
        runs.start_run(path, run_id, None, "{}", runs.utc_now())
        runs.publish(path, run_id, lists(n_users, seed=i), ITEMS, {})
        seconds.append(time.perf_counter() - started)
        if i == 0:
            report.with_name(report.name + ".started").touch()
    report.write_text(json.dumps({"publish_seconds": seconds}))


def read_until(path: Path, stop_file: Path, n_users: int, report: Path) -> None:
    """Query the published lists until `stop_file` appears, the way the README tells readers to."""
    seen, waits, errors = [], [], []
    while not stop_file.exists():
        started = time.perf_counter()
        with warehouse.open_reader(path) as con:
            waits.append(time.perf_counter() - started)
            rows = con.execute(
                "SELECT r.run_id, any_value(s.status), count(*), count(DISTINCT r.user_id), min(r.rank), max(r.rank), "
                "count(t.title) FROM recommendations r JOIN runs s USING (run_id) LEFT JOIN items t USING (item_id) "
                "GROUP BY r.run_id"
            ).fetchall()
        if len(rows) != 1 or rows[0][1:] != ("succeeded", n_users * TOP_N, n_users, 1, TOP_N, n_users * TOP_N):
            errors.append(repr(rows))
        else:
            seen.append(rows[0][0])
        time.sleep(0.01)
    report.write_text(json.dumps({"seen": seen, "waits": waits, "errors": errors}))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "publish-and-die":
        publish_and_die(Path(args[0]), args[1], int(args[2]), args[3])
    elif command == "publish-repeatedly":
        publish_repeatedly(Path(args[0]), int(args[1]), int(args[2]), Path(args[3]))
    elif command == "read-until":
        read_until(Path(args[0]), Path(args[1]), int(args[2]), Path(args[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")
