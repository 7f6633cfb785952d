"""Hyperparameter search: a grid per model, scored on a validation split carved from the training data.

    python benchmarks/tune.py --dataset ../shared/datasets/ml-100k.zip [--models ease bpr] [--json OUT]

The archive is split as the accuracy benchmark splits it (stratified 75/25, seed 42); only its training
part is used here, split again per user 75/25 with seed 43 into fit and validation. The test split is never
read. Rating models (they predict ratings) are chosen by validation RMSE, ranking models by nDCG@10; of the
points within 0.001 of the best, the first (cheapest) in grid order is chosen. The winners are the defaults
of the parameter groups in tasks/models/; benchmarks/README.md has the last search's results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import fit_and_score, load_indexed, stratified
from tasks.config import PipelineConfig
from tasks.models import MODELS

# Per model: the config fields searched (dotted for a model's own group) and the values tried.
GRIDS: dict[str, dict[str, list]] = {
    # per-rating SGD (tasks/models/sgd.py); CHANGELOG.md tells of the Adam grid searched before it
    "dot_bias": {
        "dot_bias.factors": [32, 64],
        "dot_bias.epochs": [10, 20],
        "dot_bias.regularization": [0.05, 0.1, 0.15],
        "dot_bias.learning_rate": [0.02, 0.05, 0.1],
    },
    "dot": {"dot.factors": [32, 64], "dot.epochs": [10, 20], "dot.regularization": [0.02, 0.05, 0.1, 0.2]},
    "mlp": {"mlp.epochs": [3, 5], "mlp.learning_rate": [0.001, 0.003, 0.01], "mlp.weight_decay": [0.01, 0.1, 0.3]},
    "user_knn": {"user_knn.neighbours": [50, 100, 200, 400, 900], "user_knn.shrinkage": [0.0, 25.0, 100.0]},
    "item_knn": {"item_knn.neighbours": [40, 80, 160, 320, 640], "item_knn.shrinkage": [0.0, 25.0, 100.0]},
    "bpr": {"bpr.epochs": [15, 30], "bpr.learning_rate": [0.001, 0.003], "bpr.regularization": [1e-4, 1e-3, 1e-2]},
    "ials": {
        "ials.epochs": [8, 16],
        "ials.regularization": [0.01, 0.02, 0.03, 0.05],
        "ials.unobserved_weight": [0.05, 0.1, 0.2, 0.3],
        "ials.confidence": [0.0, 0.5],
    },
    "ease": {
        "ease.l2": [50.0, 100.0, 200.0, 300.0, 500.0, 800.0],
        "ease.dropout": [0.0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8],
    },
    "bias": {"bias.item_damping": [0.0, 5.0, 10.0, 25.0], "bias.user_damping": [0.0, 5.0, 10.0, 25.0]},
    "popularity": {},
}


TIE = 0.001  # validation differences smaller than this are treated as ties


def with_values(base: PipelineConfig, values: dict) -> PipelineConfig:
    """`base` with dotted fields ("mlp.epochs") or top-level fields ("seed") set."""
    data = base.model_dump()
    for key, value in values.items():
        group, _, field = key.rpartition(".")
        (data[group] if group else data)[field] = value
    return PipelineConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a MovieLens archive (.zip)")
    parser.add_argument("--models", nargs="+", default=list(GRIDS), choices=list(MODELS), help="models to tune")
    parser.add_argument("--json", type=Path, help="write every grid point's scores here")
    args = parser.parse_args(argv)

    ratings, maps = load_indexed(args.dataset)
    train, _ = stratified(ratings, seed=42)  # the test split stays unread
    fit_part, validation = stratified(train, seed=43)
    base = PipelineConfig(device="cpu")
    rows = []
    for name in args.models:
        grid = GRIDS[name]
        by_rmse = MODELS[name].module.predicts_ratings
        tried = []
        for point in itertools.product(*grid.values()):
            values = dict(zip(grid, point, strict=False))
            scores = fit_and_score(name, fit_part, validation, maps, with_values(base, values))
            rows.append({**scores, "values": values})
            tried.append((scores["rmse"] if by_rmse else -scores["ndcg"], values))
            print(
                f"{name:10s} {json.dumps(values):80s} rmse {scores['rmse'] or float('nan'):.4f} "
                f"ndcg {scores['ndcg']:.4f} ({scores['fit_seconds']:.1f}s)",
                flush=True,
            )
        if tried:
            # Grids list cheaper values first: take the first point within TIE of the best (fewer neighbours,
            # factors or epochs for a difference the validation split cannot resolve).
            best = min(objective for objective, _ in tried)
            chosen = next(values for objective, values in tried if objective <= best + TIE)
            print(
                f"==> {name}: by {'validation RMSE' if by_rmse else 'validation nDCG@10'}: {chosen} "
                f"({abs(best):.4f} best, within {TIE})",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
