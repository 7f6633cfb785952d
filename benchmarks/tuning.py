"""What `recs tune` buys on each dataset: the default run's published nDCG@10, the same after a tune with the default
budget, and an upper bound no tune may use (the best test nDCG@10 over a wide grid, chosen on the test split).

    python benchmarks/tuning.py [--datasets ../shared/datasets] [--json OUT]
    python benchmarks/tuning.py --bounds-from OLD.json --json OUT   # the grid's bounds from an earlier run
    python benchmarks/tuning.py --samples 0.25,0.5,1 --max-trials 30 --models ials   # the user sample's effect

Each dataset is read as `recs run` reads it, split stratified 75/25 with seed 42 (the nightly's split). The tune is
the product's own search (tasks/tune: the training split only, a validation split carved from it, seeded TPE,
pruning, the default budget and trial cap); its chosen settings, carried to the full data, are then fitted on the
training split and scored on the test split as a nightly run would. `published` is what the nightly publishes:
the best of its models by test nDCG@10. The overfitting check prints each model's best validation nDCG@10 beside
the test nDCG@10 of the same settings. The grid (GRID below) is scored on the test split: it is an upper bound,
reported and never used to choose (the defaults and the tuned settings count as points of it). ease is left out
of the grid above its default memory bound, as a run leaves it out. The grid depends on neither the tune nor its
budget: `--bounds-from` takes its bounds from an earlier run's JSON rather than scoring its 68 points again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from benchmarks.datasets import selected
from benchmarks.protocol import fit_and_score, stratified
from tasks.config import PipelineConfig
from tasks.ingest import fetch_archive, load_dataset
from tasks.ingest.own_data import ReadSettings
from tasks.reindex import IdMaps, reindex
from tasks.tune.data import tuning_data
from tasks.tune.search import journal, search

GRID: dict[str, dict[str, list]] = {
    "ials": {
        "factors": [64, 128, 256],
        "regularization": [0.003, 0.01, 0.03, 0.1],
        "unobserved_weight_ratio": [0.1, 0.3, 1.0, 3.0, 10.0],
    },
    # each point inverts an items x items matrix: 90 s at lastfm-2k's 17,632 items on two cores
    "ease": {"l2": [30.0, 100.0, 300.0, 1000.0], "dropout": [0.33, 0.67]},
}


def _load(path: Path, settings: ReadSettings) -> tuple[pl.DataFrame, IdMaps, PipelineConfig]:
    with tempfile.TemporaryDirectory() as scratch:
        dataset = load_dataset(fetch_archive(str(path.resolve()), Path(scratch)), Path(scratch), settings=settings)
        ratings, maps = reindex(dataset.ratings())
    config = PipelineConfig(k=10, seed=42).for_data(dataset.feedback, dataset.has_timestamps, maps.n_items)
    return ratings, maps, config


def _published(train: pl.DataFrame, test: pl.DataFrame, maps: IdMaps, config: PipelineConfig) -> tuple[str, dict]:
    """The nightly's choice: the best of its ranking models by test nDCG@10; every model's scores."""
    scores = {m: fit_and_score(m, train, test, maps, config) for m in config.models}
    rankers = [m for m in config.models if scores[m]["rmse"] is None] or list(config.models)
    best = max(rankers, key=lambda m: scores[m]["ndcg"])
    return best, scores


def _tune(train: pl.DataFrame, maps: IdMaps, config: PipelineConfig) -> tuple[PipelineConfig, list, float]:
    """The product's search on the training split; the config with its chosen settings, the searches, seconds."""
    started = time.perf_counter()
    data = tuning_data(train, maps.n_items, config)
    with tempfile.TemporaryDirectory() as scratch:
        searches = search(data, config, journal(Path(scratch) / "journal"), "benchmark", "0" * 12)
    tuned = config.with_overrides({s.model: s.chosen for s in searches if s.chosen})
    return tuned, searches, time.perf_counter() - started


def _upper_bound(train: pl.DataFrame, test: pl.DataFrame, maps: IdMaps, config: PipelineConfig) -> tuple[float, str]:
    best, where = 0.0, ""
    for model, grid in GRID.items():
        if model not in config.models:  # ease above its memory bound, as a run leaves it out
            continue
        for point in itertools.product(*grid.values()):
            values = dict(zip(grid, point, strict=True))
            ndcg = fit_and_score(model, train, test, maps, config.with_overrides({model: values}))["ndcg"]
            if ndcg > best:
                best, where = ndcg, f"{model} {json.dumps(values)}"
    return best, where


