"""The write side: every change to the warehouse goes through `open_writer`, a staging copy renamed over the file."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from warehouse.reader import open_waiting
from warehouse.sql import schema_scripts

log = logging.getLogger(__name__)


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """One write at a time per warehouse, whatever writes it (runs already hold the run lock, flows/lock.py)."""
    with open(path.with_name(path.name + ".write-lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # writes are short: wait for the other one to finish
        yield


def _fold_wal(path: Path) -> None:
    """Checkpoint a WAL left beside the warehouse (by a writer of the in-place era killed mid-write), so that
    copying the file alone copies everything committed."""
    if path.with_name(path.name + ".wal").exists():
        with open_waiting(path, read_only=False) as con:
            con.execute("CHECKPOINT")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def open_writer(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Write to the warehouse by copy and replace: readers never wait and never see a half-written state.

    The block writes to a staging copy of the file (schema applied). When it ends without error, the copy is
    checkpointed, synced and renamed over the warehouse in one step: a reader has the old file open or opens
    the new one, and a process killed at any moment leaves the old file or the new one, never a mix. When
    the block fails, the copy is deleted and the warehouse is as it was.

    Only the pipeline writes the file; readers open it read-only (`open_reader`, docs/warehouse.md). Each
    use copies the whole file, so a run writes a handful of times: at its start, once per trained model, and
    when it publishes, is rejected or fails (warehouse/runs.py).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _write_lock(path):
        for leftover in path.parent.glob(f"{path.name}.*.staging*"):  # from a writer killed mid-write
            leftover.unlink()
        staging = path.with_name(f"{path.name}.{os.getpid()}.staging")
        if path.exists():
            _fold_wal(path)
            with open_waiting(path, read_only=True):  # a shared lock: no one writes it in place meanwhile
                shutil.copyfile(path, staging)
        con = duckdb.connect(str(staging))
        try:
            for script in schema_scripts():
                con.execute(script)
            yield con
            con.execute("CHECKPOINT")
        except BaseException:
            con.close()
            staging.unlink(missing_ok=True)
            staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
            raise
        con.close()
        if staging.with_name(staging.name + ".wal").exists():  # the rename would leave its contents behind
            raise RuntimeError(f"DuckDB left a WAL beside {staging} after CHECKPOINT; {path} was not replaced")
        _fsync(staging)
        os.replace(staging, path)
        _fsync(path.parent)
    log.debug("rewrote %s (%.1f MB) in %.2fs", path, path.stat().st_size / 1e6, time.perf_counter() - started)
