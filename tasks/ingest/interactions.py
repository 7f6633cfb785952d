"""A team's interactions, checked row by row and turned into the pipeline's ratings.

From a `RawTable` (tasks/ingest/tables.py) to the checked rows (`check_interactions`), and from those, by
out-of-core queries (tasks/ingest/parse.py, warehouse/prepare/), to the ratings every stage reads: `user_id` and `item_id` (Int64 when
every id of the column is a whole number, else String: the source's own ids either way), `rating` (Float32) and
`timestamp` (Int64 Unix seconds, null when the source has no time column).

- Explicit feedback (a rating column; `--feedback explicit`): ratings on the source's own scale, or on
  `--rating-scale MIN,MAX` with rows off it bad; a (user, item) pair rated twice keeps its latest rating.
- Implicit feedback (no rating column, or `--feedback implicit`): every row is an interaction; a pair's rows add
  up their weight (the weight column, else 1 a row), and its `rating` is log(1 + weight): ials weighs the pair
  1 + confidence x log(1 + weight) (Hu, Koren and Volinsky's log scaling with epsilon 1), so a thousand plays
  count more than one but not a thousand times more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from tasks.ingest.tables import RawTable, TableError

Feedback = Literal["explicit", "implicit"]
_WHOLE = r"^\s*[+-]?\d{1,18}\s*$"


@dataclass(frozen=True)
class CheckedInteractions:
    """A source's good rows, checked and typed, in a Parquet file as a MovieLens ratings file's checked rows are
    (`line`, `ok`, `user_id`, `item_id`, `rating` or, for implicit feedback, `weight`, `timestamp`), so that the
    same out-of-core queries reduce them to the dataset's ratings (tasks/ingest/parse.py)."""

    path: Path
    feedback: Feedback
    has_timestamps: bool
    n_bad_rows: int
    bad_row_examples: list[str]

    @property
    def item_id_type(self) -> pl.DataType:
        return pl.read_parquet_schema(self.path)["item_id"]


def _refuse_repeated_header(table: RawTable) -> None:
    schema = table.frame.collect_schema()
    if table.header is None or schema["user"] != pl.String or schema["item"] != pl.String:
        return  # typed columns (Parquet, a table) hold no header line
    user, item = table.names["user"], table.names["item"]
    again = _streamed(table.frame.filter((pl.col("item") == item) & (pl.col("user") == user)).select("row").head(1))
    if again.height:
        where = table.where_is([int(again["row"][0])])[0]
        raise TableError(
            f"{where}: repeats the header ({user}, {item}, ...): two files joined into one? Expected the header once, "
            "on the first line"
        )


def _streamed(query: pl.LazyFrame) -> pl.DataFrame:
    return query.collect(engine="streaming")


def _typed_ids(table: RawTable, role: str) -> pl.Expr:
    """The role's ids as Int64 when every one is a whole number, as String when none is.

    Raises:
        TableError: a column holding both, naming a row of each.
    """
    if table.frame.collect_schema()[role].is_integer():
        return pl.col(role).cast(pl.Int64)
    given = pl.col(role).is_not_null() & (pl.col(role).str.len_bytes() > 0)  # an empty id is a bad row
    text = pl.col(role).str.strip_chars()  # numbers written with blanks around them (` 42`) are numbers too
    whole = text.str.contains(_WHOLE).fill_null(False)
    # a whole number casts as it is; text ids are kept as written (casting is 5x faster than stripping and matching)
    n_given, n_whole, n_stripped = _streamed(
        table.frame.select(
            given.sum().alias("given"),
            pl.col(role).cast(pl.Int64, strict=False).is_not_null().sum().alias("whole"),
            (given & whole).sum().alias("stripped"),
        )
    ).row(0)
    if n_whole == 0:
        return pl.col(role)
    if n_whole == n_given:
        return pl.col(role).cast(pl.Int64)
    if n_stripped == n_given:
        return text.cast(pl.Int64)
    number, word = (
        _streamed(table.frame.filter(given & (whole == kind)).head(1)).row(0, named=True) for kind in (True, False)
    )
    (at_number, at_word) = table.where_is([number["row"], word["row"]])
    name = table.names[role]
    raise TableError(
        f"{table.name}: column {name!r} (the {role}) mixes whole numbers ({at_number}: {number[role]!r}) and text "
        f"({at_word}: {word[role]!r}); expected ids of one kind: all whole numbers, or all text"
    )


def _seconds(table: RawTable) -> pl.Expr:
    """The timestamp as Unix seconds: whole numbers as they are, dates and times (ISO 8601) converted, null
    where it is neither (a bad row)."""
    dtype = table.frame.collect_schema()["timestamp"]
    if dtype.is_integer():
        return pl.col("timestamp").cast(pl.Int64)
    if dtype.is_temporal():
        return pl.col("timestamp").cast(pl.Datetime("us")).dt.epoch("s")
    text = pl.col("timestamp").str.strip_chars()
    as_time = text.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
    return pl.when(text.str.contains(_WHOLE)).then(text.cast(pl.Int64, strict=False)).otherwise(as_time)


