"""Read a team's interactions as they are stored: a delimited text file (DuckDB's CSV reader), a Parquet file
(polars) or a DuckDB table or read-only query. Each gives a `RawTable`: one column per role the file has
(tasks/ingest/columns.py), typed as the file types it, with the line or row each came from; the rows are
checked afterwards (tasks/ingest/interactions.py).

No reader holds the rows: a text file or a DuckDB table is copied to a Parquet file in the parse's folder a batch
at a time, and a `RawTable` is a lazy query over Parquet that the checks run with polars' streaming engine."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ingest.columns import ColumnError, resolve_columns
from tasks.ingest.dialect import Dialect, sniff

NUMERIC_ROLES = ("rating", "weight")
_CAST_VALUE = re.compile(r'Could not convert string "(.*)" to')
STAGE_BATCH_ROWS = 1 << 20  # rows of a DuckDB source copied at a time


class TableError(ValueError):
    """The interactions cannot be read: the message names the file, the line or column, and what was expected."""


@dataclass(frozen=True)
class RawTable:
    """Interactions as stored: `row` (the n-th row read, from 1) and a column per role, as a lazy query over a
    Parquet file."""

    frame: pl.LazyFrame
    names: dict[str, str]  # role -> the column's name in the source ("column 2" without a header)
    name: str  # the file (or table) as messages call it
    where: str  # "line" for text, "row" for Parquet and tables
    n_rejected: int = 0  # rows the reader could not split or type
    rejected: list[str] = field(default_factory=list)  # the first few, as "x.csv line 7: ..."
    header: list[str] | None = None
    # the file's line of each row number (for text: blank and refused lines skipped), found only for messages
    locate: Callable[[list[int]], list[int]] | None = None

    def where_is(self, rows: list[int]) -> list[str]:
        """`x.csv line 7` (or `x.parquet row 7`) for each row number."""
        numbers = self.locate(rows) if self.locate is not None else rows
        return [f"{self.name} {self.where} {number}" for number in numbers]


def _column_names(header: list[str] | None, n_columns: int) -> list[str]:
    return header if header is not None else [f"column {i + 1}" for i in range(n_columns)]


def _rejected(
    con: duckdb.DuckDBPyConnection, name: str, names: list[str], dialect: Dialect
) -> tuple[set[int], list[str]]:
    """The lines DuckDB's reader refused, and the first few in words."""
    rows = con.execute(
        "SELECT line, column_idx, error_type, error_message FROM reader_rejects ORDER BY line"
    ).fetchall()
    said = []
    for line, column, kind, message in rows[:5]:
        if kind == "CAST":
            value = match.group(1) if (match := _CAST_VALUE.search(message)) else message
            said.append(f"{name} line {line}: field {names[column - 1]!r} is {value!r}, expected a number")
        elif kind in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
            found = re.search(r"Found: (\d+)", message)
            said.append(
                f"{name} line {line}: has {found.group(1) if found else 'another number of'} fields, expected "
                f"{dialect.n_columns} separated by {dialect.separator_name}"
            )
        else:
            said.append(f"{name} line {line}: {message.splitlines()[0]}")
    return {row[0] for row in rows}, said


@contextmanager
def utf8_file(path: Path, dialect: Dialect) -> Iterator[Path]:
    """`path` when it is UTF-8, else a UTF-8 copy of it for as long as the block runs: DuckDB's CSV reader reads
    UTF-8 only. Lines are the same in both, so messages number the original's."""
    if dialect.encoding == "utf-8":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recs-utf8-") as folder:
        copy = Path(folder) / path.name
        with path.open(encoding=dialect.encoding, newline="") as src, copy.open("w", encoding="utf-8") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        yield copy


def read_csv(
    con: duckdb.DuckDBPyConnection, path: Path, dialect: Dialect, columns: dict[str, str], **options: Any
) -> duckdb.DuckDBPyRelation:
    """DuckDB's CSV reader over a UTF-8 file (`utf8_file`) as `dialect` describes it, `columns` typed as given."""
    return con.read_csv(
        str(path),
        delimiter=dialect.separator,
        header=dialect.header is not None,
        columns=columns,
        auto_detect=False,
        quotechar=dialect.quote,  # DuckDB's sniffer's: none where a lone " is part of a value
        escapechar=dialect.quote,
        encoding="utf-8",
        compression="none",  # by its bytes: a downloaded source is cached as <sha256>.zip, whatever it holds
        **options,
    )


