"""The paired bootstrap the gate uses to tell a drop from noise."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tasks.noise import paired_interval


def _users(values: dict[str, np.ndarray], first_user: int = 0) -> pl.DataFrame:
    n = len(next(iter(values.values())))
    return pl.concat(
        [
            pl.DataFrame({"user_id": np.arange(first_user, first_user + n), "metric": name, "value": v.astype(float)})
            for name, v in values.items()
        ]
    )


def test_a_consistent_drop_is_outside_noise_and_a_reshuffle_is_not():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 500)
    dropped = paired_interval(
        _users({"ndcg": base - 0.05 + rng.normal(0, 0.01, 500)}), _users({"ndcg": base}), "ndcg", 0.95, 500
    )
    assert dropped.difference == pytest.approx(-0.05, abs=0.005) and dropped.high < 0 and dropped.n_users == 500
    # the same values given to other users: a large per-user change, no change on average
    shuffled = paired_interval(_users({"ndcg": rng.permutation(base)}), _users({"ndcg": base}), "ndcg", 0.95, 500)
    assert shuffled.low < 0 < shuffled.high
    assert "95% interval of the paired ndcg difference over 500 users" in shuffled.describe("ndcg")


def test_rmse_is_resampled_from_squared_errors_and_counts_over_shared_users_only():
    counts = np.full(300, 4.0)
    worse = paired_interval(
        _users({"squared_error": counts * 1.2, "n_ratings": counts}),
        _users({"squared_error": counts * 0.8, "n_ratings": counts}, first_user=100),
        "rmse",
        0.9,
        200,
    )
    assert worse.n_users == 200 and worse.difference == pytest.approx(np.sqrt(1.2) - np.sqrt(0.8))
    assert worse.low == pytest.approx(worse.difference) and worse.high == pytest.approx(worse.difference)  # no spread
    assert (
        paired_interval(_users({"ndcg": counts}), _users({"ndcg": counts}, first_user=1000), "ndcg", 0.95, 10) is None
    )
    assert paired_interval(_users({"ndcg": counts}), _users({"ndcg": counts}), "rmse", 0.95, 10) is None
