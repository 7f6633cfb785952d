"""The read side: how applications, `recs` and the pipeline's own checks open the warehouse."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

# DuckDB lets one process open a file to write, or any number to read, never both. The pipeline writes a
# staging copy and renames it over the file (warehouse/writer.py), so a reader only waits on the short
# moments when a writer holds the file's shared lock to copy it; both sides retry for this long.
# Where `recs run` publishes, and every reading command reads, unless --warehouse names another file.
DEFAULT_WAREHOUSE = Path("warehouse/recs.duckdb")
BUSY_TIMEOUT_SECONDS = 60.0

# A read-only DuckDB connection protects only the file it opened: through SQL it could still write files
# (COPY ... TO), attach another warehouse read-write, read the host's files (read_csv, glob) and install
# extensions. A reader gets none of that, and cannot turn it back on (docs/warehouse.md, "What a reader can do").
READER_SETTINGS: dict[str, str | bool] = {
    "enable_external_access": False,  # no file or network but the warehouse itself: no COPY, ATTACH, read_*, glob
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,  # no SET can undo the above
}
# The pipeline's own connections read its files (shards' parquet) but never fetch an extension: a file that is
# not DuckDB's (a SQLite file named as the warehouse) is refused instead of making DuckDB download a reader.
WRITER_SETTINGS: dict[str, str | bool] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class WarehouseBusyError(RuntimeError):
    """The warehouse file stayed locked by another process for the whole wait."""


class NotAWarehouseError(ValueError):
    """The warehouse path names a file that is not a DuckDB database."""


# A DuckDB file's main header starts with an 8-byte checksum, then these four bytes.
_DUCKDB_MAGIC = b"DUCK"


def check_is_duckdb(path: str | Path) -> None:
    """Refuse, with a message naming the file, an existing non-empty warehouse path that is not a DuckDB file.

    Raises:
        NotAWarehouseError: the file's header is not DuckDB's (a SQLite database, a CSV, a truncated file).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(16)
    if header[8:12] != _DUCKDB_MAGIC:
        kind = "a SQLite database" if header.startswith(b"SQLite format") else "not a DuckDB database"
        raise NotAWarehouseError(
            f"{path} is {kind}; expected a DuckDB warehouse file written by `recs run` (--warehouse names it)"
        )


def open_reader(path: str | Path, timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open the warehouse read-only, retrying with backoff while another process holds its lock.

    What an application reading the recommendations should use (or copy): open, query, close. The connection
    can query the warehouse's tables, views and macros and nothing else: no file or network access, no other
    database attached, no extension installed or loaded, and no setting changed (`READER_SETTINGS`).

    Args:
        path: the DuckDB file.
        timeout_seconds: give up after this long.

    Raises:
        WarehouseBusyError: still locked after `timeout_seconds`; the message names the holding process.
        NotAWarehouseError: `path` is not a DuckDB file.
    """
    return open_waiting(path, read_only=True, timeout_seconds=timeout_seconds)


def open_waiting(
    path: str | Path, read_only: bool, timeout_seconds: float = BUSY_TIMEOUT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to `path`, retrying with backoff while another process holds the file's lock.

    A read-only connection reaches the warehouse and nothing else (`READER_SETTINGS`); a writable one loads no
    extension (`WRITER_SETTINGS`).

    Raises:
        WarehouseBusyError: still locked after `timeout_seconds`.
        NotAWarehouseError: `path` is not a DuckDB file.
    """
    check_is_duckdb(path)
    settings = READER_SETTINGS if read_only else WRITER_SETTINGS
    deadline = time.monotonic() + timeout_seconds
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=dict(settings))
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


def connect(
    path: str | Path, read_only: bool = True, timeout_seconds: float = BUSY_TIMEOUT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """`warehouse.connect`, the reader's name before the writer moved to warehouse/ (CHANGELOG); kept for
    applications that call it. New code: `open_reader`."""
    return open_waiting(path, read_only=read_only, timeout_seconds=timeout_seconds)