def read_text(path: Path, name: str, given: Mapping[str, str | int | None], staged: Path, memory_mb: int) -> RawTable:
    """A delimited text file's interactions, through DuckDB's CSV reader (quotes, `::`, Latin-1) into the Parquet
    file `staged`, holding at most `memory_mb`; lines it cannot split, or whose rating or weight is not a number,
    are counted with their line and field."""
    dialect = sniff(path, name)
    roles = _roles(dialect.header, dialect.n_columns, given, name)
    names = _column_names(dialect.header, dialect.n_columns)
    types = {f"c{i}": "VARCHAR" for i in range(dialect.n_columns)}
    for role in NUMERIC_ROLES:
        if role in roles:
            types[f"c{roles[role]}"] = "DOUBLE"
    with utf8_file(path, dialect) as readable, duckdb.connect(config=_bounded(memory_mb, staged)) as con:
        try:
            relation = read_csv(
                con,
                readable,
                dialect,
                types,
                store_rejects=True,
                rejects_table="reader_rejects",
                rejects_scan="reader_scans",
            )
            relation.project(", ".join(f'c{index} AS "{role}"' for role, index in roles.items())).to_parquet(
                str(staged)
            )
        except duckdb.Error as exc:
            raise TableError(f"{name}: cannot be read as {dialect.separator_name}-separated text: {exc}") from exc
        refused, rejected = _rejected(con, name, names, dialect)

    def locate(rows: list[int]) -> list[int]:
        lines = line_numbers(path, dialect, refused)
        return [int(lines[row - 1]) for row in rows]

    by_role = {role: names[index] for role, index in roles.items()}
    return RawTable(
        _numbered(pl.scan_parquet(staged)), by_role, name, "line", len(refused), rejected, dialect.header, locate
    )


def _bounded(memory_mb: int, staged: Path) -> dict[str, str | bool | int | float | list[str]]:
    """DuckDB settings for copying a source to `staged`: at most `memory_mb` held, spilling beside it (into the
    parse's `spill/`, which the parse's next out-of-core step removes; never beside a team's database file); row i
    of the copy is the i-th row read."""
    return {
        "memory_limit": f"{memory_mb}MB",
        "temp_directory": str(staged.parent / "spill"),
        "preserve_insertion_order": True,
    }


def _numbered(frame: pl.LazyFrame) -> pl.LazyFrame:
    """`frame` with `row`: the n-th row read, from 1."""
    return frame.with_row_index("row", offset=1).with_columns(pl.col("row").cast(pl.Int64))


def line_numbers(path: Path, dialect: Dialect, refused: set[int]) -> pl.Series:
    """The numbers of the lines DuckDB's reader accepted, in order: not blank, not the header, not `refused`."""
    lines = pl.scan_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["text"],
        infer_schema=False,
        encoding="utf8-lossy",
    )
    numbered = lines.with_row_index("line", offset=1).filter(pl.col("text").str.strip_chars() != "")
    numbered = numbered.slice(1 if dialect.header is not None else 0)
    if refused:
        numbered = numbered.filter(~pl.col("line").is_in(sorted(refused)))
    return numbered.select(pl.col("line").cast(pl.Int64)).collect(engine="streaming").to_series()


def _roles(
    header: list[str] | None, n_columns: int, given: Mapping[str, str | int | None], name: str
) -> dict[str, int]:
    try:
        return resolve_columns(header, n_columns, given)
    except ColumnError as exc:
        raise TableError(f"{name}: {exc}") from exc


_ID_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.String)
_EXPECTED = {
    "user": "whole numbers or text (ids)",
    "item": "whole numbers or text (ids)",
    "rating": "numbers",
    "weight": "numbers",
    "timestamp": "whole numbers (Unix seconds), dates or times",
}


