"""Recommendation by user shards (tasks/shards.py) in process: the shards' files together are the lists of one
`recommend` over every user, and a shard reads only what the run's folder holds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.checkpoint import save_checkpoint
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate_shard, evaluate_users, reduce_evaluation
from tasks.recommend import recommend_with_reasons
from tasks.rules import resolve_rules
from tasks.run_folder import RunFolder
from tasks.shards import ListModels, evaluate_shard_files, recommend_shard, shard_lists, user_shards
from tasks.split import split_ratings
from tasks.train import fit


def test_user_shards_cover_every_user_once():
    assert user_shards(943, 300) == [(0, 300), (300, 600), (600, 900), (900, 943)]
    assert user_shards(10, 50) == [(0, 10)] and user_shards(0, 5) == []


def test_the_shards_lists_are_the_lists_of_one_pass(ml100k_dataset, ml100k_indexed, tmp_path):
    ratings, maps = ml100k_indexed
    config = PipelineConfig(device="cpu", top_n=7, exclude_genres=["comedy"])
    model = fit(ratings, maps.n_users, maps.n_items, config, name="ials")
    rater = fit(ratings, maps.n_users, maps.n_items, config, name="bias")
    rules = resolve_rules(config, ml100k_dataset.items(), ratings, maps)
    save_checkpoint(model, maps, config, tmp_path / "model.pt")
    save_checkpoint(rater, maps, config, tmp_path / "rater.pt")
    maps.save(tmp_path)
    rules.save(tmp_path)
    ratings.select("user_idx", "item_idx").write_parquet(tmp_path / "ratings.parquet")
    (tmp_path / "config.json").write_text(config.model_dump_json())
    shards = [recommend_shard(tmp_path, first, last, "rater.pt") for first, last in user_shards(maps.n_users, 250)]
    assert [path.name for path, _ in shards] == [f"recommend-{first:010d}.parquet" for first in (0, 250, 500, 750)]
    assert not list(tmp_path.glob("shards/*.partial"))
    whole, reasons = recommend_with_reasons(model, ratings, maps, config, rater, rules=rules)
    assert_frame_equal(pl.read_parquet([path for path, _ in shards]).sort("user_id", "rank"), whole)
    assert_frame_equal(
        pl.read_parquet([path for _, path in shards]).sort("user_id", "item_id", "reason_rank"),
        reasons.sort("user_id", "item_id", "reason_rank"),
    )
    assert whole["user_id"].n_unique() == 943 and whole.height == 943 * 7 and reasons.height > 0
    # in process, a shard is made from the models in memory: the same lists as from their checkpoints
    from_checkpoints = [pl.read_parquet(path) for path in shards[1]]
    in_memory = shard_lists(RunFolder(tmp_path), ListModels(model, rater), maps, config, rules, (250, 500))
    for loaded, path in zip(from_checkpoints, in_memory, strict=True):
        assert_frame_equal(pl.read_parquet(path), loaded)


def _same_metrics(ours: pl.DataFrame, theirs: pl.DataFrame) -> None:
    """The same metrics at the same k, values equal but for the order floating-point sums were taken in."""
    assert ours.select("metric", "k").rows() == theirs.select("metric", "k").rows()
    assert ours["value"].to_list() == pytest.approx(theirs["value"].to_list(), rel=1e-12)


def test_evaluation_by_shards_reduces_to_the_metrics_of_one_pass(ml100k_indexed, tmp_path):
    ratings, maps = ml100k_indexed
    config = PipelineConfig(device="cpu")
    train, test = split_ratings(ratings, "stratified", 0.25, 42)
    model = fit(train, maps.n_users, maps.n_items, config, name="bias")
    whole, per_user = evaluate_users(model, train, test, maps.n_items, config)
    # in process, shard by shard (the first with no user of the last's), and through the run's folder
    parts = [evaluate_shard(model, train, test, maps.n_items, config, shard) for shard in user_shards(943, 400)]
    by_parts = reduce_evaluation(
        pl.concat([p for p, _ in parts]), np.concatenate([s for _, s in parts]), train["item_idx"].n_unique(), config.k
    )
    _same_metrics(by_parts, whole)
    save_checkpoint(model, maps, config, tmp_path / "model-bias-train.pt")
    maps.save(tmp_path)
    train.write_parquet(tmp_path / "train.parquet")
    test.write_parquet(tmp_path / "test.parquet")
    (tmp_path / "config.json").write_text(config.model_dump_json())
    files = [evaluate_shard_files(tmp_path, "model-bias-train.pt", *shard) for shard in user_shards(943, 300)]
    values = pl.read_parquet([v for v, _ in files])
    shown = pl.read_parquet([s for _, s in files])["item_idx"].to_numpy()
    _same_metrics(reduce_evaluation(values, shown, train["item_idx"].n_unique(), config.k), whole)
    ndcg = values.filter(pl.col("metric") == "ndcg").sort("user_idx")
    expected = per_user.filter(pl.col("metric") == "ndcg").sort("user_idx")
    assert ndcg["user_idx"].to_list() == expected["user_idx"].to_list()
    assert ndcg["value"].to_list() == pytest.approx(expected["value"].to_list(), rel=1e-12)


def test_a_cluster_setting_that_is_neither_form_says_what_is_expected():
    for bad in ("foo", "local:0", "tcp://host", "http://host:8786"):
        with pytest.raises(
            ValueError, match=f"'{bad}' is not a cluster: expected local:N .* or a Dask scheduler's address"
        ):
            PipelineConfig(cluster={"address": bad})
    assert PipelineConfig(cluster={"address": "local:4"}).cluster.address == "local:4"
    assert PipelineConfig(cluster={"address": "tls://h:8786"}).cluster.address == "tls://h:8786"
