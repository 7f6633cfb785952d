"""Reindex (reversible, contiguous) and the three seeded splits."""

from __future__ import annotations

import polars as pl
import pytest

from tasks.reindex import IdMaps, reindex
from tasks.split import holdout, split_ratings


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
