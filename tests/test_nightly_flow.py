"""End to end: `recs run` over HTTP on loopback -> Prefect flow -> DuckDB, on the real ML-100k."""

from __future__ import annotations

import logging
import shutil
import zipfile

import duckdb
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

import warehouse
from flows.cli import main
from flows.nightly import nightly
from tasks.checkpoint import load_trained_model
from tasks.config import MODEL_NAMES, PipelineConfig
from tasks.models import MODELS
from tasks.reindex import reindex
from tasks.run_folder import RunFolder
from tasks.split import split_ratings
from tasks.trend import LIST_METRICS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _check_published(warehouse_path, ratings: pl.DataFrame, n_users: int) -> str:
    """The contract of a succeeded run's tables; returns the run id."""
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT user_id) FROM recommendations").fetchall()[0] == (
            n_users * 10,
            n_users,
        )
        recs = pl.from_arrow(con.sql("SELECT * FROM recommendations").to_arrow_table())
        run_id, status, error, published = con.execute(
            "SELECT run_id, status, error, model FROM runs ORDER BY started_at DESC"
        ).fetchall()[0]
        metrics = pl.from_arrow(
            con.sql("SELECT model, metric, k FROM run_metrics WHERE run_id = ?", params=[run_id]).to_arrow_table()
        )
        titled = con.execute("SELECT count(*) FROM recommendations_with_titles WHERE title IS NOT NULL").fetchall()[0][
            0
        ]
        history = con.execute("SELECT count(*) FROM training_history WHERE run_id = ?", [run_id]).fetchall()[0][0]
    assert (status, error) == ("succeeded", None)
    assert recs["run_id"].unique().to_list() == [run_id]
    assert recs.join(ratings, on=["user_id", "item_id"]).height == 0, "a list names an item its user rated"
    ordered = recs.sort("user_id", "rank")
    assert (ordered.group_by("user_id", maintain_order=True).agg("rank")["rank"].to_list()) == [
        list(range(1, 11))
    ] * n_users
    assert ordered.group_by("user_id").agg(pl.col("score").diff().max().alias("up"))["up"].max() <= 0, (
        "ranks not in score order"
    )
    ranking = {(m, 10) for m in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")} | {
        ("fit_seconds", None)
    }
    for (model,), rows in metrics.group_by("model"):
        rating = {("rmse", None), ("mae", None)} if MODELS[model].module.predicts_ratings else set()
        lists = {(m, 10) for m in LIST_METRICS if m not in ("churn", "jaccard")} if model == published else set()
        assert set(rows.select("metric", "k").rows()) == ranking | rating | lists, model
    assert titled == n_users * 10 and history > 0
    return run_id


