"""Top-k over unseen items for every user: chunked matrix products, a sparse seen-item structure, torch.topk.

Shared by evaluation (top-k excluding the user's training items) and recommendation (top-n excluding
everything the user rated). Never builds a users x items matrix: one chunk of users at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # log progress at most this often on long scoring passes


@dataclass(frozen=True)
class UserItems:
    """A CSR set of items per user: the items of user u are `indices[indptr[u]:indptr[u+1]]`, sorted."""

    indptr: np.ndarray  # int64, n_users + 1
    indices: np.ndarray  # int64, item indices

    @classmethod
    def from_ratings(cls, ratings: pl.DataFrame, n_users: int) -> UserItems:
        """Build from `user_idx`, `item_idx` columns (any order; duplicates are kept once)."""
        users = ratings["user_idx"].to_numpy().astype(np.int64)
        items = ratings["item_idx"].to_numpy().astype(np.int64)
        width = int(items.max()) + 1 if len(items) else 1
        keys = np.sort(users * width + items)  # one int64 sort: several times faster than a two-column unique
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
        counts = np.bincount(keys // width, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, keys % width)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def counts_within(self, allowed: np.ndarray) -> np.ndarray:
        """Per user, how many of their items are `allowed` (one boolean per item index)."""
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts())
        return np.bincount(rows[allowed[self.indices]], minlength=self.n_users)

    def block_positions(self, start: int, stop: int, n_items: int) -> np.ndarray:
        """Flat positions, in a row-major (stop - start, n_items) block, of the items of users start..stop-1:
        what to blank in a chunk of scores, in time proportional to the ratings rather than to the block."""
        lo, hi = self.indptr[start], self.indptr[stop]
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(self.indptr[start : stop + 1]))
        return rows * n_items + self.indices[lo:hi]

    def contains(self, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Elementwise: is `items[j]` among the items of `users[j]`? (binary search over sorted keys)"""
        keys = np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts()) * n_items + self.indices
        probe = users.astype(np.int64) * n_items + items.astype(np.int64)
        pos = np.minimum(np.searchsorted(keys, probe), max(len(keys) - 1, 0))
        return (keys[pos] == probe) if len(keys) else np.zeros(len(probe), dtype=bool)


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteScoreError(ValueError):
    """A model gave a NaN or infinite score: ranking it would put that item first (NaN sorts highest)."""


def top_k_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k highest scores and their columns, equal scores in column order (the lower item index
    first), so that a list does not depend on how `torch.topk` happens to break ties.

    `torch.topk` picks the k + 1 best: where the (k + 1)-th equals the k-th, an item tied with the last one
    kept was left out, and only those rows are picked again, exactly: every item above that value, then the
    tied ones in column order. No pass over the whole row is made for the others."""
    n_cols = scores.shape[1]
    values, indices = torch.topk(scores, min(k + 1, n_cols), dim=1)
    if n_cols > k:
        tied_out = values[:, k - 1] == values[:, k]
    else:  # every column is in the list: nothing left out to tie with
        tied_out = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if tied_out.any():
        rows, kth = scores[tied_out], values[tied_out][:, -1:]
        above, at = (rows > kth) | rows.isnan(), rows == kth  # NaN ranks above all, as in torch.topk
        wanted = k - above.sum(1, keepdim=True)
        chosen = above | (at & (at.cumsum(1) <= wanted))
        columns = torch.nonzero(chosen)[:, 1].view(-1, k)  # row-major: k columns per row, ascending
        indices[tied_out], values[tied_out] = columns, rows.gather(1, columns)
    # order by value, then by column: a stable sort by value of the columns sorted ascending
    by_column = torch.sort(indices, dim=1).indices
    indices, values = indices.gather(1, by_column), values.gather(1, by_column)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), indices.gather(1, by_value)


@torch.no_grad()
def top_k_unseen(
    score_users: ScoreFn,
    n_users: int,
    n_items: int,
    exclude: UserItems,
    k: int,
    device: torch.device,
    chunk_users: int = 2048,
    to_score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    users: tuple[int, int] | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k best-scored items among those not in `exclude` (and `allowed`, when given).

    Args:
        score_users: maps a tensor of user indices to their (len, n_items) scores, or to any increasing
            function of them when `to_score` maps the k best back to scores.
        n_users, n_items: users 0..n_users-1 are scored against items 0..n_items-1.
        exclude: items never returned for a user.
        k, device, chunk_users: the list length, where scores are computed, users per chunk.
        to_score: applied to the k best values of each user only (a model's output transform, skipped on
            the other items).
        users: score only users first..last-1 (a shard); default all `n_users`.
        allowed: one boolean per item: only these may be returned (the business rules, tasks/rules.py); their
            scores are blanked before the top-k, so a user still gets k items where k allowed unseen ones remain.

    Returns:
        (items, scores), both (number of users scored, min(k, n_items)); where a user has fewer than k unseen
        items the tail is item -1 with score -inf.
    """
    k, (first, last) = min(k, n_items), users or (0, n_users)
    top_items, top_scores = np.empty((last - first, k), dtype=np.int64), np.empty((last - first, k), dtype=np.float32)
    n_padding, blocked = _padding(exclude, n_items, k, allowed, device)
    started = last_report = time.perf_counter()
    for start in range(first, last, chunk_users):
        stop = min(start + chunk_users, last)
        scores = _blanked_scores(score_users, start, stop, exclude, n_items, blocked, device)
        values, indices, padding = _checked_top_k(scores, k, n_padding[start:stop], start)
        indices[padding] = -1
        if to_score is not None:
            values = to_score(values).masked_fill_(padding, float("-inf"))
        top_items[start - first : stop - first] = indices.cpu().numpy()
        top_scores[start - first : stop - first] = values.cpu().numpy()
        last_report = _progress(stop - first, last - first, started, last_report)
    return top_items, top_scores


