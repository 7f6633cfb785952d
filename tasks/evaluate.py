"""Evaluate a model on the test split: rating error and top-k ranking quality.

Protocol (Microsoft Recommenders, MovieLens): for each user with at least one test rating, rank every item
the user did not rate in train; an item is relevant when the user rated it in test, whatever the rating.
Per-user values are averaged over those users. With R_u the user's relevant items, hit_j = 1 when the
item at rank j (1-based) is relevant, and hits = sum of hit_j for j <= k:

- rmse = sqrt(mean((prediction - rating)^2)) over test ratings; mae = mean(|prediction - rating|);
  predictions are clipped to the dataset's rating scale.
- precision@k = hits / k.
- recall@k = hits / |R_u|.
- ndcg@k = DCG / IDCG with DCG = sum_j hit_j / log2(j + 1) and IDCG the DCG of min(|R_u|, k) hits at the top.
- map@k = (1 / min(|R_u|, k)) * sum_j hit_j * precision@j  (average precision at k, then the mean over users).
- hit_rate@k = share of users with hits >= 1.
- coverage@k = distinct items in all evaluated users' top-k / number of distinct items in the training split:
  the catalogue a model could recommend (as Recommenders' `catalog_coverage`); an item rated only in the test
  split cannot be recommended, so it does not count.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.scoring import UserItems, top_k_unseen
from tasks.train import TrainedModel

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")


def ranking_values_by_user(
    top_items: np.ndarray, relevant: UserItems, n_items: int, k: int, first_user: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Each evaluated user's precision, recall, nDCG, AP and hit at k, and the items their top-k show.

    Args:
        top_items: (users, >= k) ranked item indices of users first_user.., -1 for padding.
        relevant: each user's relevant (test) items, over all users; users with none are not evaluated.
        first_user: the index of top_items' first row (a shard's first user).

    Returns:
        (evaluated user indices, {metric: value per evaluated user}, distinct items shown to them).
    """
    n_relevant = relevant.counts()[first_user : first_user + len(top_items)]
    rows = np.flatnonzero(n_relevant > 0)
    users = rows + first_user
    ranked = top_items[rows, :k]
    flat_users = np.repeat(users, ranked.shape[1])
    hits = relevant.contains(flat_users, np.maximum(ranked.ravel(), 0), n_items).reshape(ranked.shape)
    hits &= ranked >= 0
    n_rel = n_relevant[rows]
    ranks = np.arange(1, ranked.shape[1] + 1)
    discounts = 1.0 / np.log2(ranks + 1)
    n_hits = hits.sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_rel, k)]
    precision_at_j = np.cumsum(hits, 1) / ranks
    values = {
        "precision": n_hits / k,
        "recall": n_hits / np.maximum(n_rel, 1),
        "ndcg": (hits * discounts).sum(1) / np.where(ideal > 0, ideal, 1.0),
        "map": (hits * precision_at_j).sum(1) / np.maximum(np.minimum(n_rel, k), 1),
        "hit_rate": (n_hits > 0).astype(np.float64),
    }
    return users, values, np.unique(ranked[ranked >= 0])


def evaluate(
    model: TrainedModel,
    train: pl.DataFrame,
    test: pl.DataFrame,
    n_items: int,
    config: PipelineConfig,
) -> pl.DataFrame:
    """Score the test split: rating errors (rating models only), then top-k over the items each user did not
    rate in train.

    Returns:
        Long-form metrics: `metric`, `k` (null for rmse and mae), `value`.
    """
    return evaluate_users(model, train, test, n_items, config)[0]


