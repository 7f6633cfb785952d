"""The DuckDB warehouse: its SQL as files and the code that reads and writes the file.

- `reader.py`: `open_reader`, a read-only connection that waits out a writer (what applications use).
- `writer.py`: `open_writer`, a staging copy renamed over the file when the block ends.
- `runs.py`: what a nightly run writes: its row in `runs`, each model's results, the published lists.
- `sql.py`: `schema/`, `queries/` and `statements/` by name.
"""

from __future__ import annotations

from warehouse.reader import BUSY_TIMEOUT_SECONDS, NotAWarehouseError, WarehouseBusyError, connect, open_reader
from warehouse.sql import fetch, fetch_value, query, schema_scripts, statement
from warehouse.writer import WarehouseSpaceError, no_world_access, open_writer, resolved

__all__ = [
    "BUSY_TIMEOUT_SECONDS",
    "NotAWarehouseError",
    "WarehouseBusyError",
    "WarehouseSpaceError",
    "connect",
    "fetch",
    "fetch_value",
    "no_world_access",
    "open_reader",
    "open_writer",
    "query",
    "resolved",
    "schema_scripts",
    "statement",
]
