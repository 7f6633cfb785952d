"""Split ratings into train and test, seeded and deterministic.

- `stratified`: within each user, a random `1 - test_fraction` of their ratings to train (the Microsoft
  Recommenders MovieLens protocol, 75/25 by default); every user appears in train.
- `random`: a global random `test_fraction` of all ratings to test (the seeds' 80/20).
- `temporal`: within each user, their latest `test_fraction` by timestamp to test (ties broken by item).

In the per-user splits a user keeps round(n * (1 - test_fraction)) ratings in train, at least one, so a
user with a single rating is in train only; the random split never draws such a user's rating for test either.

`split_ratings` splits a frame in memory (the tune, benchmarks); `split_files`, which the nightly run uses, splits
the run folder's ratings out of core into its train and test files, and gives the same split for the same seed:
the random keys are the same numbers, drawn in the same (user, item) order, a batch at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import OutOfCoreSettings, PipelineConfig, SplitMethod, setting
from tasks.run_folder import RunFolder, atomic_write
from warehouse.engine import copy_to_parquet, out_of_core


def _with_random_key(ratings: pl.DataFrame, seed: int) -> pl.DataFrame:
    # Keyed on the (user, item)-sorted order reindex produces, so the split does not depend on file order.
    key = np.random.default_rng(seed).random(ratings.height)
    return ratings.sort("user_idx", "item_idx").with_columns(_key=pl.Series(key))


def split_ratings(
    ratings: pl.DataFrame, method: SplitMethod, test_fraction: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split indexed ratings into train and test (`_split`); refuse a split that leaves nothing to test on.

    Raises:
        ValueError: no rating went to test (every user has too few ratings), saying why and what would work.
    """
    train, test = _split(ratings, method, test_fraction, seed)
    if test.height == 0 and ratings.height:
        raise ValueError(_why_no_test_rating(ratings, method, test_fraction))
    return train, test


def _split(
    ratings: pl.DataFrame, method: SplitMethod, test_fraction: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split indexed ratings.

    Args:
        ratings: `user_idx`, `item_idx`, `rating`, `timestamp`.
        method: `stratified`, `random` or `temporal`.
        test_fraction: share of ratings (per user for the per-user methods) held out.
        seed: random seed; the same seed and data give the same split.

    Returns:
        (train, test), each with the input's columns, sorted by user then item.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"{setting('test_fraction')} is {test_fraction}, expected a value between 0 and 1")
    keyed = _with_random_key(ratings, seed)
    if method == "random":
        n_users = keyed["user_idx"].n_unique()
        n_test = min(round(keyed.height * test_fraction), keyed.height - n_users)
        # Keys are below 1: adding 1 to each user's lowest-keyed rating ranks it after every other rating, so
        # it stays in train and no user loses all their training ratings.
        anchor = (pl.col("_key").rank("ordinal").over("user_idx") == 1).cast(pl.Float64)
        in_train = (pl.col("_key") + anchor).rank("ordinal") > n_test
    else:
        order = pl.col("_key") if method == "stratified" else pl.struct("timestamp", "item_idx")
        rank = order.rank("ordinal").over("user_idx")
        n_train = (pl.len().over("user_idx") * (1 - test_fraction)).round().clip(lower_bound=1)
        in_train = rank <= n_train
    flagged = keyed.with_columns(_train=in_train).drop("_key")
    train = flagged.filter(pl.col("_train")).drop("_train")
    test = flagged.filter(~pl.col("_train")).drop("_train")
    return train, test


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _why_no_test_rating(ratings: pl.DataFrame | pl.LazyFrame, method: SplitMethod, test_fraction: float) -> str:
    """Why the split left nothing to test on (every user keeps a training rating), and what would work."""
    per_user = ratings.lazy().group_by("user_idx").len().collect()["len"]
    n_items = ratings.lazy().select(pl.col("item_idx").n_unique()).collect().item()
    n_users, most = per_user.len(), cast(int, per_user.max())
    shape = (
        f"every one of the {n_users:,} users has a single rating"
        if most == 1
        else f"no user of {n_users:,} has more than {most} ratings"
    )
    # the fewest ratings a user needs for the per-user splits to hold one out at this test share
    needed = next((n for n in range(2, 1000) if n - max(1, round(n * (1 - test_fraction))) >= 1), 1000)
    works = (
        f"users with at least {needed} ratings, or a larger {setting('test_fraction')}"
        if method != "random"
        else "users with at least 2 ratings"
    )
    return (
        f"the {method} split left no rating to test on: {shape} ({n_items:,} items), and each "
        f"user keeps at least one rating for training. Ranking metrics need {works} (MovieLens archives have at "
        "least 20 per user)"
    )


def holdout(train: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Carve a random validation share out of the training ratings (None when `fraction` is 0)."""
    if fraction == 0:
        return train, None
    return _split(train, "random", fraction, seed + 1)


def split_files(
    folder: RunFolder, method: SplitMethod, test_fraction: float, seed: int, settings: OutOfCoreSettings
) -> tuple[int, int]:
    """`split_ratings` out of core (warehouse/engine.py): the run folder's indexed ratings (sorted by user then item,
    as `reindex_files` writes them) to its train and test files, each sorted by user then item; returns their
    sizes.

    Raises:
        ValueError: as `split_ratings`.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"{setting('test_fraction')} is {test_fraction}, expected a value between 0 and 1")
    n_ratings, n_test = _split_file(folder.ratings, (folder.train, folder.test), method, test_fraction, seed, settings)
    if n_test == 0 and n_ratings:
        raise ValueError(_why_no_test_rating(pl.scan_parquet(folder.ratings), method, test_fraction))
    return n_ratings - n_test, n_test


