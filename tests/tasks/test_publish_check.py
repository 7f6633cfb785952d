"""The check between refit and publish: real fits on ML-100k, the refit made broken in the ways it can be."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from tasks.config import PipelineConfig
from tasks.evaluate import evaluate
from tasks.publish_check import PublishCheckError, check_published_model
from tasks.recommend import recommend
from tasks.reindex import IdMaps
from tasks.split import split_ratings
from tasks.train import fit


@pytest.fixture(scope="module")
def fitted(ml100k_ratings):
    config = PipelineConfig(device="cpu", dot_bias={"epochs": 3})
    train, test = split_ratings(ml100k_ratings, "stratified", 0.25, 42)
    split_fit = fit(train, 943, 1682, config, name="dot_bias")
    refit = fit(ml100k_ratings, 943, 1682, config, history_label="refit", name="dot_bias")
    metrics = evaluate(split_fit, train, test, 1682, config)
    maps = IdMaps(
        pl.DataFrame({"user_id": range(943), "user_idx": range(943)}),
        pl.DataFrame({"item_id": range(1682), "item_idx": range(1682)}),
    )
    return config, train, split_fit, refit, metrics, maps, ml100k_ratings


def test_a_sane_refit_passes_and_says_what_was_checked(fitted):
    config, train, split_fit, refit, metrics, maps, ratings = fitted
    lists = recommend(refit, ratings, maps, config)
    said = check_published_model(split_fit, refit, lists, metrics, train["item_idx"].n_unique(), config)
    assert said.startswith("refitted dot_bias: finite, last loss") and "distinct items" in said


def test_a_refit_with_non_finite_parameters_fails(fitted):
    config, train, split_fit, refit, metrics, maps, ratings = fitted
    lists = recommend(refit, ratings, maps, config)
    broken = fit(ratings, 943, 1682, config, history_label="refit", name="dot_bias")
    with torch.no_grad():
        next(broken.module.parameters())[0, 0] = float("nan")
    with pytest.raises(PublishCheckError, match="non-finite values in"):
        check_published_model(split_fit, broken, lists, metrics, train["item_idx"].n_unique(), config)


def test_a_refit_whose_loss_ran_away_fails(fitted):
    config, train, split_fit, _, metrics, maps, ratings = fitted
    untrained = fit(
        ratings,
        943,
        1682,
        config.with_overrides({"dot_bias": {"epochs": 1, "learning_rate": 0.0}}),
        history_label="refit",
        name="dot_bias",
    )
    lists = recommend(untrained, ratings, maps, config)
    with pytest.raises(PublishCheckError, match=r"last training loss .* is more than 50% above the split fit's"):
        check_published_model(split_fit, untrained, lists, metrics, train["item_idx"].n_unique(), config)


def test_degenerate_lists_fail(fitted):
    config, train, split_fit, refit, metrics, maps, ratings = fitted
    lists = recommend(refit, ratings, maps, config).with_columns(item_id=pl.lit(50, pl.Int64))  # one item for all
    with pytest.raises(PublishCheckError, match="its lists show 1 distinct items"):
        check_published_model(split_fit, refit, lists, metrics, train["item_idx"].n_unique(), config)
