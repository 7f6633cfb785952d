"""Each registered model fits and scores small data; kNN and EASE match a brute-force computation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from tasks.checkpoint import Checkpoint, save_checkpoint
from tasks.config import MODEL_NAMES, PipelineConfig
from tasks.models import MODELS
from tasks.models.closed_form import EaseParams
from tasks.models.embedding import DotBiasParams
from tasks.reindex import IdMaps
from tasks.train import fit

REPO = Path(__file__).resolve().parents[2]

# Small and quick: a handful of epochs, few factors, CPU.
TINY = PipelineConfig.model_validate(
    {
        "device": "cpu",
        "dot_bias": {"factors": 4, "epochs": 60, "batch_size": 4, "learning_rate": 0.5, "regularization": 0.0},
        "dot": {"factors": 4, "epochs": 20, "batch_size": 4, "learning_rate": 0.05, "regularization": 0.0},
        "mlp": {
            "factors": 4,
            "hidden": [8],
            "dropout": 0.0,
            "epochs": 60,
            "batch_size": 4,
            "learning_rate": 0.03,
            "weight_decay": 0.0,
        },
        "bpr": {"factors": 4, "epochs": 20, "batch_size": 4, "learning_rate": 0.05},
        "user_knn": {"neighbours": 2, "shrinkage": 0.0},
        "item_knn": {"neighbours": 2, "shrinkage": 0.0},
        "ease": {"l2": 1.0},
        "bias": {"item_damping": 0.0, "user_damping": 0.0},
    }
)


def _maps(n_users: int, n_items: int) -> IdMaps:
    return IdMaps(
        pl.DataFrame(
            {"user_idx": pl.Series(range(n_users), dtype=pl.Int32), "user_id": [10 * u for u in range(n_users)]}
        ),
        pl.DataFrame(
            {"item_idx": pl.Series(range(n_items), dtype=pl.Int32), "item_id": [100 + i for i in range(n_items)]}
        ),
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_fits_scores_and_round_trips(name, small_ratings, tmp_path):
    model = fit(small_ratings, 4, 5, TINY, name=name)
    scores = model.score_users(torch.arange(4))
    assert scores.shape == (4, 5) and torch.isfinite(scores).all()
    # top-k may rank on the cheaper rank_users: the same order, mapped back to the same scores
    assert torch.allclose(model.rank_to_score(model.rank_users(torch.arange(4))), scores, atol=1e-5)
    if model.predicts_ratings:
        predictions = model.predict(torch.tensor([0, 1, 2]), torch.tensor([0, 4, 3]))
        assert predictions.min() >= 1.0 and predictions.max() <= 5.0
        # scores and pair predictions agree, both clipped to the rating scale
        assert torch.allclose(predictions, scores[[0, 1, 2], [0, 4, 3]], atol=1e-5)
        assert scores.min() >= 1.0 and scores.max() <= 5.0
    else:
        with pytest.raises(TypeError, match="does not predict ratings"):
            model.predict(torch.tensor([0]), torch.tensor([0]))
    if len(model.history):  # gradient-trained: the training loss went down
        losses = model.history.filter(pl.col("split") == "train")["loss"].to_list()
        assert losses[-1] < losses[0]
    save_checkpoint(model, _maps(4, 5), TINY, tmp_path / "model.pt")
    checkpoint = Checkpoint.load(tmp_path / "model.pt")
    module, maps, config = checkpoint.module(), checkpoint.maps(), checkpoint.pipeline_config()
    assert type(module) is type(model.module) and config == TINY and maps.n_items == 5
    assert torch.allclose(module.score_users(torch.arange(4)), model.module.score_users(torch.arange(4)))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_is_deterministic_by_seed_and_scores_users_and_items_it_never_saw(name, small_ratings):
    # 5 users and 6 items in the vocabulary, ratings of 4 and 5: user 4 and item 5 have none
    first, again = (fit(small_ratings, 5, 6, TINY, name=name) for _ in range(2))
    users = torch.arange(5)
    scores = first.score_users(users)
    assert torch.equal(scores, again.score_users(users)), "the same seed gave another model"
    assert scores.shape == (5, 6) and torch.isfinite(scores).all()
    if first.predicts_ratings:
        unseen = first.predict(torch.tensor([4, 0, 4]), torch.tensor([0, 5, 5]))
        assert torch.isfinite(unseen).all() and unseen.min() >= 1.0 and unseen.max() <= 5.0


def test_rating_models_learn_the_small_data(small_ratings):
    for name in ("dot_bias", "dot", "mlp"):
        model = fit(small_ratings, 4, 5, TINY, name=name)
        predicted = model.predict(torch.tensor([0, 1]), torch.tensor([0, 4]))
        assert predicted.tolist() == pytest.approx([5.0, 1.0], abs=1.0), name


def test_popularity_and_bias_are_their_closed_forms(small_ratings):
    popularity = fit(small_ratings, 4, 5, TINY, name="popularity")
    counts = small_ratings.group_by("item_idx").len().sort("item_idx")["len"].to_list()
    assert popularity.score_users(torch.tensor([0]))[0].tolist() == counts
    bias = fit(small_ratings, 4, 5, TINY, name="bias").module
    mu = small_ratings["rating"].mean()
    item_means = small_ratings.group_by("item_idx").agg(pl.col("rating").mean()).sort("item_idx")["rating"].to_numpy()
    assert float(bias.global_mean) == pytest.approx(mu)
    assert bias.item_bias.numpy() == pytest.approx(item_means - mu, abs=1e-5)  # no damping: the plain offsets


def _random_ratings(n_users: int, n_items: int, density: float, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    return pl.DataFrame(
        {
            "user_idx": users.astype(np.int32),
            "item_idx": items.astype(np.int32),
            "rating": rng.integers(1, 6, len(users)).astype(np.float32),
        }
    )


def _brute_force_knn(ratings: pl.DataFrame, n_rows: int, n_cols: int, by_item: bool, k: int, shrinkage: float):
    """Neighbour sets and predictions computed pair by pair from the definitions in tasks/models/knn.py."""
    r = np.zeros((n_rows, n_cols))  # rows: what neighbours are found among (items for item kNN)
    rows, cols = (ratings["item_idx"], ratings["user_idx"]) if by_item else (ratings["user_idx"], ratings["item_idx"])
    r[rows.to_numpy(), cols.to_numpy()] = ratings["rating"].to_numpy()
    rated = r > 0
    means = np.array([r[a, rated[a]].mean() if rated[a].any() else 0.0 for a in range(n_rows)])
    centred = np.where(rated, r - means[:, None], 0.0)
    sims = np.zeros((n_rows, n_rows))
    for a in range(n_rows):
        for b in range(n_rows):
            norm = np.linalg.norm(centred[a]) * np.linalg.norm(centred[b])
            both = np.sum(rated[a] & rated[b])
            sims[a, b] = (
                (centred[a] @ centred[b]) / max(norm, 1e-12) * (both / (both + shrinkage) if shrinkage else 1.0)
            )
    neighbours = {}
    for a in range(n_rows):
        order = [b for b in np.argsort(-sims[a], kind="stable") if b != a][:k]
        neighbours[a] = {b for b in order if sims[a, b] > 0}
    predictions = np.zeros((n_rows, n_cols))  # (row, col): item kNN's (item, user), user kNN's (user, item)
    for a in range(n_rows):
        for c in range(n_cols):
            used = [b for b in neighbours[a] if rated[b, c]]
            weight = sum(abs(sims[a, b]) for b in used)
            predictions[a, c] = means[a] + (
                sum(sims[a, b] * centred[b, c] for b in used) / weight if weight > 0 else 0.0
            )
    return neighbours, predictions if not by_item else predictions.T


@pytest.mark.parametrize("name", ["item_knn", "user_knn"])
@pytest.mark.parametrize("shrinkage", [0.0, 3.0])
def test_knn_matches_brute_force(name, shrinkage):
    n_users, n_items, k = 14, 11, 4
    ratings = _random_ratings(n_users, n_items, 0.45, seed=7)
    by_item = name == "item_knn"
    config = TINY.model_validate({**TINY.model_dump(), name: {"neighbours": k, "shrinkage": shrinkage, "chunk": 3}})
    model = fit(ratings, n_users, n_items, config, name=name)
    expected_neighbours, expected_scores = _brute_force_knn(
        ratings, n_items if by_item else n_users, n_users if by_item else n_items, by_item, k, shrinkage
    )
    module = model.module
    found = {
        a: {int(b) for b, s in zip(module.neighbours[a], module.similarities[a], strict=False) if s > 0}
        for a in range(len(module.neighbours))
    }
    assert found == expected_neighbours
    assert model.module.score_users(torch.arange(n_users)).numpy() == pytest.approx(expected_scores, abs=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_ease_matches_its_closed_form(dropout):
    n_users, n_items, l2 = 30, 12, 5.0
    ratings = _random_ratings(n_users, n_items, 0.3, seed=3)
    x = np.zeros((n_users, n_items))
    x[ratings["user_idx"].to_numpy(), ratings["item_idx"].to_numpy()] = 1.0
    gram = x.T @ x
    p = np.linalg.inv(gram + l2 * np.eye(n_items) + dropout / (1 - dropout) * np.diag(np.diag(gram)))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    config = TINY.model_validate(
        {**TINY.model_dump(), "ease": {"l2": l2, "dropout": dropout}, "score_chunk_users": 7}
    )  # Gram in chunks
    model = fit(ratings, n_users, n_items, config, name="ease")
    assert model.module.score_users(torch.arange(n_users)).numpy() == pytest.approx(x @ b, abs=1e-4)


def test_bpr_ranks_a_users_items_first():
    # Two taste groups: users 0-9 rate items 0-4, users 10-19 rate items 5-9; each user's unseen items of
    # their own group should outscore the other group's.
    rng = np.random.default_rng(0)
    rows = [(u, i) for u in range(20) for i in (range(5) if u < 10 else range(5, 10)) if rng.random() < 0.7]
    ratings = pl.DataFrame(
        {"user_idx": [u for u, _ in rows], "item_idx": [i for _, i in rows], "rating": [4.0] * len(rows)}
    )
    config = TINY.model_validate(
        {**TINY.model_dump(), "bpr": {"factors": 8, "epochs": 40, "batch_size": 16, "learning_rate": 0.05}}
    )
    scores = fit(ratings, 20, 10, config, name="bpr").score_users(torch.arange(20))
    own = torch.cat([scores[:10, :5], scores[10:, 5:]]).mean()
    other = torch.cat([scores[:10, 5:], scores[10:, :5]]).mean()
    assert own > other + 1.0


def test_inspection_tables_match_numpy_and_reach_duckdb(small_ratings, tmp_path):
    import warehouse
    from tasks.inspect import item_bias_table, similar_items_table
    from warehouse.runs import ModelRecord, record_model

    model = fit(small_ratings, 4, 5, TINY, name="dot_bias")
    maps = _maps(4, 5)
    similar = similar_items_table(model, maps, n=2, chunk=2)
    vectors = model.module.item_factors.weight.detach().numpy()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    expected = [
        (100 + i, rank + 1, 100 + int(j)) for i in range(5) for rank, j in enumerate(np.argsort(-cosine[i])[:2])
    ]
    assert similar.select("item_id", "rank", "similar_item_id").rows() == expected
    assert similar["score"].to_numpy() == pytest.approx(np.sort(cosine, axis=1)[:, ::-1][:, :2].ravel(), abs=1e-5)

    biases = item_bias_table(model, small_ratings, maps)
    assert biases.sort("item_id")["n_ratings"].to_list() == [2, 3, 3, 3, 2]
    assert biases.filter(pl.col("item_id") == 100)["mean_rating"].item() == pytest.approx(4.5)
    assert similar_items_table(fit(small_ratings, 4, 5, TINY, name="ease"), maps, 2, 2) is None  # no embeddings

    path = tmp_path / "W.duckdb"
    for _ in range(2):  # storing again replaces, never duplicates
        record_model(path, "run-1", "dot_bias", ModelRecord(None, model.history, biases, similar))
    with warehouse.open_reader(path) as con:
        assert con.execute("SELECT count(*) FROM similar_items WHERE run_id = 'run-1'").fetchall() == [(10,)]
        assert con.execute("SELECT count(*), sum(n_ratings) FROM item_biases").fetchall() == [(5, 13)]


def test_each_model_owns_its_settings_and_none_reads_the_pipeline_config():
    assert set(MODEL_NAMES) == set(MODELS)
    for name, spec in MODELS.items():
        assert PipelineConfig.model_fields[name].annotation is spec.params, name
        assert PipelineConfig().params_for(name) == spec.params()  # the group's defaults are the model's own
    for module in (REPO / "tasks" / "models").glob("*.py"):
        text = module.read_text()
        assert "from tasks.config" not in text and "import tasks.config" not in text, module
    with pytest.raises(ValidationError, match="no_such"):
        PipelineConfig(ease={"no_such": 1})  # extra="forbid": a misspelt setting is an error


def test_the_old_top_level_settings_load_with_a_warning_and_stored_configs_silently():
    with pytest.warns(FutureWarning) as caught:
        config = PipelineConfig(factors=8, y_margin=0.25)
    said = [str(warning.message) for warning in caught]
    assert (
        "factors (--factors) is deprecated and will be removed in the next release; use dot_bias.factors (--dot-bias-factors)"
        in said
    )
    assert any("use dot_bias.y_margin (--dot-bias-y-margin) and mlp.y_margin (--mlp-y-margin)" in s for s in said)
    assert config.dot_bias.factors == 8 and config.dot_bias.y_margin == config.mlp.y_margin == 0.25
    # What `runs.config` held before the models owned their settings (abridged: the rest are defaults).
    stored = (
        '{"source": "ml-100k.zip", "factors": 32, "epochs": 5, "batch_size": null, "learning_rate": 0.02, '
        '"regularization": 0.05, "y_margin": 0.5, "ease": {"l2": 50.0, "dropout": 0.5}, '
        '"user_knn": {"neighbours": 400, "shrinkage": 25.0, "chunk": 1024}}'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = PipelineConfig.from_stored(stored)
    assert old.dot_bias == DotBiasParams(factors=32, epochs=5, learning_rate=0.02, regularization=0.05)
    assert old.ease.l2 == 50.0 and old.ease.chunk_users == EaseParams().chunk_users
