"""`ials`: implicit alternating least squares (Hu, Koren and Volinsky 2008) with the recipe of Rendle et al.,
"Revisiting the Performance of iALS on Item Recommendation Benchmarks" (2022).

Every rating is a positive. With user vectors W, item vectors H and predictions y_ui = w_u . h_i, the loss is

    sum over rated (u, i) of c_ui (y_ui - 1)^2  +  a0 * sum over all (u, i) of y_ui^2
        + reg * sum_u (n_u + a0 |I|)^nu |w_u|^2  +  reg * sum_i (n_i + a0 |U|)^nu |h_i|^2

with c_ui = 1 + confidence * rating (confidence 0: every positive weighs 1), a0 the weight of the unobserved
pairs and nu the exponent of the count-scaled regularization (0: plain L2). The unobserved pairs enter only
through the Gramian H'H (factors x factors): no users x items matrix exists. Fixing H, each user's vector
solves the linear system

    (sum_{i rated by u} c_ui h_i h_i'  +  a0 H'H  +  reg_u I) w_u  =  sum_{i rated by u} c_ui h_i

and the same with users and items swapped. All rows of a chunk are solved at once by conjugate gradient,
warm-started from the current vectors (as implicit's CPU ALS does). A step's sum over a row's ratings is two
sparse products: x_u . h_i at each rating (a sampled dense product, `torch.sparse.sampled_addmm`) and the
weighted sum of the h_i (CSR times dense, as `embedding_bag`), taken tile by tile over the fixed side's
vectors so that what they gather stays in the CPU's cache (`ColumnTiles`). No ratings x factors block is
gathered, so memory is a few floats per rating plus the vectors; there is no per-row Python loop, and it runs
unchanged on CUDA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from pydantic import Field

from tasks.models.base import (
    MAX_EPOCHS,
    EpochHook,
    FoldIn,
    InitialRows,
    Interactions,
    ModelFitError,
    ModelParams,
    RatingMatrix,
    Recommender,
    apply_initial_rows,
    column_tensors,
    in_csr_order,
    index_tensors,
    stable_order,
)

log = logging.getLogger(__name__)


class IalsParams(ModelParams):
    """`ials`: implicit alternating least squares, every rating a positive (Rendle et al.'s recipe).

    Searched over epochs 8/16, regularization 0.01/0.02/0.03/0.05, unobserved weight 0.05/0.1/0.2/0.3 and
    confidence 0/0.5 at 64 factors (128 was no better in a first search): 16, 0.02, 0.3, 0 is the best,
    validation nDCG@10 0.2829 (ease: 0.2712)."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and items.")
    epochs: int = Field(16, ge=1, le=MAX_EPOCHS, description="Alternations: each solves every user, then every item.")
    warm_epochs: int = Field(
        4,
        ge=1,
        le=MAX_EPOCHS,
        description="Alternations when the fit starts from the last published run's vectors (warm_start).",
    )
    refit_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Alternations of the refit on every rating when it starts from this run's split fit (unless "
        "warm_start found the last published run's refit); unset: the refit starts from scratch and runs epochs.",
    )
    regularization: float = Field(
        0.02,
        ge=0,
        description="L2 penalty, scaled per row by (its count + unobserved_weight x the other side's size)^regularization_exponent.",
    )
    regularization_exponent: float = Field(
        1.0,
        ge=0,
        le=1,
        description="How the penalty grows with a row's count (Rendle et al.'s nu): 0 plain L2, 1 proportional.",
    )
    unobserved_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of every unrated (user, item) pair pulled towards 0 (Rendle et al.'s alpha_0). Unset: "
        "0.3 (chosen on ML-100k) times the fitted data's density over ML-100k's, so that the unrated pairs weigh "
        "against each user's interactions as they did there (a sparse catalogue of 24k items gets about 0.002).",
    )
    unobserved_weight_ratio: float = Field(
        1.0,
        gt=0,
        description="With unobserved_weight unset: a multiple of the density rule's weight. `recs tune` searches "
        "this rather than the weight itself, so a tuned weight follows the density of whatever is fitted (the split, "
        "the refit on all ratings, the full data after a search on a user sample).",
    )
    confidence: float = Field(
        0.0, ge=0, description="A rating r weighs 1 + confidence x r as a positive; 0 treats every rating alike."
    )
    cg_steps: int = Field(3, ge=1, le=100, description="Conjugate-gradient steps per row and half-step (warm-started).")
    init_std: float = Field(0.1, gt=0, description="Initial vectors ~ N(0, init_std / sqrt(factors)).")
    cache_bytes: int = Field(
        2 << 20,
        ge=1,
        description="CPU only: the products read the fixed side's vectors in tiles of this many bytes, "
        "so they stay in cache (2 MiB was fastest on the 2-core machine); on CUDA all at once.",
    )
    chunk_ratings: int = Field(
        1 << 22,
        ge=1,
        description="Ratings whose rows are solved at once (a few floats per rating and the rows' vectors are held).",
    )
    shard_ratings: int = Field(
        1 << 23,
        ge=1,
        description="On a cluster (--cluster-address): ratings per shard of a half-step, in whole chunks of "
        "chunk_ratings; a worker holds one shard's ratings and the fixed side's vectors, never the whole matrix.",
    )

    @property
    def a0(self) -> float:
        """The unobserved weight, once `for_interactions` has resolved it."""
        if self.unobserved_weight is None:
            raise ValueError("ials: unobserved_weight is resolved from the data (IalsParams.for_interactions) first")
        return self.unobserved_weight

    def for_interactions(self, interactions: Interactions) -> IalsParams:
        """These settings with the unobserved weight resolved for the data a fit sees: as set, else scaled by its
        density. Rendle et al. weigh the unrated pairs by alpha_0 against each row's count: a user with n ratings
        among |I| items sees n observed terms and alpha_0 |I| unobserved ones, so keeping alpha_0 |I| / n where
        it was tuned means alpha_0 in proportion to the density n / |I|. On ML-100k's 100,000 ratings it is 0.3
        exactly, so ML-100k's published lists (fitted on all of them) are the tuned setting's."""
        return self.for_density(interactions.ratings.height / (interactions.n_users * interactions.n_items))

    def for_density(self, density: float) -> IalsParams:
        """`for_interactions` for data of this density (ratings over users x items)."""
        if self.unobserved_weight is not None:
            return self
        weight = self.unobserved_weight_ratio * REFERENCE_UNOBSERVED_WEIGHT * (density / ML_100K_DENSITY)
        return self.model_copy(update={"unobserved_weight": weight})


