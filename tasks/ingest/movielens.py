"""MovieLens archive layouts: which files hold the ratings and the items, and how to parse them.

Every parser returns the same two frames whatever the layout:

- ratings: `user_id` Int64, `item_id` Int64, `rating` Float32, `timestamp` Int64 (Unix seconds);
- items: `item_id` Int64, `title` String, `genres` List[String], `year` Int32 (null when the title has none).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

RATINGS_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}

# ml-100k's u.item carries 19 genre flags; u.genre names them in this order.
ML_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_YEAR_AT_END = r"\((\d{4})\)\s*$"


class RatingsFormatError(ValueError):
    """A ratings or items file does not have the shape its layout promises."""


@dataclass(frozen=True)
class Layout:
    """One MovieLens file layout, recognised by the name of its ratings file."""

    name: str
    ratings_file: str
    items_file: str
    read_ratings: Callable[[Path], CheckedRatings]
    read_items: Callable[[Path], pl.DataFrame]
    description: str


# MovieLens ratings are whole stars 1-5 (100k, 1m) or half stars 0.5-5 (10m and later).
RATING_SCALE = (0.5, 5.0)

# Control characters other than tab, line feed and carriage return: never in MovieLens text.
CONTROL_CHARACTERS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"

# A line is read whole (this byte never occurs in MovieLens text) and split by the layout's separator, so
# a row with too many or too few fields is found and named by its line like any other bad row.
_WHOLE_LINE = "\x1f"
_RAW_FIELDS = [f"field_{i}" for i in range(len(RATINGS_SCHEMA))]


@dataclass(frozen=True)
class CheckedRatings:
    """A MovieLens ratings file read and checked by polars' streaming engine into a parquet file beside it, a batch
    at a time (never held whole): every row with its `line` and whether it is `ok`; and where and why the bad rows
    failed."""

    path: Path  # `line`, `ok` and RATINGS_SCHEMA's columns
    n_bad_rows: int
    bad_row_examples: list[str]  # the first few, as "u.data line 7: field 'rating' is 'NaN', expected ..."

    def good(self) -> pl.LazyFrame:
        """The valid rows (RATINGS_SCHEMA's columns), as a query over the file."""
        return pl.scan_parquet(self.path).filter("ok").select(*RATINGS_SCHEMA)


@dataclass(frozen=True)
class ParsedRatings:
    """A ratings file's valid rows, and where and why the other rows failed."""

    ratings: pl.DataFrame  # RATINGS_SCHEMA
    n_bad_rows: int
    bad_row_examples: list[str]  # the first few, as "u.data line 7: field 'rating' is 'NaN', expected ..."


def _unquoted(field: str) -> pl.Expr:
    """A raw field without surrounding blanks, a UTF-8 byte-order mark or CSV quotes (`"196"`). Stripping the quotes
    (rather than matching a pair by pattern) keeps the 20M-line parse at 3 s instead of 5.6; a number is a number
    whatever quotes an export put around it."""
    return pl.col(field).str.strip_chars(' \t\ufeff"')


def _problems(separator: str) -> pl.Expr:
    """What is wrong with each row of `_checked_rows`, in words (evaluated on the few bad rows only)."""
    width, raw = len(RATINGS_SCHEMA), _RAW_FIELDS
    low, high = RATING_SCALE
    n_fields = pl.col("text").str.count_matches(separator, literal=True) + 1
    problem = (
        pl.when(pl.col("text").str.contains("\ufffd", literal=True))
        .then(pl.lit("holds bytes that are not UTF-8 text (shown as U+FFFD)"))
        .when(pl.col("text").str.contains(CONTROL_CHARACTERS))
        .then(
            pl.format(
                "holds the control character 0x{}",
                pl.col("text").str.extract(f"({CONTROL_CHARACTERS})").str.encode("hex"),
            )
        )
        .when(pl.col(f"field_{width - 1}").is_null() | pl.col(f"field_{width}").is_not_null())
        .then(pl.format("has {} fields, expected {} separated by {}", n_fields, pl.lit(width), pl.lit(repr(separator))))
    )
    for name, field in zip(RATINGS_SCHEMA, raw, strict=False):
        expected = "a number" if name == "rating" else "a whole number"
        if name != "rating":  # digits alone that did not cast: a whole number past 64 bits
            problem = problem.when(pl.col(name).is_null() & _unquoted(field).str.contains(r"^[+-]?\d+$")).then(
                pl.format(f"field '{name}' is '{{}}', which does not fit in a 64-bit integer", _unquoted(field))
            )
        problem = problem.when(pl.col(name).is_null()).then(
            pl.format(f"field '{name}' is '{{}}', expected {expected}", field)
        )
    return (
        problem.when(~pl.col("rating").is_finite())
        .then(pl.format("field 'rating' is '{}', expected a finite number", pl.col(raw[2])))
        .when(~pl.col("rating").is_between(low, high))
        .then(pl.format(f"field 'rating' is '{{}}', expected a rating from {low:g} to {high:g}", pl.col(raw[2])))
        .otherwise(pl.lit("unreadable"))
    )


def _checked_rows(lines: pl.LazyFrame, separator: str, header_lines: int) -> pl.LazyFrame:
    """Number the lines, skip the header and blank lines, split and type the fields, and flag each row `ok`."""
    width, raw = len(RATINGS_SCHEMA), _RAW_FIELDS
    low, high = RATING_SCALE
    return (
        lines.with_row_index("line", offset=1)
        .filter((pl.col("line") > header_lines) & (pl.col("text").str.strip_chars() != ""))
        .with_columns(pl.col("text").str.strip_chars_end("\r").str.splitn(separator, width + 1).alias("fields"))
        .unnest("fields")
        .with_columns(
            _unquoted(field).cast(pl.Float64 if name == "rating" else dtype, strict=False).alias(name)
            for field, (name, dtype) in zip(raw, RATINGS_SCHEMA.items(), strict=False)
        )
        .with_columns(
            ok=pl.col(f"field_{width}").is_null()
            & pl.all_horizontal(pl.col(name).is_not_null() for name in RATINGS_SCHEMA)
            & pl.col("rating").is_between(low, high)  # false for NaN and infinities too
        )
    )


def _read_delimited_ratings(path: Path, separator: str, header_lines: int = 0) -> CheckedRatings:
    """Read `user item rating timestamp` rows separated by `separator`, checking every row, into a parquet file
    beside `path` (`CheckedRatings`).

    A row is bad when it has the wrong number of fields, a field that is not a number, or a rating that is
    NaN, infinite or off RATING_SCALE. Blank lines are skipped; line numbers count every line of the file.

    Raises:
        RatingsFormatError: the file is empty.
    """
    if path.stat().st_size == 0:
        raise RatingsFormatError(f"{path.name}: is empty, expected {separator!r}-separated ratings")
    check_text_encoding(path)
    # Bytes that are not UTF-8 are read as U+FFFD, so such a line is a bad row that says so (`_problems`).
    lines = pl.scan_csv(
        path,
        has_header=False,
        separator=_WHOLE_LINE,
        quote_char=None,
        new_columns=["text"],
        infer_schema=False,
        encoding="utf8-lossy",
    )
    # The streaming engine reads and checks the file in batches and writes them as it goes, keeping only the typed
    # columns: the process holds a few batches, whatever the file's size (collecting a 20M-line ratings.csv instead
    # took 0.9 GB; the in-memory engine 6.3 GB).
    checked = path.with_name(f"{path.name}.checked.parquet")
    try:
        _checked_rows(lines, separator, header_lines).select(
            "line", "ok", *(pl.col(name).cast(dtype) for name, dtype in RATINGS_SCHEMA.items())
        ).sink_parquet(checked, engine="streaming")
    except pl.exceptions.PolarsError as error:  # the whole-line byte itself in the file, or worse
        raise RatingsFormatError(
            f"{path.name}{_first_control_character(path) or f': cannot be read as text ({error})'}"
        ) from error
    bad = pl.scan_parquet(checked).filter(~pl.col("ok"))
    n_bad = bad.select(pl.len()).collect(engine="streaming").item()
    if n_bad == 0:
        return CheckedRatings(checked, 0, [])
    # The few bad rows are read again, whole, to say what is wrong with them.
    first_bad = bad.head(5).select("line").collect()["line"]
    examples = (
        _checked_rows(lines, separator, header_lines)
        .filter(pl.col("line").is_in(first_bad.implode()))
        .select(pl.format(f"{path.name} line {{}}: {{}}", "line", _problems(separator)))
        .collect()
    )
    return CheckedRatings(checked, n_bad, examples.to_series().to_list())


def check_text_encoding(path: Path) -> None:
    """Refuse UTF-16 and UTF-32 text (a byte-order mark, or NUL bytes in the first 64 KiB), naming the line.

    Raises:
        RatingsFormatError: the file's name, the line and what was found.
    """
    with path.open("rb") as file:
        head = file.read(1 << 16)
    for mark, encoding in ((b"\xff\xfe", "UTF-16 little-endian"), (b"\xfe\xff", "UTF-16 big-endian")):
        if head.startswith(mark):
            raise RatingsFormatError(
                f"{path.name} line 1: starts with the {encoding} byte-order mark; expected UTF-8 text: save it as UTF-8"
            )
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise RatingsFormatError(
            f"{path.name} line {line}: holds NUL bytes, as UTF-16 or binary data do; expected UTF-8 text"
        )


def _first_control_character(path: Path) -> str | None:
    """` line N: holds the control character 0x..` for the file's first one, or None (read in 1 MiB blocks)."""
    pattern = re.compile(CONTROL_CHARACTERS.encode())
    lines_before = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            found = pattern.search(block)
            if found:
                line = lines_before + block[: found.start()].count(b"\n") + 1
                return f" line {line}: holds the control character 0x{found.group()[0]:02x}"
            lines_before += block.count(b"\n")
    return None


def read_u_data(path: Path) -> CheckedRatings:
    """ml-100k `u.data`: tab-separated `user item rating timestamp`, no header."""
    return _read_delimited_ratings(path, "\t")


def read_ratings_dat(path: Path) -> CheckedRatings:
    """ml-1m / ml-10m `ratings.dat`: `UserID::MovieID::Rating::Timestamp`, no header."""
    return _read_delimited_ratings(path, "::")


RATINGS_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]


