"""Recommend: every user's top-n among the items they have not rated anywhere in the dataset."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.reindex import IdMaps
from tasks.scoring import UserItems, top_k_unseen
from tasks.train import TrainedModel


def recommend(model: TrainedModel, ratings: pl.DataFrame, maps: IdMaps, config: PipelineConfig,
              rater: TrainedModel | None = None, users: tuple[int, int] | None = None) -> pl.DataFrame:  # fmt: skip
    """Top-n per user, in the dataset's own ids, with the stars a rating model predicts for each item.

    Args:
        model: the model that scores the lists.
        ratings: all indexed ratings; none of a user's rated items is recommended to them.
        maps: index to id maps.
        config: `top_n` and `score_chunk_users`.
        rater: a rating model whose predictions, clipped to its rating scale, fill `predicted_rating`.
        users: only the users of indices first..last-1 (a shard, tasks/shards.py); default every user.

    Returns:
        `user_id`, `item_id`, `rank` (1 = best), `score` (the model's score), `predicted_rating` (null
        without a rater), by user then rank. A user who has rated all but m < n items gets m rows.
    """
    first, last = users or (0, maps.n_users)
    top_items, top_scores = top_k_unseen(
        model.rank_users, maps.n_users, maps.n_items, UserItems.from_ratings(ratings, maps.n_users), config.top_n,
        model.device, config.score_chunk_users, model.rank_to_score, (first, last),
    )  # fmt: skip
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
    lists = lists.with_columns(predicted_rating=pl.Series(stars, dtype=pl.Float32) if stars is not None else pl.lit(None, pl.Float32))
    return maps.to_dataset_ids(lists).select("user_id", "item_id", "rank", "score", "predicted_rating")


@task(name="recommend", cache_policy=NO_CACHE)
def recommend_task(model: TrainedModel, ratings: pl.DataFrame, maps: IdMaps, config: PipelineConfig,
                   rater: TrainedModel | None = None) -> pl.DataFrame:  # fmt: skip
    """Prefect wrapper of `recommend`."""
    return recommend(model, ratings, maps, config, rater)
