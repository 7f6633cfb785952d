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
weighted sum of the h_i (CSR times dense). No ratings x factors block is gathered, so memory is a few floats
per rating plus the vectors; there is no per-row Python loop, and it runs unchanged on CUDA.
"""

from __future__ import annotations

import logging
import time

import polars as pl
import torch
from pydantic import Field

from tasks.models.base import Interactions, ModelFitError, ModelParams, RatingMatrix, Recommender, index_tensors

log = logging.getLogger(__name__)


class IalsParams(ModelParams):
    """`ials`: implicit alternating least squares, every rating a positive (Rendle et al.'s recipe).

    Searched over epochs 8/16, regularization 0.01/0.02/0.03/0.05, unobserved weight 0.05/0.1/0.2/0.3 and
    confidence 0/0.5 at 64 factors (128 was no better in a first search): 16, 0.02, 0.3, 0 is the best,
    validation nDCG@10 0.2829 (ease: 0.2712)."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and items.")
    epochs: int = Field(16, ge=1, description="Alternations: each solves every user, then every item.")
    regularization: float = Field(
        0.02, ge=0, description="L2 penalty, scaled per row by (its count + unobserved_weight x the other side's size)^regularization_exponent."
    )
    regularization_exponent: float = Field(
        1.0, ge=0, le=1, description="How the penalty grows with a row's count (Rendle et al.'s nu): 0 plain L2, 1 proportional."
    )
    unobserved_weight: float = Field(
        0.3, ge=0, description="Weight of every unrated (user, item) pair pulled towards 0 (Rendle et al.'s alpha_0)."
    )
    confidence: float = Field(
        0.0, ge=0, description="A rating r weighs 1 + confidence x r as a positive; 0 treats every rating alike."
    )
    cg_steps: int = Field(3, ge=1, description="Conjugate-gradient steps per row and half-step (warm-started).")
    init_std: float = Field(0.1, gt=0, description="Initial vectors ~ N(0, init_std / sqrt(factors)).")
    chunk_ratings: int = Field(
        1 << 22, ge=1, description="Ratings whose rows are solved at once (a few floats per rating and the rows' vectors are held)."
    )


class Ials(Recommender):
    """score = w_u . h_i, the vectors fitted by iALS."""

    predicts_ratings = False

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


