"""MovieLens archive layouts: which files hold the ratings and the items, and how to parse them.

Every parser returns the same two frames whatever the layout:

- ratings: `user_id` Int64, `item_id` Int64, `rating` Float32, `timestamp` Int64 (Unix seconds);
- items: `item_id` Int64, `title` String, `genres` List[String], `year` Int32 (null when the title has none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

RATINGS_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}

# ml-100k's u.item carries 19 genre flags; u.genre names them in this order.
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_YEAR_AT_END = r"\((\d{4})\)\s*$"


class RatingsFormatError(ValueError):
    """A ratings or items file does not have the shape its layout promises."""


@dataclass(frozen=True)
class Layout:
    """One MovieLens file layout, recognised by the name of its ratings file."""

    name: str
    ratings_file: str
    items_file: str
    read_ratings: Callable[[Path], pl.DataFrame]
    read_items: Callable[[Path], pl.DataFrame]
    description: str


def _checked_numeric(raw: pl.DataFrame, file: Path, first_line: int) -> pl.DataFrame:
    """Cast the all-string columns of `raw` to RATINGS_SCHEMA, naming the first value that fails.

    Args:
        raw: the four rating columns, read as strings.
        file: the file they came from, for the error message.
        first_line: the file's line number of `raw`'s first row (2 when there is a header).

    Returns:
        The typed ratings.

    Raises:
        RatingsFormatError: naming file, line, field and value of the first unparsable or missing value.
    """
    typed = raw.with_columns(pl.col(name).str.strip_chars().cast(dtype, strict=False) for name, dtype in RATINGS_SCHEMA.items())
    bad_rows = typed.select(pl.any_horizontal(pl.all().is_null()).arg_true())
    if bad_rows.height:
        row = bad_rows.item(0, 0)
        for name in RATINGS_SCHEMA:
            if typed[name][row] is None:
                raise RatingsFormatError(
                    f"{file.name} line {row + first_line}: field {name!r} is {raw[name][row]!r}, expected a number"
                )
    return typed


def _read_delimited_ratings(path: Path, separator: str, has_header: bool, width: int, keep: list[int]) -> pl.DataFrame:
    """Read a ratings file as strings, keep columns `keep` (of `width`), and type-check them."""
    try:
        raw = pl.read_csv(
            path,
            separator=separator,
            has_header=has_header,
            new_columns=[f"c{i}" for i in range(width)] if not has_header else None,
            infer_schema=False,
            quote_char=None,
        )
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise RatingsFormatError(f"{path.name}: cannot be read as a {separator!r}-separated ratings file: {exc}") from exc
    if raw.width != width:
        raise RatingsFormatError(f"{path.name}: has {raw.width} columns, expected {width}")
    raw = raw.select(pl.col(raw.columns[i]).alias(name) for i, name in zip(keep, RATINGS_SCHEMA))
    return _checked_numeric(raw, path, first_line=2 if has_header else 1)


def read_u_data(path: Path) -> pl.DataFrame:
    """ml-100k `u.data`: tab-separated `user item rating timestamp`, no header."""
    return _read_delimited_ratings(path, "\t", has_header=False, width=4, keep=[0, 1, 2, 3])


def read_ratings_dat(path: Path) -> pl.DataFrame:
    """ml-1m / ml-10m `ratings.dat`: `UserID::MovieID::Rating::Timestamp`, no header.

    polars only splits on single bytes, so `::` is read as `:` with an empty column between fields.
    """
    return _read_delimited_ratings(path, ":", has_header=False, width=7, keep=[0, 2, 4, 6])


def read_ratings_csv(path: Path) -> pl.DataFrame:
    """ml-20m and later `ratings.csv`: header `userId,movieId,rating,timestamp`."""
    expected = ["userId", "movieId", "rating", "timestamp"]
    header = pl.read_csv(path, n_rows=0).columns
    if header != expected:
        raise RatingsFormatError(f"{path.name} line 1: header is {','.join(header)}, expected {','.join(expected)}")
    return _read_delimited_ratings(path, ",", has_header=True, width=4, keep=[0, 1, 2, 3])


def _decode(path: Path) -> str:
    """Text of a MovieLens items file: UTF-8 where it is valid, else Latin-1 (ml-100k, ml-1m)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _with_year(items: pl.DataFrame) -> pl.DataFrame:
    return items.with_columns(year=pl.col("title").str.extract(_YEAR_AT_END, 1).cast(pl.Int32)).select(
        "item_id", "title", "genres", "year"
    )


