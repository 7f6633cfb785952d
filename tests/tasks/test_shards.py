"""Recommendation by user shards (tasks/shards.py) in process: the shards' files together are the lists of one
`recommend` over every user, and a shard reads only what the run's folder holds."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from tasks.config import PipelineConfig
from tasks.recommend import recommend
from tasks.shards import RATER_IS_MODEL, recommend_shard, user_shards
from tasks.train import fit, save_checkpoint


def test_user_shards_cover_every_user_once():
    assert user_shards(943, 300) == [(0, 300), (300, 600), (600, 900), (900, 943)]
    assert user_shards(10, 50) == [(0, 10)] and user_shards(0, 5) == []


def test_the_shards_lists_are_the_lists_of_one_pass(ml100k_indexed, tmp_path):
    ratings, maps = ml100k_indexed
    config = PipelineConfig(device="cpu", top_n=7)
    model = fit(ratings, maps.n_users, maps.n_items, config, name="bias")
    save_checkpoint(model, maps, config, tmp_path / "model.pt")
    maps.save(tmp_path)
    ratings.select("user_idx", "item_idx").write_parquet(tmp_path / "ratings.parquet")
    (tmp_path / "config.json").write_text(config.model_dump_json())
    shards = [recommend_shard(tmp_path, first, last, RATER_IS_MODEL) for first, last in user_shards(maps.n_users, 250)]
    assert [path.name for path in shards] == [f"recommend-{first:010d}.parquet" for first in (0, 250, 500, 750)]
    assert not list(tmp_path.glob("shards/*.partial"))
    whole = recommend(model, ratings, maps, config, model)
    assert_frame_equal(pl.read_parquet(shards).sort("user_id", "rank"), whole)
    assert whole["user_id"].n_unique() == 943 and whole.height == 943 * 7