def ratings_csv_header_problem(name: str, first_line: str) -> str | None:
    """What is wrong with a `ratings.csv`'s first line (empty, or not its header), or None."""
    expected = ",".join(RATINGS_CSV_HEADER)
    if not first_line.strip():
        return f"{name}: is empty, expected the header {expected} and ratings"
    header = [field.strip().strip('"') for field in first_line.strip().split(",")]
    if header != RATINGS_CSV_HEADER:
        return f"{name} line 1: header is {','.join(header)}, expected {expected}"
    return None


def read_ratings_csv(path: Path) -> CheckedRatings:
    """ml-20m and later `ratings.csv`: header `userId,movieId,rating,timestamp`."""
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        if problem := ratings_csv_header_problem(path.name, file.readline()):
            raise RatingsFormatError(problem)
    return _read_delimited_ratings(path, ",", header_lines=1)


def _decode(path: Path) -> str:
    """Text of a MovieLens items file: UTF-8 where it is valid, else Latin-1 (ml-100k, ml-1m, hand-edited files)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text_lines(path: Path) -> pl.DataFrame:
    """The file's non-blank lines, `line` (numbered from 1 over every line) and `text` (without the line end)."""
    check_text_encoding(path)
    text = pl.Series("text", _decode(path).splitlines())
    return text.to_frame().with_row_index("line", offset=1).filter(pl.col("text").str.strip_chars() != "")