def read_u_item(path: Path) -> pl.DataFrame:
    """ml-100k `u.item`: pipe-separated, Latin-1; id, title, dates, URL, then 19 genre flags."""
    genre_file = path.with_name("u.genre")
    genres = ML_100K_GENRES
    if genre_file.exists():
        names = [line.split("|")[0] for line in _decode(genre_file).splitlines() if line.strip()]
        genres = tuple(names) if len(names) == len(ML_100K_GENRES) else genres
    width = 5 + len(genres)
    raw = pl.read_csv(
        _decode(path).encode(),
        separator="|",
        has_header=False,
        new_columns=[f"c{i}" for i in range(width)],
        infer_schema=False,
        quote_char=None,
    )
    flags = [pl.when(pl.col(f"c{5 + i}") == "1").then(pl.lit(name)) for i, name in enumerate(genres)]
    items = raw.select(
        item_id=pl.col("c0").cast(pl.Int64),
        title=pl.col("c1"),
        genres=pl.concat_list(flags).list.drop_nulls(),
    )
    return _with_year(items)


def _split_genres(column: str) -> pl.Expr:
    """`Action|Comedy` to a list; `(no genres listed)` to an empty list."""
    return pl.col(column).str.split("|").list.filter(pl.element() != "(no genres listed)")


def read_movies_dat(path: Path) -> pl.DataFrame:
    """ml-1m / ml-10m `movies.dat`: `MovieID::Title::Genres` (titles may contain `:`)."""
    lines = pl.Series("line", [line for line in _decode(path).splitlines() if line])
    parts = lines.str.splitn("::", 3).struct.rename_fields(["id", "title", "genres"]).struct.unnest()
    items = parts.select(item_id=pl.col("id").cast(pl.Int64), title="title", genres=_split_genres("genres"))
    return _with_year(items)


def read_movies_csv(path: Path) -> pl.DataFrame:
    """ml-20m and later `movies.csv`: `movieId,title,genres`, quoted UTF-8."""
    raw = pl.read_csv(path, infer_schema=False)
    items = raw.select(item_id=pl.col("movieId").cast(pl.Int64), title="title", genres=_split_genres("genres"))
    return _with_year(items)


LAYOUTS: tuple[Layout, ...] = (
    Layout("ml-100k", "u.data", "u.item", read_u_data, read_u_item, "u.data (tab, no header) + u.item"),
    Layout("ml-1m/10m", "ratings.dat", "movies.dat", read_ratings_dat, read_movies_dat, "ratings.dat (::) + movies.dat"),
    Layout(
        "csv", "ratings.csv", "movies.csv", read_ratings_csv, read_movies_csv,
        "ratings.csv (userId,movieId,rating,timestamp) + movies.csv: ml-20m, 25m, 32m, latest",
    ),
)  # fmt: skip


def detect_layout(member_names: list[str]) -> tuple[Layout, str, str | None]:
    """Pick the layout whose ratings file the archive holds (the shallowest match wins).

    Args:
        member_names: the archive's member paths.

    Returns:
        The layout, the member path of its ratings file and of its items file (None when absent).

    Raises:
        RatingsFormatError: listing the archive's files and the layouts understood, when none matches.
    """
    by_depth = sorted(member_names, key=lambda name: (name.count("/"), name))
    for layout in LAYOUTS:
        ratings = next((m for m in by_depth if m.rsplit("/", 1)[-1] == layout.ratings_file), None)
        if ratings is not None:
            folder = ratings.rsplit("/", 1)[0] + "/" if "/" in ratings else ""
            items = folder + layout.items_file
            return layout, ratings, items if items in member_names else None
    shown = ", ".join(member_names[:20]) + (f", ... ({len(member_names)} files)" if len(member_names) > 20 else "")
    understood = "; ".join(f"{layout.name}: {layout.description}" for layout in LAYOUTS)
    raise RatingsFormatError(f"no ratings file of a known layout; the archive holds: {shown}. Layouts understood: {understood}")
