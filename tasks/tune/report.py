"""A tune's report: its summary (what `recs tune` prints and the markdown artifact), the trials table artifact and a
PNG of the best validation score over trials (a link artifact)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.tune.search import ModelSearch


def best_so_far(search: ModelSearch) -> pl.DataFrame:
    """`trial`, `best`: the best validation value among the complete trials up to each trial."""
    complete = search.trials.filter(pl.col("state") == "complete").sort("trial")
    best = pl.col("value").cum_max() if search.objective.direction == "maximize" else pl.col("value").cum_min()
    return complete.select("trial", best.alias("best"))


def plot_searches(searches: list[ModelSearch], path: Path) -> Path:
    """One panel per model: each complete trial's validation value and the best so far."""
    from matplotlib.figure import Figure  # imported when drawn: the CLI starts faster

    figure = Figure(figsize=(8, 3 * max(len(searches), 1)), layout="constrained")
    axes = figure.subplots(max(len(searches), 1), 1, squeeze=False)[:, 0]
    for axis, search in zip(axes, searches, strict=False):
        complete = search.trials.filter(pl.col("state") == "complete").sort("trial")
        axis.scatter(complete["trial"].to_list(), complete["value"].to_list(), s=12, alpha=0.5, label="trial")
        curve = best_so_far(search)
        axis.step(curve["trial"].to_list(), curve["best"].to_list(), where="post", label="best so far")
        axis.set_title(f"{search.model}: validation {search.objective.metric}@k")
        axis.set_xlabel("trial")
        axis.grid(alpha=0.3)
        axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def summary_lines(searches: list[ModelSearch]) -> list[str]:
    """Per model: trials, pruned, the defaults' and the chosen validation value, the chosen settings."""
    lines = []
    for s in searches:
        counts = s.trials["state"].value_counts()
        n = dict(zip(counts["state"], counts["count"], strict=True))
        finished = n.get("complete", 0) + n.get("pruned", 0)
        failed = f", {n['fail']} failed or interrupted" if n.get("fail") else ""
        said = f"{s.model}: {finished} trials ({n.get('pruned', 0)} pruned{failed}, stopped by the {s.stopped_by})"
        if s.best_value is None:
            lines.append(f"{said}; no trial completed, nothing chosen")
            continue
        first = f"{s.first_value:.4f}" if s.first_value is not None else "n/a"
        metric = "RMSE" if s.objective.metric == "rmse" else f"{s.objective.metric}@k"
        if s.chosen_trial == 0 and s.gain_z is not None:
            lines.append(
                f"{said}; validation {metric} {first} with the settings given, {s.best_value:.4f} at best with "
                f"{json.dumps(s.best, sort_keys=True)}, not confirmed on another split ({s.gain_z:.2f} standard "
                "errors): the settings given are kept"
            )
            continue
        lines.append(
            f"{said}; validation {metric} {first} with the settings given -> {s.best_value:.4f} with "
            f"{json.dumps(s.chosen, sort_keys=True)}"
        )
    return lines


@task(name="tuning-report", cache_policy=NO_CACHE)
def tuning_report_task(tuning_run_id: str, searches: list[ModelSearch], folder: Path, header: str) -> str:
    """Leave the tune's artifacts in Prefect; returns the summary's text."""
    text = "\n".join([header, *summary_lines(searches)])
    markdown = f"# Tune {tuning_run_id}\n\n" + "\n".join(f"- {line}" for line in text.splitlines())
    create_markdown_artifact(markdown, key="tune-summary", description=f"Tune {tuning_run_id}")
    trials = pl.concat([s.trials for s in searches]) if searches else pl.DataFrame()
    if trials.height:
        create_table_artifact(trials.to_dicts(), key="tune-trials", description=f"Trials of tune {tuning_run_id}")
        png = plot_searches(searches, folder / "best-validation.png")
        create_link_artifact(
            png.resolve().as_uri(),
            link_text=f"best validation over trials, {tuning_run_id}",
            key="tune-best-validation",
        )
    return text
