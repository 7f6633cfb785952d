"""Reindex (reversible, contiguous) and the three seeded splits, in memory and out of core (the same answers)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.config import OutOfCoreSettings
from tasks.reindex import IdMaps, ratings_as_of, reindex, reindex_files
from tasks.run_folder import COLUMNS, RunFolder, read_ratings
from tasks.split import holdout, holdout_files, split_files, split_ratings
from tasks.synth import SynthSpec, synthesize


def test_reindex_is_contiguous_and_reversible(tmp_path):
    ratings = pl.DataFrame(
        {
            "user_id": [70, 5, 70, 900],
            "item_id": [33, 33, 1000, 7],
            "rating": [4.0, 3.0, 5.0, 1.0],
            "timestamp": [1, 2, 3, 4],
        },
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    indexed, maps = reindex(ratings)
    assert maps.users.rows() == [(0, 5), (1, 70), (2, 900)]
    assert maps.items.rows() == [(0, 7), (1, 33), (2, 1000)]
    assert indexed.schema["user_idx"] == pl.Int32 and indexed.schema["item_idx"] == pl.Int32
    assert indexed.select("user_idx", "item_idx").rows() == [(0, 1), (1, 1), (1, 2), (2, 0)]
    back = maps.to_dataset_ids(indexed).sort("user_id", "item_id")
    assert (
        back.select("user_id", "item_id", "rating").rows()
        == ratings.sort("user_id", "item_id").select("user_id", "item_id", "rating").rows()
    )
    maps.save(tmp_path)
    assert IdMaps.load(tmp_path).users.equals(maps.users)


@pytest.mark.parametrize("method", ["stratified", "random", "temporal"])
def test_split_is_a_seeded_partition(ml100k_ratings, method):
    train, test = split_ratings(ml100k_ratings, method, 0.25, seed=7)
    again_train, _ = split_ratings(ml100k_ratings, method, 0.25, seed=7)
    other_train, _ = split_ratings(ml100k_ratings, method, 0.25, seed=8)
    assert train.equals(again_train)
    assert train.height + test.height == ml100k_ratings.height
    keys = ["user_idx", "item_idx"]
    assert train.join(test, on=keys).height == 0
    assert abs(test.height / ml100k_ratings.height - 0.25) < 0.01
    if method != "temporal":
        assert not train.equals(other_train)


def test_stratified_keeps_every_user_in_train_with_three_quarters(ml100k_ratings):
    train, test = split_ratings(ml100k_ratings, "stratified", 0.25, seed=42)
    counts = ml100k_ratings.group_by("user_idx").len("n").join(train.group_by("user_idx").len("n_train"), on="user_idx")
    assert counts.height == ml100k_ratings["user_idx"].n_unique()
    assert (counts["n_train"] == (counts["n"] * 0.75).round()).all()


def test_temporal_holds_out_each_users_latest(ml100k_ratings):
    train, test = split_ratings(ml100k_ratings, "temporal", 0.25, seed=42)
    last_train = train.group_by("user_idx").agg(pl.col("timestamp").max().alias("last_train"))
    first_test = test.group_by("user_idx").agg(pl.col("timestamp").min().alias("first_test"))
    both = last_train.join(first_test, on="user_idx")
    assert (both["last_train"] <= both["first_test"]).all()


@pytest.mark.parametrize("method", ["stratified", "temporal", "random"])
def test_single_rating_user_stays_in_train(small_ratings, method):
    for seed in range(20):  # a random split would put user 3's one rating in test for some seeds
        train, test = split_ratings(small_ratings, method, 0.25, seed=seed)
        assert 3 in train["user_idx"].to_list() and 3 not in test["user_idx"].to_list(), seed


@pytest.mark.parametrize("method", ["stratified", "temporal", "random"])
def test_no_user_loses_all_training_ratings(method):
    # 200 users with two ratings each, half held out: a plain random draw puts both of ~50 users' in test
    two_each = pl.DataFrame(
        {
            "user_idx": [u for u in range(200) for _ in (0, 1)],
            "item_idx": [0, 1] * 200,
            "rating": [4.0] * 400,
            "timestamp": list(range(400)),
        }
    )
    for seed in range(5):
        train, test = split_ratings(two_each, method, 0.5, seed)
        assert train["user_idx"].n_unique() == 200 and train.height + test.height == 400


def test_random_split_is_global_share(small_ratings):
    train, test = split_ratings(small_ratings, "random", 0.2, seed=3)
    assert test.height == round(small_ratings.height * 0.2)


def test_holdout(small_ratings):
    assert holdout(small_ratings, 0.0, 1) == (small_ratings, None)
    fit_on, valid = holdout(small_ratings, 0.25, 1)
    assert fit_on.height + valid.height == small_ratings.height and valid.height == 3


def test_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        split_ratings(pl.DataFrame({"user_idx": [0], "item_idx": [0]}), "random", 1.5, 0)


def _out_of_core(ratings: pl.DataFrame, folder: RunFolder, batch_rows: int = 1_000) -> IdMaps:
    """`reindex_files` over `ratings` written as the parsed dataset's file, with small batches (many of them)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    source = folder.path.parent / "parsed-ratings.parquet"
    ratings.write_parquet(source)
    return reindex_files(source, folder, None, OutOfCoreSettings(memory_mb=64, batch_rows=batch_rows))


