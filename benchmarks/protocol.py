"""The benchmark protocol shared by accuracy.py and tune.py: load an archive, split it, fit, evaluate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl

from tasks.config import PipelineConfig
from tasks.evaluate import evaluate
from tasks.ingest import fetch_archive, load_dataset
from tasks.reindex import IdMaps, reindex
from tasks.split import split_ratings
from tasks.train import fit


def load_indexed(dataset: Path) -> tuple[pl.DataFrame, IdMaps]:
    """The archive's ratings, reindexed (parsed in a temporary folder)."""
    if not dataset.is_file():
        raise SystemExit(f"{dataset}: no such archive (expected a MovieLens .zip)")
    with tempfile.TemporaryDirectory() as scratch:
        parsed = load_dataset(fetch_archive(str(dataset.resolve()), Path(scratch)), Path(scratch))
        return reindex(parsed.ratings())


def stratified(ratings: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The Microsoft Recommenders split: per user, a random 75% to train and 25% to test."""
    return split_ratings(ratings, "stratified", 0.25, seed)


def fit_and_score(name: str, train: pl.DataFrame, test: pl.DataFrame, maps: IdMaps, config: PipelineConfig) -> dict:
    """Fit `name` on train and evaluate on test: fit seconds plus every metric (rmse/mae None for rankers)."""
    model = fit(train, maps.n_users, maps.n_items, config, name=name)
    metrics = dict(evaluate(model, train, test, maps.n_items, config).select("metric", "value").iter_rows())
    return {
        "model": name,
        "fit_seconds": model.seconds,
        "rmse": metrics.get("rmse"),
        "mae": metrics.get("mae"),
        **{m: metrics[m] for m in ("precision", "recall", "ndcg", "map", "coverage")},
    }
