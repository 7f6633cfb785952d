"""Top-k over unseen items and the metric definitions, against brute force and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from tasks.evaluate import errors_by_user, ranking_by_user, reduce_evaluation
from tasks.scoring import NonFiniteScoreError, UserItems, top_k_stable, top_k_unseen


def _items(pairs: list[tuple[int, int]], n_users: int) -> UserItems:
    frame = pl.DataFrame({"user_idx": [u for u, _ in pairs], "item_idx": [i for _, i in pairs]})
    return UserItems.from_ratings(frame, n_users)


def test_user_items_block_positions_and_contains():
    seen = _items([(0, 2), (0, 0), (2, 1), (0, 2)], n_users=3)  # (0, 2) twice: kept once
    assert seen.counts().tolist() == [2, 0, 1] and seen.indices.tolist() == [0, 2, 1]
    assert seen.block_positions(0, 3, 4).tolist() == [0, 2, 9]  # rows 0 and 2 of a 3 x 4 block
    assert seen.block_positions(1, 3, 4).tolist() == [5]  # user 2 is row 1 of the block of users 1..2
    assert seen.contains(np.array([0, 0, 1, 2]), np.array([2, 1, 2, 1]), 4).tolist() == [True, False, False, True]


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_top_k_unseen_matches_brute_force(chunk, layout):
    rng = np.random.default_rng(0)
    n_users, n_items, k = 17, 11, 4
    scores = torch.from_numpy(rng.normal(size=(n_users, n_items)).astype(np.float32))
    pairs = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.3]
    seen = _items(pairs, n_users)
    by_item = scores.T.contiguous()  # some models' products come back as a transposed (non-contiguous) view
    score = (lambda users: scores[users]) if layout == "contiguous" else (lambda users: by_item[:, users].T)
    items, values = top_k_unseen(score, n_users, n_items, seen, k, torch.device("cpu"), chunk)
    for user in range(n_users):
        allowed = [i for i in range(n_items) if (user, i) not in set(pairs)]
        expected = sorted(allowed, key=lambda i: -scores[user, i].item())[:k]
        assert items[user].tolist() == expected
        assert np.allclose(values[user], scores[user, expected].numpy())


@pytest.mark.parametrize("k", [1, 4, 9])
def test_equal_scores_rank_in_item_order_whatever_topk_picks(k):
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.integers(0, 3, size=(40, 12)).astype(np.float32))  # ties everywhere
    values, items = top_k_stable(scores, k)
    for row in range(40):
        expected = sorted(range(12), key=lambda i: (-scores[row, i].item(), i))[:k]
        assert items[row].tolist() == expected and values[row].tolist() == scores[row, expected].tolist()
    # the same scores with the items' columns reversed rank the same items, in the reversed order's terms
    again, _ = top_k_stable(scores.flip(1), k)
    assert again.tolist() == values.tolist()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_score_fails_before_anything_is_ranked(bad):
    scores = torch.zeros(5, 4)
    scores[3, [0, 1, 3] if bad < 0 else [2]] = bad  # a -inf matters where it reaches the list: 3 of 4 items
    with pytest.raises(NonFiniteScoreError, match="user index 3"):
        top_k_unseen(lambda users: scores[users], 5, 4, _items([], 5), 2, torch.device("cpu"), 2)


def test_top_k_pads_when_too_few_unseen_items():
    seen = _items([(0, 0), (0, 1)], n_users=1)
    items, values = top_k_unseen(lambda u: torch.ones(len(u), 3), 1, 3, seen, 3, torch.device("cpu"))
    assert items.tolist() == [[2, -1, -1]] and math.isinf(values[0, 1])


def _metrics(top, relevant, n_items, k, catalogue=None, errors=None) -> dict[str, float]:
    """The metrics as the product computes them: per-user values (`evaluate_shard`'s), reduced."""
    ranking, shown = ranking_by_user(top, relevant, n_items, k)
    per_user = pl.concat([ranking, *([errors.cast(ranking.schema)] if errors is not None else [])])
    metrics = reduce_evaluation(per_user, shown, catalogue or n_items, k)
    return dict(metrics.select("metric", "value").iter_rows())


def test_rating_errors():
    # users 0 and 1: errors -1 and 0 for user 0, 2 for user 1
    errors = errors_by_user(np.array([0, 0, 1]), np.array([3.0, 4.0, 5.0]), np.array([4.0, 4.0, 3.0]))
    m = _metrics(np.array([[0], [1]]), _items([(0, 0), (1, 1)], n_users=2), 2, 1, errors=errors)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3)) and m["mae"] == pytest.approx(1.0)