def _refuse_bad_items(path: Path, rows: pl.DataFrame, id_field: str, width: int, what: str) -> None:
    """Refuse an items file with a row of the wrong shape, an id that is not a whole number, or an id listed twice.

    Args:
        rows: `line`, `n_fields`, `raw_id` (as written), `item_id` (null where it is not a whole number).
        width: the fields a row must have; `what` says what they are.

    Raises:
        RatingsFormatError: the file, the line(s), the field and what was expected.
    """
    shape = rows.filter(pl.col("n_fields") != width)
    if shape.height:
        line, n = shape.row(0)[0], shape["n_fields"][0]
        raise RatingsFormatError(
            f"{path.name} line {line}: has {n} fields, expected {width} ({what})"
            + (f"; {shape.height - 1:,} more such lines" if shape.height > 1 else "")
        )
    bad_id = rows.filter(pl.col("item_id").is_null())
    if bad_id.height:
        line, raw = bad_id["line"][0], bad_id["raw_id"][0]
        digits = raw.strip().lstrip("+-").isdigit()
        expected = "which does not fit in a 64-bit integer" if digits else "expected a whole number"
        raise RatingsFormatError(f"{path.name} line {line}: field '{id_field}' is '{raw}', {expected}")
    repeated = (
        rows.filter(pl.col("item_id").is_duplicated())
        .group_by("item_id")
        .agg(pl.col("line").sort())
        .sort(pl.col("line").list.first())
    )
    if repeated.height:
        item, lines = repeated.row(0)
        raise RatingsFormatError(
            f"{path.name} lines {' and '.join(map(str, lines[:2]))}: item id {item} is listed twice; each item must be "
            f"listed once" + (f" ({repeated.height:,} ids are repeated)" if repeated.height > 1 else "")
        )