def holdout_files(folder: RunFolder, fraction: float, seed: int, settings: OutOfCoreSettings) -> tuple[Path, Path]:
    """`holdout` of the run folder's training split out of core: the files of the ratings a fit trains on and of
    its validation ratings, written the first time a fit asks for this fraction and seed (each sorted by user then
    item, as `holdout` returns them)."""
    fit_on, validation = folder.holdout(fraction, seed)
    if not (fit_on.exists() and validation.exists()):
        _split_file(folder.train, (fit_on, validation), "random", fraction, seed + 1, settings)
    return fit_on, validation


def _split_file(
    source: Path,
    outs: tuple[Path, Path],
    method: SplitMethod,
    test_fraction: float,
    seed: int,
    settings: OutOfCoreSettings,
) -> tuple[int, int]:
    """`source`'s ratings split as `split_ratings` splits them, to the train and test files `outs`, DuckDB holding
    at most `settings.memory_mb` and spilling beside them; returns how many ratings `source` holds and how many went
    to test."""
    ratings = pq.ParquetFile(source, pre_buffer=False)  # pre-buffered, its reads stayed allocated: 1 GB at 100M
    n_ratings = ratings.metadata.num_rows
    params: dict = {"train_share": 1 - test_fraction}
    if method == "random":
        n_users = pl.scan_parquet(source).select(pl.col("user_idx").n_unique()).collect().item()
        params = {"n_test": min(round(n_ratings * test_fraction), n_ratings - n_users)}
    flagged = outs[0].with_name(f"{outs[0].stem}-flagged-{os.getpid()}.parquet")
    try:
        with out_of_core(settings.memory_mb, flagged.with_suffix(".spill")) as con:
            copy_to_parquet(
                con, f"split_{method}", flagged, params, {"keyed": _keyed(ratings, seed, settings.batch_rows)}
            )
            for path, is_train in zip(outs, (True, False), strict=True):
                with atomic_write(path) as partial:
                    copy_to_parquet(con, "split_part", partial, {"flagged": str(flagged), "train": is_train})
    finally:
        flagged.unlink(missing_ok=True)
    return n_ratings, pq.ParquetFile(outs[1]).metadata.num_rows


def _keyed(ratings: pq.ParquetFile, seed: int, batch_rows: int) -> pa.RecordBatchReader:
    """The ratings, a batch at a time in the file's order, each with its random `_key`: the numbers
    `_with_random_key` draws for the same sorted ratings, since a generator's draws do not depend on how many are
    asked for at a time."""
    generator = np.random.default_rng(seed)
    schema = ratings.schema_arrow.append(pa.field("_key", pa.float64()))
    batches = (
        pa.RecordBatch.from_arrays([*batch.columns, pa.array(generator.random(batch.num_rows))], schema=schema)
        for batch in ratings.iter_batches(batch_size=batch_rows)
    )
    return pa.RecordBatchReader.from_batches(schema, batches)


@task(name="split", cache_policy=NO_CACHE)
def split_task(config: PipelineConfig, run_dir: Path) -> tuple[int, int]:
    """Prefect wrapper of `split_files` with the config's method, fraction and seed; returns the sizes of the
    training and test splits."""
    return split_files(
        RunFolder(run_dir), config.split, config.effective_test_fraction, config.seed, config.out_of_core
    )