def _chunk_csr(matrix: RatingMatrix, start: int, stop: int, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Rows [start, stop) of `matrix` as a torch CSR tensor holding `values` (no copy of the indices)."""
    crow = matrix.indptr[start : stop + 1] - matrix.indptr[start]
    first, last = int(matrix.indptr[start]), int(matrix.indptr[stop])
    return torch.sparse_csr_tensor(crow, matrix.indices[first:last], values, (stop - start, n_cols))


def _at_ratings(pattern: torch.Tensor, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """x_u . h_i at each stored (u, i) of `pattern`, without gathering a ratings x factors block (SDDMM)."""
    return torch.sparse.sampled_addmm(pattern, x, other.T, beta=0.0).values()


@torch.no_grad()
def solve_side(vectors: torch.Tensor, other: torch.Tensor, matrix: RatingMatrix, unobserved_weight: float,
               penalty: torch.Tensor, steps: int, max_ratings: int) -> None:  # fmt: skip
    """One half-step: every row of `vectors` (in place) by `steps` of conjugate gradient on its normal equations.

    Args:
        vectors: (n, f) the side being solved, updated in place; its current values start the solve.
        other: (m, f) the fixed side.
        matrix: the n x m ratings, CSR, holding c_ui per stored rating.
        penalty: (n,) each row's regularization.
    """
    gram = unobserved_weight * (other.T @ other)
    n_cols = other.shape[0]
    for start, stop in row_chunks(matrix.indptr, max_ratings):
        first, last = int(matrix.indptr[start]), int(matrix.indptr[stop])
        c = matrix.values[first:last]
        pattern = _chunk_csr(matrix, start, stop, torch.zeros_like(c), n_cols)
        lam = penalty[start:stop, None]

        def times_a(x: torch.Tensor) -> torch.Tensor:
            """A x for every row of the chunk: sum_i c_ui (h_i . x) h_i + a0 H'H x + reg_u x."""
            weighted = _chunk_csr(matrix, start, stop, _at_ratings(pattern, x, other).mul_(c), n_cols)
            return (weighted @ other).add_(x @ gram).add_(x * lam)

        b = _chunk_csr(matrix, start, stop, c, n_cols) @ other
        x = vectors[start:stop].clone()
        r = b - times_a(x)
        p = r.clone()
        rs = (r * r).sum(1)
        for _ in range(steps):
            ap = times_a(p)
            alpha = rs / (p * ap).sum(1).clamp(min=1e-20)
            x.addcmul_(alpha[:, None], p)
            r.addcmul_(alpha[:, None], ap, value=-1.0)
            rs_next = (r * r).sum(1)
            p = r + (rs_next / rs.clamp(min=1e-20))[:, None] * p
            rs = rs_next
        vectors[start:stop] = x


def ials_loss(matrix: RatingMatrix, w: torch.Tensor, h: torch.Tensor, unobserved_weight: float,
              user_penalty: torch.Tensor, item_penalty: torch.Tensor, max_ratings: int) -> float:  # fmt: skip
    """The objective in the module docstring, per rating (`matrix`: users x items holding c_ui)."""
    observed = torch.zeros((), dtype=torch.float64, device=w.device)
    for start, stop in row_chunks(matrix.indptr, max_ratings):
        first, last = int(matrix.indptr[start]), int(matrix.indptr[stop])
        c = matrix.values[first:last]
        predicted = _at_ratings(_chunk_csr(matrix, start, stop, torch.zeros_like(c), h.shape[0]), w[start:stop], h)
        observed += (c * (predicted - 1.0).pow(2)).sum()
    unobserved = unobserved_weight * ((w.T @ w) * (h.T @ h)).sum()  # the sum over all pairs of y_ui^2
    penalty = (user_penalty * w.pow(2).sum(1)).sum() + (item_penalty * h.pow(2).sum(1)).sum()
    return float((observed + unobserved + penalty) / max(len(matrix.values), 1))


@torch.no_grad()
def fit_ials(interactions: Interactions, params: IalsParams, device: torch.device,
             validation: pl.DataFrame | None = None, *, seed: int = 0, label: str = "train") -> tuple[Ials, list[dict]]:  # fmt: skip
    """`ials` by alternating conjugate-gradient solves (see the module docstring); one history row per epoch."""
    n_users, n_items, f = interactions.n_users, interactions.n_items, params.factors
    users, items, ratings = index_tensors(interactions.ratings, device)
    c = 1.0 + params.confidence * ratings
    by_user = RatingMatrix.build(users, items, c, (n_users, n_items))
    by_item = by_user.transpose()
    a0, nu = params.unobserved_weight, params.regularization_exponent
    user_penalty = params.regularization * (by_user.indptr.diff().float() + a0 * n_items).pow(nu)
    item_penalty = params.regularization * (by_item.indptr.diff().float() + a0 * n_users).pow(nu)
    generator = torch.Generator(device=device).manual_seed(seed)
    std = params.init_std / f**0.5
    module = Ials(n_users, n_items, f).to(device)
    w, h = module.user_factors, module.item_factors
    w.copy_(torch.randn((n_users, f), generator=generator, device=device) * std)
    h.copy_(torch.randn((n_items, f), generator=generator, device=device) * std)
    rows: list[dict] = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        solve_side(w, h, by_user, a0, user_penalty, params.cg_steps, params.chunk_ratings)
        solve_side(h, w, by_item, a0, item_penalty, params.cg_steps, params.chunk_ratings)
        if not (torch.isfinite(w).all() and torch.isfinite(h).all()):
            raise ModelFitError(f"ials factors became non-finite in epoch {epoch}; raise the regularization")
        loss = ials_loss(by_user, w, h, a0, user_penalty, item_penalty, params.chunk_ratings)
        rows.append({"epoch": epoch, "split": label, "loss": loss})
        log.info("epoch %d/%d: %s loss %.4f (%.2fs)", epoch, params.epochs, label, loss, time.perf_counter() - started)
    return module, rows
