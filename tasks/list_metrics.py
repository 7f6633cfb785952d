"""Beyond accuracy: what a run's lists look like, and how much they moved since the published ones.

Stored per run in `run_metrics` (model: the published model, k: `top_n`) and shown by `recs trend`:
`popularity_percentile` (popularity bias: the mean popularity percentile of the listed items), `genre_diversity`
(intra-list diversity: the mean number of distinct genres in a list), `churn` (the share of users with a list
before whose list changed) and `jaccard` (their mean overlap with their previous list). The definitions are
in warehouse/queries/list_metrics.sql; the quality gate can bound churn (`gate.max_churn`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.config import PipelineConfig, setting
from tasks.gate import GateVerdict
from tasks.reindex import IdMaps
from tasks.rules import ratings_per_item
from warehouse.runs import ListFiles

log = logging.getLogger(__name__)

_LISTS = ("user_id", "item_id", "rank")  # ids as the source has them: whole numbers or text


def item_popularity(ratings: pl.DataFrame | pl.LazyFrame, maps: IdMaps) -> pl.DataFrame:
    """`item_id`, `n_ratings` of every item with a rating."""
    counts = ratings_per_item(ratings, maps.n_items)
    return pl.DataFrame({"item_id": maps.items["item_id"], "n_ratings": counts.astype(np.int64)})


def list_metrics(
    lists: pl.DataFrame | ListFiles,
    previous: pl.DataFrame,
    popularity: pl.DataFrame,
    catalogue: pl.DataFrame,
    top_n: int,
) -> pl.DataFrame:
    """The lists' beyond-accuracy metrics (module docstring), against the `previous` (live) lists.

    Args:
        lists: `user_id`, `item_id`, `rank`: a frame, or the files a cluster's shards wrote (read by DuckDB).
        previous: the live lists (`user_id`, `item_id`, `rank`); empty before the first publish.
        popularity: `item_id`, `n_ratings` (`item_popularity`).
        catalogue: `item_id`, `genres`.
        top_n: the `k` the rows carry.

    Returns:
        `metric`, `k`, `value`; churn and jaccard only when some user had a list before.
    """
    with duckdb.connect() as con:
        if isinstance(lists, ListFiles):
            con.read_parquet(list(lists.paths)).select("user_id, item_id, rank").create_view("new_lists")
        else:
            con.register("new_lists", lists.select(_LISTS).to_arrow())
        con.register("previous_lists", previous.select(_LISTS).with_columns(pl.col("rank").cast(pl.Int16)).to_arrow())
        con.register("item_popularity", popularity.to_arrow())
        con.register("catalogue", catalogue.select("item_id", "genres").to_arrow())
        rows = con.execute(warehouse.query("list_metrics")).fetchall()
    return pl.DataFrame(
        [(metric, top_n, value) for metric, value in rows if value is not None],
        schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64},
        orient="row",
    )


def churn_rejection(metrics: pl.DataFrame, verdict: GateVerdict, config: PipelineConfig) -> GateVerdict:
    """The gate's `verdict`, turned into a rejection when churn exceeds `gate.max_churn` (unless `force`)."""
    churn = metrics.filter(pl.col("metric") == "churn")["value"]
    if config.gate.max_churn is None or churn.len() == 0 or churn[0] <= config.gate.max_churn:
        return verdict
    why = (
        f"{churn[0]:.1%} of the users' lists would change, above the {config.gate.max_churn:.1%} "
        f"{setting('gate.max_churn')} allows (an upstream change to check)"
    )
    if config.force:
        log.warning("churn is high but %s publishes anyway: %s", setting("force"), why)
    else:
        log.warning("the run's lists were not published: %s", why)
    return verdict.rejected_by(why, config.force)


@task(name="list-metrics", cache_policy=NO_CACHE)
def list_metrics_task(
    path: Path,
    lists: pl.DataFrame | ListFiles,
    ratings: pl.DataFrame | pl.LazyFrame,
    maps: IdMaps,
    catalogue: pl.DataFrame,
    verdict: GateVerdict,
    config: PipelineConfig,
) -> tuple[pl.DataFrame, GateVerdict]:
    """The lists' beyond-accuracy metrics against the live lists, and the verdict after the churn bound."""
    with warehouse.open_reader(path) as con:
        previous = warehouse.fetch(con, "live_lists", {})
    metrics = list_metrics(lists, previous, item_popularity(ratings, maps), catalogue, config.top_n)
    log.info("lists: %s", ", ".join(f"{m} {v:.4f}" for m, v in metrics.select("metric", "value").iter_rows()))
    return metrics, churn_rejection(metrics, verdict, config)
