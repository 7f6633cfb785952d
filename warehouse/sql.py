"""The SQL the product runs, kept as files: `schema/` (DDL, applied in name order, idempotent), `queries/`
(reads: the product's and ones users can copy), `statements/` (the pipeline's writes) and `prepare/` (reindex and
the split, over parquet files).

Values reach SQL only as bound parameters or as registered Arrow frames that the statements select from.
"""

from __future__ import annotations

from importlib import resources

import duckdb
import polars as pl


def _read(folder: str, name: str) -> str:
    return resources.files(__package__).joinpath(folder, name).read_text(encoding="utf-8")


def schema_scripts() -> list[str]:
    """The DDL scripts, in the order they are applied."""
    folder = resources.files(__package__).joinpath("schema")
    return [
        _read("schema", entry.name)
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]


def query(name: str) -> str:
    """The text of `queries/<name>.sql`."""
    return _read("queries", f"{name}.sql")


def prepare_query(name: str) -> str:
    """The text of `prepare/<name>.sql` (the out-of-core engine's queries over parquet, warehouse/engine.py)."""
    return _read("prepare", f"{name}.sql")


def statement(name: str) -> str:
    """The text of `statements/<name>.sql`."""
    return _read("statements", f"{name}.sql")


def statements(name: str) -> list[duckdb.Statement]:
    """The statements of `statements/<name>.sql`, as DuckDB's parser splits them (each knows its named
    parameters)."""
    return duckdb.extract_statements(statement(name))


def fetch(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> pl.DataFrame:
    """Run `queries/<name>.sql` with bound `params` and return the result as polars (through Arrow)."""
    frame = pl.from_arrow(con.sql(query(name), params=params or {}).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)  # a table, never a single column
    return frame


def fetch_value(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> object:
    """The single value `queries/<name>.sql` returns (None when it returns no row)."""
    row = con.execute(query(name), params or {}).fetchone()
    return row[0] if row else None


# The columns that hold a source's own ids: BIGINT while every id written was a whole number, VARCHAR from the first
# text id on (statements/text_ids.sql).
ID_COLUMNS = ("user_id", "item_id", "similar_item_id", "reason_item_id")


def ids_as_text(con: duckdb.DuckDBPyConnection) -> None:
    """Make the warehouse's id columns text, unless they are already: before text ids are written."""
    (n_whole_number_columns,) = con.execute(query("integer_id_columns")).fetchall()[0]
    if n_whole_number_columns:
        for sql in statements("text_ids"):
            cursor = con.execute(sql)
            if cursor.description:
                cursor.fetchall()


def run_statement(
    con: duckdb.DuckDBPyConnection, name: str, frames: dict[str, pl.DataFrame] | None = None, params: dict | None = None
) -> list[tuple]:
    """Run the statements of `statements/<name>.sql` in order, with `frames` registered under their names (and
    unregistered after) and bound `params`; returns the rows the last one returns (a RETURNING clause), if any.
    A frame with text ids first makes the warehouse's id columns text (`ids_as_text`).
    """
    frames = frames or {}
    if any(frame.schema.get(column) == pl.String for frame in frames.values() for column in ID_COLUMNS):
        ids_as_text(con)
    for view, frame in frames.items():
        con.register(view, frame.to_arrow())
    try:
        rows: list[tuple] = []
        for sql in statements(name):
            # each statement is given the parameters it names: DuckDB refuses a named parameter it does not use
            bound = {key: value for key, value in (params or {}).items() if key in sql.named_parameters}
            cursor = con.execute(sql, bound) if bound else con.execute(sql)
            rows = cursor.fetchall() if cursor.description else []
        return rows
    finally:
        for view in frames:
            con.unregister(view)
