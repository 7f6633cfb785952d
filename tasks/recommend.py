"""Recommend: every user's top-n among the items they have not rated anywhere in the dataset and that the business
rules allow (tasks/rules.py), with the rated items behind each one (tasks/reasons.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from tasks.config import PipelineConfig
from tasks.reasons import REASON_SCHEMA, explain
from tasks.reindex import IdMaps
from tasks.rules import ListRules
from tasks.scoring import UserItems, top_k_unseen
from tasks.train import TrainedModel
from warehouse.runs import REASONS_SCHEMA  # the reasons as the warehouse keeps them


def recommend(
    model: TrainedModel,
    ratings: pl.DataFrame,
    maps: IdMaps,
    config: PipelineConfig,
    rater: TrainedModel | None = None,
    users: tuple[int, int] | None = None,
    rules: ListRules | None = None,
) -> pl.DataFrame:
    """The lists of `recommend_with_reasons`, without their reasons."""
    return recommend_with_reasons(model, ratings, maps, config.model_copy(update={"reasons": 0}), rater, users, rules)[
        0
    ]


def recommend_with_reasons(
    model: TrainedModel,
    ratings: pl.DataFrame,
    maps: IdMaps,
    config: PipelineConfig,
    rater: TrainedModel | None = None,
    users: tuple[int, int] | None = None,
    rules: ListRules | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Top-n per user, in the dataset's own ids, with the stars a rating model predicts for each item, and the
    reasons behind each item.

    Args:
        model, maps: the model that scores the lists; the index to id maps.
        ratings: all indexed ratings; none of a user's rated items is recommended to them.
        config: `top_n`, `score_chunk_users` and `reasons` (per item; 0 gives none).
        rater: a rating model whose predictions, clipped to its rating scale, fill `predicted_rating`.
        users: only the users of indices first..last-1 (a shard, tasks/shards.py); default every user.
        rules: the items that may be recommended (default: all).

    Returns:
        (lists, reasons). lists: `user_id`, `item_id`, `rank` (1 = best), `score` (the model's score),
        `predicted_rating` (null without a rater), by user then rank; a user who has rated all but m < n of the
        allowed items gets m rows. reasons: `user_id`, `item_id`, `reason_rank` (1 = strongest),
        `reason_item_id` (an item the user rated), `contribution` (tasks/reasons.py); empty when the model has no
        item affinity.
    """
    (first, last), seen = users or (0, maps.n_users), UserItems.from_ratings(ratings, maps.n_users)
    top_items, top_scores = top_k_unseen(
        model.rank_users,
        maps.n_users,
        maps.n_items,
        seen,
        config.top_n,
        model.device,
        config.score_chunk_users,
        model.rank_to_score,
        (first, last),
        rules.allowed if rules is not None and rules.restricts else None,
    )
    lists = _with_stars(_long_lists(top_items, top_scores, first), rater)
    reasons = _reasons(model, lists, seen, config.reasons)
    reasons = reasons.with_columns(reason_item_id=maps.items["item_id"].gather(reasons["reason_item_idx"]))
    return (
        maps.to_dataset_ids(lists).select("user_id", "item_id", "rank", "score", "predicted_rating"),
        maps.to_dataset_ids(reasons.drop("reason_item_idx")).select(list(REASONS_SCHEMA)),
    )


def _reasons(model: TrainedModel, lists: pl.DataFrame, seen: UserItems, n: int) -> pl.DataFrame:
    """Up to `n` reasons per listed item (tasks/reasons.py); none when `n` is 0 or the model has no item affinity."""
    affinity = model.module.item_affinity() if n else None
    if affinity is None:
        return pl.DataFrame(schema=REASON_SCHEMA)
    return explain(affinity, lists["user_idx"].to_numpy(), lists["item_idx"].to_numpy(), seen, n, model.device)


def _long_lists(top_items: np.ndarray, top_scores: np.ndarray, first_user: int) -> pl.DataFrame:
    """The (users, n) top-n arrays of users first_user.. as rows: user_idx, item_idx, rank, score (padding out)."""
    n_users, n = top_items.shape
    return pl.DataFrame(
        {
            "user_idx": np.repeat(np.arange(first_user, first_user + n_users, dtype=np.int32), n),
            "item_idx": top_items.ravel().astype(np.int32),
            "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), n_users),
            "score": top_scores.ravel(),
        }
    ).filter(pl.col("item_idx") >= 0)


def _with_stars(lists: pl.DataFrame, rater: TrainedModel | None) -> pl.DataFrame:
    """`lists` with `predicted_rating`: the rating model's prediction of each pair, null without one."""
    if rater is None:
        return lists.with_columns(predicted_rating=pl.lit(None, pl.Float32))
    users, items = (torch.from_numpy(lists[c].to_numpy().astype(np.int64)) for c in ("user_idx", "item_idx"))
    return lists.with_columns(predicted_rating=pl.Series(rater.predict(users, items).numpy(), dtype=pl.Float32))