def _type_problem(role: str, dtype: pl.DataType) -> bool:
    if role in ("user", "item"):
        return dtype not in _ID_TYPES and not isinstance(dtype, pl.Categorical)
    if role in NUMERIC_ROLES:
        return not dtype.is_numeric()
    return not (dtype.is_integer() or dtype.is_temporal() or dtype == pl.String)


def from_frame(frame: pl.LazyFrame, name: str, given: Mapping[str, str | int | None]) -> RawTable:
    """A Parquet file's or a DuckDB table's interactions: columns found by name, each checked for its type."""
    schema = frame.collect_schema()
    columns = schema.names()
    roles = _roles(columns, len(columns), given, name)
    for role, index in roles.items():
        column = columns[index]
        if _type_problem(role, schema[column]):
            raise TableError(
                f"{name}: column {column!r} (the {role}) holds {schema[column]}, expected {_EXPECTED[role]}"
            )
    picked = frame.select(pl.col(columns[index]).alias(role) for role, index in roles.items())
    picked = picked.with_columns(
        *(pl.col(role).cast(pl.Float64) for role in NUMERIC_ROLES if role in roles),
        *(
            pl.col(role).cast(pl.String)
            for role in ("user", "item")
            if isinstance(schema[columns[roles[role]]], pl.Categorical)
        ),
    )
    return RawTable(_numbered(picked), {role: columns[i] for role, i in roles.items()}, name, "row", header=columns)


def read_parquet(path: Path, name: str, given: Mapping[str, str | int | None]) -> RawTable:
    try:
        pl.read_parquet_schema(path)  # a file that is not Parquet fails here, not in the middle of the checks
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise TableError(f"{name}: cannot be read as Parquet: {exc}") from exc
    return from_frame(pl.scan_parquet(path), name, given)


def read_duckdb(
    path: Path, name: str, table: str | None, query: str | None, given: Mapping, staged: Path, memory_mb: int
) -> RawTable:
    """A table (`table`) or the result of one read-only SELECT (`query`) of the DuckDB file at `path`, opened
    read-only (nothing in it can be changed by reading it), copied to the Parquet file `staged` a batch at a time."""
    if (table is None) == (query is None):
        raise TableError(
            f"{name} is a DuckDB database: name the table to read with source_table (--source-table NAME), or give "
            "one SELECT with source_query (--source-query 'SELECT ...')"
        )
    try:
        con = duckdb.connect(str(path), read_only=True, config=_bounded(memory_mb, staged))
    except duckdb.Error as exc:
        raise TableError(f"{name}: cannot be opened as a DuckDB database: {exc}") from exc
    with con:
        # the query reads this database and nothing else: no files, URLs or extensions through it (their contents
        # would reach the published ids)
        con.execute("SET enable_external_access = false")
        if query is not None:
            _refuse_writes(con, query)
        try:
            relation = con.table(table) if table is not None else con.sql(query or "")
            _write_batches(relation.to_arrow_reader(STAGE_BATCH_ROWS), staged)
        except duckdb.CatalogException as exc:
            tables = [row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
            raise TableError(
                f"{name}: has no table {table!r}; its tables: {', '.join(tables) or 'none'} (source_table, --source-table)"
                if table is not None
                else f"{name}: source_query (--source-query) fails: {str(exc).splitlines()[0]}"
            ) from exc
        except duckdb.Error as exc:
            raise TableError(f"{name}: source_query (--source-query) fails: {str(exc).splitlines()[0]}") from exc
    return from_frame(pl.scan_parquet(staged), f"{name} ({'table ' + table if table else 'source_query'})", given)


def _write_batches(batches: pa.RecordBatchReader, out: Path) -> None:
    """Every batch of `batches` to the Parquet file `out`, one at a time."""
    with pq.ParquetWriter(out, batches.schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _refuse_writes(con: duckdb.DuckDBPyConnection, query: str) -> None:
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise TableError(
            f"source_query (--source-query) is not SQL DuckDB can read: {str(exc).splitlines()[0]}"
        ) from exc
    kinds = [statement.type.name for statement in statements]
    if kinds != ["SELECT"]:
        raise TableError(
            f"source_query (--source-query) is {' + '.join(kinds) or 'empty'}; expected one SELECT: the source is "
            "only read"
        )
