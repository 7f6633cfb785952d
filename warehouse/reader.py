"""The read side: how applications, `recs` and the pipeline's own checks open the warehouse."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

# DuckDB lets one process open a file to write, or any number to read, never both. The pipeline writes a
# staging copy and renames it over the file (warehouse/writer.py), so a reader only waits on the short
# moments when a writer holds the file's shared lock to copy it; both sides retry for this long.
BUSY_TIMEOUT_SECONDS = 60.0


class WarehouseBusyError(RuntimeError):
    """The warehouse file stayed locked by another process for the whole wait."""


def open_reader(path: str | Path, timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open the warehouse read-only, retrying with backoff while another process holds its lock.

    What an application reading the recommendations should use (or copy): open, query, close.

    Args:
        path: the DuckDB file.
        timeout_seconds: give up after this long.

    Raises:
        WarehouseBusyError: still locked after `timeout_seconds`; the message names the holding process.
    """
    return open_waiting(path, read_only=True, timeout_seconds=timeout_seconds)


def open_waiting(path: str | Path, read_only: bool, timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to `path`, retrying with backoff while another process holds the file's lock.

    Raises:
        WarehouseBusyError: still locked after `timeout_seconds`.
    """
    deadline = time.monotonic() + timeout_seconds
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() + delay > deadline:
                raise WarehouseBusyError(
                    f"{path} stayed locked for {timeout_seconds:g}s: {exc}. A process keeps it open; readers should "
                    "open, query and close (docs/warehouse.md)"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def connect(path: str | Path, read_only: bool = True, timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """`warehouse.connect`, the reader's name before the writer moved to warehouse/ (CHANGELOG); kept for
    applications that call it. New code: `open_reader`."""
    return open_waiting(path, read_only=read_only, timeout_seconds=timeout_seconds)
