"""Trend monitoring: each metric over runs (from the `metric_trend` macro), as a table and as PNG charts.

Charts are drawn with matplotlib's object API (`Figure`, no pyplot), so no global state or display is
involved and a flow can draw them in any thread.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

import warehouse

# The metrics a trend charts by default: the gate's two and the list quality users see; the printed table
# keeps to the gate's two so that it fits a terminal.
HEADLINE_METRICS = ("rmse", "ndcg", "precision", "recall", "churn", "popularity_percentile", "genre_diversity")
GATE_METRICS = ("rmse", "ndcg")
# What the published lists look like beyond accuracy (tasks/list_metrics.py), printed as values alone.
LIST_METRICS = ("popularity_percentile", "genre_diversity", "churn", "jaccard")
DEFAULT_TREND_RUNS = 5  # earlier published runs whose median a run's delta is taken from


def metric_trend(con: duckdb.DuckDBPyConnection, n_runs: int) -> pl.DataFrame:
    """Every metric of every finished run with its deltas (see `warehouse/queries/metric_trend.sql`)."""
    return warehouse.fetch(con, "metric_trend", {"n_runs": n_runs})


def series(trend: pl.DataFrame, source: str, protocol: str, model: str) -> pl.DataFrame:
    """One series of the trend: the runs whose metrics are comparable (same source, protocol and model)."""
    return trend.filter((pl.col("source") == source) & (pl.col("protocol") == protocol) & (pl.col("model") == model))


def run_series(con: duckdb.DuckDBPyConnection, n_runs: int, run_id: str | None = None) -> tuple[dict, pl.DataFrame]:
    """The series a run's metrics belong to (its source and protocol, and the model it published or, rejected, would
    have), with its trend row: `run_id`'s, else the newest finished run's. RMSE comes from the run's rating model,
    the one behind the lists' predicted stars, trained every night whichever model ranks. An empty series when no
    run has metrics.

    Raises:
        duckdb.CatalogException: the warehouse predates the trend views.
    """
    trend = metric_trend(con, n_runs)
    runs = trend.filter(pl.col("run_id") == run_id) if run_id is not None else trend
    if runs.height == 0:
        return {}, trend.clear()
    run = runs.sort("started_at").row(-1, named=True)
    run.update(warehouse.fetch(con, "run_model", {"run_id": run["run_id"]}).row(0, named=True))
    run["rating_model"] = run["rating_model"] or run["model"]
    ranking = series(trend, run["source"], run["protocol"], run["model"]).filter(pl.col("metric") != "rmse")
    rating = series(trend, run["source"], run["protocol"], run["rating_model"]).filter(pl.col("metric") == "rmse")
    return run, pl.concat([ranking, rating]).sort("started_at", "run_id", "model", "metric")


def _label(metric: str, k: int | None) -> str:
    return metric if k is None else f"{metric}@{k}"


_LABEL = pl.when(pl.col("k").is_null()).then(pl.col("metric")).otherwise(pl.format("{}@{}", "metric", "k"))


def headline(trend: pl.DataFrame, metrics: tuple[str, ...] = GATE_METRICS, deltas: bool = True) -> pl.DataFrame:
    """One row per run (oldest first): its status, as_of and, per metric, value, Δ previous and Δ median (the
    value alone without `deltas`)."""
    chosen = trend.filter(pl.col("metric").is_in(metrics)).with_columns(label=_LABEL)
    if chosen.height == 0:
        return pl.DataFrame()
    order = [
        _label(m, k)
        for m in metrics
        for k in sorted(chosen.filter(pl.col("metric") == m)["k"].unique(), key=lambda k: -1 if k is None else k)
    ]
    wide = chosen.pivot(
        on="label",
        index=["run_id", "started_at", "as_of", "status"],
        values=["value", "delta_previous", "delta_median"],
        aggregate_function="first",
    )
    columns = []
    for label in order:
        columns.append(pl.col(f"value_{label}").round(4).alias(label))
        if deltas:
            columns += [
                pl.col(f"delta_previous_{label}").round(4).alias(f"{label} Δprev"),
                pl.col(f"delta_median_{label}").round(4).alias(f"{label} Δmedian"),
            ]
    return wide.sort("started_at", "run_id").select("run_id", pl.col("as_of").dt.date(), "status", *columns)


def plot_trend(trend: pl.DataFrame, path: Path, metrics: tuple[str, ...] = HEADLINE_METRICS) -> Path:
    """A PNG with one panel per metric: each run's value (published, rejected, failed) and the rolling median."""
    runs = trend.select("run_id", "started_at", "as_of").unique().sort("started_at", "run_id")
    position = {run_id: i for i, run_id in enumerate(runs["run_id"])}
    ticks = [
        (a if a is not None else s).strftime("%Y-%m-%d") for s, a in zip(runs["started_at"], runs["as_of"], strict=True)
    ]
    panels = [(m, k) for m in metrics for k in trend.filter(pl.col("metric") == m)["k"].unique().to_list()]
    from matplotlib.figure import Figure  # imported when a chart is drawn: reading commands start faster

    figure = Figure(figsize=(10, 2.6 * max(len(panels), 1)), layout="constrained")
    axes = figure.subplots(max(len(panels), 1), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (metric, k) in zip(axes, panels, strict=False):
        series = trend.filter((pl.col("metric") == metric) & (pl.col("k").is_null() if k is None else pl.col("k") == k))
        for (model,), per_model in series.group_by("model", maintain_order=True):
            x = [position[r] for r in per_model["run_id"]]
            axis.plot(x, per_model["value"].to_list(), marker="o", label=model)
            axis.plot(
                x, per_model["median_published"].to_list(), linestyle="--", color="grey", label="median of published"
            )
            for status, colour in (("rejected", "red"), ("failed", "black")):
                marked = per_model.filter(pl.col("status") == status)
                if marked.height:
                    axis.scatter(
                        [position[r] for r in marked["run_id"]],
                        marked["value"].to_list(),
                        color=colour,
                        marker="x",
                        s=80,
                        zorder=3,
                        label=status,
                    )
        axis.set_ylabel(_label(metric, k))
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize="small")
    axes[-1].set_xticks(range(len(ticks)), ticks, rotation=45, ha="right")
    axes[-1].set_xlabel("run (as_of date for replays, else start date)")
    figure.suptitle("Metrics over runs")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def plot_loss(history: pl.DataFrame, path: Path) -> Path:
    """A PNG of the training loss per epoch, one line per phase (train, validation, refit).

    MSE for the rating models, the BPR loss for bpr; a closed-form model has no epochs and the chart says so.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    for (split,), rows in history.group_by("split", maintain_order=True):
        axis.plot(rows["epoch"].to_list(), rows["loss"].to_list(), marker="o", label=split)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.set_title("Training loss" if history.height else "No training loss: the model is fitted in closed form")
    axis.grid(alpha=0.3)
    if history.height:
        axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
