"""The run's report: Prefect artifacts (markdown summary with deltas, metrics table, linked PNG charts)
and the text `recs run` prints."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import polars as pl
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.run_folder import RunFolder
from tasks.train import TrainedModel
from tasks.trend import plot_loss, plot_trend, run_series


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def metrics_markdown(metrics: pl.DataFrame) -> str:
    """A markdown table of a run's metrics with their trend deltas (`metric`, `k`, `value`, `delta_previous`,
    `delta_median`)."""
    lines = ["| metric | k | value | Δ previous run | Δ median of published |", "|---|---|---|---|---|"]
    for row in metrics.iter_rows(named=True):
        k = "" if row["k"] is None else row["k"]
        lines.append(
            f"| {row['metric']} | {k} | {row['value']:.4f} | {_signed(row['delta_previous'])} | {_signed(row['delta_median'])} |"
        )
    return "\n".join(lines)


def comparison_wide(comparison: pl.DataFrame) -> pl.DataFrame:
    """Every trained model's metrics (`model`, `metric`, `k`, `value` rows) as one row per model, best nDCG first."""
    wide = comparison.pivot(on="metric", index="model", values="value", aggregate_function="first")
    return wide.sort("ndcg", descending=True)


def comparison_markdown(comparison: pl.DataFrame, published: str) -> str:
    """A markdown table of every trained model's headline metrics."""
    wide = comparison_wide(comparison)
    columns = [
        c for c in ("rmse", "mae", "precision", "recall", "ndcg", "map", "coverage", "fit_seconds") if c in wide.columns
    ]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in wide.iter_rows(named=True):
        name = f"**{row['model']}** (published)" if row["model"] == published else row["model"]
        cells = ["" if row[c] is None else f"{row[c]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuned_line(facts: dict) -> str:
    """Which tune's settings the run took, or that it took none."""
    if facts.get("tuning_run_id"):
        return f"Settings tuned for this dataset by tune `{facts['tuning_run_id']}`: {facts.get('tuned_settings')}."
    return "Settings: the defaults and those given (no tune of this dataset applied; `recs tune` makes one)."


def summary_markdown(
    run_id: str, status: str, gate: str, model: str, metrics: pl.DataFrame, facts: dict, comparison: pl.DataFrame
) -> str:
    """Markdown summary of a finished run: outcome, dataset, metrics with deltas, all models, stage timings."""
    stages = facts.get("stage_seconds", {})
    as_of = facts.get("as_of")
    return "\n".join(
        [
            f"# Nightly run `{run_id}`: {status}",
            "",
            f"Quality gate: {gate}",
            "",
            f"Source `{facts.get('source')}` ({facts.get('dataset_layout')}, sha256 `{str(facts.get('source_sha256'))[:12]}`"
            f"{f', ratings up to {as_of:%Y-%m-%d}' if as_of else ''}): "
            f"{facts.get('n_ratings')} ratings, {facts.get('n_users')} users, {facts.get('n_items')} items; "
            f"{facts.get('n_train')} train / {facts.get('n_test')} test ({facts.get('protocol')}).",
            "",
            tuned_line(facts),
            "",
            f"## Metrics of `{model}` on the test split",
            "",
            metrics_markdown(metrics),
            "",
            f"## Every model on the test split (k = {cast(int, comparison['k'].max())})",
            "",
            comparison_markdown(comparison, model),
            "",
            "## Seconds per stage",
            "",
            "| stage | seconds |",
            "|---|---|",
            *(f"| {name} | {seconds:.2f} |" for name, seconds in stages.items()),
            "",
            f"Trained on `{facts.get('device')}` at {facts.get('train_ratings_per_second', 0):,.0f} ratings/s.",
        ]
    )


def published_history(split_fit: TrainedModel, refit_histories: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The published model's loss history: its split fit's epochs, then its refit's when it was refitted."""
    refit = refit_histories.get(split_fit.name)
    return pl.concat([split_fit.history, *([refit] if refit is not None else [])])


def write_report(
    run_id: str,
    status: str,
    gate: str,
    model: str,
    facts: dict,
    history: pl.DataFrame,
    run_dir: Path,
    warehouse_path: Path,
    trend_runs: int,
    comparison: pl.DataFrame,
) -> tuple[str, pl.DataFrame, Path, Path]:
    """Compute the run's deltas and draw its charts into `run_dir`.

    Returns:
        (markdown summary, this run's metrics with deltas, loss-curve PNG, trend PNG).
    """
    with warehouse.open_reader(warehouse_path) as con:
        _, runs = run_series(con, trend_runs, run_id)
    metrics = runs.filter(pl.col("run_id") == run_id).select("metric", "k", "value", "delta_previous", "delta_median")
    loss_png = plot_loss(history, RunFolder(run_dir).loss_chart)
    trend_png = plot_trend(runs, RunFolder(run_dir).trend_chart)
    markdown = summary_markdown(run_id, status, gate, model, metrics, facts, comparison)
    return markdown, metrics, loss_png, trend_png


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    run_id: str,
    status: str,
    gate: str,
    model: str,
    facts: dict,
    history: pl.DataFrame,
    run_dir: Path,
    warehouse_path: Path,
    trend_runs: int,
    comparison: pl.DataFrame,
) -> str:
    """Leave the run's artifacts in Prefect: the markdown summary, the metrics table and links to the PNGs."""
    markdown, metrics, loss_png, trend_png = write_report(
        run_id, status, gate, model, facts, history, run_dir, warehouse_path, trend_runs, comparison
    )
    create_markdown_artifact(markdown, key="nightly-run-summary", description=f"Nightly run {run_id}: {status}")
    create_table_artifact(
        metrics.to_dicts(), key="nightly-run-metrics", description=f"Metrics of run {run_id} with deltas"
    )
    create_link_artifact(loss_png.resolve().as_uri(), link_text=f"loss curve of {run_id}", key="nightly-loss-curve")
    create_link_artifact(
        trend_png.resolve().as_uri(), link_text=f"metric trend up to {run_id}", key="nightly-metric-trend"
    )
    return markdown
