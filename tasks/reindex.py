"""Reindex: the dataset's own user and item ids to contiguous int32 indices, reversibly.

`reindex` does it in memory over a frame (the tune's sample, benchmarks); `reindex_files`, which the nightly run
uses, does the same out of core, from the parsed dataset's parquet file to the run's folder, and gives the same
indices and order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import OutOfCoreSettings
from tasks.ingest import Dataset
from tasks.naming import setting
from tasks.run_folder import RunFolder, atomic_write
from warehouse.engine import copy_to_parquet, fetch_row, out_of_core


@dataclass(frozen=True)
class IdMaps:
    """Row i of `users` (`user_idx`, `user_id`) maps index i back to the dataset's id; same for `items`."""

    users: pl.DataFrame
    items: pl.DataFrame

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        folder = RunFolder(directory)
        self.users.write_parquet(folder.user_map)
        self.items.write_parquet(folder.item_map)

    @classmethod
    def load(cls, directory: Path) -> IdMaps:
        folder = RunFolder(directory)
        return cls(pl.read_parquet(folder.user_map), pl.read_parquet(folder.item_map))

    def to_dataset_ids(self, indexed: pl.DataFrame) -> pl.DataFrame:
        """Replace `user_idx`/`item_idx` columns of `indexed` by the dataset's `user_id`/`item_id`."""
        out = indexed
        if "user_idx" in out.columns:
            out = out.with_columns(user_id=self.users["user_id"].gather(out["user_idx"])).drop("user_idx")
        if "item_idx" in out.columns:
            out = out.with_columns(item_id=self.items["item_id"].gather(out["item_idx"])).drop("item_idx")
        return out


def _vocabulary(ratings: pl.DataFrame, id_column: str, idx_column: str) -> pl.DataFrame:
    return (
        ratings.select(pl.col(id_column).unique().sort())
        .with_row_index(idx_column)
        .with_columns(pl.col(idx_column).cast(pl.Int32))
    )


def reindex(ratings: pl.DataFrame) -> tuple[pl.DataFrame, IdMaps]:
    """Map ids to indices 0..n-1 in id order.

    Args:
        ratings: `user_id`, `item_id`, `rating`, `timestamp`.

    Returns:
        Ratings with `user_idx`, `item_idx` (Int32) instead of the ids, sorted by user then item, and the
        maps back to the ids.
    """
    maps = IdMaps(_vocabulary(ratings, "user_id", "user_idx"), _vocabulary(ratings, "item_id", "item_idx"))
    indexed = (
        ratings.lazy()
        .join(maps.users.lazy(), on="user_id")
        .join(maps.items.lazy(), on="item_id")
        .select("user_idx", "item_idx", "rating", "timestamp")
        .sort("user_idx", "item_idx")
        .collect()
    )
    return indexed, maps


def reindex_files(ratings: Path, folder: RunFolder, as_of: datetime | None, settings: OutOfCoreSettings) -> IdMaps:
    """`reindex` out of core (warehouse/engine.py): the parsed dataset's `ratings` file (those up to `as_of` when
    given) to the run folder's id maps and its `ratings.parquet`, indexed and sorted by user then item as `reindex`
    returns them; returns the maps.

    Raises:
        ValueError: `as_of` keeps no rating; the message gives the range the ratings span.
    """
    params = {"ratings": str(ratings), "as_of": None if as_of is None else int(as_of.timestamp())}
    with out_of_core(settings.memory_mb, folder.path / "spill") as con:
        if as_of is not None:
            kept, first, last = fetch_row(con, "time_span", params)
            if kept == 0:
                _refuse_as_of(as_of, first, last)
        for name, path in (("user_map", folder.user_map), ("item_map", folder.item_map)):
            with atomic_write(path) as partial:
                copy_to_parquet(con, name, partial, params)
        with atomic_write(folder.ratings) as partial:
            copy_to_parquet(
                con,
                "reindexed",
                partial,
                {**params, "user_map": str(folder.user_map), "item_map": str(folder.item_map)},
            )
    return IdMaps.load(folder.path)


def ratings_as_of(ratings: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """The ratings made at or before `as_of` (timestamps are Unix seconds): the data a run on that date had.

    Raises:
        ValueError: none are that old; the message gives the range the ratings span.
    """
    kept = ratings.filter(pl.col("timestamp") <= int(as_of.timestamp()))
    if kept.height == 0:
        _refuse_as_of(as_of, ratings["timestamp"].min(), ratings["timestamp"].max())
    return kept


def _refuse_as_of(as_of: datetime, first: object, last: object) -> None:
    said = " to ".join(_day(cast(int, t)) for t in (first, last))
    raise ValueError(f"{setting('as_of')} {as_of:%Y-%m-%d %H:%M} UTC keeps no ratings: they span {said}")


def _day(timestamp: int) -> str:
    """A Unix timestamp as its UTC day, or as itself when it is no date Python can write."""
    try:
        return f"{datetime.fromtimestamp(int(timestamp), UTC):%Y-%m-%d}"
    except (ValueError, OverflowError, OSError):
        return f"timestamp {timestamp} (beyond the year 9999 as Unix seconds)"


@task(name="reindex", cache_policy=NO_CACHE)
def reindex_task(dataset: Dataset, run_dir: Path, as_of: datetime | None, settings: OutOfCoreSettings) -> IdMaps:
    """Prefect wrapper of `reindex_files` over the parsed dataset's ratings (those up to `as_of` when given): the
    indexed ratings and the id maps in the run's folder; returns the maps."""
    return reindex_files(dataset.ratings_path, RunFolder(run_dir), as_of, settings)