def test_recs_run_over_http_publishes_every_users_top10(ml100k_zip, ml100k_dataset, tmp_path, serve, capsys, caplog):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ml100k_zip, site / "ml-100k.zip")
    server = serve(site)
    warehouse_path = tmp_path / "W.duckdb"

    # Every model, as the scheduled nightly deployment runs them (the default trains dot_bias alone).
    caplog.set_level(logging.DEBUG, logger="warehouse.writer")
    status = main(
        [
            "run",
            "--source",
            f"{server.url}/ml-100k.zip",
            "--warehouse",
            str(warehouse_path),
            "--data-dir",
            str(tmp_path / "D"),
            "--models",
            ",".join(MODEL_NAMES),
        ]
    )

    assert status == 0
    # Whole-file rewrites of the warehouse: the start, one per model (metrics, history, inspection together),
    # the publish (lists, refit history, final facts together).
    rewrites = [
        record for record in caplog.records if record.name == "warehouse.writer" and "rewrote" in record.message
    ]
    assert len(rewrites) == 1 + len(MODEL_NAMES) + 1
    run_id = _check_published(warehouse_path, ml100k_dataset.ratings(), n_users=943)
    out = capsys.readouterr().out
    assert f"run {run_id} succeeded: 9430 recommendations" in out and "ndcg" in out
    run_dir = tmp_path / "D" / "runs" / run_id
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.json",
        "user_map.parquet",
        "item_map.parquet",
        "train.parquet",
        "test.parquet",
        "ratings.parquet",
        "model.pt",
    }
    # The run's out-of-core reindex and split (DuckDB over parquet) made the very split the in-memory functions make
    # with the run's seed, so its lists and metrics are what the in-memory path published.
    indexed, _ = reindex(ml100k_dataset.ratings())
    train, test = split_ratings(indexed, "stratified", 0.25, PipelineConfig().seed)
    assert_frame_equal(pl.read_parquet(run_dir / "train.parquet"), train)
    assert_frame_equal(pl.read_parquet(run_dir / "test.parquet"), test)
    assert_frame_equal(pl.read_parquet(run_dir / "ratings.parquet"), indexed)
    assert not (run_dir / "spill").exists()
    assert "every model on the test split" in out
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        rmse, source, sha = con.execute(
            "SELECT m.value, r.source, r.source_sha256 FROM run_metrics m JOIN runs r USING (run_id) "
            "WHERE metric = 'rmse' AND m.model = 'dot_bias'"
        ).fetchall()[0]
        stages = con.execute("SELECT json_keys(stage_seconds) FROM runs").fetchall()[0][0]
        ndcg = dict(con.execute("SELECT model, value FROM run_metrics WHERE metric = 'ndcg'").fetchall())
        published = con.execute("SELECT model FROM runs").fetchall()[0][0]
        biases = con.execute(
            "SELECT model, count(*), count(mean_rating) FROM item_biases GROUP BY ALL ORDER BY 1"
        ).fetchall()
        similar = con.execute(
            "SELECT model, count(DISTINCT item_id), max(rank) FROM similar_items GROUP BY ALL ORDER BY 1"
        ).fetchall()
        star_wars = con.sql(
            warehouse.query("similar_items"), params={"model": "dot_bias", "title": "Star Wars (1977)"}
        ).fetchall()
        extremes = con.sql(
            warehouse.query("item_bias_extremes"), params={"model": "dot_bias", "min_ratings": 20, "n": 5}
        ).fetchall()
        compared = con.sql(warehouse.query("model_comparison")).fetchall()
    assert rmse < 0.95 and source.endswith("/ml-100k.zip") and sha.startswith("f6399316")
    assert stages == [
        "ingest",
        "reindex",
        "rules",
        "split",
        "train",
        "evaluate",
        "inspect",
        "gate",
        "refit",
        "recommend",
        "publish",
    ]
    # Every model evaluated; the default publishes the best nDCG@10, which on ML-100k is a ranking model.
    assert (
        set(ndcg) == set(MODEL_NAMES) and published == max(ndcg, key=ndcg.get) and published in {"ials", "ease", "bpr"}
    )
    assert ndcg["ease"] > 0.4 and ndcg["ials"] > 0.4 and ndcg["popularity"] > ndcg["bias"]
    n_rated = ml100k_dataset.ratings()["item_id"].n_unique() - 43  # 43 items' ratings all fell in the test split
    assert biases == [(m, 1682, n_rated) for m in ("bias", "bpr", "dot_bias")]
    assert similar == [(m, 1682, 10) for m in ("bpr", "dot", "dot_bias", "ials", "mlp")]
    assert len(star_wars) == 10 and all(row[0] == "Star Wars (1977)" and row[3] != row[0] for row in star_wars)
    assert [row[0] for row in extremes] == ["most liked"] * 5 + ["least liked"] * 5 + ["bias and mean disagree"] * 5
    assert (
        len(compared) == len(MODEL_NAMES)
        and [row[1] for row in compared].count(True) == 1
        and compared[0][0] == published
    )

    assert main(["recommend", "1", "--warehouse", str(warehouse_path)]) == 0
    assert "recommendations for user 1" in capsys.readouterr().out
    # The trend follows the published model's series, not whichever model sorts last.
    assert main(["trend", "--warehouse", str(warehouse_path), "--chart", str(tmp_path / "trend.png")]) == 0
    out = capsys.readouterr().out
    assert f"model {published}, RMSE of " in out and "one run so far" in out