def _empty(role: str) -> pl.Expr:
    return pl.col(role).is_null() | (pl.col(role).cast(pl.String).str.len_bytes() == 0)


def _problems(table: RawTable, scale: tuple[float, float] | None) -> list[tuple[pl.Expr, pl.Expr]]:
    """(is bad, why in words) per check, in the order a row's first problem is named."""
    names = table.names
    checks: list[tuple[pl.Expr, pl.Expr]] = []
    for role in ("user", "item"):
        checks.append((_empty(role), pl.lit(f"field {names[role]!r} is empty, expected an id")))
    if "rating" in names:
        value = pl.col("rating").cast(pl.String)
        said = f"field {names['rating']!r} is '{{}}'"
        checks.append((pl.col("rating").is_null(), pl.lit(f"field {names['rating']!r} is empty, expected a number")))
        checks.append((~pl.col("rating").is_finite(), pl.format(said + ", expected a finite number", value)))
        if scale is not None:
            low, high = scale
            off = ~pl.col("rating").is_between(low, high)
            checks.append((off, pl.format(said + f", off the rating scale {low:g} to {high:g} (rating_scale)", value)))
    if "weight" in names:
        value, name = pl.col("weight").cast(pl.String), names["weight"]
        checks.append((pl.col("weight").is_null(), pl.lit(f"field {name!r} is empty, expected a number")))
        bad = ~pl.col("weight").is_finite() | (pl.col("weight") < 0)
        checks.append((bad, pl.format(f"field {name!r} is '{{}}', expected a finite number, 0 or more", value)))
    if "timestamp" in names:
        expected = "expected Unix seconds or a date and time (ISO 8601)"
        said = f"field {names['timestamp']!r} is '{{}}', {expected}"
        checks.append((_empty("timestamp"), pl.lit(f"field {names['timestamp']!r} is empty, {expected}")))
        checks.append((pl.col("seconds").is_null(), pl.format(said, pl.col("timestamp").cast(pl.String))))
    return checks


def _bad_rows(table: RawTable, frame: pl.LazyFrame, bad: pl.Expr, checks: list) -> tuple[int, list[str]]:
    """How many rows are `bad`, and the first few of them (with the reader's refused lines) in words."""
    n_bad = int(_streamed(frame.select(bad.sum())).item())
    if not n_bad:
        return 0, table.rejected
    why: Any = pl.when(checks[0][0].fill_null(True)).then(checks[0][1])
    for is_bad, reason in checks[1:]:
        why = why.when(is_bad.fill_null(True)).then(reason)
    first = _streamed(frame.filter(bad).head(5).select("row", why.otherwise(pl.lit("unreadable")).alias("why")))
    located = table.where_is(first["row"].to_list())
    examples = [f"{where}: {reason}" for where, reason in zip(located, first["why"], strict=True)]
    return n_bad, sorted(table.rejected + examples, key=_line_order)[:5]


def _line_order(example: str) -> int:
    number = example.split(":", 1)[0].rsplit(" ", 1)[-1]
    return int(number) if number.isdigit() else 0


def check_interactions(
    table: RawTable, checked: Path, feedback: Feedback | None = None, scale: tuple[float, float] | None = None
) -> CheckedInteractions:
    """Check every row of `table` and write the good ones, typed, to the Parquet file `checked` (polars'
    streaming engine: the rows are never held together).

    Raises:
        TableError: explicit feedback without a rating column, a header repeated, a column of mixed ids.
    """
    kind: Feedback = feedback or ("explicit" if "rating" in table.names else "implicit")
    if kind == "explicit" and "rating" not in table.names:
        raise TableError(
            f"{table.name}: has no rating column (header: {','.join(table.header) if table.header else 'none'}); "
            "name it with rating_column (--rating-column), or read it as implicit feedback (--feedback implicit)"
        )
    _refuse_repeated_header(table)
    frame = table.frame
    if "timestamp" in table.names:
        frame = frame.with_columns(seconds=_seconds(table))
    checks = _problems(table, scale if kind == "explicit" else None)
    bad = pl.any_horizontal(*(is_bad.fill_null(True) for is_bad, _ in checks))
    n_bad, examples = _bad_rows(table, frame, bad, checks)
    if kind == "explicit":
        value = pl.col("rating").cast(pl.Float32)
    else:
        value = (pl.col("weight") if "weight" in table.names else pl.lit(1.0)).alias("weight")
    frame.filter(~bad).select(
        pl.col("row").alias("line"),
        pl.lit(True).alias("ok"),
        _typed_ids(table, "user").alias("user_id"),
        _typed_ids(table, "item").alias("item_id"),
        value,
        (pl.col("seconds") if "timestamp" in table.names else pl.lit(None, pl.Int64)).alias("timestamp"),
    ).sink_parquet(checked)
    return CheckedInteractions(checked, kind, "timestamp" in table.names, n_bad + table.n_rejected, examples)
