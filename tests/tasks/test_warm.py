"""Warm starts on real ML-100k: last night's vectors, matched by id, and fewer epochs to the same loss; the refit's
start from tonight's split fit."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from tasks.checkpoint import save_checkpoint
from tasks.config import PipelineConfig
from tasks.reindex import reindex
from tasks.split import split_ratings
from tasks.train import fit
from tasks.warm import WarmStart, split_fit_start, warm_phase


@pytest.fixture(scope="module")
def two_nights(ml100k_dataset):
    """Last night's ratings (all but the latest 10%) and tonight's (all), each indexed with its own id maps."""
    raw = ml100k_dataset.ratings()
    cutoff = raw["timestamp"].quantile(0.9, "lower")
    return reindex(raw.filter(pl.col("timestamp") <= cutoff)), reindex(raw)


@pytest.mark.parametrize(("name", "cold_epochs"), [("ials", 16), ("dot_bias", 20)])
def test_a_warm_start_keeps_known_ids_vectors_and_reaches_the_cold_loss_in_its_warm_epochs(
    two_nights, tmp_path, name, cold_epochs
):
    (last_ratings, last_maps), (ratings, maps) = two_nights
    config = PipelineConfig(device="cpu", warm_start=True)
    last_night = fit(last_ratings, last_maps.n_users, last_maps.n_items, config, name=name)
    save_checkpoint(last_night, last_maps, config, tmp_path / "model.pt")
    rows = WarmStart.load(tmp_path / "model.pt", "last-night").initial_rows(maps)

    # user 1 and item 50 are in both nights, under other indices: tonight's rows hold last night's vectors
    factors = "user_factors" if name == "ials" else "user_factors.weight"
    now, values = rows[factors]
    user_now = int(maps.users.filter(pl.col("user_id") == 1)["user_idx"][0])
    user_then = int(last_maps.users.filter(pl.col("user_id") == 1)["user_idx"][0])
    assert torch.equal(values[now.tolist().index(user_now)], last_night.module.state_dict()[factors][user_then])
    assert len(now) == last_maps.n_users < maps.n_users  # every user of last night, none of the new ones
    assert set(rows) >= {factors, factors.replace("user", "item")}

    warm = fit(ratings, maps.n_users, maps.n_items, config, name=name, init=rows)
    cold = fit(ratings, maps.n_users, maps.n_items, config, name=name)
    short = fit(
        ratings,
        maps.n_users,
        maps.n_items,
        config.with_overrides({name: {"epochs": config.params_for(name).warm_epochs}}),
        name=name,
    )
    warm_epochs = config.params_for(name).warm_epochs
    assert warm.history["epoch"].max() == warm_epochs < cold.history["epoch"].max() == cold_epochs
    last = {
        fitted: float(model.history["loss"][-1]) for fitted, model in (("warm", warm), ("cold", cold), ("short", short))
    }
    assert last["warm"] < last["short"]  # the same epochs from scratch do worse
    assert last["warm"] < 1.02 * last["cold"]  # and the warm start is within 2% of the full cold fit


def test_the_split_fit_starts_warm_only_on_the_temporal_split():
    warm = PipelineConfig(warm_start=True)
    assert warm_phase(warm, "refit") and not warm_phase(warm, "train") and not warm_phase(warm, "gate")
    assert warm_phase(warm.with_overrides({"split": "temporal"}), "train")
    assert not warm_phase(PipelineConfig(), "refit")


def test_the_refit_starts_from_the_split_fit_where_the_model_says_so(ml100k_ratings):
    """`dot_bias` refits from tonight's split fit (its `warm_epochs`), `ials` from scratch unless told; the split fit's
    rows are the refit's starting point, every one at its own index."""
    config = PipelineConfig(device="cpu")
    train, _ = split_ratings(ml100k_ratings, "stratified", 0.25, seed=42)
    n_users, n_items = ml100k_ratings["user_idx"].max() + 1, ml100k_ratings["item_idx"].max() + 1
    split_fit = fit(train, n_users, n_items, config, name="dot_bias")
    start_from = split_fit_start(config, "dot_bias", "refit", split_fit)
    assert start_from is not None
    rows, refit_config = start_from
    indices, start = rows["user_factors.weight"]
    assert torch.equal(indices, torch.arange(n_users)) and torch.equal(start, split_fit.module.user_factors.weight)
    assert set(rows) == {"user_factors.weight", "item_factors.weight", "user_bias.weight", "item_bias.weight"}
    refit = fit(ml100k_ratings, n_users, n_items, refit_config, name="dot_bias", init=rows, history_label="refit")
    assert refit.history["epoch"].max() == config.dot_bias.refit_epochs == 10

    assert split_fit_start(config, "dot_bias", "train", split_fit) is None  # only the refit
    assert (
        split_fit_start(config.with_overrides({"dot_bias": {"refit_epochs": None}}), "dot_bias", "refit", split_fit)
        is None
    )
    ials = fit(train, n_users, n_items, config, name="ials")
    assert split_fit_start(config, "ials", "refit", ials) is None  # ials: off by default
    assert split_fit_start(config.with_overrides({"ials": {"refit_epochs": 4}}), "ials", "refit", ials)
