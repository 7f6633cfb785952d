"""Training the seeds' model: it learns, it is seeded, it refuses to diverge silently, it round-trips."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from tasks.checkpoint import Checkpoint, load_trained_model, save_checkpoint
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate
from tasks.models.base import check_finite
from tasks.split import split_ratings
from tasks.train import ModelFitError, fit, pick_device

SMALL = PipelineConfig(
    dot_bias={"factors": 4, "epochs": 60, "batch_size": 4, "learning_rate": 0.5, "regularization": 0.0}, device="cpu"
)


def test_fit_learns_and_is_seeded(small_ratings):
    model = fit(small_ratings, 4, 5, SMALL)
    losses = model.history.filter(pl.col("split") == "train")["loss"].to_list()
    assert losses[-1] < losses[0] / 4
    again = fit(small_ratings, 4, 5, SMALL)
    assert again.history["loss"].to_list() == losses
    predictions = model.predict(torch.tensor([0, 1]), torch.tensor([0, 4]))
    assert predictions.tolist() == pytest.approx([5.0, 1.0], abs=0.5)
    assert model.rating_scale == (1.0, 5.0)


def test_predictions_stay_on_the_rating_scale(small_ratings):
    model = fit(small_ratings, 4, 5, SMALL)
    users, items = torch.arange(4).repeat_interleave(5), torch.arange(5).repeat(4)
    predictions = model.predict(users, items)
    assert predictions.min() >= 1.0 and predictions.max() <= 5.0
    scores = model.score_users(torch.arange(4))
    assert scores.shape == (4, 5) and scores.min() > 0.5 and scores.max() < 5.5  # y_range with the margin


@pytest.mark.parametrize("name", ["item_knn", "bias"])
def test_a_rating_models_published_scores_stay_on_the_scale(ml100k_indexed, name):
    from tasks.recommend import recommend

    ratings, maps = ml100k_indexed
    model = fit(ratings, maps.n_users, maps.n_items, PipelineConfig(device="cpu"), name=name)
    raw = model.rank_users(torch.arange(maps.n_users)).max()
    lists = recommend(model, ratings, maps, PipelineConfig(device="cpu"))
    assert raw > 5.0  # the neighbour average / the bias sum does run past 5 stars here
    assert lists["score"].max() <= 5.0 and lists["score"].min() >= 1.0


def test_validation_loss_is_recorded(small_ratings):
    model = fit(
        small_ratings, 4, 5, SMALL.with_overrides({"dot_bias": {"epochs": 3}}), validation=small_ratings.head(3)
    )
    assert model.history.filter(pl.col("split") == "validation")["epoch"].to_list() == [1, 2, 3]


def test_non_finite_loss_raises(small_ratings):
    broken = small_ratings.with_columns(rating=pl.when(pl.col("item_idx") == 2).then(float("nan")).otherwise("rating"))
    with pytest.raises(ModelFitError, match="nan in epoch 1"):
        fit(broken, 4, 5, SMALL)


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_refuses_nan_and_infinities(loss):
    with pytest.raises(ModelFitError, match=f"training loss became {loss} in epoch 3"):
        check_finite(loss, 3)
    check_finite(1e30, 3)  # large but finite is the gate's business, not a fit error


def test_device_selection():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no cuda device"):
            pick_device("cuda")


def test_checkpoint_round_trip(small_ratings, tmp_path):
    from tasks.reindex import IdMaps

    model = fit(small_ratings, 4, 5, SMALL)
    maps = IdMaps(
        pl.DataFrame({"user_idx": pl.Series(range(4), dtype=pl.Int32), "user_id": [10, 20, 30, 40]}),
        pl.DataFrame({"item_idx": pl.Series(range(5), dtype=pl.Int32), "item_id": [1, 2, 3, 4, 5]}),
    )
    save_checkpoint(model, maps, SMALL, tmp_path / "model.pt")
    checkpoint = Checkpoint.load(tmp_path / "model.pt")
    module, loaded_maps, config = checkpoint.module(), checkpoint.maps(), checkpoint.pipeline_config()
    assert config == SMALL and loaded_maps.users.equals(maps.users) and loaded_maps.items.equals(maps.items)
    users = torch.arange(4)
    assert torch.allclose(module.score_users(users), model.module.score_users(users))


@pytest.mark.slow
def test_default_config_accuracy_on_ml100k(ml100k_indexed):
    """Sane bounds for the defaults on the real data (docs/models.md has the benchmark's exact figures)."""
    ratings, maps = ml100k_indexed
    config = PipelineConfig()
    train, test = split_ratings(ratings, "stratified", 0.25, config.seed)
    model = fit(train, maps.n_users, maps.n_items, config)
    metrics = dict(evaluate(model, train, test, maps.n_items, config).select("metric", "value").iter_rows())
    assert metrics["rmse"] < 0.93  # fastai's collab learner: 0.932 on this protocol
    assert metrics["ndcg"] > 0.05


@pytest.mark.parametrize("name", ["dot", "item_knn"])
def test_an_item_rated_only_in_test_gets_the_bias_models_prediction(ml100k_indexed, tmp_path, name):

    ratings, maps = ml100k_indexed
    train = ratings.filter(pl.col("item_idx") < 1600)  # items 1600.. are never seen in training
    config = PipelineConfig(device="cpu", dot={"epochs": 2}, mlp={"epochs": 2})
    model = fit(train, maps.n_users, maps.n_items, config, name=name)
    bias = fit(train, maps.n_users, maps.n_items, config, name="bias")
    users, items = torch.tensor([0, 5, 9]), torch.tensor([1600, 1650, 1681])
    assert model.predict(users, items).tolist() == pytest.approx(bias.predict(users, items).tolist(), abs=1e-5)
    assert model.predict(users, items).min() > 2.5  # the user's mean-ish, not 0 clipped to 1 star
    seen = torch.tensor([0, 5, 9]), torch.tensor([10, 20, 30])
    assert model.predict(*seen).tolist() != pytest.approx(bias.predict(*seen).tolist(), abs=1e-5)  # its own there
    save_checkpoint(model, maps, config, tmp_path / "model.pt")  # the fallback travels with the checkpoint
    loaded, _ = load_trained_model(tmp_path / "model.pt", torch.device("cpu"))
    assert torch.equal(loaded.predict(users, items), model.predict(users, items))