def _with_year(items: pl.DataFrame) -> pl.DataFrame:
    return items.with_columns(year=pl.col("title").str.extract(_YEAR_AT_END, 1).cast(pl.Int32)).select(
        "item_id", "title", "genres", "year"
    )


def _item_id(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Int64, strict=False)


def read_u_item(path: Path) -> pl.DataFrame:
    """ml-100k `u.item`: pipe-separated, Latin-1; id, title, dates, URL, then 19 genre flags."""
    genre_file = path.with_name("u.genre")
    genres: tuple[str, ...] = ML_100K_GENRES
    if genre_file.exists():
        names = [line.split("|")[0] for line in _decode(genre_file).splitlines() if line.strip()]
        genres = tuple(names) if len(names) == len(ML_100K_GENRES) else genres
    width = 5 + len(genres)
    rows = _text_lines(path).with_columns(fields=pl.col("text").str.split("|"))
    rows = rows.with_columns(n_fields=pl.col("fields").list.len(), raw_id=pl.col("fields").list.first())
    rows = rows.with_columns(item_id=_item_id("raw_id"))
    _refuse_bad_items(
        path, rows, "movie id", width, "movie id|title|release date|video release date|URL|19 genre flags"
    )
    flags = [pl.when(pl.col("fields").list.get(5 + i) == "1").then(pl.lit(name)) for i, name in enumerate(genres)]
    items = rows.select("item_id", title=pl.col("fields").list.get(1), genres=pl.concat_list(flags).list.drop_nulls())
    return _with_year(items)


def _split_genres(genres: str | pl.Expr) -> pl.Expr:
    """`Action|Comedy` to a list; `(no genres listed)` to an empty list."""
    return (
        (pl.col(genres) if isinstance(genres, str) else genres)
        .str.split("|")
        .list.filter(pl.element() != "(no genres listed)")
    )


def read_movies_dat(path: Path) -> pl.DataFrame:
    """ml-1m / ml-10m `movies.dat`: `MovieID::Title::Genres` (titles may contain `:`)."""
    rows = _text_lines(path).with_columns(
        parts=pl.col("text").str.splitn("::", 3), n_fields=pl.col("text").str.count_matches("::", literal=True) + 1
    )
    rows = rows.unnest("parts").rename({"field_0": "raw_id", "field_1": "title", "field_2": "genres"})
    rows = rows.with_columns(item_id=_item_id("raw_id"), n_fields=pl.col("n_fields").clip(upper_bound=3))
    _refuse_bad_items(path, rows, "MovieID", 3, "MovieID::Title::Genres")
    return _with_year(rows.select("item_id", "title", genres=_split_genres("genres")))


# One CSV field: quoted (a doubled quote inside stands for one) or bare.
_CSV_FIELD = r'("(?:[^"]|"")*"|[^,"]*)'
_MOVIES_CSV_ROW = f"^{_CSV_FIELD},{_CSV_FIELD},{_CSV_FIELD}$"


def _csv_value(column: str) -> pl.Expr:
    """A field of `_CSV_FIELD` as the value it stands for."""
    return pl.col(column).str.replace(r'^"(.*)"$', "$1").str.replace_all('""', '"', literal=True)


