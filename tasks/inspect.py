"""What the models learnt about the items (the seeds' analysis), as tables for DuckDB.

- item biases beside each item's mean rating and rating count in the training data;
- each item's most similar items by the cosine of its embeddings, found in chunks with top-k.
"""

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
from warehouse.runs import ModelRecord


def item_bias_table(model: TrainedModel, train: pl.DataFrame | pl.LazyFrame, maps: IdMaps) -> pl.DataFrame | None:
    """`item_id`, `bias`, `mean_rating`, `n_ratings` (training split, counted by a streaming query when it is a
    query over its file); None when the model has no item biases."""
    biases = model.module.item_biases()
    if biases is None:
        return None
    stats = (
        train.lazy()
        .group_by("item_idx")
        .agg(mean_rating=pl.col("rating").mean(), n_ratings=pl.len())
        .collect(engine="streaming")
    )
    table = pl.DataFrame(
        {"item_idx": np.arange(maps.n_items, dtype=np.int32), "bias": biases.detach().float().cpu().numpy()}
    )
    table = table.join(stats, on="item_idx", how="left").with_columns(pl.col("n_ratings").fill_null(0))
    return maps.to_dataset_ids(table).select("item_id", "bias", "mean_rating", "n_ratings")


def similar_items_table(model: TrainedModel, maps: IdMaps, n: int, chunk: int) -> pl.DataFrame | None:
    """`item_id`, `rank`, `similar_item_id`, `score` (cosine of embeddings); None when the model has none."""
    embeddings = model.module.item_embeddings()
    if embeddings is None:
        return None
    unit = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    n_items = maps.n_items
    itself = UserItems(np.arange(n_items + 1, dtype=np.int64), np.arange(n_items, dtype=np.int64))
    top, scores = top_k_unseen(lambda rows: unit[rows] @ unit.T, n_items, n_items, itself, n, unit.device, chunk)
    width = top.shape[1]
    pairs = pl.DataFrame(
        {
            "item_idx": np.repeat(np.arange(n_items, dtype=np.int32), width),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int16), n_items),
            "similar_idx": top.ravel().astype(np.int32),
            "score": scores.ravel(),
        }
    ).filter(pl.col("similar_idx") >= 0)
    pairs = pairs.with_columns(similar_item_id=maps.items["item_id"].gather(pairs["similar_idx"]))
    return maps.to_dataset_ids(pairs).select("item_id", "rank", "similar_item_id", "score")


@task(name="inspect", cache_policy=NO_CACHE, task_run_name="inspect-{model.name}")
def inspect_task(
    model: TrainedModel, metrics: pl.DataFrame, train: pl.LazyFrame, maps: IdMaps, config: PipelineConfig
) -> ModelRecord:
    """What the run keeps of a trained model: its metrics and loss history with its item biases and similar
    items (whichever it has), ready for one write (warehouse/runs.py, `record_model`)."""
    biases = item_bias_table(model, train, maps)
    similar = similar_items_table(model, maps, config.similar_items, config.score_chunk_users)
    return ModelRecord(metrics, model.history, biases, similar)
