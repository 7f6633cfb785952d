"""Business rules, the fallback list, reasons and the lists' beyond-accuracy metrics, on real ML-100k and by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tasks.config import PipelineConfig
from tasks.gate import GateVerdict
from tasks.list_metrics import churn_rejection, list_metrics
from tasks.reasons import explain
from tasks.recommend import recommend_with_reasons
from tasks.rules import ListRuleError, fallback_list, resolve_rules
from tasks.scoring import UserItems, top_k_unseen
from tasks.train import fit

RULES = {
    "exclude_items": [50, 100],
    "min_item_ratings": 30,
    "exclude_genres": ["horror"],
    "min_year": 1980,
    "max_year": 1997,
}


def _breaks_rules(lists: pl.DataFrame, items: pl.DataFrame, ratings: pl.DataFrame) -> pl.DataFrame:
    """The rows of `lists` (item_id) that break RULES."""
    counts = ratings.group_by("item_id").len("n_ratings")
    return (
        lists.join(items, on="item_id", how="left")
        .join(counts, on="item_id", how="left")
        .filter(
            pl.col("item_id").is_in([50, 100])
            | (pl.col("n_ratings") < 30)
            | pl.col("genres").list.contains("Horror")
            | ~pl.col("year").is_between(1980, 1997).fill_null(False)
        )
    )


def test_lists_obey_every_rule_and_every_user_still_gets_top_n(ml100k_dataset, ml100k_indexed):
    ratings, maps = ml100k_indexed
    items, raw = ml100k_dataset.items(), ml100k_dataset.ratings()
    config = PipelineConfig(device="cpu", **RULES)
    rules = resolve_rules(config, items, ratings, maps)
    assert 100 < rules.n_allowed < maps.n_items
    model = fit(ratings, maps.n_users, maps.n_items, config, name="ials")
    lists, reasons = recommend_with_reasons(model, ratings, maps, config, rules=rules)
    assert _breaks_rules(lists, items, raw).height == 0
    assert lists.group_by("user_id").len()["len"].to_list() == [10] * 943
    assert lists.join(raw, on=["user_id", "item_id"]).height == 0  # still nothing the user rated
    # every reason is an item the user rated, at most 3 per recommended item, ranked by contribution
    assert reasons.height > 0 and reasons.join(lists, on=["user_id", "item_id"], how="anti").height == 0
    rated = raw.select("user_id", pl.col("item_id").alias("reason_item_id"))
    assert reasons.join(rated, on=["user_id", "reason_item_id"], how="anti").height == 0
    per_item = reasons.sort("user_id", "item_id", "reason_rank").group_by("user_id", "item_id", maintain_order=True)
    per_item = per_item.agg(pl.len(), rises=pl.col("contribution").diff().max())
    assert (
        per_item["len"].max() == 3
        and (per_item["rises"].fill_null(0) <= 0).all()
        and (reasons["contribution"] > 0).all()
    )
    # the fallback list: top_n of the most rated items the rules allow
    fallback = fallback_list(ratings, maps, rules, 10)
    assert fallback["rank"].to_list() == list(range(1, 11)) and _breaks_rules(fallback, items, raw).height == 0
    popular = raw.group_by("item_id").len().join(fallback, on="item_id")
    assert popular.sort("rank")["len"].to_list() == sorted(popular["len"].to_list(), reverse=True)


def test_a_rule_that_leaves_too_few_items_names_the_settings(ml100k_dataset, ml100k_indexed, tmp_path):
    ratings, maps = ml100k_indexed
    items = ml100k_dataset.items()

    def error(**rules) -> str:
        with pytest.raises(ListRuleError) as raised:
            resolve_rules(PipelineConfig(**rules), items, ratings, maps)
        return str(raised.value)

    assert "include_genres (--include-genres): unknown genre 'Horor' (did you mean 'Horror'?)" in error(
        include_genres=["Horor"]
    )
    assert "exclude_items (--exclude-items): no such file" in error(exclude_items=tmp_path / "missing.txt")
    assert "item id(s) 99999 are not in the catalogue" in error(exclude_items=[1, 99999])
    ids = tmp_path / "blocked.txt"
    ids.write_text("# never recommend\n1\n\n2 # a comment\nToy Story\n")
    assert f"file {ids}, line 5: 'Toy Story' is not an item id" in error(exclude_items=ids)
    few = error(include_genres=["Documentary"], min_item_ratings=50)
    assert (
        "(at least 50 ratings; genres Documentary) leave 5 of 1,682 items to recommend, fewer than top_n (--top-n) 10"
        in few
    )
    ids.write_text("1\n2\n")
    assert resolve_rules(PipelineConfig(exclude_items=ids), items, ratings, maps).n_allowed == 1680
    # on the command line `--exclude-items 1,2` is ids, `--exclude-items blocked.txt` a file, `1,x` and
    # `tt0114709` ids of a catalogue with text ids, which this one is not
    assert PipelineConfig(exclude_items=["1", "2"]).exclude_items == [1, 2]
    assert PipelineConfig(exclude_items=[str(ids)]).exclude_items == ids
    assert PipelineConfig(exclude_items=["1", "x"]).exclude_items == [1, "x"]
    assert PipelineConfig(exclude_items=["tt0114709"]).exclude_items == ["tt0114709"]
    assert "'x' is not an item id: this catalogue's ids are whole numbers" in error(exclude_items=["1", "x"])
    assert not resolve_rules(PipelineConfig(), items, ratings, maps).restricts


def test_blocked_items_leave_the_list_and_the_padding_counts_only_allowed_items():
    seen = UserItems.from_ratings(pl.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 3]}), 2)
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    allowed = np.array([True, True, False, True, True])
    items, values = top_k_unseen(lambda users: scores[users], 2, 5, seen, 3, torch.device("cpu"), 1, allowed=allowed)
    # user 0: unseen and allowed are 3, 4; user 1: 4, 1, 0
    assert items.tolist() == [[3, 4, -1], [4, 1, 0]]
    assert values[0, 2] == float("-inf")


def test_reasons_are_the_rated_items_of_largest_affinity():
    rated = UserItems.from_ratings(pl.DataFrame({"user_idx": [0, 0, 0, 1], "item_idx": [1, 2, 3, 2]}), 2)
    affinity = torch.tensor([[0.0, 0.9, 0.1, 0.5], [0.9, 0, 0, 0], [0.1, 0, 0, 0], [0.5, 0, 0, 0]])

    def lookup(items: torch.Tensor, crow: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        return affinity[items.repeat_interleave(crow.diff()), others]

    reasons = explain(lookup, np.array([0, 1]), np.array([0, 0]), rated, 2, torch.device("cpu"), max_entries=2)
    assert reasons.select("user_idx", "reason_rank", "reason_item_idx").rows() == [(0, 1, 1), (0, 2, 3), (1, 1, 2)]
    assert reasons["contribution"].to_list() == pytest.approx([0.9, 0.5, 0.1])


def test_list_metrics_against_hand_computed_values():
    new = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 20, 10, 30, 20, 30], "rank": [1, 2] * 3})
    before = pl.DataFrame({"user_id": [1, 1, 2, 2, 4, 4], "item_id": [20, 10, 30, 40, 10, 20], "rank": [1, 2] * 3})
    popularity = pl.DataFrame({"item_id": [10, 20, 30, 40], "n_ratings": [5, 3, 1, 2]})
    genres = pl.DataFrame({"item_id": [10, 20, 30, 40], "genres": [["A", "B"], ["B"], ["C"], []]})
    metrics = dict(list_metrics(new, before, popularity, genres, 2).select("metric", "value").iter_rows())
    # percentiles by ratings: 30 -> 0, 40 -> 1/3, 20 -> 2/3, 10 -> 1; listed: 1, 2/3, 1, 0, 2/3, 0
    assert metrics["popularity_percentile"] == pytest.approx((1 + 2 / 3 + 1 + 0 + 2 / 3 + 0) / 6)
    assert metrics["genre_diversity"] == pytest.approx((2 + 3 + 2) / 3)  # {A,B}, {A,B,C}, {B,C}
    # users 1 and 2 had lists: 1's holds the same items in another order (no churn), 2's shares 30 of {10, 30, 40}
    assert metrics["churn"] == pytest.approx(0.5) and metrics["jaccard"] == pytest.approx((1 + 1 / 3) / 2)
    first = dict(list_metrics(new, before.clear(), popularity, genres, 2).select("metric", "value").iter_rows())
    assert set(first) == {"popularity_percentile", "genre_diversity"}  # nothing to churn against

    passed = GateVerdict(True, "within tolerance")
    bounded = churn_rejection(
        list_metrics(new, before, popularity, genres, 2), passed, PipelineConfig(gate={"max_churn": 0.4})
    )
    assert (
        not bounded.publishes
        and "50.0% of the users' lists would change, above the 40.0% gate.max_churn" in bounded.reason
    )
    assert (
        churn_rejection(
            list_metrics(new, before, popularity, genres, 2), passed, PipelineConfig(gate={"max_churn": 0.5})
        )
        is passed
    )
