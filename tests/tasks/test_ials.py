"""`ials`: one half-step equals the closed-form solve of the same objective; seeded; fails loudly on divergence;
trained by shards (as on a cluster) it is the same fit bit for bit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tasks.config import PipelineConfig
from tasks.models import base, ials_shards
from tasks.models.base import Interactions, ModelFitError, RatingMatrix, index_tensors
from tasks.models.ials import ColumnTiles, IalsParams, fit_ials, gramian, rating_matrices, row_chunks, solve_side
from tasks.models.ials_shards import (
    MATRIX,
    SIDES,
    ShardedIals,
    assemble_ials,
    fit_by_shards,
    in_process,
    prepare_ials_shards,
    shard_rows,
    solve_shard,
    vectors_path,
    write_rating_matrices,
)
from tasks.run_folder import COLUMNS, RunFolder
from tasks.train import train_phase

CPU = torch.device("cpu")


def _ratings(n_users: int = 6, n_items: int = 5, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 18), rng.integers(0, n_items, 18), strict=True)}
    pairs |= {(n_users - 1, 0)}  # the last user has (at least) this rating
    users, items = zip(*sorted(pairs), strict=True)
    return pl.DataFrame(
        {"user_idx": users, "item_idx": items, "rating": rng.integers(1, 6, len(users)).astype(float)},
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32},
    )


@pytest.mark.parametrize("max_ratings", [1, 4, 1000])  # a row per chunk, a few rows, all rows
@pytest.mark.parametrize("width", [1, 2, 1000])  # a column per tile, a few columns, one tile
def test_a_half_step_is_the_closed_form_solve(max_ratings, width):
    n_users, n_items, f, a0, reg = 6, 5, 3, 0.2, 0.05
    ratings = _ratings(n_users, n_items)
    users, items, r = (torch.tensor(ratings[c].to_numpy()) for c in ("user_idx", "item_idx", "rating"))
    c = 1.0 + 0.5 * r
    matrix = RatingMatrix.build(users.long(), items.long(), c.float(), (n_users, n_items))
    generator = torch.Generator().manual_seed(1)
    h = torch.randn((n_items, f), generator=generator, dtype=torch.float64).float()
    w = torch.randn((n_users, f), generator=generator).float()
    penalty = reg * (matrix.indptr.diff().float() + a0 * n_items)
    solve_side(w, h, gramian(h, a0), ColumnTiles(matrix, width), penalty, steps=12, max_ratings=max_ratings)

    dense_c = np.zeros((n_users, n_items))
    dense_c[users.numpy(), items.numpy()] = c.numpy()
    hh = h.double().numpy()
    for u in range(n_users):
        rated = dense_c[u] > 0
        a = (hh[rated].T * dense_c[u, rated]) @ hh[rated] + a0 * hh.T @ hh + float(penalty[u]) * np.eye(f)
        b = (hh[rated].T * dense_c[u, rated]).sum(1)
        assert w[u].double().numpy() == pytest.approx(np.linalg.solve(a, b), abs=1e-4), u


def test_row_chunks_cover_every_row_once_within_the_budget():
    indptr = torch.tensor([0, 3, 3, 10, 11, 15])  # rows of 3, 0, 7, 1 and 4 ratings
    chunks = row_chunks(indptr, 4)
    assert [row for start, stop in chunks for row in range(start, stop)] == [0, 1, 2, 3, 4]
    assert all(int(indptr[stop] - indptr[start]) <= 4 or stop == start + 1 for start, stop in chunks)


def test_column_tiles_hold_every_rating_once_in_its_tile():
    ratings = _ratings()
    users, items, r = (torch.tensor(ratings[c].to_numpy()) for c in ("user_idx", "item_idx", "rating"))
    matrix = RatingMatrix.build(users.long(), items.long(), r.float(), (6, 5))
    tiles = ColumnTiles(matrix, 2)
    assert tiles.n_tiles == 3 == len(tiles.tiles)
    dense = torch.zeros(6, 5)
    for block, cols in tiles.chunk(0, 6):
        assert block.shape[1] <= 2
        dense[:, cols] += block.to_dense()
    assert torch.equal(dense, matrix.rows(torch.arange(6)))


@pytest.mark.parametrize("n_keys", [1, 7, 5_000])
def test_the_counting_sort_gives_the_stable_sorts_order_in_32_bits_and_counts_each_key(monkeypatch, n_keys):
    # chunks smaller than the keys, and keys of more values than a chunk holds
    monkeypatch.setattr(base, "SORT_CHUNK", 1_000)
    keys = torch.from_numpy(np.random.default_rng(n_keys).integers(0, n_keys, 12_345).astype(np.int32))
    order = base.stable_order(keys, n_keys)
    assert order.dtype == torch.int32
    assert torch.equal(order.long(), torch.sort(keys, stable=True).indices)
    assert len(base.stable_order(keys[:0], n_keys)) == 0
    assert np.array_equal(base.key_counts(keys.numpy(), n_keys), np.bincount(keys.numpy(), minlength=n_keys))


def test_the_item_major_matrix_is_the_transpose_with_sorted_rows():
    ratings = _ratings(9, 7, seed=4)
    users, items, r = (torch.tensor(ratings[c].to_numpy()) for c in ("user_idx", "item_idx", "rating"))
    matrix = RatingMatrix.build(users.long(), items.long(), r.float(), (9, 7))
    by_item = matrix.transpose()
    assert torch.equal(by_item.rows(torch.arange(7)), matrix.rows(torch.arange(9)).T)
    for item in range(7):  # CSR invariant: each row's columns ascending
        row = by_item.indices[by_item.indptr[item] : by_item.indptr[item + 1]]
        assert torch.equal(row, row.sort().values)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_a_matrix_of_ratings_is_the_one_build_makes(ml100k_indexed, monkeypatch, order):
    # sorted ratings are copied straight in (their order checked a few pairs at a time); others go through build
    monkeypatch.setattr(base, "GATHER_CHUNK", 7_000)
    ratings, maps = ml100k_indexed
    if order == "shuffled":
        ratings = ratings.sample(fraction=1.0, shuffle=True, seed=3)
    shape = (maps.n_users, maps.n_items)
    matrix = RatingMatrix.of_ratings(ratings, shape, CPU, lambda r: r.mul_(0.5).add_(1.0))
    users, items, r = index_tensors(ratings, CPU)
    built = RatingMatrix.build(users, items, r.mul_(0.5).add_(1.0), shape)
    for part in ("indptr", "indices", "values"):
        assert torch.equal(getattr(matrix, part), getattr(built, part)), part
    assert torch.equal(matrix.transpose().rows(torch.arange(maps.n_items)), built.rows(torch.arange(maps.n_users)).T)


def test_seeded_deterministic_and_a_single_rating_user_gets_a_finite_vector():
    ratings = _ratings()
    params = IalsParams(factors=4, epochs=5)
    first, history = fit_ials(Interactions(ratings, 6, 5), params, CPU, seed=3)
    again, _ = fit_ials(Interactions(ratings, 6, 5), params, CPU, seed=3)
    assert torch.equal(first.user_factors, again.user_factors) and torch.equal(first.item_factors, again.item_factors)
    assert torch.isfinite(first.score_users(torch.arange(6))).all()
    losses = [row["loss"] for row in history]
    assert len(losses) == 5 and losses[-1] <= losses[0]  # alternating exact-ish solves do not raise the loss
    one = pl.DataFrame(
        {"user_idx": [0, 0, 1], "item_idx": [0, 1, 2], "rating": [5.0, 4.0, 3.0]},
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32},
    )
    module, _ = fit_ials(Interactions(one, 2, 3), params, CPU)
    assert torch.isfinite(module.user_factors[1]).all() and module.user_factors[1].abs().sum() > 0


def test_non_finite_factors_fail_the_fit(tmp_path):
    interactions = Interactions(_ratings(), 6, 5)
    params = IalsParams(factors=4, epochs=2, confidence=float("inf")).for_interactions(interactions)
    with pytest.raises(ModelFitError, match="non-finite in epoch 1"):
        fit_ials(interactions, params, CPU)
    plan = prepare_ials_shards(interactions, params, 0, tmp_path / "ials")
    with pytest.raises(ModelFitError, match="non-finite in epoch 1"):  # by shards too
        fit_by_shards(plan, params, "train", in_process(plan, params))


@pytest.mark.parametrize("chunk_ratings, shard_ratings", [(1 << 22, 1 << 23), (3000, 3000), (2000, 9000)])
def test_training_by_shards_is_the_in_process_fit_bit_for_bit(ml100k_indexed, tmp_path, chunk_ratings, shard_ratings):
    ratings, maps = ml100k_indexed
    interactions = Interactions(ratings, maps.n_users, maps.n_items)
    params = IalsParams(epochs=3, chunk_ratings=chunk_ratings, shard_ratings=shard_ratings)
    params = params.for_interactions(interactions)  # as the sharded fit resolves them before its shards run
    whole, rows = fit_ials(interactions, params, torch.device("cpu"), seed=7)

    plan = prepare_ials_shards(interactions, params, 7, tmp_path / "ials-train")
    counts = [len(plan.shards[side]) for side in ("users", "items")]
    assert counts == [1, 1] if shard_ratings > 100_000 else min(counts) > 10
    sharded_rows = fit_by_shards(plan, params, "train", in_process(plan, params))
    sharded = assemble_ials(plan, params.epochs, interactions.n_users, interactions.n_items, params.factors)
    assert torch.equal(sharded.user_factors, whole.user_factors)
    assert torch.equal(sharded.item_factors, whole.item_factors)
    # the objective is summed in another order: equal to float32 precision
    assert [row["loss"] for row in sharded_rows] == pytest.approx([row["loss"] for row in rows], rel=1e-5)
    assert not plan.folder.exists()  # the shards' files are gone once the module holds the vectors


def test_the_fit_from_the_frames_own_columns_is_the_fit_from_its_matrices(ml100k_indexed):
    # ratings as reindex writes them are read in place (rating_sides); shuffled, they go through RatingMatrix
    ratings, maps = ml100k_indexed
    params = IalsParams(epochs=2, cache_bytes=64 * 1024)  # several column tiles a side
    fits = [
        fit_ials(Interactions(frame, maps.n_users, maps.n_items), params, CPU, seed=3)[0]
        for frame in (ratings, ratings.sample(fraction=1.0, shuffle=True, seed=3))
    ]
    assert torch.equal(fits[0].user_factors, fits[1].user_factors)
    assert torch.equal(fits[0].item_factors, fits[1].item_factors)


def test_a_phase_trained_by_shards_is_its_fit_in_process(ml100k_indexed, tmp_path):
    # the run's refit: the sharded fit reads the run folder's ratings itself, writes its files and drops them
    ratings, maps = ml100k_indexed
    ratings.select(COLUMNS).write_parquet(tmp_path / "ratings.parquet")
    config = PipelineConfig(device="cpu", seed=5, ials={"epochs": 2})  # type: ignore[arg-type]
    folder = RunFolder(tmp_path)
    whole = train_phase(folder, maps, config, "ials", "refit")

    def run_epochs(plan, params, label):
        return fit_by_shards(plan, params, label, in_process(plan, params))

    sharded = train_phase(folder, maps, config, "ials", "refit", sharded=ShardedIals(tmp_path / "ials", run_epochs))
    assert torch.equal(sharded.module.user_factors, whole.module.user_factors)
    assert torch.equal(sharded.module.item_factors, whole.module.item_factors)
    assert (sharded.n_ratings, sharded.rating_scale) == (whole.n_ratings, whole.rating_scale) == (100_000, (1.0, 5.0))
    assert sharded.history["split"].to_list() == ["refit", "refit"] and not (tmp_path / "ials").exists()


@pytest.mark.parametrize("order", ["as reindex writes them", "shuffled"])
def test_the_shard_files_hold_the_matrices_the_fit_builds(ml100k_indexed, tmp_path, monkeypatch, order):
    # written a few chunks at a time from the frame when it is in (user, item) order; built whole otherwise
    monkeypatch.setattr(ials_shards, "WRITE_CHUNK", 7_000)
    ratings, maps = ml100k_indexed
    if order == "shuffled":
        ratings = ratings.sample(fraction=1.0, shuffle=True, seed=3)
    interactions = Interactions(ratings, maps.n_users, maps.n_items)
    params = IalsParams(confidence=2.5).for_interactions(interactions)
    assert write_rating_matrices(interactions, params, tmp_path) == ratings.height
    for side, matrix in zip(SIDES, rating_matrices(interactions, params, CPU), strict=True):
        for part in ("indptr", "indices", "values"):
            stored = np.load(tmp_path / f"{MATRIX[side]}.{part}.npy")
            assert stored.dtype == getattr(matrix, part).numpy().dtype, (side, part)
            assert np.array_equal(stored, getattr(matrix, part).numpy()), (side, part)


def test_shards_are_whole_chunks_within_the_ratings_budget():
    indptr = torch.tensor([0, 3, 3, 10, 11, 15])  # rows of 3, 0, 7, 1 and 4 ratings
    # chunks of at most 4 ratings (or one row): (0, 2) (2, 3) (3, 4) (4, 5), holding 3, 7, 1 and 4 ratings
    assert shard_rows(indptr, 4, 8) == [(0, 2), (2, 4), (4, 5)]
    assert shard_rows(indptr, 4, 100) == [(0, 5)]
    assert shard_rows(indptr, 1, 1) == row_chunks(indptr, 1)


def test_a_retried_shard_reads_the_same_inputs_and_writes_the_same_vectors(ml100k_indexed, tmp_path):
    ratings, maps = ml100k_indexed
    interactions = Interactions(ratings, maps.n_users, maps.n_items)
    params = IalsParams(epochs=1, chunk_ratings=5000, shard_ratings=20_000).for_interactions(interactions)
    plan = prepare_ials_shards(interactions, params, 0, tmp_path / "ials")
    first, last = plan.shards["users"][1]
    once = solve_shard(plan.folder, "users", 1, first, last, plan.firsts("items"), params)
    written = vectors_path(plan.folder, "users", 1, first).read_bytes()
    vectors_path(plan.folder, "users", 1, first).with_suffix(".npy.partial").write_bytes(b"cut short")  # a killed try
    again = solve_shard(plan.folder, "users", 1, first, last, plan.firsts("items"), params)  # the retry
    assert again == once and vectors_path(plan.folder, "users", 1, first).read_bytes() == written
    assert np.load(vectors_path(plan.folder, "users", 0, first)).shape == (last - first, params.factors)  # inputs kept


def test_the_unobserved_weight_follows_the_density_and_is_the_tuned_one_on_ml_100k(ml100k_indexed):
    ratings, maps = ml100k_indexed
    whole = Interactions(ratings, maps.n_users, maps.n_items)
    assert IalsParams().for_interactions(whole).unobserved_weight == 0.3  # exactly: ML-100k's lists are the tuned ones
    quarter = Interactions(ratings.head(25_000), maps.n_users, maps.n_items)
    assert IalsParams().for_interactions(quarter).unobserved_weight == pytest.approx(0.075)
    assert IalsParams(unobserved_weight=0.5).for_interactions(quarter).unobserved_weight == 0.5  # set: as set
    with pytest.raises(ValueError, match="resolved from the data"):
        _ = IalsParams().a0


def test_the_fit_does_not_depend_on_the_thread_count(ml100k_indexed):
    # a Dask worker runs one torch thread, the flow's process several: chunks of 5 to 11 rows (here about 8
    # users in 800 ratings) once came out with other low bits on one thread than on two
    ratings, maps = ml100k_indexed
    interactions, params = Interactions(ratings, maps.n_users, maps.n_items), IalsParams(epochs=2, chunk_ratings=800)
    threads = torch.get_num_threads()
    fits = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            fits.append(fit_ials(interactions, params, CPU, seed=3)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fits[0].user_factors, fits[1].user_factors) and torch.equal(
        fits[0].item_factors, fits[1].item_factors
    )