# Where unobserved_weight's default was chosen (benchmarks/tune.py): 0.3 on ML-100k, whose density is this.
REFERENCE_UNOBSERVED_WEIGHT = 0.3
ML_100K_DENSITY = 100_000 / (943 * 1682)


class Ials(Recommender):
    """score = w_u . h_i, the vectors fitted by iALS."""

    predicts_ratings = False

    user_factors: torch.Tensor
    item_factors: torch.Tensor

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items, factors=factors)
        self.register_buffer("user_factors", torch.zeros((n_users, factors)))
        self.register_buffer("item_factors", torch.zeros((n_items, factors)))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors[users] @ self.item_factors.T

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors


def row_chunks(indptr: torch.Tensor, max_ratings: int) -> list[tuple[int, int]]:
    """Row ranges of at most `max_ratings` ratings each, found by a search over the cumulative counts."""
    counts = indptr.cpu()
    ranges, start, n = [], 0, len(counts) - 1
    while start < n:
        # the last row whose end stays within the budget counted from this chunk's first rating
        stop = int(torch.searchsorted(counts, counts[start] + max_ratings, right=True)) - 1
        stop = min(max(stop, start + 1), n)
        ranges.append((start, stop))
        start = stop
    return ranges


class ColumnTiles:
    """A rows x cols ratings matrix cut into tiles of `width` columns, each a CSR over all the rows.

    A sparse product of the ratings with the fixed side's vectors gathers one vector per rating, in no useful
    order. Tile by tile it gathers only from `width` vectors, which stay in the CPU's cache: on two cores that
    makes the item half-step (which gathers from all users' vectors) about four times faster. On CUDA the
    ratings are one tile.
    """

    def __init__(self, matrix: RatingMatrix | Csr, width: int) -> None:
        self.indptr = matrix.indptr
        self.n_rows, self.n_cols = matrix.shape
        self.width = max(1, min(width, self.n_cols))
        # 32-bit indices where they fit: half the index traffic of the products, which are bound by memory
        index = torch.int32 if len(matrix.indices) < 2**31 else torch.int64
        device = matrix.indptr.device
        # a tile's ratings' rows are found in the row bounds, tile by tile: the row of every rating held 4 bytes
        # a rating through the whole cut
        bounds = matrix.indptr.to(index)
        # each tile's ratings in row-major order: a stable sort by tile, of 32-bit tile numbers (with 64-bit ones and
        # 64-bit rows, torch's sort held 640 MB more at 20M ratings; `stable_order` holds 300 MB less than it)
        tile_of = torch.div(matrix.indices, self.width, rounding_mode="floor").to(torch.int32)
        ends = torch.bincount(tile_of, minlength=self.n_tiles).cumsum(0).tolist()
        order = stable_order(tile_of, self.n_tiles)
        del tile_of
        zero = torch.zeros(1, dtype=index, device=device)
        self.tiles: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (indptr, local columns, values)
        for tile, (first, last) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            taken = order[first:last]
            rows = torch.searchsorted(bounds, taken.to(index), right=True, out_int32=index == torch.int32) - 1
            counts = torch.bincount(rows, minlength=self.n_rows)
            self.tiles.append(
                (
                    torch.cat([zero, counts.cumsum(0).to(index)]),
                    (matrix.indices[taken] - tile * self.width).to(index),
                    matrix.values[taken],
                )
            )

    @property
    def n_tiles(self) -> int:
        return -(-self.n_cols // self.width)

    def chunk(self, start: int, stop: int) -> list[tuple[torch.Tensor, slice]]:
        """Rows [start, stop) of each tile, as CSR tensors holding c_ui, with the columns each tile covers."""
        blocks = []
        for tile, (indptr, columns, values) in enumerate(self.tiles):
            first, last = int(indptr[start]), int(indptr[stop])
            if last > first:
                cols = slice(tile * self.width, min((tile + 1) * self.width, self.n_cols))
                blocks.append(
                    (
                        torch.sparse_csr_tensor(
                            indptr[start : stop + 1] - first,
                            columns[first:last],
                            values[first:last],
                            (stop - start, cols.stop - cols.start),
                        ),
                        cols,
                    )
                )
        return blocks


def tile_width(factors: int, cache_bytes: int, device: torch.device) -> int:
    """Columns per tile: as many of the fixed side's vectors as fit in `cache_bytes` (all of them on CUDA)."""
    return 1 << 62 if device.type == "cuda" else max(1, cache_bytes // (4 * factors))


def _at_ratings(block: torch.Tensor, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """x_u . h_i at each stored (u, i) of `block`, without gathering a ratings x factors block (SDDMM)."""
    return torch.sparse.sampled_addmm(block, x, other.T, beta=0.0).values()  # beta 0: the block's values unread


def _weighted_sum(
    blocks: list[tuple[torch.Tensor, slice]],
    x: torch.Tensor,
    other: torch.Tensor,
    weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Per row u: sum over its ratings of weight(c_ui, x_u . h_i) h_i, tile by tile."""
    total = torch.zeros_like(x)
    for block, cols in blocks:
        values = weight(block.values(), _at_ratings(block, x, other[cols]))
        # a CSR times dense product; embedding_bag's weighted sum runs it about three times faster on CPU
        total.add_(
            F.embedding_bag(
                block.col_indices(),
                other[cols],
                block.crow_indices(),
                mode="sum",
                per_sample_weights=values,
                include_last_offset=True,
            )
        )
    return total


def gramian(other: torch.Tensor, unobserved_weight: float) -> torch.Tensor:
    """a0 H'H: what every unrated pair adds to each row's normal equations (factors x factors).

    On CPU it is computed on one thread: MKL splits the long reduction between threads (AVX-512 machines), which
    changes the low bits, and a one-thread Dask worker's shards must match the flow's own fit bit for bit. It is a
    small product (items x factors^2: 0.6 GFLOP at 20M ratings), done once per half-step."""
    if other.device.type != "cpu":
        return unobserved_weight * (other.T @ other)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return unobserved_weight * (other.T @ other)
    finally:
        torch.set_num_threads(threads)


def row_penalty(indptr: torch.Tensor, n_other: int, params: IalsParams) -> torch.Tensor:
    """Each row's regularization, reg (its count + a0 x the other side's size)^nu."""
    return params.regularization * (indptr.diff().float() + params.a0 * n_other).pow(params.regularization_exponent)


def _times_gram(x: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """x H'H, as (H'H x')' (the Gramian is symmetric). MKL's product of a few rows (5 to 11) by a matrix gives
    other low bits with one thread than with two; this orientation does not, so a shard solved on a one-thread
    Dask worker matches the flow's own fit bit for bit (tests/tasks/test_ials.py)."""
    return (gram @ x.T).T


@torch.no_grad()
def solve_side(
    vectors: torch.Tensor,
    other: torch.Tensor,
    gram: torch.Tensor,
    tiles: ColumnTiles,
    penalty: torch.Tensor,
    steps: int,
    max_ratings: int,
) -> None:
    """One half-step: every row of `vectors` (in place) by `steps` of conjugate gradient on its normal equations.

    Each row's solve reads only its own ratings, `other` and `gram`, so rows [a, b) solved alone (a shard on a
    cluster, tasks/ials_shards.py) come out bit for bit as in the whole half-step when a and b start chunks.

    Args:
        vectors: (n, f) the side being solved, updated in place; its current values start the solve.
        other: (m, f) the fixed side.
        gram: `gramian(other, unobserved_weight)`.
        tiles: the n x m ratings holding c_ui per stored rating.
        penalty: (n,) each row's regularization.
    """
    for start, stop in row_chunks(tiles.indptr, max_ratings):
        blocks = tiles.chunk(start, stop)
        lam = penalty[start:stop, None]
        x = vectors[start:stop].clone()
        # r = b - A x = sum_i c_ui (1 - h_i . x) h_i - a0 H'H x - reg_u x
        r = _weighted_sum(blocks, x, other, lambda c, v: c * (1.0 - v)).sub_(_times_gram(x, gram)).sub_(x * lam)
        p = r.clone()
        rs = (r * r).sum(1)
        for _ in range(steps):
            # A p = sum_i c_ui (h_i . p) h_i + a0 H'H p + reg_u p
            ap = _weighted_sum(blocks, p, other, lambda c, v: v.mul_(c)).add_(_times_gram(p, gram)).add_(p * lam)
            alpha = rs / (p * ap).sum(1).clamp(min=1e-20)
            x.addcmul_(alpha[:, None], p)
            r.addcmul_(alpha[:, None], ap, value=-1.0)
            rs_next = (r * r).sum(1)
            p = r + (rs_next / rs.clamp(min=1e-20))[:, None] * p
            rs = rs_next
        vectors[start:stop] = x


def observed_loss(tiles: ColumnTiles, x: torch.Tensor, other: torch.Tensor, max_ratings: int) -> torch.Tensor:
    """sum over the stored (u, i) of c_ui (x_u . h_i - 1)^2, in float64."""
    observed = torch.zeros((), dtype=torch.float64, device=x.device)
    for start, stop in row_chunks(tiles.indptr, max_ratings):
        for block, cols in tiles.chunk(start, stop):
            observed += (block.values() * (_at_ratings(block, x[start:stop], other[cols]) - 1.0).pow(2)).sum()
    return observed


def ials_loss(
    tiles: ColumnTiles,
    w: torch.Tensor,
    h: torch.Tensor,
    unobserved_weight: float,
    user_penalty: torch.Tensor,
    item_penalty: torch.Tensor,
    max_ratings: int,
) -> float:
    """The objective in the module docstring, per rating (`tiles`: users x items holding c_ui)."""
    observed = observed_loss(tiles, w, h, max_ratings)
    unobserved = unobserved_weight * ((w.T @ w) * (h.T @ h)).sum()  # the sum over all pairs of y_ui^2
    penalty = (user_penalty * w.pow(2).sum(1)).sum() + (item_penalty * h.pow(2).sum(1)).sum()
    return float((observed + unobserved + penalty) / max(int(tiles.indptr[-1]), 1))


def rating_matrices(
    interactions: Interactions, params: IalsParams, device: torch.device
) -> tuple[RatingMatrix, RatingMatrix]:
    """The ratings by user and by item, holding c_ui."""
    by_user = user_matrix(interactions, params, device)
    return by_user, by_user.transpose()


class Csr(NamedTuple):
    """A matrix's CSR arrays, as `ColumnTiles` reads them from a `RatingMatrix` too."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]


def rating_sides(interactions: Interactions, params: IalsParams, device: torch.device) -> Iterator[RatingMatrix | Csr]:
    """The ratings by user, then by item, holding c_ui (the arrays of `rating_matrices`), one at a time: the caller
    drops the first before it asks for the second. Ratings in CSR order on the CPU (as reindex and the split write
    them) are read from the frame's own columns: the by-user side is its items with their c_ui, the by-item side its
    users and c_ui gathered through a counting sort of its items (`stable_order`). A `RatingMatrix` and its
    transpose held 12 bytes a rating each, both at once while it transposed: 0.5 GB at 20M ratings."""
    ratings = interactions.ratings
    sorted_pairs = in_csr_order(ratings["user_idx"].to_numpy(), ratings["item_idx"].to_numpy(), interactions.n_items)
    if device.type != "cpu" or not sorted_pairs:
        matrix = user_matrix(interactions, params, device)
        yield matrix
        yield matrix.transpose()
        return
    users, items, values = column_tensors(ratings, device)  # the frame's memory
    shape = (interactions.n_users, interactions.n_items)
    yield Csr(_indptr(users, shape[0]), items, confidence(values.clone(), params), shape)
    order = stable_order(items, shape[1])
    yield Csr(_indptr(items, shape[1]), users[order], confidence(values[order], params), (shape[1], shape[0]))


def _indptr(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    indptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    indptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return indptr


def user_matrix(interactions: Interactions, params: IalsParams, device: torch.device) -> RatingMatrix:
    """The ratings by user, holding c_ui."""
    shape = (interactions.n_users, interactions.n_items)
    return RatingMatrix.of_ratings(interactions.ratings, shape, device, lambda ratings: confidence(ratings, params))


def confidence(ratings: torch.Tensor, params: IalsParams) -> torch.Tensor:
    """c_ui = 1 + confidence x rating, computed in place in `ratings` (float32)."""
    return ratings.mul_(params.confidence).add_(1.0)


def initial_vectors(
    n_users: int, n_items: int, params: IalsParams, device: torch.device, seed: int, init: InitialRows | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded initial user and item vectors, with the rows `init` gives taken from a previous fit."""
    generator = torch.Generator(device=device).manual_seed(seed)
    std = params.init_std / params.factors**0.5
    w = torch.randn((n_users, params.factors), generator=generator, device=device) * std
    h = torch.randn((n_items, params.factors), generator=generator, device=device) * std
    apply_initial_rows({"user_factors": w, "item_factors": h}, init)
    return w, h


@torch.no_grad()
def fit_ials(
    interactions: Interactions,
    params: IalsParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
    init: InitialRows | None = None,
    on_epoch: EpochHook | None = None,
) -> tuple[Ials, list[dict]]:
    """`ials` by alternating conjugate-gradient solves (see the module docstring); one history row per epoch.
    `init`: rows of the initial vectors from a previous fit (a warm start); `on_epoch`: called with the module
    after each epoch (a tuning trial scores it there)."""
    params = params.for_interactions(interactions)
    n_users, n_items, f = interactions.n_users, interactions.n_items, params.factors
    a0, width = params.a0, tile_width(f, params.cache_bytes, device)
    module = Ials(n_users, n_items, f).to(device)
    w, h = module.user_factors, module.item_factors
    for vectors, initial in zip((w, h), initial_vectors(n_users, n_items, params, device, seed, init), strict=True):
        vectors.copy_(initial)
    # one side's ratings at a time beside the tiles: the by-user tiles are cut and the by-user side dropped before
    # the by-item side is made
    sides = rating_sides(interactions, params, device)
    matrix = next(sides)
    user_penalty = row_penalty(matrix.indptr, n_items, params)
    by_user = ColumnTiles(matrix, width)
    del matrix
    matrix = next(sides)
    item_penalty = row_penalty(matrix.indptr, n_users, params)
    by_item = ColumnTiles(matrix, width)
    del matrix, sides
    rows: list[dict] = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        solve_side(w, h, gramian(h, a0), by_user, user_penalty, params.cg_steps, params.chunk_ratings)
        solve_side(h, w, gramian(w, a0), by_item, item_penalty, params.cg_steps, params.chunk_ratings)
        check_factors(w, h, epoch)
        loss = ials_loss(by_user, w, h, a0, user_penalty, item_penalty, params.chunk_ratings)
        rows.append({"epoch": epoch, "split": label, "loss": loss})
        log.info("epoch %d/%d: %s loss %.4f (%.2fs)", epoch, params.epochs, label, loss, time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch, module)
    return module, rows


def check_factors(w: torch.Tensor, h: torch.Tensor, epoch: int) -> None:
    """ModelFitError when an epoch left a non-finite vector."""
    if not (torch.isfinite(w).all() and torch.isfinite(h).all()):
        raise non_finite(epoch)


def non_finite(epoch: int) -> ModelFitError:
    return ModelFitError(f"ials factors became non-finite in epoch {epoch}; raise the regularization")


def padded_rows(
    users: torch.Tensor,
    columns: torch.Tensor,
    values: torch.Tensor,
    n_users: int,
    width: int,
    max_bytes: int,
    min_length: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each user's interactions as rows of a padded block, in chunks of users with similar counts (sorted by count,
    so padding stays small) whose (users, longest row, width) floats take at most `max_bytes`: per chunk, the users'
    indices (g,), their columns (g, L; padding 0) and values (g, L; padding 0). A row counts as at least
    `min_length` long (what else each user holds: a factors x factors system)."""
    counts = torch.bincount(users, minlength=n_users)
    order = torch.argsort(users, stable=True)
    columns, values = columns[order], values[order]
    starts = torch.cumsum(counts, 0) - counts
    by_count = torch.argsort(counts, stable=True)
    sorted_counts = counts[by_count].clamp(min=1).cpu().numpy()
    per_chunk = max(max_bytes // (width * 4), 1)  # users x longest row that fit
    chunks, first = [], 0
    while first < n_users:
        # the block grows with its users and its longest row (the last, counts ascending): the most that fit
        size = np.arange(1, n_users - first + 1) * np.maximum(sorted_counts[first:], min_length)
        last = first + max(1, int(np.searchsorted(size, per_chunk, side="right")))
        rows = by_count[first:last]
        longest = int(sorted_counts[last - 1])
        position = starts[rows, None] + torch.arange(longest, device=users.device)[None, :]
        present = torch.arange(longest, device=users.device)[None, :] < counts[rows, None]
        taken = position.clamp(max=max(len(columns) - 1, 0))
        chunks.append((rows, torch.where(present, columns[taken], 0), torch.where(present, values[taken], 0.0)))
        first = last
    return chunks


@torch.no_grad()
def fold_in_ials(module: Ials, params: IalsParams, users: FoldIn, device: torch.device) -> Ials:
    """The users' vectors solved exactly against the fitted item vectors: each user's normal equations of the module
    docstring, (sum_i c_ui h_i h_i' + a0 H'H + reg_u I) w_u = sum_i c_ui h_i, with a0 and the penalty resolved as the
    fit resolved them (the fitted data's density). All users of a chunk are solved in one batched solve."""
    h = module.item_factors.to(device)
    n_items, f = h.shape
    settings = params.for_density(users.fitted_ratings / (users.fitted_users * n_items))
    gram = gramian(h, settings.a0)
    k = users.interactions.n_users
    user, item, rating = index_tensors(users.interactions.ratings, device)
    penalty = row_penalty(
        torch.cat([torch.zeros(1, device=device), torch.bincount(user, minlength=k).cumsum(0)]), n_items, settings
    )
    folded = Ials(0, 0, f)
    folded.init_args = {"n_users": k, "n_items": n_items, "factors": f}
    folded.item_factors = h
    folded.user_factors = torch.zeros((k, f), device=device)
    eye = torch.eye(f, device=device)
    for rows, items, confidence in padded_rows(user, item, 1.0 + settings.confidence * rating, k, f, 1 << 26, f):
        gathered = h[items] * (confidence > 0)[..., None]  # (g, L, f); padding contributes nothing
        weighted = gathered * confidence[..., None]
        normal = weighted.transpose(1, 2) @ gathered + gram + penalty[rows, None, None] * eye
        folded.user_factors[rows] = torch.linalg.solve(normal, weighted.sum(1))
    return folded
