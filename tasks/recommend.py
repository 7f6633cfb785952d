"""Recommend: every user's top-n among the items they have not rated anywhere in the dataset and that the business
rules allow (tasks/rules.py), with the rated items behind each one (tasks/reasons.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

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
        model: the model that scores the lists.
        ratings: all indexed ratings; none of a user's rated items is recommended to them.
        maps: index to id maps.
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
    first, last = users or (0, maps.n_users)
    seen = UserItems.from_ratings(ratings, maps.n_users)
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
    n = top_items.shape[1]
    lists = pl.DataFrame(
        {
            "user_idx": np.repeat(np.arange(first, last, dtype=np.int32), n),
            "item_idx": top_items.ravel().astype(np.int32),
            "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), last - first),
            "score": top_scores.ravel(),
        }
    ).filter(pl.col("item_idx") >= 0)
    stars = None
    if rater is not None:
        pairs = (torch.from_numpy(lists[c].to_numpy().astype(np.int64)) for c in ("user_idx", "item_idx"))
        stars = rater.predict(*pairs).numpy()
    lists = lists.with_columns(
        predicted_rating=pl.Series(stars, dtype=pl.Float32) if stars is not None else pl.lit(None, pl.Float32)
    )
    affinity = model.module.item_affinity() if config.reasons else None
    reasons = pl.DataFrame(schema=REASON_SCHEMA)
    if affinity is not None:
        reasons = explain(
            affinity, lists["user_idx"].to_numpy(), lists["item_idx"].to_numpy(), seen, config.reasons, model.device
        )
    reasons = reasons.with_columns(reason_item_id=maps.items["item_id"].gather(reasons["reason_item_idx"]))
    return (
        maps.to_dataset_ids(lists).select("user_id", "item_id", "rank", "score", "predicted_rating"),
        maps.to_dataset_ids(reasons.drop("reason_item_idx")).select(list(REASONS_SCHEMA)),
    )


@task(name="recommend", cache_policy=NO_CACHE)
def recommend_task(
    model: TrainedModel,
    ratings: pl.DataFrame,
    maps: IdMaps,
    config: PipelineConfig,
    rater: TrainedModel | None,
    rules: ListRules,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Prefect wrapper of `recommend_with_reasons`."""
    return recommend_with_reasons(model, ratings, maps, config, rater, rules=rules)
