"""Reasons: for each published (user, item), the user's rated items that speak for it most ("because you rated").

A model says how much a rated item j speaks for a recommended item i (`Recommender.item_affinity`): the cosine
of their vectors in the model's item space for the factor models (dot_bias, dot, mlp, bpr, ials), the weight
B[j, i] that j adds to i's score for EASE. The kNN, bias and popularity models give none, and their lists are
published without reasons.

Vectorised like scoring: the published pairs are taken in chunks of at most `MAX_ENTRIES` (pair, rated item)
entries; each chunk's affinities are one sampled product over that sparse pattern (no entries x factors block is
gathered), and the best `n` per pair are `n` passes of a segment max (`scatter_reduce`), with no loop over users.
Only positive contributions are reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import torch

from tasks.scoring import UserItems

MAX_ENTRIES = 1 << 22  # (pair, rated item) entries per chunk: about 30 bytes each while it is explained

REASON_SCHEMA = pl.Schema(
    {
        "user_idx": pl.Int32,
        "item_idx": pl.Int32,
        "reason_rank": pl.Int16,
        "reason_item_idx": pl.Int32,
        "contribution": pl.Float32,
    }
)


def _chunks(counts: np.ndarray, max_entries: int) -> list[tuple[int, int]]:
    """Consecutive pair ranges whose entries (the pairs' users' rated items) stay within `max_entries`, at least one
    pair each."""
    ends = np.cumsum(counts)
    ranges, start = [], 0
    while start < len(counts):
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + max_entries, side="right")))
        ranges.append((start, stop))
        start = stop
    return ranges


@torch.no_grad()
def explain(
    affinity,
    users: np.ndarray,
    items: np.ndarray,
    rated: UserItems,
    n: int,
    device: torch.device,
    max_entries: int = MAX_ENTRIES,
) -> pl.DataFrame:
    """Up to `n` reasons per (user, item) pair: the user's rated items with the largest positive affinity.

    Args:
        affinity: the model's `item_affinity()`: (the chunk's recommended items, the offsets of each one's rated
            items, the rated items) -> one contribution per rated item.
        users, items: the published pairs, as user and item indices.
        rated, n: every user's rated items (all their ratings); the reasons per pair.
        device: where the affinities are computed (the model's).

    Returns:
        `user_idx`, `item_idx`, `reason_rank` (1 = the strongest), `reason_item_idx`, `contribution`.
    """
    counts = rated.counts()[users]
    parts = []
    for start, stop in _chunks(counts, max_entries):
        c = counts[start:stop]
        total = int(c.sum())
        if total == 0 or n == 0:
            continue
        pair = np.repeat(np.arange(stop - start), c)
        offset = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
        rated_items = rated.indices[np.repeat(rated.indptr[users[start:stop]], c) + offset]
        crow = torch.from_numpy(np.concatenate([[0], np.cumsum(c)]).astype(np.int64)).to(device)
        chunk_items = torch.from_numpy(items[start:stop].astype(np.int64)).to(device)
        values = affinity(chunk_items, crow, torch.from_numpy(rated_items).to(device)).float()
        for rank, found, chosen in _best_entries(values, torch.from_numpy(pair).to(device), stop - start, n):
            parts.append(
                pl.DataFrame(
                    {
                        "user_idx": users[start:stop][found],
                        "item_idx": items[start:stop][found],
                        "reason_rank": np.full(len(found), rank),
                        "reason_item_idx": rated_items[chosen],
                        "contribution": values[torch.from_numpy(chosen).to(device)].cpu().numpy(),
                    }
                ).cast(REASON_SCHEMA)
            )
    if not parts:
        return pl.DataFrame(schema=REASON_SCHEMA)
    return pl.concat(parts).sort("user_idx", "item_idx", "reason_rank")


def _best_entries(
    values: torch.Tensor, pair: torch.Tensor, n_pairs: int, n: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For rank 1..n: the pairs that still have a positive entry and the position of each one's best (the first
    best entry: its rated item of lowest index, for a stable answer on ties). Each best entry is blanked in
    `values` once yielded, so the next rank finds the next best."""
    total, device = len(values), values.device
    positions = torch.arange(total, device=device)
    for rank in range(1, n + 1):
        best = torch.full((n_pairs,), float("-inf"), device=device)
        best.scatter_reduce_(0, pair, values, "amax")
        hit = (values == best[pair]) & (values > 0)
        first = torch.full((n_pairs,), total, dtype=torch.int64, device=device)
        first.scatter_reduce_(0, pair[hit], positions[hit], "amin")
        found = torch.nonzero(first < total).flatten()
        if len(found) == 0:
            return
        chosen = first[found]
        yield rank, found.cpu().numpy(), chosen.cpu().numpy()
        values[chosen] = float("-inf")
