"""The DuckDB warehouse's SQL, kept as files: `schema/` (DDL, applied in name order, idempotent) and
`queries/` (named queries the product runs and users can copy)."""

from __future__ import annotations

from importlib import resources

import duckdb
import polars as pl


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
