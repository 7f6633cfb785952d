"""A team's interactions, checked row by row and turned into the pipeline's ratings.

From a `RawTable` (tasks/ingest/tables.py) to the frame every stage reads: `user_id` and `item_id` (Int64 when
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
from typing import Any, Literal

import polars as pl

from tasks.ingest.movielens import keep_latest_ratings
from tasks.ingest.tables import RawTable, TableError

Feedback = Literal["explicit", "implicit"]
_WHOLE = r"^\s*[+-]?\d{1,18}\s*$"


@dataclass(frozen=True)
class CheckedInteractions:
    ratings: pl.DataFrame  # user_id, item_id, rating (Float32), timestamp (Int64, null without a time column)
    feedback: Feedback
    has_timestamps: bool
    n_bad_rows: int
    bad_row_examples: list[str]
    n_repeated: int  # explicit: repeated pairs dropped (latest kept); implicit: rows added into their pair


def _refuse_repeated_header(table: RawTable) -> None:
    if table.header is None or table.frame.height == 0:
        return
    user, item = table.names["user"], table.names["item"]
    if table.frame.schema["user"] != pl.String or table.frame.schema["item"] != pl.String:
        return  # typed columns (Parquet, a table) hold no header line
    again = table.frame.filter((pl.col("item") == item) & (pl.col("user") == user))
    if again.height:
        where = table.where_is([int(again["row"][0])])[0]
        raise TableError(
            f"{where}: repeats the header ({user}, {item}, ...): two files joined into one? Expected the header once, "
            "on the first line"
        )


def _typed_ids(table: RawTable, role: str) -> pl.Expr:
    """The role's ids as Int64 when every one is a whole number, as String when none is.

    Raises:
        TableError: a column holding both, naming a row of each.
    """
    column = table.frame[role]
    if column.dtype.is_integer():
        return pl.col(role).cast(pl.Int64)
    given = column.is_not_null() & (column.str.len_bytes() > 0)  # an empty id is a bad row, not a kind of id
    n_given = int(given.sum())
    # a whole number casts as it is; text ids are kept as written (casting is 5x faster than stripping and matching)
    n_whole = int(column.cast(pl.Int64, strict=False).is_not_null().sum())
    if n_whole == 0:
        return pl.col(role)
    if n_whole == n_given:
        return pl.col(role).cast(pl.Int64)
    text = column.str.strip_chars()  # numbers written with blanks around them (` 42`) are numbers too
    whole = text.str.contains(_WHOLE).fill_null(False)
    if int(whole.sum()) == n_given:
        return pl.col(role).str.strip_chars().cast(pl.Int64)
    number, word = (table.frame.filter(given & (whole == kind)).row(0, named=True) for kind in (True, False))
    (at_number, at_word) = table.where_is([number["row"], word["row"]])
    name = table.names[role]
    raise TableError(
        f"{table.name}: column {name!r} (the {role}) mixes whole numbers ({at_number}: {number[role]!r}) and text "
        f"({at_word}: {word[role]!r}); expected ids of one kind: all whole numbers, or all text"
    )


def _seconds(table: RawTable) -> pl.Expr:
    """The timestamp as Unix seconds: whole numbers as they are, dates and times (ISO 8601) converted, null
    where it is neither (a bad row)."""
    column = table.frame["timestamp"]
    if column.dtype.is_integer():
        return pl.col("timestamp").cast(pl.Int64)
    if column.dtype.is_temporal():
        return pl.col("timestamp").cast(pl.Datetime("us")).dt.epoch("s")
    text = pl.col("timestamp").str.strip_chars()
    as_time = text.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
    return pl.when(text.str.contains(_WHOLE)).then(text.cast(pl.Int64, strict=False)).otherwise(as_time)


def _problems(table: RawTable, scale: tuple[float, float] | None) -> list[tuple[pl.Expr, pl.Expr]]:
    """(is bad, why in words) per check, in the order a row's first problem is named."""
    names = table.names
    checks: list[tuple[pl.Expr, pl.Expr]] = []
    for role in ("user", "item"):
        empty = pl.col(role).is_null() | (pl.col(role).cast(pl.String).str.len_bytes() == 0)
        checks.append((empty, pl.lit(f"field {names[role]!r} is empty, expected an id")))
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
        said = f"field {names['timestamp']!r} is '{{}}', expected Unix seconds or a date and time (ISO 8601)"
        checks.append((pl.col("seconds").is_null(), pl.format(said, pl.col("timestamp").cast(pl.String))))
    return checks


