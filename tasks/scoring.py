"""Top-k over unseen items for every user: chunked matrix products, a sparse seen-item structure, torch.topk.

Shared by evaluation (top-k excluding the user's training items) and recommendation (top-n excluding
everything the user rated). Never builds a users x items matrix: one chunk of users at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch


@dataclass(frozen=True)
class UserItems:
    """A CSR set of items per user: the items of user u are `indices[indptr[u]:indptr[u+1]]`, sorted."""

    indptr: np.ndarray  # int64, n_users + 1
    indices: np.ndarray  # int64, item indices

    @classmethod
    def from_ratings(cls, ratings: pl.DataFrame, n_users: int) -> UserItems:
        """Build from `user_idx`, `item_idx` columns (any order; duplicates are kept once)."""
        pairs = ratings.select("user_idx", "item_idx").unique().sort("user_idx", "item_idx")
        users = pairs["user_idx"].to_numpy()
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, pairs["item_idx"].to_numpy().astype(np.int64))

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def mask(self, start: int, stop: int, n_items: int, device: torch.device) -> torch.Tensor:
        """Dense boolean (stop - start, n_items) mask of the items of users start..stop-1."""
        lo, hi = self.indptr[start], self.indptr[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start : stop + 1]))
        mask = torch.zeros((stop - start, n_items), dtype=torch.bool, device=device)
        mask[torch.from_numpy(rows).to(device), torch.from_numpy(self.indices[lo:hi]).to(device)] = True
        return mask

    def contains(self, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Elementwise: is `items[j]` among the items of `users[j]`? (binary search over sorted keys)"""
        keys = np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts()) * n_items + self.indices
        probe = users.astype(np.int64) * n_items + items.astype(np.int64)
        pos = np.minimum(np.searchsorted(keys, probe), max(len(keys) - 1, 0))
        return (keys[pos] == probe) if len(keys) else np.zeros(len(probe), dtype=bool)


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def top_k_unseen(
    score_users: ScoreFn,
    n_users: int,
    n_items: int,
    exclude: UserItems,
    k: int,
    device: torch.device,
    chunk_users: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k best-scored items among those not in `exclude`.

    Args:
        score_users: maps a tensor of user indices to their (len, n_items) scores.
        n_users: users 0..n_users-1 are scored.
        n_items: number of items.
        exclude: items never returned for a user.
        k: list length.
        device: where scores are computed.
        chunk_users: users per chunk.

    Returns:
        (items, scores), both (n_users, min(k, n_items)); where a user has fewer than k unseen items the
        tail is item -1 with score -inf.
    """
    k = min(k, n_items)
    top_items = np.empty((n_users, k), dtype=np.int64)
    top_scores = np.empty((n_users, k), dtype=np.float32)
    for start in range(0, n_users, chunk_users):
        stop = min(start + chunk_users, n_users)
        scores = score_users(torch.arange(start, stop, device=device)).float()
        scores.masked_fill_(exclude.mask(start, stop, n_items, device), float("-inf"))
        values, indices = torch.topk(scores, k, dim=1)
        indices[torch.isinf(values)] = -1
        top_items[start:stop] = indices.cpu().numpy()
        top_scores[start:stop] = values.cpu().numpy()
    return top_items, top_scores
