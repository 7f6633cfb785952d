"""A team's own interactions as a source: a delimited text file, a Parquet file, a DuckDB table or query, or a zip
archive or folder holding one interactions file and, optionally, one items file.

What kind a source is comes from its bytes (a zip, Parquet and DuckDB file each start with their own mark), not
from its name; in a zip or folder the interactions file is the one file whose columns resolve (user and item
found), the items file the other one with an id and a title or name column. `ReadSettings` are the config's
settings for all of this; they are part of the parse's cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from tasks.ingest.columns import ROLES, ColumnError, normal_name, resolve_columns
from tasks.ingest.dialect import DialectError, sniff
from tasks.ingest.interactions import CheckedInteractions, Feedback, check_interactions
from tasks.ingest.tables import RawTable, TableError, read_csv, read_duckdb, read_parquet, read_text, utf8_file

log = logging.getLogger(__name__)

SourceKind = Literal["zip", "parquet", "duckdb", "text", "folder"]
# Files of an archive or folder that are never data.
NOT_DATA = re.compile(
    r"(^|/)(readme|license|licence|changelog|\.)[^/]*$|\.(md|html?|pdf|json|xml|ya?ml)$|__MACOSX/", re.I
)
_ITEM_ID = ("id", "itemid", "itemids", "ids", "movieid", "artistid", "animeid", "animeids", "productid", "sku")
_TITLE = ("title", "name", "itemname", "productname", "movietitle")
_GENRES = ("genres", "genre", "tags", "categories", "category")
_YEAR_AT_END = r"\((\d{4})\)\s*$"


@dataclass(frozen=True)
class ReadSettings:
    """How to read a source that is not a MovieLens archive (the config's fields of the same names)."""

    columns: Mapping[str, str | None]  # role -> a header name or a 1-based position
    feedback: Feedback | None = None
    rating_scale: tuple[float, float] | None = None
    member: str | None = None  # source_member: the interactions file of a zip or folder
    table: str | None = None  # source_table
    query: str | None = None  # source_query
    items: str | None = None  # an items file beside the source
    item_id_column: str | None = None
    item_title_column: str | None = None

    @property
    def key(self) -> str:
        """What the parse depends on besides the source's bytes: its cache folder is `<sha256>-<key>`."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def any_set(self) -> str | None:
        """The first setting given (as its flag), or None when none is."""
        given = [f"--{role}-column" for role, value in self.columns.items() if value is not None]
        given += [f"--{flag}" for flag, value in self._flags().items() if value is not None]
        return given[0] if given else None

    def _flags(self) -> dict[str, object]:
        return {
            "feedback": self.feedback,
            "rating-scale": self.rating_scale,
            "source-member": self.member,
            "source-table": self.table,
            "source-query": self.query,
            "items": self.items,
            "item-id-column": self.item_id_column,
            "item-title-column": self.item_title_column,
        }


def read_settings(config: Any) -> ReadSettings:
    """How a `PipelineConfig` says to read a source that is not a MovieLens archive."""
    scale = config.rating_scale
    return ReadSettings(
        {role: getattr(config, f"{role}_column") for role in ROLES},
        config.feedback,
        (scale[0], scale[1]) if scale else None,
        config.source_member,
        config.source_table,
        config.source_query,
        str(config.items) if config.items is not None else None,
        config.item_id_column,
        config.item_title_column,
    )


def quick_problem(path: Path, settings: ReadSettings) -> str | None:
    """What makes a local file or folder of interactions unreadable that its first lines (or Parquet schema) show,
    in a fraction of a second: no separator, columns that do not resolve. None when the run may read it (a zip or
    DuckDB file is checked by the run)."""
    if settings.items is not None and not Path(settings.items).is_file():
        return f"items (--items): no such file {settings.items!r}; expected a file of item ids and titles"
    kind = source_kind(path)
    if kind in ("zip", "duckdb"):
        return None
    try:
        if kind == "folder":
            files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}
            choose_files(files, settings)
            return None
        header, n_columns = _header(path, path.name)
        resolve_columns(header, n_columns, settings.columns)
    except (TableError, ColumnError, DialectError) as exc:
        return f"{str(path)!r}: {exc}" if not str(exc).startswith(path.name) else str(exc)
    except (OSError, pl.exceptions.PolarsError) as exc:
        return f"{str(path)!r}: cannot be read: {exc}"
    return None


def source_kind(path: Path) -> SourceKind:
    if path.is_dir():
        return "folder"
    with path.open("rb") as file:
        head = file.read(16)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[8:12] == b"DUCK":
        return "duckdb"
    return "text"


def read_table(path: Path, name: str, settings: ReadSettings, staged: Path, memory_mb: int) -> RawTable:
    """One file of interactions, read as its kind; a text file or a DuckDB table is copied to the Parquet file
    `staged` first, DuckDB holding at most `memory_mb`."""
    kind = source_kind(path)
    if kind != "duckdb" and (settings.table is not None or settings.query is not None):
        raise TableError(
            f"{name}: is {'a ' + kind if kind != 'text' else 'text'}, not a DuckDB database; source_table "
            "(--source-table) and source_query (--source-query) read a DuckDB file's tables"
        )
    try:
        if kind == "parquet":
            return read_parquet(path, name, settings.columns)
        if kind == "duckdb":
            return read_duckdb(path, name, settings.table, settings.query, settings.columns, staged, memory_mb)
        if kind in ("zip", "folder"):
            raise TableError(f"{name}: is a {kind} inside the source; expected a file of interactions")
        return read_text(path, name, settings.columns, staged, memory_mb)
    except DialectError as exc:
        raise TableError(str(exc)) from exc


def _header(path: Path, name: str) -> tuple[list[str] | None, int]:
    if source_kind(path) == "parquet":
        names = list(pl.read_parquet_schema(path))
        return names, len(names)
    dialect = sniff(path, name)
    return dialect.header, dialect.n_columns


def _find(header: list[str], given: str | None, names: tuple[str, ...]) -> int | None:
    normal = [normal_name(column) for column in header]
    if given is not None:
        return normal.index(normal_name(given)) if normal_name(given) in normal else None
    return next((i for i, column in enumerate(normal) if column in names), None)


def choose_files(files: Mapping[str, Path], settings: ReadSettings) -> tuple[tuple[str, Path], tuple[str, Path] | None]:
    """The interactions file of a zip archive or folder, and its items file when it has one.

    Raises:
        TableError: no file, or two files, of interactions (naming each and source_member), a source_member that
            is not there.
    """
    data = {name: path for name, path in sorted(files.items()) if not NOT_DATA.search(name)}
    interactions, tried = [], {}
    for name, path in data.items():
        try:
            header, n_columns = _header(path, name)
            resolve_columns(header, n_columns, settings.columns)
            interactions.append(name)
        except (ColumnError, DialectError, OSError, pl.exceptions.PolarsError) as exc:
            tried[name] = str(exc)
    if settings.member is not None:
        named = [n for n in data if n == settings.member or n.rsplit("/", 1)[-1] == settings.member]
        if len(named) != 1:
            raise TableError(
                f"source_member (--source-member) is {settings.member!r}, which is not one of its files: "
                + ", ".join(data)
            )
        interactions = named
    if len(interactions) > 1:
        raise TableError(
            f"holds {len(interactions)} files of interactions, {', '.join(interactions)}; name the one to read with "
            "source_member (--source-member NAME)"
        )
    if not interactions:
        why = "; ".join(f"{name}: {reason}" for name, reason in tried.items()) or "no data files"
        raise TableError(f"holds no file of interactions ({why})")
    chosen = interactions[0]
    items = [name for name in data if name != chosen and name in tried and _is_items(data[name], name, settings)]
    if len(items) > 1:
        log.warning("%s could each be the items file; none is used (name one with --items)", items)
    return (chosen, data[chosen]), ((items[0], data[items[0]]) if len(items) == 1 else None)


def _is_items(path: Path, name: str, settings: ReadSettings) -> bool:
    try:
        header, _ = _header(path, name)
    except (DialectError, OSError, pl.exceptions.PolarsError):
        return False
    return (
        bool(header)
        and _find(header or [], settings.item_id_column, _ITEM_ID) is not None
        and (_find(header or [], settings.item_title_column, _TITLE) is not None)
    )


def read_items(path: Path, name: str, settings: ReadSettings, id_type: pl.DataType) -> pl.DataFrame:
    """An items file as the pipeline's items (`item_id`, `title`, `genres`, `year`): its id and title columns by
    setting or by name (id/itemid/..., title/name), genres from a genre(s)/tags column split at `|` or `,`.

    Raises:
        TableError: no id or no title column, naming the header and the settings.
    """
    if source_kind(path) == "parquet":
        frame = pl.read_parquet(path).cast(pl.String)
    else:
        frame = _text_items(path, name)
    header = frame.columns
    id_at, title_at = (
        _find(header, settings.item_id_column, _ITEM_ID),
        _find(header, settings.item_title_column, _TITLE),
    )
    if id_at is None or title_at is None:
        missing = "id" if id_at is None else "title"
        raise TableError(
            f"{name}: items file with header {','.join(header)} has no {missing} column; name it with "
            f"item_{missing}_column (--item-{missing}-column)"
        )
    genres_at = _find(header, None, _GENRES)
    genres = _genres(header[genres_at]) if genres_at is not None else pl.lit([], pl.List(pl.String))
    items = frame.select(
        item_id=pl.col(header[id_at]).str.strip_chars().cast(id_type, strict=False),
        title=pl.col(header[title_at]),
        genres=genres,
    ).filter(pl.col("item_id").is_not_null())
    n_repeated = items.height - items["item_id"].n_unique()
    if n_repeated:
        log.warning("%s: %d item ids are listed more than once; the first row of each is used", name, n_repeated)
        items = items.unique("item_id", keep="first", maintain_order=True)
    return items.with_columns(year=pl.col("title").str.extract(_YEAR_AT_END, 1).cast(pl.Int32))


def _genres(column: str) -> pl.Expr:
    return (
        pl.col(column)
        .fill_null("")
        .str.replace_all(r"\s*[|,]\s*", "|")
        .str.split("|")
        .list.eval(pl.element().str.strip_chars())
        .list.filter(pl.element() != "")
    )


def _text_items(path: Path, name: str) -> pl.DataFrame:
    """An items text file, every field as text; lines that cannot be read are skipped with a warning (titles are
    a nicety: a bad line costs one title, not the run)."""
    import duckdb

    dialect = sniff(path, name)
    header = dialect.header or [f"column{i + 1}" for i in range(dialect.n_columns)]
    columns = {f"c{i}": "VARCHAR" for i in range(dialect.n_columns)}
    with utf8_file(path, dialect) as readable, duckdb.connect() as con:
        frame = read_csv(con, readable, dialect, columns, ignore_errors=True).pl()
    return frame.rename(dict(zip(frame.columns, header, strict=True)))


def read_own_data(
    files: Mapping[str, Path], settings: ReadSettings, work: Path, memory_mb: int
) -> tuple[CheckedInteractions, tuple[str, pl.DataFrame] | None, str]:
    """The checked interactions of a source's files (one file, or a zip's or folder's), written to `work`, its
    items file's name and items when it has one (or `settings.items`), and the name of the interactions file.

    Raises:
        TableError: see `choose_files`, `read_table`, `check_interactions`, `read_items`.
    """
    if len(files) == 1 and settings.member is None:
        (name, path), items_file = next(iter(files.items())), None
    else:
        (name, path), items_file = choose_files(files, settings)
    table = read_table(path, name, settings, work / "staged.parquet", memory_mb)
    checked = check_interactions(table, work / "checked.parquet", settings.feedback, settings.rating_scale)
    if settings.items is not None:
        if not Path(settings.items).is_file():
            raise TableError(
                f"items (--items): no such file {settings.items!r}; expected a file of item ids and titles"
            )
        items_file = (settings.items, Path(settings.items))
    if items_file is None:
        return checked, None, name
    items = read_items(items_file[1], items_file[0], settings, checked.item_id_type)
    return checked, (items_file[0], items), name


def items_coverage(ratings: pl.LazyFrame, items: pl.DataFrame) -> dict[str, int]:
    """How many of the rated items the items file describes, of how many, in how many rows."""
    rated = ratings.select(pl.col("item_id").unique()).collect(engine="streaming")
    described = rated.join(items.select("item_id"), on="item_id").height
    return {"items_described": described, "items_rated": rated.height, "items_rows": items.height}


def say_coverage(meta: Mapping, source: str) -> None:
    """A warning when fewer than half of the rated items have an items row (titles of another catalogue)."""
    if "items_described" in meta and meta["items_described"] < meta["items_rated"] / 2:
        log.warning(
            "%s: only %d of the %d rated items have a row in the items file %s (%d rows); the others have no title. "
            "Are its ids the interactions' ids?",
            source,
            meta["items_described"],
            meta["items_rated"],
            meta.get("items_file"),
            meta["items_rows"],
        )