def evaluate_users(
    model: TrainedModel,
    train: pl.DataFrame,
    test: pl.DataFrame,
    n_items: int,
    config: PipelineConfig,
    allowed: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`evaluate`'s metrics, and the per-user values behind them, for the quality gate's paired comparison.
    With `allowed` (the business rules, under `filter_evaluation`), the top-k shows only those items.

    Returns:
        (metrics, per_user); per_user is long form: `user_idx`, `metric` (`ndcg`; and, for a rating model,
        `squared_error`, the sum over the user's test ratings, and `n_ratings`), `value`.
    """
    per_user, shown = evaluate_shard(model, train, test, n_items, config, allowed=allowed)
    metrics = reduce_evaluation(per_user, shown, train["item_idx"].n_unique(), config.k)
    return metrics, per_user.filter(pl.col("metric").is_in(GATE_VALUES))


# The per-user values the gate pairs (and the warehouse keeps with the published lists, user_metrics).
GATE_VALUES = ("ndcg", "squared_error", "n_ratings")
_PER_USER_SCHEMA = pl.Schema({"user_idx": pl.Int64, "metric": pl.String, "value": pl.Float64})


def evaluate_shard(
    model: TrainedModel,
    train: pl.DataFrame,
    test: pl.DataFrame,
    n_items: int,
    config: PipelineConfig,
    users: tuple[int, int] | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[pl.DataFrame, np.ndarray]:
    """The per-user values behind every metric, for users first..last-1 (default all): what `reduce_evaluation`
    sums into the metrics, exactly, however the users were split into shards.

    Args:
        train, test: the splits (only the shard's users' rows are needed).
        allowed: one boolean per item: the top-k shows only these (the business rules under `filter_evaluation`).

    Returns:
        (per_user, shown): per_user long form (`user_idx`, `metric`, `value`): `squared_error` and `abs_error`
        (sums over the user's test ratings) and `n_ratings` for a rating model; `precision`, `recall`, `ndcg`,
        `map`, `hit_rate` for each user with a test item. shown: the distinct items in their top-k.
    """
    first, last = users or (0, model.n_users)
    parts = [_rating_errors_by_user(model, test, first, last)] if model.predicts_ratings else []
    top_items, _ = top_k_unseen(
        model.rank_users,
        model.n_users,
        n_items,
        UserItems.from_ratings(train, model.n_users),
        config.k,
        model.device,
        config.score_chunk_users,
        users=(first, last),
        allowed=allowed,
    )
    ranking, shown = ranking_by_user(top_items, UserItems.from_ratings(test, model.n_users), n_items, config.k, first)
    return pl.concat([part.cast(_PER_USER_SCHEMA).select(list(_PER_USER_SCHEMA)) for part in [*parts, ranking]]), shown


def ranking_by_user(
    top_items: np.ndarray, relevant: UserItems, n_items: int, k: int, first_user: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """`ranking_values_by_user` in long form (`user_idx`, `metric`, `value`), as `reduce_evaluation` sums them, and
    the distinct items shown."""
    evaluated, values, shown = ranking_values_by_user(top_items, relevant, n_items, k, first_user)
    parts = [
        pl.DataFrame({"user_idx": evaluated, "metric": metric, "value": value}) for metric, value in values.items()
    ]
    return pl.concat([part.cast(_PER_USER_SCHEMA) for part in parts]), shown


def errors_by_user(users: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> pl.DataFrame:
    """Per user: the summed squared and absolute errors of predicted against true ratings, and their count (long
    form, as `reduce_evaluation` sums them into RMSE and MAE)."""
    errors = pl.DataFrame({"user_idx": users, "error": predicted.astype(np.float64) - truth.astype(np.float64)})
    by_user = errors.group_by("user_idx").agg(
        squared_error=(pl.col("error") ** 2).sum(),
        abs_error=pl.col("error").abs().sum(),
        n_ratings=pl.len().cast(pl.Float64),
    )
    return by_user.unpivot(index="user_idx", variable_name="metric")


def _rating_errors_by_user(model: TrainedModel, test: pl.DataFrame, first: int, last: int) -> pl.DataFrame:
    """`errors_by_user` of the model's predictions for users first..last-1's test ratings."""
    judged = test.filter(pl.col("user_idx").is_between(first, last - 1))
    users, items = (torch.from_numpy(judged[c].to_numpy().astype(np.int64)) for c in ("user_idx", "item_idx"))
    predicted = model.predict(users, items)
    return errors_by_user(judged["user_idx"].to_numpy(), predicted.numpy(), judged["rating"].to_numpy())


def reduce_evaluation(per_user: pl.DataFrame, shown: np.ndarray, catalogue: int, k: int) -> pl.DataFrame:
    """The metrics from every shard's per-user values (`evaluate_shard`): RMSE and MAE from the summed errors and
    counts, each ranking metric the mean over the evaluated users, coverage from the union of the items shown.

    Raises:
        ValueError: no user has a test rating.
    """
    sums = dict(per_user.group_by("metric").agg(pl.col("value").sum()).iter_rows())
    counts = dict(per_user.group_by("metric").len().iter_rows())
    if not counts.get("ndcg"):
        raise ValueError("no user has a test rating; cannot compute ranking metrics")
    rows: list[tuple[str, int | None, float]] = []
    if "n_ratings" in sums:
        n = sums["n_ratings"]
        rows += [("rmse", None, math.sqrt(sums["squared_error"] / n)), ("mae", None, sums["abs_error"] / n)]
    rows += [(metric, k, sums[metric] / counts[metric]) for metric in RANKING_METRICS if metric != "coverage"]
    rows.append(("coverage", k, len(np.unique(shown)) / catalogue))
    return pl.DataFrame(rows, schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64}, orient="row")


def with_fit_seconds(metrics: pl.DataFrame, seconds: float) -> pl.DataFrame:
    """The metrics plus a `fit_seconds` row (k null), so training time is tracked beside accuracy."""
    row = pl.DataFrame({"metric": ["fit_seconds"], "k": [None], "value": [seconds]}, schema=metrics.schema)
    return pl.concat([metrics, row])


def comparison_table(metrics: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every trained model's metrics in one long frame: `model`, `metric`, `k`, `value`."""
    return pl.concat([frame.select(pl.lit(name).alias("model"), pl.all()) for name, frame in metrics.items()])


def metric_value(metrics: pl.DataFrame, metric: str, k: int | None = None) -> float | None:
    """One metric's value from a long-form frame (`metric`, `k`, `value`); None when it has no such row."""
    rows = metrics.filter((pl.col("metric") == metric) & (pl.col("k").is_null() if k is None else pl.col("k") == k))
    return float(rows["value"][0]) if rows.height else None


def rating_model(metrics: dict[str, pl.DataFrame]) -> str | None:
    """The trained model with the lowest RMSE, whose predicted ratings go beside the published lists; None when
    no trained model predicts ratings (only rating models have an `rmse` row)."""
    rmse = {name: value for name, frame in metrics.items() if (value := metric_value(frame, "rmse")) is not None}
    return min(rmse, key=lambda name: rmse[name]) if rmse else None


def published_model(metrics: dict[str, pl.DataFrame], config: PipelineConfig) -> tuple[str, str]:
    """The model whose lists a run publishes, and why: the config's `model`, else the best nDCG@k.

    Args:
        metrics: each trained model's metrics (long form).
        config: `model` and `k`.
    """
    if config.model is not None:
        return config.model, "named in the config"
    ndcg = {name: metric_value(frame, "ndcg", config.k) or 0.0 for name, frame in metrics.items()}
    best = max(ndcg, key=lambda name: ndcg[name])
    return best, f"best nDCG@{config.k} of {len(ndcg)} models ({ndcg[best]:.4f})"


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{model.name}")
def evaluate_task(
    model: TrainedModel,
    train: pl.DataFrame,
    test: pl.DataFrame,
    n_items: int,
    config: PipelineConfig,
    allowed: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Prefect wrapper of `evaluate_users`, with the model's fit seconds added to its metrics (`with_fit_seconds`)."""
    metrics, per_user = evaluate_users(model, train, test, n_items, config, allowed)
    return with_fit_seconds(metrics, model.seconds), per_user
