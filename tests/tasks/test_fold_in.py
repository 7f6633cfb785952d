"""Fold-ins' stages without Prefect: the models' fold-ins on ML-100k, what counts as a change, and what is refused."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tasks.config import PipelineConfig
from tasks.fold_in.changes import Changes, changes_from_new_rows, changes_in_source
from tasks.fold_in.read import FoldInRefused, refuse_large_changes
from tasks.models import MODELS
from tasks.models.base import FoldIn, Interactions
from tasks.models.ials import padded_rows
from tasks.reindex import reindex
from tasks.run_folder import RunFolder

CPU = torch.device("cpu")


def _fold_in(name: str, ratings: pl.DataFrame, users: list[int], extra: pl.DataFrame):
    """`name` fitted on ML-100k, then `users` (their rows plus `extra`, whose user_idx index into `users`) folded in."""
    n_users, n_items = ratings["user_idx"].max() + 1, ratings["item_idx"].max() + 1
    spec, params = MODELS[name], PipelineConfig().params_for(name)
    module, _ = spec.fit(Interactions(ratings, n_users, n_items), params, CPU)
    position = {user: i for i, user in enumerate(users)}
    rows = ratings.filter(pl.col("user_idx").is_in(users)).with_columns(
        pl.col("user_idx").replace_strict(position, return_dtype=pl.Int32)
    )
    rows = pl.concat([rows.select("user_idx", "item_idx", "rating"), extra]).unique(
        ["user_idx", "item_idx"], keep="last"
    )
    folded = FoldIn(Interactions(rows, len(users), n_items), torch.tensor(users), ratings.height, n_users)
    return module, spec.fold_in(module, params, folded, CPU), rows, params


def test_a_folded_in_ials_vector_is_the_closed_form_solve(ml100k_ratings):
    extra = pl.DataFrame(
        {"user_idx": [0, 0, 1], "item_idx": [1500, 1501, 1600], "rating": [5.0, 3.0, 4.0]},
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32},
    )
    module, folded, rows, params = _fold_in("ials", ml100k_ratings, [10, 20], extra)
    h = module.item_factors.double().numpy()
    n_users, n_items = ml100k_ratings["user_idx"].max() + 1, h.shape[0]
    settings = params.for_density(ml100k_ratings.height / (n_users * n_items))
    for user in (0, 1):
        items = rows.filter(pl.col("user_idx") == user)["item_idx"].to_numpy()
        penalty = settings.regularization * (len(items) + settings.a0 * n_items) ** settings.regularization_exponent
        normal = h[items].T @ h[items] + settings.a0 * h.T @ h + penalty * np.eye(h.shape[1])
        expected = np.linalg.solve(normal, h[items].sum(0))  # confidence 0: every c_ui is 1
        np.testing.assert_allclose(folded.user_factors[user].numpy(), expected, atol=1e-4)
    assert torch.equal(folded.item_factors, module.item_factors)  # the items stay the published ones


def test_a_user_folded_in_unchanged_scores_as_the_fit_does(ml100k_ratings):
    """ease and the baselines score a user's interactions directly; ials's fit stops its solves after a few
    conjugate-gradient steps, so its vectors are close to the exact solve, not equal."""
    none = pl.DataFrame(schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32})
    for name, tolerance in (("ease", 1e-5), ("bias", 1e-5), ("popularity", 0.0), ("ials", 0.02)):
        module, folded, *_ = _fold_in(name, ml100k_ratings, [5, 6, 7], none)
        published = module.score_users(torch.tensor([5, 6, 7]))
        assert (folded.score_users(torch.arange(3)) - published).abs().max() <= tolerance, name


def test_dot_bias_folds_a_new_user_in_to_fit_their_ratings(ml100k_ratings):
    """A user the fit never saw (known -1) starts from zero: the steps fit their ratings far better than that."""
    n_users, n_items = ml100k_ratings["user_idx"].max() + 1, ml100k_ratings["item_idx"].max() + 1
    spec, params = MODELS["dot_bias"], PipelineConfig().params_for("dot_bias")
    module, _ = spec.fit(Interactions(ml100k_ratings, n_users, n_items), params, CPU)
    theirs = ml100k_ratings.filter(pl.col("user_idx") == 0).with_columns(pl.lit(0, pl.Int32).alias("user_idx"))
    folded = spec.fold_in(module, params, FoldIn(Interactions(theirs, 1, n_items), torch.tensor([-1]), 1, 1), CPU)
    items, ratings = torch.from_numpy(theirs["item_idx"].to_numpy().astype(np.int64)), theirs["rating"].to_numpy()
    fitted = np.sqrt(np.mean((folded(torch.zeros_like(items), items).numpy() - ratings) ** 2))
    from_zero = folded._scale(folded.item_bias.weight[items, 0]).numpy()  # the vector and bias it started from: 0
    assert fitted < 0.8 * np.sqrt(np.mean((from_zero - ratings) ** 2))
    assert folded.user_factors.weight.shape == (1, params.factors)


def test_padded_rows_hold_every_interaction_once_in_bounded_chunks():
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.integers(0, 50, 2000))
    items = torch.from_numpy(rng.integers(1, 300, 2000))
    chunks = padded_rows(users, items, torch.ones(2000), 50, 8, max_bytes=8 * 4 * 400)
    assert len(chunks) > 1 and sorted(torch.cat([rows for rows, _, _ in chunks]).tolist()) == list(range(50))
    held = sorted(
        (int(u), int(i)) for rows, cols, vals in chunks for u, row in zip(rows, cols, strict=True) for i in row if i > 0
    )
    assert held == sorted(zip(users.tolist(), items.tolist(), strict=True))
    assert all(len(rows) == 1 or len(rows) * cols.shape[1] * 8 * 4 <= 8 * 4 * 400 for rows, cols, _ in chunks)


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32}, orient="row")


def _published(rows: list[tuple], folder) -> RunFolder:
    """A run folder holding `rows` as its data (indexed, split in two), as a nightly leaves it."""
    indexed, maps = reindex(_frame(rows).with_columns(timestamp=pl.lit(0, pl.Int64)))
    maps.save(folder)
    run = RunFolder(folder)
    indexed.head(2).write_parquet(run.test)
    indexed.slice(2).write_parquet(run.train)
    return run


def test_a_source_compared_with_the_run_finds_new_changed_and_gone_rows(tmp_path):
    run = _published([(1, 10, 4.0), (1, 11, 3.0), (2, 10, 5.0), (3, 12, 1.0), (4, 10, 2.0)], tmp_path)
    source = _frame([(1, 10, 4.0), (1, 11, 3.0), (2, 10, 2.0), (4, 10, 2.0), (4, 13, 5.0), (9, 10, 1.0)])
    changes = changes_in_source(source.lazy(), run)
    assert changes.new_users.to_list() == [9] and sorted(changes.changed_users.to_list()) == [2, 3, 4]
    assert (changes.n_new_rows, changes.n_changed_rows, changes.n_removed_rows) == (3, 1, 1)  # 2 re-rated; 3's gone
    assert (changes.n_published_rows, changes.n_published_users) == (5, 4)
    assert changes.histories.filter(pl.col("user_id") == 4)["item_id"].to_list() == [10, 13]
    assert changes.histories.filter(pl.col("user_id") == 3).height == 0  # nothing left: they keep the fallback


def test_new_rows_replace_a_rating_or_add_up_implicit_weights(tmp_path):
    run = _published([(1, 10, 4.0), (1, 11, 3.0), (2, 10, float(np.log1p(2.0))), (3, 10, 1.0)], tmp_path)
    explicit = changes_from_new_rows(_frame([(1, 10, 2.0), (1, 11, 3.0), (3, 10, 1.0)]), run, implicit=False)
    assert explicit.histories.rows() == [(1, 10, 2.0), (1, 11, 3.0)]
    assert (explicit.n_new_rows, explicit.n_changed_rows) == (1, 1)  # 1 re-rated item 10; 3 sent what they had
    plays = changes_from_new_rows(_frame([(2, 10, float(np.log1p(3.0)))]), run, implicit=True)
    assert plays.histories["rating"].to_list() == pytest.approx([np.log1p(5.0)])  # 2 plays then 3 more


def test_a_fold_in_refuses_what_is_the_nightlys_job():
    """New users and rows are what a fold-in is for, however many; a rewritten or truncated history is not."""

    def changes(new_users: int, changed: int, removed: int) -> Changes:
        ids = pl.Series("user_id", list(range(new_users)))
        return Changes(pl.DataFrame(), ids, ids[:0], 10_000, changed, removed, 1000, 100)

    config = PipelineConfig()
    refuse_large_changes(changes(500, 50, 10), config)  # 5 times the users; 5% of rows re-rated, 1% gone: bounds
    with pytest.raises(
        FoldInRefused, match=r"51 of the published run's 1,000 rows now hold another rating .*max_changed"
    ):
        refuse_large_changes(changes(1, 51, 0), config)
    with pytest.raises(FoldInRefused, match=r"11 of the published run's 1,000 rows are gone .*a job for the nightly"):
        refuse_large_changes(changes(1, 0, 11), config)
