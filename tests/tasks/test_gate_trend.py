"""The quality gate's verdicts and the trend views over a real DuckDB file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

import warehouse
from tasks.config import PipelineConfig
from tasks.gate import Noise, OnThisSplit, PublishedRun, Side, decide, judge, published_run, recorded_metrics
from tasks.trend import headline, metric_trend, plot_loss, plot_trend, run_series
from warehouse.runs import ModelRecord, mark_failed, mark_rejected, publish, record_model, start_run

PROTOCOL = "stratified test=0.25 seed=42 k=10"


def _metrics(rmse: float, ndcg: float) -> pl.DataFrame:
    return pl.DataFrame(
        {"metric": ["rmse", "mae", "ndcg", "precision"], "k": [None, None, 10, 10], "value": [rmse, 0.7, ndcg, 0.1]},
        schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64},
    )


def _baseline(rmse: float, ndcg: float) -> pl.DataFrame:
    return _metrics(rmse, ndcg).with_columns(run_id=pl.lit("good"))


def test_first_run_passes_with_nothing_to_compare():
    verdict = judge(Side(_metrics(1.5, 0.01)), None, k=10, tolerance=0.05)
    assert verdict.passed and verdict.baseline_run_id is None and "nothing is published" in verdict.reason


def test_within_tolerance_passes_and_names_the_baseline():
    verdict = judge(Side(_metrics(0.93, 0.108)), Side(_baseline(0.90, 0.11)), k=10, tolerance=0.05)
    assert verdict.passed and verdict.baseline_run_id == "good" and "rmse 0.9000 -> 0.9300" in verdict.reason


@pytest.mark.parametrize(
    ("rmse", "ndcg", "says"),
    [(0.96, 0.11, "rmse rose from 0.9000 to 0.9600"), (0.90, 0.10, "ndcg@10 fell from 0.1100 to 0.1000")],
)
def test_worse_than_tolerance_is_rejected_with_the_reason(rmse, ndcg, says):
    verdict = judge(Side(_metrics(rmse, ndcg)), Side(_baseline(0.90, 0.11)), k=10, tolerance=0.05)
    assert not verdict.passed and says in verdict.reason and "run good" in verdict.reason


def test_tolerance_is_configurable():
    candidate, baseline = _metrics(0.96, 0.11), _baseline(0.90, 0.11)
    assert not judge(Side(candidate), Side(baseline), k=10, tolerance=0.05).passed
    assert judge(Side(candidate), Side(baseline), k=10, tolerance=0.10).passed


def _finished_run(path, run_id, started, status, rmse, ndcg, source="src", protocol=PROTOCOL, config=None):
    start_run(path, run_id, None, json.dumps(config or {}), started)
    record_model(path, run_id, "dot_bias", ModelRecord(_metrics(rmse, ndcg)))
    facts = {
        "source": source,
        "source_sha256": f"sha-{source}",
        "protocol": protocol,
        "model": "dot_bias",
        "rating_model": "dot_bias",
    }
    if status == "succeeded":
        recs = pl.DataFrame({"user_id": [1], "item_id": [2], "rank": [1], "score": [4.0]})
        items = pl.DataFrame(
            {"item_id": [2], "title": ["B"], "genres": [[]], "year": [None]},
            schema={"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String), "year": pl.Int32},
        )
        publish(path, run_id, recs, items, facts)
    elif status == "rejected":
        mark_rejected(path, run_id, {**facts, "gate_reason": "rmse rose"})
    else:
        mark_failed(path, run_id, "boom", facts)


@pytest.fixture
def history_warehouse(tmp_path):
    path = tmp_path / "w.duckdb"
    t0 = datetime(2026, 1, 1, 3, tzinfo=UTC)
    runs = [
        ("r0", "succeeded", 1.00, 0.10),
        ("r1", "succeeded", 0.90, 0.12),
        ("r2", "rejected", 1.50, 0.02),
        ("r3", "succeeded", 0.80, 0.14),
        ("r4", "failed", 0.70, 0.15),
        ("r5", "succeeded", 0.85, 0.13),
    ]
    for day, (run_id, status, rmse, ndcg) in enumerate(runs):
        _finished_run(path, run_id, t0 + timedelta(days=day), status, rmse, ndcg)
    _finished_run(path, "other", t0, "succeeded", 5.0, 0.5, protocol="temporal test=0.25 seed=42 k=10")
    return path


def test_trend_deltas_from_previous_run_and_median_of_published(history_warehouse):
    with warehouse.open_reader(history_warehouse) as con:
        trend = metric_trend(con, n_runs=2).filter((pl.col("metric") == "rmse") & (pl.col("protocol") == PROTOCOL))
    rows = {r["run_id"]: r for r in trend.iter_rows(named=True)}
    assert list(rows) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert rows["r0"]["delta_previous"] is None and rows["r0"]["median_published"] is None
    assert rows["r2"]["delta_previous"] == pytest.approx(0.6)  # from r1, whatever its status
    assert rows["r4"]["median_published"] == pytest.approx(0.85)  # r1 and r3: the rejected r2 does not count
    assert rows["r5"]["median_published"] == pytest.approx(0.85)  # the failed r4 does not count either
    assert rows["r5"]["delta_median"] == pytest.approx(0.0, abs=1e-12)
    with duckdb.connect(str(history_warehouse), read_only=True) as con:  # the plain view: median of the last 5
        view = con.execute(
            "SELECT median_published FROM metric_trends WHERE run_id = 'r5' AND metric = 'rmse'"
        ).fetchall()
    assert view == [(pytest.approx(0.9),)]


def test_gate_baseline_is_the_live_lists_run_whatever_its_dataset_and_protocol(history_warehouse):
    # guards against: a run under another protocol held to nothing ("nothing is published for this dataset and
    # protocol yet") and replaced the live lists unjudged. The live lists are run `other`'s (published last).
    temporal = "temporal test=0.25 seed=42 k=10"
    published = published_run(history_warehouse, "new", "sha-src", temporal)
    assert (published.run_id, published.model, published.rating_model) == ("other", "dot_bias", "dot_bias")
    assert published.config == PipelineConfig() and published.elsewhere is None  # `{}`: every setting at its default
    recorded = recorded_metrics(history_warehouse, published.run_id)
    assert recorded.metrics["run_id"].unique().to_list() == ["other"] and recorded.users is None  # no per-user rows
    on_another_protocol = published_run(history_warehouse, "new", "sha-src", PROTOCOL)
    assert on_another_protocol.run_id == "other"
    assert on_another_protocol.elsewhere == f"under another protocol ('{temporal}', this run's '{PROTOCOL}')"
    on_another_archive = published_run(history_warehouse, "new", "sha-elsewhere", temporal)
    assert on_another_archive.elsewhere == "from another archive (sha256 sha-src, this run's sha-elsewher)"


def test_a_published_run_whose_settings_no_longer_validate_is_still_the_baseline(tmp_path):
    path = tmp_path / "w.duckdb"
    _finished_run(
        path,
        "old",
        datetime(2026, 1, 1, tzinfo=UTC),
        "succeeded",
        0.9,
        0.1,
        config={"dot_bias": {"no_such_setting": 1}},
    )
    published = published_run(path, "new", "sha-src", PROTOCOL)
    assert published.run_id == "old" and published.config is None
    assert "runs.config of run old does not validate" in published.unreadable
    # its recorded metrics are then held to gate.tolerance, not to the wider drift tolerance
    verdict = decide(
        Side(_metrics(0.9, 0.08), _per_user(0.08)), published, Side(_baseline(0.9, 0.1)), None, PipelineConfig()
    )
    assert not verdict.passed and "cannot be rebuilt" in verdict.reason and "(--gate-tolerance)" in verdict.reason


def _per_user(ndcg, n_users=400, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    values = np.clip(rng.normal(ndcg, 0.2, n_users), 0, 1)
    return pl.DataFrame({"user_id": np.arange(n_users), "metric": "ndcg", "value": values})


def test_a_drop_beyond_the_tolerance_within_noise_passes_and_says_so():
    # every user's nDCG drawn anew around a lower mean: beyond 10%, but 60 noisy users cannot tell
    candidate_users, baseline_users = _per_user(0.088, 60, seed=1), _per_user(0.10, 60, seed=2)
    candidate = _metrics(0.9, candidate_users["value"].mean())
    baseline = _baseline(0.9, baseline_users["value"].mean())
    assert not judge(Side(candidate), Side(baseline), k=10, tolerance=0.1).passed  # the tolerance alone rejects it
    verdict = judge(Side(candidate, candidate_users), Side(baseline, baseline_users), 10, 0.1, Noise(0.95, 400))
    assert (
        verdict.passed
        and "within noise: the 95% interval of the paired ndcg@10 difference over 60 users" in verdict.reason
    )


def test_a_drop_beyond_the_tolerance_and_outside_noise_is_rejected_with_its_interval():
    baseline_users = _per_user(0.10, seed=2)
    candidate_users = baseline_users.with_columns(pl.col("value") * 0.8)  # every user 20% worse
    candidate = _metrics(0.9, candidate_users["value"].mean())
    baseline = _baseline(0.9, baseline_users["value"].mean())
    verdict = judge(Side(candidate, candidate_users), Side(baseline, baseline_users), 10, 0.1, Noise(0.95, 400))
    assert (
        not verdict.passed
        and "ndcg@10 fell" in verdict.reason
        and "95% interval of the paired ndcg@10 difference" in verdict.reason
    )


@pytest.mark.parametrize(
    ("candidate", "says"),
    [
        (_metrics(0.9, float("nan")), "ndcg@10 is nan"),
        (_metrics(float("nan"), 0.11), "rmse is nan"),
        (_metrics(0.9, 0.11).filter(pl.col("metric") != "ndcg"), "ndcg@10 is missing"),
        (_metrics(0.9, float("inf")), "ndcg@10 is inf"),
    ],
)
def test_a_missing_or_non_finite_candidate_metric_is_rejected(candidate, says):
    verdict = judge(Side(candidate), Side(_baseline(0.90, 0.11)), k=10, tolerance=0.05)
    assert not verdict.passed and says in verdict.reason


def test_a_non_finite_baseline_is_rejected_and_a_zero_one_compares_absolutely():
    nan_baseline = judge(Side(_metrics(0.9, 0.11)), Side(_baseline(0.90, float("nan"))), k=10, tolerance=0.05)
    assert not nan_baseline.passed and "published run's ndcg@10 is nan" in nan_baseline.reason
    assert judge(Side(_metrics(0.9, 0.0)), Side(_baseline(0.90, 0.0)), k=10, tolerance=0.05).passed  # no change
    # any RMSE above a perfect 0
    worse = judge(Side(_metrics(0.9, 0.11)), Side(_baseline(0.0, 0.11)), k=10, tolerance=0.05)
    assert not worse.passed and "rmse rose from 0.0000 to 0.9000" in worse.reason


PUBLISHED = PublishedRun("good", "ials", "dot_bias", PipelineConfig())


def _here(ndcg_users: pl.DataFrame, rmse: float, same: bool = False) -> OnThisSplit:
    return OnThisSplit(Side(_metrics(rmse, ndcg_users["value"].mean()), ndcg_users), ("ials",), same)


def test_the_published_configuration_on_the_same_split_rejects_a_worse_model_the_recorded_metrics_would_pass():
    # the candidate matches the published run's recorded nDCG (an easier test set that night), but the published
    # configuration, trained on the candidate's own split, ranks every user of it 20% better
    published_here = _per_user(0.10, seed=3)
    candidate_users = published_here.with_columns(pl.col("value") * 0.8)
    candidate = _metrics(0.9, candidate_users["value"].mean())
    recorded = _baseline(0.9, candidate_users["value"].mean())
    verdict = decide(
        Side(candidate, candidate_users), PUBLISHED, Side(recorded), _here(published_here, 0.9), PipelineConfig()
    )
    assert not verdict.passed and verdict.baseline_run_id == "good"
    assert (
        "against the published configuration (ials with dot_bias's stars, run good) on this run's split, trained here (ials)"
        in verdict.reason
    )
    assert "95% interval of the paired ndcg@10 difference over 400 users" in verdict.reason


def test_a_night_to_night_drift_within_the_drift_tolerance_passes_and_a_collapse_does_not():
    recorded_users = _per_user(0.10, seed=4)
    recorded = _baseline(0.9, recorded_users["value"].mean())
    for factor, passes in ((0.65, True), (0.3, False)):  # a 35% drop across test sets; a 70% one
        candidate_users = recorded_users.with_columns(pl.col("value") * factor)
        candidate = _metrics(0.9, candidate_users["value"].mean())
        # the candidate is the published configuration: nothing to compare on this split
        here = _here(candidate_users, 0.9, same=True)
        verdict = decide(
            Side(candidate, candidate_users), PUBLISHED, Side(recorded, recorded_users), here, PipelineConfig()
        )
        assert verdict.passed is passes, verdict.reason
        assert (
            "this run trains the published configuration (ials with dot_bias's stars) with the same settings"
            in verdict.reason
        )
        assert (
            "within 50.0% of run good's recorded metrics" if passes else "(--gate-drift-tolerance)"
        ) in verdict.reason


def test_headline_table_and_charts(history_warehouse, tmp_path):
    with warehouse.open_reader(history_warehouse) as con:
        trend = metric_trend(con, n_runs=5).filter(pl.col("protocol") == PROTOCOL)
    table = headline(trend)
    assert table["run_id"].to_list() == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert table.columns[:6] == ["run_id", "as_of", "status", "rmse", "rmse Δprev", "rmse Δmedian"]
    assert table.filter(pl.col("run_id") == "r2")["ndcg@10 Δprev"].item() == pytest.approx(-0.1)
    chart = plot_trend(trend, tmp_path / "charts" / "trend.png")
    history = pl.DataFrame({"epoch": [1, 2, 1], "split": ["train", "train", "refit"], "loss": [1.0, 0.8, 0.9]})
    loss = plot_loss(history, tmp_path / "loss.png")
    for png in (chart, loss):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def _ials_run(path, run_id: str, started: datetime, rmse: float, ndcg: float) -> None:
    """A run that publishes ials's lists (nDCG, no RMSE) with dot_bias's stars (RMSE), as the default nightly."""
    start_run(path, run_id, None, "{}", started)
    ranking = _metrics(rmse, ndcg).filter(pl.col("metric").is_in(["ndcg", "precision"]))
    record_model(path, run_id, "ials", ModelRecord(ranking))
    record_model(path, run_id, "dot_bias", ModelRecord(_metrics(rmse, 0.05)))
    facts = {"source": "src", "source_sha256": "sha", "protocol": PROTOCOL, "model": "ials", "rating_model": "dot_bias"}
    recs = pl.DataFrame({"user_id": [1], "item_id": [2], "rank": [1], "score": [4.0]})
    items = pl.DataFrame(
        {"item_id": [2], "title": ["B"], "genres": [[]], "year": [None]},
        schema={"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String), "year": pl.Int32},
    )
    publish(path, run_id, recs, items, facts)


def test_the_trend_takes_rmse_from_the_rating_model_and_one_run_is_a_table(tmp_path, capsys):
    from flows.cli import main

    path, t0 = tmp_path / "w.duckdb", datetime(2026, 1, 1, 3, tzinfo=UTC)
    _ials_run(path, "a", t0, 0.91, 0.48)
    assert main(["trend", "--warehouse", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model ials, RMSE of dot_bias (its stars)" in out and "one run so far" in out
    assert not (tmp_path / "trend.png").exists()
    _ials_run(path, "b", t0 + timedelta(days=1), 0.90, 0.49)
    with warehouse.open_reader(path) as con:
        run, series = run_series(con, 5)
    table = headline(series)
    assert (run["model"], run["rating_model"]) == ("ials", "dot_bias")
    assert table["rmse"].to_list() == [0.91, 0.90] and table["ndcg@10"].to_list() == [0.48, 0.49]
    assert main(["trend", "--warehouse", str(path)]) == 0
    assert f"chart written to {tmp_path / 'trend.png'}" in capsys.readouterr().out