def dataset_row(
    name: str,
    path: Path,
    settings: ReadSettings,
    grid: bool | tuple[float, str],
    sample: float | None,
    max_trials: int | None,
    models: list[str] | None,
) -> dict:
    ratings, maps, config = _load(path, settings)
    train, test = stratified(ratings, seed=42)
    if models:
        config = config.with_overrides({"models": models})
    if max_trials is not None:
        config = config.with_overrides({"tune": {"max_trials": max_trials}})
    if sample is not None:
        users = train["user_idx"].n_unique()
        config = config.with_overrides({"tune": {"sample_users": max(100, round(users * sample))}})
    print(
        f"{name}: {ratings.height:,} interactions, {maps.n_users:,} users, {maps.n_items:,} items; models "
        f"{', '.join(config.models)}; tune sample_users {config.tune.sample_users}",
        flush=True,
    )
    default_model, default_scores = _published(train, test, maps, config)
    tuned_config, searches, tune_seconds = _tune(train, maps, config)
    tuned_model, tuned_scores = _published(train, test, maps, tuned_config)
    row = {
        "dataset": name,
        "sample_users": config.tune.sample_users,
        "default_model": default_model,
        "default_ndcg": default_scores[default_model]["ndcg"],
        "tuned_model": tuned_model,
        "tuned_ndcg": tuned_scores[tuned_model]["ndcg"],
        "tune_seconds": tune_seconds,
        "trials": sum(s.trials.height for s in searches),
        "pruned": sum(s.trials.filter(pl.col("state") == "pruned").height for s in searches),
        "by_model": {
            s.model: {
                "validation": s.best_value,
                "validation_chosen": s.chosen_value,
                "gain_z": s.gain_z,
                "validation_first": s.first_value,
                "test_default": default_scores[s.model]["rmse" if s.objective.metric == "rmse" else "ndcg"],
                "test_tuned": tuned_scores[s.model]["rmse" if s.objective.metric == "rmse" else "ndcg"],
                "chosen": s.chosen,
                "best": s.best,
            }
            for s in searches
        },
    }
    print(
        f"  default: {default_model} {row['default_ndcg']:.4f}; tuned ({tune_seconds:.0f}s, {row['trials']} trials, "
        f"{row['pruned']} pruned): {tuned_model} {row['tuned_ndcg']:.4f}",
        flush=True,
    )
    for model, values in row["by_model"].items():
        print(
            f"    {model}: validation {values['validation_first']:.4f} given, {values['validation']:.4f} best "
            f"(z {values['gain_z'] or 0:.2f}), {values['validation_chosen']:.4f} chosen; test "
            f"{values['test_default']:.4f} -> {values['test_tuned']:.4f}; chosen {json.dumps(values['chosen'])}; best {json.dumps(values['best'])}",
            flush=True,
        )
    if grid:
        # the grid's points, or a previous run's grid (it depends on neither the tune nor its budget)
        bound = grid if isinstance(grid, tuple) else _upper_bound(train, test, maps, config)
        row["upper_bound_grid"], row["upper_bound_grid_at"] = bound
        row["upper_bound"], row["upper_bound_at"] = bound
        for what, ndcg in (("the defaults", row["default_ndcg"]), ("the tuned settings", row["tuned_ndcg"])):
            if ndcg > row["upper_bound"]:  # the grid's points are not the only ones tried
                row["upper_bound"], row["upper_bound_at"] = ndcg, what
        print(
            f"  upper bound (test-chosen grid): {row['upper_bound']:.4f} at {row['upper_bound_at']}; tuned is "
            f"{100 * (row['tuned_ndcg'] / row['upper_bound'] - 1):+.1f}%",
            flush=True,
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    parser.add_argument("--datasets", type=Path, default=default, help=f"folder of the datasets (default: {default})")
    parser.add_argument("--only", nargs="+", help="dataset names to run (a prefix of each name)")
    parser.add_argument("--no-grid", action="store_true", help="skip the test-chosen upper bound")
    parser.add_argument(
        "--bounds-from",
        type=Path,
        help="take each dataset's grid bound from this earlier --json output instead of scoring the grid again",
    )
    parser.add_argument(
        "--samples",
        type=lambda t: [float(v) for v in t.split(",")],
        help="instead: tune on these shares of the users (e.g. 0.25,0.5,1), no grid",
    )
    parser.add_argument("--max-trials", type=int, help="the trial cap per model (default: the product's)")
    parser.add_argument("--models", type=lambda t: t.split(","), help="these models instead of a run's defaults")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.bounds_from and not args.bounds_from.is_file():
        parser.error(f"--bounds-from {args.bounds_from}: no such file (a JSON written by --json)")
    rows = []
    bounds = (
        {
            r["dataset"]: (
                r.get("upper_bound_grid", r["upper_bound"]),
                r.get("upper_bound_grid_at", r["upper_bound_at"]),
            )
            for r in json.loads(args.bounds_from.read_text())
        }
        if args.bounds_from
        else {}
    )
    for name, path, settings in selected(args.only):
        for sample in args.samples or [None]:
            grid = bounds.get(name, True) if not (args.no_grid or args.samples) else False
            rows.append(dataset_row(name, args.datasets / path, settings, grid, sample, args.max_trials, args.models))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=str))
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
