"""Synthetic MovieLens: the shape MovieLens has, the ml-20m layout our ingest reads, the same bytes per seed."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from flows.cli import main
from tasks.ingest import fetch_archive, load_dataset
from tasks.synth import (
    FIRST_TIMESTAMP,
    HALF_STARS,
    LAST_TIMESTAMP,
    MIN_USER_RATINGS,
    ML_20M_HISTOGRAM,
    SynthSpec,
    synthesize,
    write_archive,
)

SPEC = SynthSpec(users=2000, items=1500, ratings=120_000, seed=3)


@pytest.fixture(scope="module")
def synthetic() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synthesize(SPEC)


def test_sizes_activity_and_no_duplicates(synthetic):
    ratings, movies = synthetic
    assert ratings.height == SPEC.ratings
    assert ratings.select(pl.struct("userId", "movieId").n_unique()).item() == SPEC.ratings
    per_user = ratings.group_by("userId").len()["len"]
    assert per_user.len() == SPEC.users and per_user.min() >= MIN_USER_RATINGS
    assert per_user.max() > 4 * per_user.median()  # heavy-tailed activity
    assert movies.height == SPEC.items and movies["movieId"].n_unique() == SPEC.items
    assert ratings["movieId"].is_in(movies["movieId"].implode()).all()
    assert movies["movieId"].max() > SPEC.items  # sparse ids, as in ML-20M


def test_popularity_is_heavy_tailed_and_ratings_look_like_movielens(synthetic):
    ratings, _ = synthetic
    per_item = np.sort(ratings.group_by("movieId").len()["len"].to_numpy())[::-1]
    assert per_item[: len(per_item) // 10].sum() > 0.35 * SPEC.ratings  # the top tenth of the movies
    assert set(ratings["rating"].unique().to_list()) == set(HALF_STARS.tolist())
    shares = ratings["rating"].value_counts().sort("rating")["count"].to_numpy() / SPEC.ratings
    assert shares == pytest.approx(ML_20M_HISTOGRAM / ML_20M_HISTOGRAM.sum(), abs=0.005)
    assert ratings["timestamp"].min() >= FIRST_TIMESTAMP and ratings["timestamp"].max() <= LAST_TIMESTAMP
    assert (ratings["timestamp"].max() - ratings["timestamp"].min()) > 10 * 365 * 86_400  # spans years


def test_ratings_carry_a_learnable_signal(synthetic):
    """Users' and items' means explain part of the ratings (the biases), as in real data."""
    ratings, _ = synthetic
    centred = ratings.with_columns(
        user_mean=pl.col("rating").mean().over("userId"), item_mean=pl.col("rating").mean().over("movieId")
    )
    correlation = centred.select(pl.corr("rating", pl.col("user_mean") + pl.col("item_mean"))).item()
    assert correlation > 0.3


def test_archive_is_deterministic_and_reads_as_ml_20m(tmp_path, synthetic):
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    write_archive(*synthetic, first)
    write_archive(*synthesize(SPEC), second)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    other = synthesize(SynthSpec(users=2000, items=1500, ratings=120_000, seed=4))[0]
    assert not other.equals(synthetic[0])
    parsed = load_dataset(fetch_archive(str(first), tmp_path / "data"), tmp_path / "data")
    assert parsed.layout == "csv"
    loaded = parsed.ratings()
    assert loaded.height == SPEC.ratings and loaded["user_id"].n_unique() == SPEC.users
    items = parsed.items()
    assert items.height == SPEC.items and items["title"].str.contains(", The").any()  # quoted titles survive


def test_recs_synth_command(tmp_path, capsys):
    out = tmp_path / "synthetic.zip"
    assert (
        main(["synth", "--users", "100", "--items", "80", "--ratings", "2500", "--seed", "1", "--out", str(out)]) == 0
    )
    assert out.is_file() and "2,500 ratings by 100 users" in capsys.readouterr().out
    assert main(["synth", "--users", "100", "--items", "80", "--ratings", "1000", "--out", str(out)]) == 2
    assert "below 20 per user" in capsys.readouterr().err


def test_the_purchase_log_form_has_text_ids_and_quantities_and_reads_as_implicit(tmp_path, capsys):
    out = tmp_path / "purchases.csv"
    assert (
        main(
            ["synth", "--form", "interactions", "--users", "100", "--items", "80", "--ratings", "3000"]
            + ["--out", str(out)]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out and out.read_text().startswith("customer_id,sku,quantity\nC0000001,SKU-")
    dataset = load_dataset(fetch_archive(str(out), tmp_path / "d"), tmp_path / "d")
    ratings = dataset.ratings()
    assert (dataset.feedback, dataset.has_timestamps, dataset.n_ratings) == ("implicit", False, 3000)
    assert ratings.schema["user_id"] == ratings.schema["item_id"] == pl.String
    assert ratings["rating"].exp().round(0).is_in([2.0, 3.0, 4.0]).all()  # log(1 + quantity), quantity 1 to 3
