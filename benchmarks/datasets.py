"""The default run's models and `popularity` on ML-100k and each real dataset of ../shared/datasets/real.

    python benchmarks/datasets.py [--datasets ../shared/datasets] [--json OUT]
    python benchmarks/datasets.py --confidence 0,0.25,0.5,1

Each dataset is read as `recs run` reads it (the read settings below, the same as docs/data.md's commands), split
stratified 75/25 with seed 42, and scored at k = 10 over the items each user has not interacted with. The models
are the ones a default run trains on that data (`PipelineConfig.for_data`: `dot_bias` and `ials` on ratings,
`ials` alone on implicit feedback) plus `popularity`, the baseline a list must beat; `published` marks the one a
default run publishes (the best of its models by nDCG@10). Prints fit seconds, nDCG@10, coverage@10 and RMSE
(in the data's own rating units) where the feedback is explicit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import fit_and_score, stratified
from tasks.config import PipelineConfig
from tasks.ingest import fetch_archive, load_dataset
from tasks.ingest.own_data import ReadSettings
from tasks.reindex import reindex
from tasks.split import split_ratings

# name, path under the datasets folder, read settings (as docs/data.md's commands give them)
DATASETS = (
    ("ml-100k", "ml-100k.zip", ReadSettings({})),
    ("anime (ratings 1-10)", "real/anime.zip", ReadSettings({}, member="anime_ratings.dat")),
    ("lastfm-2k (play counts)", "real/lastfm-2k.zip", ReadSettings({})),
    ("amazon-video-games (pairs)", "real/amazon-video-games.txt", ReadSettings({})),
)
COLUMNS = ("fit_seconds", "ndcg", "coverage", "rmse")


def selected(only: list[str] | None) -> list[tuple[str, str, ReadSettings]]:
    """The datasets whose names start with one of `only` (a benchmark's `--only`), or all of them."""
    return [d for d in DATASETS if not only or any(d[0].startswith(prefix) for prefix in only)]


def _rows(name: str, path: Path, settings: ReadSettings) -> list[dict]:
    with tempfile.TemporaryDirectory() as scratch:
        dataset = load_dataset(fetch_archive(str(path.resolve()), Path(scratch)), Path(scratch), settings=settings)
        ratings, maps = reindex(dataset.ratings())
    train, test = stratified(ratings, seed=42)
    config = PipelineConfig(k=10, seed=42).for_data(dataset.feedback, dataset.has_timestamps)
    print(
        f"{name}: {ratings.height:,} {dataset.feedback} interactions, {maps.n_users:,} users, {maps.n_items:,} items; "
        f"default models {', '.join(config.models)}",
        flush=True,
    )
    rows = [fit_and_score(model, train, test, maps, config) for model in [*config.models, "popularity"]]
    best = max((row for row in rows if row["model"] in config.models), key=lambda row: row["ndcg"])
    for row in rows:
        row |= {"dataset": name, "feedback": dataset.feedback, "published": row is best}
        print(f"  {row['model']}: nDCG@10 {row['ndcg']:.4f}, fit {row['fit_seconds']:.2f}s", flush=True)
    return rows


def confidence_rows(name: str, path: Path, settings: ReadSettings, values: list[float]) -> list[dict]:
    """On implicit feedback, `ials`'s validation nDCG@10 at each confidence (the weight of log(1 + weight)): the
    training split split again per user 75/25 with seed 43, as benchmarks/tune.py does; the test split unread."""
    with tempfile.TemporaryDirectory() as scratch:
        dataset = load_dataset(fetch_archive(str(path.resolve()), Path(scratch)), Path(scratch), settings=settings)
        ratings, maps = reindex(dataset.ratings())
    if dataset.feedback != "implicit":
        return []
    fit_part, validation = split_ratings(stratified(ratings, seed=42)[0], "stratified", 0.25, 43)
    rows = []
    for value in values:
        config = PipelineConfig(k=10, seed=42).with_overrides({"ials": {"confidence": value}})
        row = fit_and_score("ials", fit_part, validation, maps, config)
        rows.append({"dataset": name, "confidence": value, "validation_ndcg": row["ndcg"]})
        print(f"  {name}: ials.confidence {value:g}: validation nDCG@10 {row['ndcg']:.4f}", flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| dataset | model | fit_seconds | ndcg@10 | coverage@10 | rmse |", "|---|---|---|---|---|---|"]
    for row in rows:
        rmse = f"{row['rmse']:.4f}" if row["rmse"] is not None else ""
        model = f"**{row['model']}** (published)" if row["published"] else row["model"]
        lines.append(
            f"| {row['dataset']} | {model} | {row['fit_seconds']:.2f} | {row['ndcg']:.4f} | {row['coverage']:.4f} "
            f"| {rmse} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    parser.add_argument("--datasets", type=Path, default=default, help=f"folder of the datasets (default: {default})")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--confidence",
        type=lambda text: [float(value) for value in text.split(",")],
        help="instead: ials's validation nDCG@10 at these confidences (e.g. 0,0.25,0.5,1) on the implicit datasets",
    )
    args = parser.parse_args(argv)
    if args.confidence:
        for name, path, settings in DATASETS:
            confidence_rows(name, args.datasets / path, settings, args.confidence)
        return 0
    rows = [row for name, path, settings in DATASETS for row in _rows(name, args.datasets / path, settings)]
    print()
    print(markdown_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=str))
        print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