def _progress(done: int, total: int, started: float, last_report: float) -> float:
    """Log the users scored so far when PROGRESS_SECONDS have passed since the last report; returns its time."""
    now = time.perf_counter()
    if now - last_report <= PROGRESS_SECONDS:
        return last_report
    log.info("scored %d of %d users (%.0f users/s)", done, total, done / (now - started))
    return now


def _blanked_scores(
    score_users: ScoreFn,
    start: int,
    stop: int,
    exclude: UserItems,
    n_items: int,
    blocked: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Users start..stop-1's scores with their excluded items and the blocked ones set to -inf."""
    # contiguous: the seen items are blanked through a flat view (a no-op for most models' products)
    scores = score_users(torch.arange(start, stop, device=device)).float().contiguous()
    seen = torch.from_numpy(exclude.block_positions(start, stop, n_items)).to(device)
    scores.view(-1).index_fill_(0, seen, float("-inf"))
    if blocked is not None and len(blocked):
        scores.index_fill_(1, blocked, float("-inf"))
    return scores


def _padding(
    exclude: UserItems, n_items: int, k: int, allowed: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per user, how many -inf entries pad the list's tail (where fewer than k unseen allowed items remain: that
    many, and no more), and the items the rules block (None without rules)."""
    if allowed is None:
        n_padding, blocked = np.maximum(k - (n_items - exclude.counts()), 0), None
    else:
        n_padding = np.maximum(k - (int(allowed.sum()) - exclude.counts_within(allowed)), 0)
        blocked = torch.from_numpy(np.flatnonzero(~allowed)).to(device)
    return torch.from_numpy(n_padding).to(device), blocked


def _checked_top_k(
    scores: torch.Tensor, k: int, n_padding: torch.Tensor, first_user: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`top_k_stable` of a chunk's blanked scores and where its padding is; a NonFiniteScoreError when a model's
    NaN or +inf ranks above every number (it shows at the top) or its -inf shows as more -inf than the padding."""
    values, indices = top_k_stable(scores, k)
    padding = torch.isinf(values)
    broken = torch.isnan(values[:, 0]) | (values[:, 0] == float("inf")) | (padding.sum(1) > n_padding)
    if broken.any():
        bad = first_user + int(torch.nonzero(broken)[0, 0])
        raise NonFiniteScoreError(
            f"the model scored user index {bad} (and maybe others) as NaN or infinite; "
            "nothing is ranked or published from it"
        )
    return values, indices, padding