def test_csv_layout_archive_runs_unchanged(ml100k_dataset, tmp_path, serve):
    """ML-100k rewritten in the ml-20m/25m/latest csv layout goes through the same command."""
    ratings, items = ml100k_dataset.ratings(), ml100k_dataset.items()
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "ml-latest-small.zip", "w") as archive:
        archive.writestr(
            "ml-latest-small/ratings.csv",
            ratings.rename({"user_id": "userId", "item_id": "movieId"}).write_csv(),
        )
        archive.writestr(
            "ml-latest-small/movies.csv",
            items.select(movieId="item_id", title="title", genres=pl.col("genres").list.join("|")).write_csv(),
        )
    server = serve(site)
    warehouse_path = tmp_path / "W.duckdb"
    args = [
        "run",
        "--source",
        f"{server.url}/ml-latest-small.zip",
        "--warehouse",
        str(warehouse_path),
        "--data-dir",
        str(tmp_path / "D"),
        "--model",
        "dot_bias",
    ]
    assert main(args) == 0
    _check_published(warehouse_path, ratings, n_users=943)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT dataset_layout FROM runs").fetchall()[0] == ("csv",)


def test_failed_run_is_recorded_and_keeps_previous_lists(ml100k_zip, tmp_path, serve):
    warehouse_path = tmp_path / "W.duckdb"
    good = PipelineConfig(
        source=str(ml100k_zip),
        warehouse=warehouse_path,
        data_dir=tmp_path / "D",
        model="popularity",
        refit_on_all=False,
    )
    good_run = nightly(good).run_id
    server = serve(tmp_path)
    bad = good.with_overrides({"source": f"{server.url}/missing.zip", "download": {"retries": 0}})
    with pytest.raises(Exception, match="HTTP 404"):
        nightly(bad)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [(good_run,)]
        status, error = con.execute("SELECT status, error FROM runs WHERE run_id <> ?", [good_run]).fetchall()[0]
    assert status == "failed" and "HTTP 404" in error and "missing.zip" in error


def test_the_default_run_publishes_ials_with_dot_bias_stars_beside_each_item(ml100k_zip, tmp_path, capsys):
    warehouse_path = tmp_path / "W.duckdb"
    result = nightly(PipelineConfig(source=str(ml100k_zip), warehouse=warehouse_path, data_dir=tmp_path / "D"))
    assert (result.status, result.model) == ("succeeded", "ials")
    ndcg = float(result.metrics.filter(pl.col("metric") == "ndcg")["value"][0])
    assert ndcg >= 0.47  # the published lists rank (dot_bias alone: 0.066)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        model, rating_model = con.execute("SELECT model, rating_model FROM runs").fetchone()
        stars = con.execute(
            "SELECT count(*), count(predicted_rating), min(predicted_rating), max(predicted_rating), "
            "count(DISTINCT item_id) FROM recommendations_with_titles"
        ).fetchone()
        refits = con.execute("SELECT DISTINCT model FROM training_history WHERE split = 'refit' ORDER BY 1").fetchall()
    assert (model, rating_model) == ("ials", "dot_bias")
    assert stars[0] == stars[1] == 9430 and 1.0 <= stars[2] <= stars[3] <= 5.0
    assert stars[4] > 300  # lists a movie fan would recognise: far more than a few niche items for everyone
    assert refits == [("dot_bias",), ("ials",)]  # both refitted on all ratings
    assert main(["recommend", "1", "--warehouse", str(warehouse_path)]) == 0
    assert "predicted_rating" in capsys.readouterr().out


