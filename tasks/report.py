"""The run's summary: a markdown artifact in Prefect and the text `recs run` prints."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE


def metrics_markdown(metrics: pl.DataFrame) -> str:
    """A markdown table of long-form metrics (`metric`, `k`, `value`)."""
    lines = ["| metric | k | value |", "|---|---|---|"]
    for row in metrics.iter_rows(named=True):
        lines.append(f"| {row['metric']} | {'' if row['k'] is None else row['k']} | {row['value']:.4f} |")
    return "\n".join(lines)


def summary_markdown(run_id: str, model: str, metrics: pl.DataFrame, facts: dict) -> str:
    """Markdown summary of a finished run: dataset, metrics and stage timings."""
    stages = facts.get("stage_seconds", {})
    return "\n".join(
        [
            f"# Nightly run `{run_id}`",
            "",
            f"Source `{facts.get('source')}` ({facts.get('dataset_layout')}, sha256 `{str(facts.get('source_sha256'))[:12]}`): "
            f"{facts.get('n_ratings')} ratings, {facts.get('n_users')} users, {facts.get('n_items')} items; "
            f"{facts.get('n_train')} train / {facts.get('n_test')} test.",
            "",
            f"## Metrics of `{model}` on the test split",
            "",
            metrics_markdown(metrics),
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


@task(name="report", cache_policy=NO_CACHE)
def report_task(run_id: str, model: str, metrics: pl.DataFrame, facts: dict) -> str:
    """Publish the summary as the flow run's markdown artifact and return it."""
    markdown = summary_markdown(run_id, model, metrics, facts)
    create_markdown_artifact(markdown, key="nightly-run-summary", description=f"Nightly run {run_id}")
    return markdown
