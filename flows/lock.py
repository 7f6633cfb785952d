"""One nightly run at a time per warehouse: an exclusive lock on `<warehouse>.lock`, held for the whole run.

`flock` locks belong to the open file, so the operating system drops the lock when its process ends, even
by SIGKILL: a crashed run never leaves a stale lock behind. The lock file names its holder for the message
the refused run prints.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import warehouse
from tasks.naming import setting
from warehouse.runs import mark_abandoned, utc_now
from warehouse.writer import resolved

log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another run holds the warehouse's lock."""


def lock_path(warehouse_path: Path, suffix: str = ".lock") -> Path:
    """`<warehouse>.lock` beside the file the path names, links followed: two names of one file share one lock.
    Tunes take `<warehouse>.tune.lock` (`TUNE_LOCK`): one tune at a time, while nightly runs go on."""
    target = resolved(warehouse_path)
    return target.with_name(target.name + suffix)


TUNE_LOCK = ".tune.lock"

# A fold-in holds the run lock only for its one write (seconds): a run that finds it held by one waits this long
# whatever its own lock_timeout_seconds, so that a fold-in at 03:00 does not refuse the 03:00 nightly.
BRIEF_HOLD_SECONDS = 120.0


def _held_briefly(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text() or "{}").get("brief"))
    except (OSError, ValueError):
        return False


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"run {holder.get('run', '?')} (pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"


@contextmanager
def run_lock(
    warehouse_path: Path,
    owner: str,
    timeout_seconds: float = 0.0,
    poll_seconds: float = 1.0,
    suffix: str = ".lock",
    brief: bool = False,
    timeout_setting: str = "lock_timeout_seconds",
) -> Iterator[None]:
    """Hold the warehouse's run lock (or, with `suffix` TUNE_LOCK, its tune lock) for the block.

    Args:
        warehouse_path: the DuckDB file the run publishes to.
        owner: what to tell a refused run about the holder (the run's name).
        timeout_seconds: how long to wait for the holder to finish; 0 refuses at once.
        poll_seconds: how often to retry while waiting.
        suffix: which lock: `.lock` for nightly runs, TUNE_LOCK for tunes.
        brief: the holder says it holds the lock for seconds (a fold-in's write): others wait BRIEF_HOLD_SECONDS.
        timeout_setting: the config field a refused holder is pointed to (the one `timeout_seconds` came from).

    Raises:
        RunLockedError: the lock is still held after `timeout_seconds`; the message names the holder.
    """
    path = lock_path(warehouse_path, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # held open for the whole block: the lock lives with the handle
    try:
        if not _acquired(handle, path, timeout_seconds, poll_seconds):
            what = "tune" if suffix == TUNE_LOCK else "nightly run"
            waited_for = f"gave up after waiting {timeout_seconds:g}s" if timeout_seconds else "not waiting"
            raise RunLockedError(
                f"another {what} holds {path}: {_holder(path)}; {waited_for} "
                f"({setting(timeout_setting)} sets the wait). Nothing was changed."
            )
        handle.seek(0)
        handle.truncate()
        since = utc_now().isoformat(timespec="seconds")
        handle.write(json.dumps({"run": owner, "pid": os.getpid(), "since": since, "brief": brief}))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock if held


def _acquired(handle: IO[str], path: Path, timeout_seconds: float, poll_seconds: float) -> bool:
    """Take the lock on `handle`, waiting up to `timeout_seconds` (BRIEF_HOLD_SECONDS at least while the holder
    holds it briefly); False when it is still held then."""
    started = time.monotonic()
    deadline, waited = started + timeout_seconds, False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if _held_briefly(path):
                deadline = max(deadline, started + BRIEF_HOLD_SECONDS)
            if time.monotonic() >= deadline:
                return False
            if not waited:
                log.info("waiting up to %gs for %s to finish (%s)", timeout_seconds, _holder(path), path)
                waited = True
            time.sleep(poll_seconds)


def settle_dead_runs(warehouse_path: Path, found_by: str) -> list[str]:
    """Runs whose row says `running` while no process holds the run lock died (SIGKILL, a crash) before
    recording an outcome: mark them failed, as abandoned, so that readers tell a dead run from a live one.
    Returns their ids; none when a run holds the lock (its row is right) or none reads `running`."""
    if not warehouse_path.exists():
        return []
    with warehouse.open_reader(warehouse_path) as con:
        if warehouse.fetch(con, "running_runs").height == 0:
            return []  # the common case: no write, no lock
    try:
        with run_lock(warehouse_path, owner=found_by):
            return mark_abandoned(warehouse_path, found_by)
    except RunLockedError:
        return []