def test_ranking_metrics_hand_computed():
    # user 0: relevant {1, 5}; ranked [1, 2, 5] -> hits at ranks 1 and 3.
    # user 1: relevant {0};    ranked [3, 4, 2] -> no hit.
    # user 2: no test items -> not evaluated.
    relevant = _items([(0, 1), (0, 5), (1, 0)], n_users=3)
    top = np.array([[1, 2, 5], [3, 4, 2], [0, 1, 2]])
    m = _metrics(top, relevant, n_items=8, k=3)
    dcg0 = 1 / math.log2(2) + 1 / math.log2(4)
    idcg0 = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["precision"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["recall"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["ndcg"] == pytest.approx((dcg0 / idcg0 + 0) / 2)
    assert m["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 0) / 2)
    assert m["hit_rate"] == pytest.approx(0.5)
    assert m["coverage"] == pytest.approx(len({1, 2, 5, 3, 4}) / 8)  # user 2's list is not evaluated
    with_catalogue = _metrics(top, relevant, n_items=8, k=3, catalogue=6)  # items 6, 7 never trained on
    assert with_catalogue["coverage"] == pytest.approx(5 / 6)


def test_coverage_is_over_the_items_of_the_training_split():
    from tasks.config import PipelineConfig
    from tasks.evaluate import evaluate, metric_value
    from tasks.train import fit

    def frame(pairs):
        return pl.DataFrame(
            {
                "user_idx": [u for u, _ in pairs],
                "item_idx": [i for _, i in pairs],
                "rating": [4.0] * len(pairs),
            },
            schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32},
        )

    train = frame([(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])  # item 3 is rated only in test
    test = frame([(0, 3), (1, 2), (2, 3)])
    config = PipelineConfig(device="cpu", k=2)
    metrics = evaluate(fit(train, 3, 4, config, name="popularity"), train, test, 4, config)
    # the lists [1, 2], [2, 3], [3]: three distinct items over the three trained on, not over all four
    assert metric_value(metrics, "coverage", 2) == pytest.approx(3 / 3)


def test_ranking_metrics_ignore_padding():
    relevant = _items([(0, 2)], n_users=1)
    m = _metrics(np.array([[2, -1, -1]]), relevant, n_items=3, k=3)
    assert (
        m["ndcg"] == pytest.approx(1.0)
        and m["precision"] == pytest.approx(1 / 3)
        and m["coverage"] == pytest.approx(1 / 3)
    )


def test_the_stars_beside_a_list_are_the_rating_models_predictions_within_the_scale(small_ratings):
    from tasks.config import PipelineConfig
    from tasks.recommend import recommend
    from tasks.reindex import IdMaps
    from tasks.train import fit

    config = PipelineConfig(
        device="cpu", top_n=2, dot_bias={"factors": 4, "epochs": 5, "batch_size": 4}, ials={"factors": 4, "epochs": 3}
    )
    maps = IdMaps(
        pl.DataFrame({"user_idx": pl.Series(range(4), dtype=pl.Int32), "user_id": [10, 11, 12, 13]}),
        pl.DataFrame({"item_idx": pl.Series(range(5), dtype=pl.Int32), "item_id": [100, 101, 102, 103, 104]}),
    )
    ranker, rater = fit(small_ratings, 4, 5, config, name="ials"), fit(small_ratings, 4, 5, config, name="dot_bias")
    lists = recommend(ranker, small_ratings, maps, config, rater)
    users = torch.tensor(lists["user_id"].to_numpy() - 10)
    items = torch.tensor(lists["item_id"].to_numpy() - 100)
    assert lists["predicted_rating"].to_numpy() == pytest.approx(rater.predict(users, items).numpy())
    assert lists["predicted_rating"].is_between(1.0, 5.0).all()
    assert recommend(ranker, small_ratings, maps, config)["predicted_rating"].null_count() == lists.height  # no rater