def _text_ids(ratings: pl.DataFrame) -> pl.DataFrame:
    """ML-100k's ids as text that sorts otherwise than the numbers: no padding, upper and lower case, accents."""
    return ratings.with_columns(
        user_id=pl.format("u{}", "user_id"),
        item_id=pl.when(pl.col("item_id") % 3 == 0)
        .then(pl.format("SKU-{}", "item_id"))
        .when(pl.col("item_id") % 3 == 1)
        .then(pl.format("sku-{}", "item_id"))
        .otherwise(pl.format("é{}", "item_id")),
    )


@pytest.mark.parametrize("ids", ["numbers", "text"])
def test_out_of_core_reindex_and_split_equal_the_in_memory_ones(ml100k_dataset, tmp_path, ids):
    """What the nightly run does out of core (DuckDB over parquet, the keys drawn a batch at a time) gives the very
    maps, indexed ratings and splits the in-memory functions give, for every method and for text ids."""
    ratings = ml100k_dataset.ratings() if ids == "numbers" else _text_ids(ml100k_dataset.ratings())
    indexed, maps = reindex(ratings)
    folder = RunFolder(tmp_path / "run")
    on_disk = _out_of_core(ratings, folder)
    assert_frame_equal(on_disk.users, maps.users)
    assert_frame_equal(on_disk.items, maps.items)
    assert_frame_equal(pl.read_parquet(folder.ratings), indexed)
    for method in ("stratified", "random", "temporal"):
        train, test = split_ratings(indexed, method, 0.25, seed=42)
        sizes = split_files(folder, method, 0.25, 42, OutOfCoreSettings(batch_rows=1_000))
        assert sizes == (train.height, test.height)
        assert_frame_equal(pl.read_parquet(folder.train), train)
        assert_frame_equal(pl.read_parquet(folder.test), test)
        assert_frame_equal(read_ratings(folder.train), train.select(COLUMNS))  # one chunk a column, the same rows
        # a fit's validation share of the training split, as the nightly cuts it out of core
        fit_on, validation = holdout(train, 0.05, 42)
        assert validation is not None
        files = holdout_files(folder, 0.05, 42, OutOfCoreSettings(batch_rows=1_000))
        assert_frame_equal(pl.read_parquet(files[0]), fit_on)
        assert_frame_equal(pl.read_parquet(files[1]), validation)
        for path in files:
            path.unlink()
    assert sorted(path.name for path in folder.path.iterdir()) == [
        "item_map.parquet",
        "ratings.parquet",
        "test.parquet",
        "train.parquet",
        "user_map.parquet",
    ]  # no spill folder or flagged file left


def test_out_of_core_reindex_as_of_keeps_the_older_ratings_or_says_their_span(ml100k_dataset, tmp_path):
    ratings = ml100k_dataset.ratings()
    as_of = datetime(1998, 1, 1, tzinfo=UTC)
    source = tmp_path / "parsed.parquet"
    ratings.write_parquet(source)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    maps = reindex_files(source, folder, as_of, OutOfCoreSettings())
    indexed, expected = reindex(ratings_as_of(ratings, as_of))
    assert_frame_equal(maps.users, expected.users)
    assert_frame_equal(pl.read_parquet(folder.ratings), indexed)
    with pytest.raises(ValueError, match=r"1990-01-01 00:00 UTC keeps no ratings: they span 1997-09-20 to 1998-04-22"):
        reindex_files(source, folder, datetime(1990, 1, 1, tzinfo=UTC), OutOfCoreSettings())


def test_out_of_core_split_refuses_what_leaves_nothing_to_test(tmp_path):
    one_each = pl.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [10, 11, 12], "rating": [4.0, 3.0, 5.0], "timestamp": [1, 2, 3]},
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    folder = RunFolder(tmp_path / "run")
    _out_of_core(one_each, folder)
    with pytest.raises(ValueError, match="every one of the 3 users has a single rating \\(3 items\\)"):
        split_files(folder, "stratified", 0.25, 42, OutOfCoreSettings())
    with pytest.raises(ValueError, match=r"test_fraction \(--test-fraction\) is 1.5, expected a value between 0 and 1"):
        split_files(folder, "random", 1.5, 42, OutOfCoreSettings())


@pytest.mark.slow
def test_out_of_core_split_equals_the_in_memory_one_at_a_million_ratings(tmp_path):
    """ML-1M's shape (`recs synth`), with the default batches: a million keys drawn in one batch and in several."""
    movielens = synthesize(SynthSpec(users=6_040, items=3_700, ratings=1_000_000, seed=1))[0]
    ratings = movielens.select(
        user_id="userId", item_id="movieId", rating=pl.col("rating").cast(pl.Float32), timestamp="timestamp"
    )
    indexed, _ = reindex(ratings)
    folder = RunFolder(tmp_path / "run")
    _out_of_core(ratings, folder, batch_rows=300_000)
    assert_frame_equal(pl.read_parquet(folder.ratings), indexed)
    for method in ("stratified", "random"):
        train, test = split_ratings(indexed, method, 0.25, seed=42)
        split_files(folder, method, 0.25, 42, OutOfCoreSettings(batch_rows=300_000))
        assert_frame_equal(pl.read_parquet(folder.train), train)
        assert_frame_equal(pl.read_parquet(folder.test), test)
