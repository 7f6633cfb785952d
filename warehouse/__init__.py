"""The DuckDB warehouse's SQL, kept as files: `schema/` (DDL, applied in name order, idempotent) and
`queries/` (named queries the product runs and users can copy)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import duckdb
import polars as pl

# DuckDB lets one process open a file to write, or any number to read, never both: a reader in another
# process waits while the pipeline writes, and the pipeline waits while readers have the file open. The
# pipeline opens the file only for each short write (publishing 1.4M rows holds it for about a second)
# and both sides retry for this long before giving up.
BUSY_TIMEOUT_SECONDS = 60.0


class WarehouseBusyError(RuntimeError):
    """The warehouse file stayed locked by another process for the whole wait."""


def connect(path: str | Path, read_only: bool = True, timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, retrying with backoff while another process holds its lock.

    What an application reading the recommendations should use (or copy): open, query, close. A connection
    kept open blocks the nightly run's writes until it closes.

    Args:
        path: the DuckDB file.
        read_only: readers pass True (the default); only the pipeline writes.
        timeout_seconds: give up after this long.

    Raises:
        WarehouseBusyError: still locked after `timeout_seconds`; the message names the holding process.
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
                    "open, query and close (README, The warehouse)"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _read(folder: str, name: str) -> str:
    return resources.files(__package__).joinpath(folder, name).read_text(encoding="utf-8")


def schema_scripts() -> list[str]:
    """The DDL scripts, in the order they are applied."""
    folder = resources.files(__package__).joinpath("schema")
    return [_read("schema", entry.name) for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".sql")]


def query(name: str) -> str:
    """The text of `queries/<name>.sql`."""
    return _read("queries", f"{name}.sql")


def fetch(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> pl.DataFrame:
    """Run `queries/<name>.sql` with bound `params` and return the result as polars (through Arrow)."""
    return pl.from_arrow(con.sql(query(name), params=params or {}).to_arrow_table())