def test_business_rules_reasons_fallback_and_churn_through_the_flow(ml100k_zip, ml100k_dataset, tmp_path, capsys):
    warehouse_path, raw, items = tmp_path / "W.duckdb", ml100k_dataset.ratings(), ml100k_dataset.items()
    config = PipelineConfig(
        source=str(ml100k_zip),
        warehouse=warehouse_path,
        data_dir=tmp_path / "D",
        models=["ials"],
        exclude_items=[50, 181],
        min_item_ratings=30,
        exclude_genres=["Horror"],
        min_year=1980,
        warm_start=True,
    )
    first = nightly(config)
    assert first.status == "succeeded"
    counts = raw.group_by("item_id").len("n_ratings")

    def broken(lists: pl.DataFrame) -> int:
        rows = lists.join(items, on="item_id").join(counts, on="item_id")
        return rows.filter(
            pl.col("item_id").is_in([50, 181])
            | (pl.col("n_ratings") < 30)
            | pl.col("genres").list.contains("Horror")
            | (pl.col("year") < 1980)
        ).height

    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        lists = pl.from_arrow(con.sql("SELECT * FROM recommendations").to_arrow_table())
        fallback = pl.from_arrow(con.sql("SELECT * FROM fallback_recommendations ORDER BY rank").to_arrow_table())
        reasons = pl.from_arrow(con.sql("SELECT * FROM recommendation_reasons").to_arrow_table())
        because = con.execute(
            "SELECT reason FROM recommendations_with_reasons WHERE user_id = 1 AND rank = 1"
        ).fetchone()[0]
        unknown = con.execute("SELECT source, count(*) FROM recommendations_for(99999) GROUP BY ALL").fetchall()
        known = con.execute("SELECT source, count(*) FROM recommendations_for(1) GROUP BY ALL").fetchall()
        beyond = dict(
            con.execute(
                "SELECT metric, value FROM run_metrics WHERE run_id = ? AND k = 10 AND metric IN "
                "('popularity_percentile', 'genre_diversity', 'churn')",
                [first.run_id],
            ).fetchall()
        )
    assert broken(lists) == 0 and lists.group_by("user_id").len()["len"].to_list() == [10] * 943
    assert fallback["rank"].to_list() == list(range(1, 11)) and broken(fallback) == 0
    assert fallback["run_id"].unique().to_list() == [first.run_id]
    rated = raw.select("user_id", pl.col("item_id").alias("reason_item_id"))
    assert reasons.height > 0 and reasons.join(rated, on=["user_id", "reason_item_id"], how="anti").height == 0
    assert because.startswith("because you rated ")
    assert unknown == [("fallback", 10)] and known == [("personal", 10)]
    assert set(beyond) == {"popularity_percentile", "genre_diversity"} and 0 < beyond["popularity_percentile"] < 1

    # Another seed moves many lists: a churn bound holds them back, and the lists published stay. Its refit starts
    # from the first run's vectors (warm_start): ials's warm_epochs, 4.
    second = nightly(config, overrides={"seed": 7, "gate": {"max_churn": 0.05}})
    assert second.status == "rejected" and "gate.max_churn" in second.gate
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        live = con.execute(
            "SELECT DISTINCT run_id FROM recommendations UNION SELECT DISTINCT run_id FROM fallback_recommendations"
        ).fetchall()
        churn = con.execute(
            "SELECT value FROM run_metrics WHERE run_id = ? AND metric = 'churn'", [second.run_id]
        ).fetchone()
        epochs = con.execute(
            "SELECT max(epoch) FROM training_history WHERE run_id = ? AND split = 'train'", [second.run_id]
        ).fetchone()
    assert live == [(first.run_id,)] and churn[0] > 0.05
    refit, _ = load_trained_model(
        RunFolder.of(tmp_path / "D", second.run_id).checkpoint("refit", "ials"), torch.device("cpu")
    )
    assert refit.history["epoch"].max() == 4 and epochs == (16,)  # the stratified split's evaluated fit starts cold
    capsys.readouterr()
    assert main(["trend", "--warehouse", str(warehouse_path)]) == 0
    assert "churn@10" in capsys.readouterr().out
