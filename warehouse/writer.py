"""The write side: every change to the warehouse goes through `open_writer`, a staging copy renamed over the file."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from warehouse.reader import WRITER_SETTINGS, open_waiting
from warehouse.sql import schema_scripts

log = logging.getLogger(__name__)


def no_world_access() -> None:
    """Files and folders this process creates from now on are not readable, writable or listable by other users
    (the umask gains o-rwx; the group's bits stay as the operator's umask sets them): the warehouse, the data
    folder, logs, checkpoints. A warehouse someone made readable keeps its mode across writes."""
    os.umask(os.umask(0) | 0o007)


def resolved(path: str | Path) -> Path:
    """The warehouse file a path names, symbolic links followed: the one name its locks and replacements use."""
    return Path(os.path.realpath(path))


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """One write at a time per warehouse, whatever writes it (runs already hold the run lock, flows/lock.py)."""
    with open(path.with_name(path.name + ".write-lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # writes are short: wait for the other one to finish
        yield


def _fold_wal(path: Path) -> None:
    """Checkpoint a WAL left beside the warehouse (by a writer that wrote the file in place, as releases before the staging copy did, killed mid-write), so that
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


class WarehouseSpaceError(OSError):
    """Too little free space beside the warehouse for the staging copy a write makes."""


def _check_free_space(path: Path, size: int) -> None:
    """A write copies the whole file and grows the copy: refuse before copying, not half-way through."""
    needed = size + size // 4 + (16 << 20)  # the copy, a quarter for what the write adds, and some slack
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise WarehouseSpaceError(
            f"not enough free space to write {path}: each write copies the file ({size / 1e6:.1f} MB) and needs "
            f"about {needed / 1e6:.1f} MB free in {path.parent}, which has {free / 1e6:.1f} MB; free some space "
            "or move the warehouse (--warehouse). The warehouse was not changed."
        )


def _keep_mode_and_owner(staging: Path, original: os.stat_result) -> None:
    """The file that replaces the warehouse keeps its permissions, and its owner where this process may set it."""
    os.chmod(staging, stat.S_IMODE(original.st_mode))
    try:
        os.chown(staging, original.st_uid, original.st_gid)
    except PermissionError:  # only root may give a file away; the mode is what guards the data
        pass


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
    path = resolved(path)  # a link's target is written, locked and replaced, never the link itself
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _write_lock(path):
        for leftover in path.parent.glob(f"{path.name}.*.staging*"):  # from a writer killed mid-write
            leftover.unlink()
        staging = path.with_name(f"{path.name}.{os.getpid()}.staging")
        original = path.stat() if path.exists() else None
        if original is not None:
            _check_free_space(path, original.st_size)
        con = None
        try:
            if original is not None:
                _fold_wal(path)
                with open_waiting(path, read_only=True):  # a shared lock: no one writes it in place meanwhile
                    shutil.copyfile(path, staging)
            con = duckdb.connect(str(staging), config=dict(WRITER_SETTINGS))
            for script in schema_scripts():
                con.execute(script)
            yield con
            con.execute("CHECKPOINT")
            con.close()
            if staging.with_name(staging.name + ".wal").exists():  # the rename would leave its contents behind
                raise RuntimeError(f"DuckDB left a WAL beside {staging} after CHECKPOINT; {path} was not replaced")
            if original is not None:
                _keep_mode_and_owner(staging, original)
            _fsync(staging)
            os.replace(staging, path)  # inside the try: a refused rename (an immutable file) removes the copy too
        except BaseException:
            if con is not None:
                con.close()
            staging.unlink(missing_ok=True)
            staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
            raise
        _fsync(path.parent)
    log.debug("rewrote %s (%.1f MB) in %.2fs", path, path.stat().st_size / 1e6, time.perf_counter() - started)
