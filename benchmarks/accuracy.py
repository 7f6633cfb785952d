"""Accuracy benchmark: every registered model on one archive, the Microsoft Recommenders protocol.

    python benchmarks/accuracy.py --dataset ../shared/datasets/ml-100k.zip [--json OUT] [--models ease bpr]

Stratified split (per user, a random 75% of their ratings to train, 25% to test), seed 42, k = 10, the
config's defaults for every hyperparameter (tasks/config.py; found by benchmarks/tune.py on a validation
split of the training data). fit_seconds is measured after a throwaway warm-up fit. Prints, per model: fit seconds, RMSE, MAE (rating models only), precision,
recall, nDCG, MAP and coverage at 10, as defined in tasks/evaluate.py. `--json` writes the same rows as a
list of objects keyed by those names plus `model`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import fit_and_score, load_indexed, stratified
from tasks.config import MODEL_NAMES, PipelineConfig

COLUMNS = ("fit_seconds", "rmse", "mae", "precision", "recall", "ndcg", "map", "coverage")


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (blank where a ranking model has no rating error)."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        cells = [
            "" if row[c] is None else (f"{row[c]:.2f}" if c == "fit_seconds" else f"{row[c]:.4f}") for c in COLUMNS
        ]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a MovieLens archive (.zip)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, help="default: all")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    args = parser.parse_args(argv)

    ratings, maps = load_indexed(args.dataset)
    train, test = stratified(ratings, seed=42)
    config = PipelineConfig(device=args.device, k=10, seed=42)
    print(
        f"{args.dataset.name}: {ratings.height} ratings, {maps.n_users} users, {maps.n_items} items; "
        f"stratified 75/25 seed 42 ({train.height} train / {test.height} test), k = 10; commit {_commit()}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    # torch's first training step in a process pays one-off set-up (thread pool, kernels, allocator): about
    # 1.5 s here. A throwaway fit on 1,000 ratings pays it, so each model's fit_seconds is its own work.
    fit_and_score(
        "dot_bias", train.head(1000), test.head(1000), maps, config.with_overrides({"dot_bias": {"epochs": 1}})
    )
    rows = []
    for name in args.models:
        rows.append(fit_and_score(name, train, test, maps, config))
        row = rows[-1]
        print(
            f"  {name}: fit {row['fit_seconds']:.2f}s, nDCG@10 {row['ndcg']:.4f}"
            + (f", RMSE {row['rmse']:.4f}" if row["rmse"] is not None else ""),
            flush=True,
        )
    print()
    print(markdown_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
