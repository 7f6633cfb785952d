"""`ials` beside implicit's `AlternatingLeastSquares` (CPU), side by side in one run.

    pip install -e '.[peers]'    # implicit and scipy: only this script needs them
    python benchmarks/peers.py --dataset ../shared/datasets/ml-100k.zip \
        [--large /tmp/recs-scale/synthetic-20m.zip [--repeats 3]] [--json OUT]

Both fit the same binary user x item matrix (every rating a positive) with the same factors, iterations,
conjugate-gradient steps and thread count. On `--dataset`: the accuracy protocol's split (stratified 75/25,
seed 42), both fits' seconds and both nDCG@10, scored by this repository's evaluation. implicit runs with its
own defaults for the rest (regularization 0.01, alpha 1.0): its objective weighs and regularizes differently
(no unobserved weight, no count-scaled penalty), so its accuracy is as shipped, not tuned here. On `--large`
(all ratings, no split): fit seconds only, the median of `--repeats` alternating fits of each. Also printed:
the dense float32 matmul rate of this machine and the floating-point work of an `ials` epoch, to show what
bounds the fit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# implicit asks for a single-threaded BLAS (its own threads do the work); set before numpy loads it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import load_indexed, stratified
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate
from tasks.models.base import Interactions
from tasks.models.ials import Ials, fit_ials
from tasks.train import TrainedModel


def _implicit_fit(
    ratings: pl.DataFrame, n_users: int, n_items: int, factors: int, iterations: int, cg_steps: int, threads: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """implicit's CPU ALS on the binary matrix: user factors, item factors, fit seconds."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
    except ImportError as exc:
        raise SystemExit(f"{exc}: install the peers extra first: pip install -e '.[peers]'") from exc
    matrix = csr_matrix(
        (np.ones(ratings.height, dtype=np.float32), (ratings["user_idx"].to_numpy(), ratings["item_idx"].to_numpy())),
        shape=(n_users, n_items),
    )
    model = AlternatingLeastSquares(
        factors=factors,
        iterations=iterations,
        use_cg=True,
        num_threads=threads,
        random_state=42,
        calculate_training_loss=False,
    )
    model.cg_steps = cg_steps  # an attribute, not a constructor argument, in implicit 0.7 (3 by default)
    started = time.perf_counter()
    model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors), time.perf_counter() - started


def _ials_fit(ratings: pl.DataFrame, n_users: int, n_items: int, config: PipelineConfig) -> tuple[Ials, float]:
    started = time.perf_counter()
    module, _ = fit_ials(Interactions(ratings, n_users, n_items), config.ials, torch.device("cpu"), seed=config.seed)
    return module, time.perf_counter() - started


def _ndcg(module: Ials, train: pl.DataFrame, test: pl.DataFrame, n_items: int, config: PipelineConfig) -> float:
    model = TrainedModel("ials", module.eval(), torch.device("cpu"), pl.DataFrame(), 0.0, train.height, (1.0, 5.0))
    metrics = evaluate(model, train, test, n_items, config)
    return float(metrics.filter(pl.col("metric") == "ndcg")["value"][0])


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's dense float32 matrix-product rate, GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def epoch_gflop(n_ratings: int, n_users: int, n_items: int, factors: int, cg_steps: int) -> float:
    """Floating-point work of one `ials` epoch: per half-step, (cg_steps + 1) products A x, each a sampled
    product and a sparse product over the ratings (2 x 2 x ratings x factors) and a rows x factors^2 Gramian
    product (2 x rows x factors^2)."""
    per_product = 4 * n_ratings * factors
    return (cg_steps + 1) * (2 * per_product + 2 * (n_users + n_items) * factors**2) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="an archive to split and score (ML-100k)")
    parser.add_argument("--large", type=Path, help="an archive to time both fits on (the 20M synthetic)")
    parser.add_argument("--repeats", type=int, default=1, help="fits of each on --large; the medians are reported")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    config = PipelineConfig(device="cpu")
    p = config.ials
    threads = torch.get_num_threads()
    rate = matmul_gflops()
    print(
        f"ials {p.factors} factors, {p.epochs} iterations, {p.cg_steps} CG steps, {threads} threads; "
        f"dense float32 matmul here: {rate:.0f} GFLOP/s",
        flush=True,
    )
    rows = []
    ratings, maps = load_indexed(args.dataset)
    train, test = stratified(ratings, seed=42)
    ours, ours_seconds = _ials_fit(train, maps.n_users, maps.n_items, config)
    users, items, theirs_seconds = _implicit_fit(
        train, maps.n_users, maps.n_items, p.factors, p.epochs, p.cg_steps, threads
    )
    theirs = Ials(maps.n_users, maps.n_items, p.factors)
    theirs.user_factors.copy_(torch.from_numpy(users))
    theirs.item_factors.copy_(torch.from_numpy(items))
    rows.append(
        {
            "dataset": args.dataset.name,
            "n_ratings": train.height,
            "n_users": maps.n_users,
            "n_items": maps.n_items,
            "ials_seconds": ours_seconds,
            "implicit_seconds": theirs_seconds,
            "ials_ndcg": _ndcg(ours, train, test, maps.n_items, config),
            "implicit_ndcg": _ndcg(theirs, train, test, maps.n_items, config),
        }
    )
    if args.large:
        ratings, maps = load_indexed(args.large)
        ours_times, theirs_times = [], []
        for _ in range(args.repeats):  # alternating, so that a slow spell of a shared machine hits both
            ours_times.append(_ials_fit(ratings, maps.n_users, maps.n_items, config)[1])
            theirs_times.append(
                _implicit_fit(ratings, maps.n_users, maps.n_items, p.factors, p.epochs, p.cg_steps, threads)[2]
            )
            print(f"{args.large.name}: ials {ours_times[-1]:.2f} s, implicit {theirs_times[-1]:.2f} s", flush=True)
        ours_seconds, theirs_seconds = statistics.median(ours_times), statistics.median(theirs_times)
        rows.append(
            {
                "dataset": args.large.name,
                "n_ratings": ratings.height,
                "n_users": maps.n_users,
                "n_items": maps.n_items,
                "ials_seconds": ours_seconds,
                "implicit_seconds": theirs_seconds,
                "ials_ndcg": None,
                "implicit_ndcg": None,
            }
        )
    print(
        "\n| dataset | ratings | ials s | implicit s | ials / implicit | ials GFLOP/s | ials nDCG@10 | implicit nDCG@10 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        work = epoch_gflop(row["n_ratings"], row["n_users"], row["n_items"], p.factors, p.cg_steps) * p.epochs
        row["ials_gflops"] = work / row["ials_seconds"]
        ndcg = [f"{row[k]:.4f}" if row[k] is not None else "" for k in ("ials_ndcg", "implicit_ndcg")]
        print(
            f"| {row['dataset']} | {row['n_ratings']:,} | {row['ials_seconds']:.2f} | {row['implicit_seconds']:.2f} | "
            f"{row['ials_seconds'] / row['implicit_seconds']:.2f} | {row['ials_gflops']:.1f} | {ndcg[0]} | {ndcg[1]} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": rate, "threads": threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
