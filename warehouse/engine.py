"""DuckDB as the run's out-of-core engine: the queries of `prepare/` (ingest's last step for a MovieLens archive,
reindex, the split) read parquet and write parquet, and what does not fit in the memory they are given spills to a folder on disk (DuckDB's own spilling), so
the process that runs them holds a bounded amount of memory whatever the data's size.

This is not the warehouse: each block opens an in-memory database of its own, which holds no table.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from warehouse.sql import prepare_query


@contextmanager
def out_of_core(memory_limit_mb: int, spill_dir: Path, keep_order: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection that holds at most `memory_limit_mb` of data in memory and spills the rest to
    `spill_dir` (removed when the block ends). With `keep_order`, a query without ORDER BY writes rows in the order
    it reads them (a little slower); without, only ORDER BY orders them."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": f"{memory_limit_mb}MB",
        "temp_directory": str(spill_dir),
        "preserve_insertion_order": keep_order,
    }
    con = duckdb.connect(config=settings)
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection,
    name: str,
    out: Path,
    params: dict | None = None,
    streams: dict[str, pa.RecordBatchReader] | None = None,
) -> None:
    """Write what `prepare/<name>.sql` selects to the parquet file `out`, streamed by DuckDB (never gathered
    here), with bound `params` and `streams` readable under their names (each is read once)."""
    streams = streams or {}
    for table, reader in streams.items():
        con.register(table, reader)
    try:
        con.execute(f"COPY ({prepare_query(name)}) TO $out (FORMAT parquet)", {**(params or {}), "out": str(out)})
    finally:
        for table in streams:
            con.unregister(table)


def fetch_row(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> tuple:
    """The one row `prepare/<name>.sql` returns."""
    row = con.execute(prepare_query(name), params or {}).fetchone()
    assert row is not None, f"prepare/{name}.sql returned no row"
    return row