def read_movies_csv(path: Path) -> pl.DataFrame:
    """ml-20m and later `movies.csv`: header `movieId,title,genres`, then rows whose fields may be quoted."""
    expected = ["movieId", "title", "genres"]
    lines = _text_lines(path)
    if lines.height == 0:
        raise RatingsFormatError(f"{path.name}: is empty, expected the header {','.join(expected)} and movies")
    header = [name.strip().strip('"') for name in lines["text"][0].split(",")]
    if header != expected:
        raise RatingsFormatError(
            f"{path.name} line {lines['line'][0]}: header is {','.join(header)}, expected {','.join(expected)}"
        )
    rows = lines.slice(1).with_columns(
        pl.col("text").str.strip_chars_end("\r").str.extract_groups(_MOVIES_CSV_ROW).alias("parts")
    )
    rows = rows.unnest("parts").rename({"1": "raw_id", "2": "title", "3": "genres"})
    # A row the pattern does not match has the wrong number of fields (or a stray quote): counted for the message.
    rows = rows.with_columns(
        n_fields=pl.when(pl.col("raw_id").is_not_null()).then(3).otherwise(pl.col("text").str.count_matches(",") + 1),
        raw_id=pl.coalesce(_csv_value("raw_id"), pl.col("text").str.split(",").list.first()),
    )
    rows = rows.with_columns(item_id=_item_id("raw_id"))
    _refuse_bad_items(path, rows, "movieId", 3, "movieId,title,genres; a field holding a comma in double quotes")
    return _with_year(rows.select("item_id", title=_csv_value("title"), genres=_split_genres(_csv_value("genres"))))


LAYOUTS: tuple[Layout, ...] = (
    Layout("ml-100k", "u.data", "u.item", read_u_data, read_u_item, "u.data (tab, no header) + u.item"),
    Layout(
        "ml-1m/10m", "ratings.dat", "movies.dat", read_ratings_dat, read_movies_dat, "ratings.dat (::) + movies.dat"
    ),
    Layout(
        "csv",
        "ratings.csv",
        "movies.csv",
        read_ratings_csv,
        read_movies_csv,
        "ratings.csv (userId,movieId,rating,timestamp) + movies.csv: ml-20m, 25m, 32m, latest",
    ),
)


def holds_movielens_ratings(member_names: list[str]) -> bool:
    """Whether an archive holds a ratings file of a MovieLens layout (one or more: `detect_layout` says which)."""
    ratings_names = {layout.ratings_file for layout in LAYOUTS}
    return any(name.rsplit("/", 1)[-1] in ratings_names for name in member_names)


def detect_layout(member_names: list[str]) -> tuple[Layout, str, str | None]:
    """Find the one ratings file of a known layout in the archive, and its items file.

    An archive holding two ratings files (two layouts, or one layout in two folders) is refused rather than one
    being picked: which one a run trains on must not depend on the order of the archive's members. The items
    file is looked for beside the ratings file, then anywhere in the archive (the caller warns about that).

    Args:
        member_names: the archive's member paths.

    Returns:
        The layout, the member path of its ratings file and of its items file (None when absent).

    Raises:
        RatingsFormatError: no ratings file, listing the archive's files and the layouts understood; two ratings
            files, or a ratings or items member listed twice, naming them.
    """
    ratings_names = {layout.ratings_file: layout for layout in LAYOUTS}
    found = sorted((m for m in member_names if m.rsplit("/", 1)[-1] in ratings_names), key=lambda m: (m.count("/"), m))
    if len(found) > 1:
        twice = " (the same name twice)" if len(set(found)) < len(found) else ""
        raise RatingsFormatError(
            f"holds {len(found)} ratings files{twice}: {', '.join(map(repr, found[:5]))}; expected one. Keep one "
            "dataset per archive"
        )
    if not found:
        shown = ", ".join(member_names[:20]) + (f", ... ({len(member_names)} files)" if len(member_names) > 20 else "")
        understood = "; ".join(f"{layout.name}: {layout.description}" for layout in LAYOUTS)
        raise RatingsFormatError(
            f"no ratings file of a known layout; the archive holds: {shown}. Layouts understood: {understood}"
        )
    ratings = found[0]
    layout = ratings_names[ratings.rsplit("/", 1)[-1]]
    folder = ratings.rsplit("/", 1)[0] + "/" if "/" in ratings else ""
    items = [m for m in member_names if m.rsplit("/", 1)[-1] == layout.items_file]
    if len(items) > 1:
        raise RatingsFormatError(
            f"holds {len(items)} items files {', '.join(map(repr, items[:5]))} for {ratings!r}; expected one"
        )
    if folder + layout.items_file in items:
        return layout, ratings, folder + layout.items_file
    return layout, ratings, items[0] if items else None