def _bad_rows(table: RawTable, frame: pl.DataFrame, scale: tuple[float, float] | None) -> tuple[pl.Series, list[str]]:
    """Which rows are bad, and the first few of them (with the reader's refused lines) in words."""
    checks = _problems(table, scale)
    bad = frame.select(pl.any_horizontal(*(is_bad.fill_null(True) for is_bad, _ in checks))).to_series()
    if not bad.any():
        return bad, table.rejected
    why: Any = pl.when(checks[0][0].fill_null(True)).then(checks[0][1])
    for is_bad, reason in checks[1:]:
        why = why.when(is_bad.fill_null(True)).then(reason)
    first = frame.filter(bad).head(5).select("row", why.otherwise(pl.lit("unreadable")).alias("why"))
    located = table.where_is(first["row"].to_list())
    examples = [f"{where}: {reason}" for where, reason in zip(located, first["why"], strict=True)]
    return bad, sorted(table.rejected + examples, key=_line_order)[:5]


def _line_order(example: str) -> int:
    number = example.split(":", 1)[0].rsplit(" ", 1)[-1]
    return int(number) if number.isdigit() else 0


def check_interactions(
    table: RawTable, feedback: Feedback | None = None, scale: tuple[float, float] | None = None
) -> CheckedInteractions:
    """Check every row of `table`, keep the good ones and make the pipeline's ratings of them.

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
    bad, examples = _bad_rows(table, frame, scale if kind == "explicit" else None)
    good = frame.filter(~bad) if bad.any() else frame
    good = good.with_columns(user_id=_typed_ids(table, "user"), item_id=_typed_ids(table, "item"))
    timestamp = pl.col("seconds") if "timestamp" in table.names else pl.lit(None, pl.Int64)
    good = good.with_columns(timestamp=timestamp)
    n_bad = int(bad.sum()) + table.n_rejected
    if kind == "explicit":
        ratings = good.select("user_id", "item_id", pl.col("rating").cast(pl.Float32), "timestamp")
        ratings, n_repeated = keep_latest_ratings(ratings)
    else:
        ratings, n_repeated = _summed(good, "weight" in table.names)
    return CheckedInteractions(ratings, kind, "timestamp" in table.names, n_bad, examples, n_repeated)


def _codes(column: str, dtype: pl.DataType) -> pl.Expr:
    """Each id as a small whole number (equal ids, equal numbers): text through a categorical's codes, whole
    numbers by dense rank."""
    if dtype == pl.String:
        return pl.col(column).cast(pl.Categorical).to_physical().cast(pl.UInt64)
    return pl.col(column).rank("dense").cast(pl.UInt64)


def _pair_key(frame: pl.DataFrame) -> pl.Expr:
    """One UInt64 per (user, item) pair: hashing it is several times faster than hashing two text columns (a 20M-row
    purchase log's pairs are counted in about a second, against 4 s for a struct and 9 s to group by both)."""
    users, items = (_codes(f"{side}_id", frame.schema[f"{side}_id"]) for side in ("user", "item"))
    return users * 2**32 + items


def _summed(good: pl.DataFrame, weighted: bool) -> tuple[pl.DataFrame, int]:
    """One row per (user, item): its rows' weights (or their count) added, its latest time, rating log(1 + weight);
    pairs whose weight adds up to 0 are no interaction and are left out."""
    weight = pl.col("weight") if weighted else pl.lit(1.0)
    rows = good.select("user_id", "item_id", weight.alias("weight"), "timestamp")
    key = _pair_key(rows)
    if rows.select(key.n_unique()).item() == rows.height:  # no pair twice: nothing to add up
        pairs = rows
    else:
        pairs = (
            rows.with_columns(key=key)
            .group_by("key", maintain_order=True)
            .agg(pl.col("user_id", "item_id").first(), pl.col("weight").sum(), pl.col("timestamp").max())
            .drop("key")
        )
    interacted = pairs.filter(pl.col("weight") > 0)
    rating = pl.col("weight").log1p().cast(pl.Float32).alias("rating")
    return interacted.select("user_id", "item_id", rating, "timestamp"), rows.height - pairs.height
