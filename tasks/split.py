"""Split ratings into train and test, seeded and deterministic.

- `stratified`: within each user, a random `1 - test_fraction` of their ratings to train (the Microsoft
  Recommenders MovieLens protocol, 75/25 by default); every user appears in train.
- `random`: a global random `test_fraction` of all ratings to test (the seeds' 80/20).
- `temporal`: within each user, their latest `test_fraction` by timestamp to test (ties broken by item).

In the per-user splits a user keeps round(n * (1 - test_fraction)) ratings in train, at least one, so a
user with a single rating is in train only; the random split never draws such a user's rating for test either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig, SplitMethod, setting


def _with_random_key(ratings: pl.DataFrame, seed: int) -> pl.DataFrame:
    # Keyed on the (user, item)-sorted order reindex produces, so the split does not depend on file order.
    key = np.random.default_rng(seed).random(ratings.height)
    return ratings.sort("user_idx", "item_idx").with_columns(_key=pl.Series(key))


def split_ratings(
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


def holdout(train: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Carve a random validation share out of the training ratings (None when `fraction` is 0)."""
    if fraction == 0:
        return train, None
    return split_ratings(train, "random", fraction, seed + 1)


@task(name="split", cache_policy=NO_CACHE)
def split_task(ratings: pl.DataFrame, config: PipelineConfig, run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Prefect wrapper of `split_ratings` with the config's method, fraction and seed; saves both splits."""
    train, test = split_ratings(ratings, config.split, config.effective_test_fraction, config.seed)
    train.write_parquet(run_dir / "train.parquet")
    test.write_parquet(run_dir / "test.parquet")
    return train, test
