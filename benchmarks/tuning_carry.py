"""How `ials`'s best penalty moves with the data fitted, on validation splits only: why `recs tune` carries the
regularization it chose over the ratio of interactions (tasks/models/__init__.py, `Range.carry`).

    python benchmarks/tuning_carry.py [--datasets ../shared/datasets] [--only NAME ...]

For ML-100k and each real dataset: the tune's data as `recs tune` carves it from the training split (stratified
75/25, seed 42; the user sample, its fit part and its validation part), and the fit part split once more per user
to keep 75% of it. `ials` (the defaults, regularization on a grid of steps of sqrt 2) is fitted on both and scored
on the same validation part. Were the count-scaled penalty to carry as it is, both would peak at one value; if a
row's penalty is what carries, the larger fit peaks at 0.75 times the smaller's. The test split is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.datasets import selected
from benchmarks.protocol import stratified
from benchmarks.tuning import _load
from tasks.ingest.own_data import ReadSettings
from tasks.split import split_ratings
from tasks.train import fit
from tasks.tune.data import tuning_data
from tasks.tune.trial import validation_metrics

PENALTIES = [0.005 * 2 ** (k / 2) for k in range(9)]  # 0.005 to 0.08
SMALLER = 0.75  # the share of the fit part kept for the smaller fit


def dataset_rows(name: str, path: Path, settings: ReadSettings) -> None:
    ratings, maps, config = _load(path, settings)
    train, _ = stratified(ratings, seed=42)
    data = tuning_data(train, maps.n_items, config)
    smaller, _ = split_ratings(data.fit, config.split, 1 - SMALLER, config.seed + 3)
    print(f"{name}: fit part {data.fit.height:,} interactions, smaller fit {smaller.height:,}", flush=True)
    best = {}
    for penalty in PENALTIES:
        point = config.with_overrides({"ials": {"regularization": penalty}})
        scores = []
        for label, part in (("smaller", smaller), ("fit", data.fit)):
            trained = fit(part, data.n_users, data.n_items, point, name="ials")
            scores.append(validation_metrics(trained, dataclasses.replace(data, fit=part), point)["ndcg"])
            if scores[-1] > best.get(label, (0.0, 0.0))[1]:
                best[label] = (penalty, scores[-1])
        print(f"  regularization {penalty:.4f}: validation nDCG@10 {scores[0]:.4f} smaller fit, {scores[1]:.4f} fit")
    ratio = best["fit"][0] / best["smaller"][0]
    print(
        f"  best: {best['smaller'][0]:.4f} smaller fit, {best['fit'][0]:.4f} fit: ratio {ratio:.2f} ({SMALLER} carried)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    parser.add_argument("--datasets", type=Path, default=default, help=f"folder of the datasets (default: {default})")
    parser.add_argument("--only", nargs="+", help="dataset names to run (a prefix of each name)")
    args = parser.parse_args(argv)
    for name, path, settings in selected(args.only):
        dataset_rows(name, args.datasets / path, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
