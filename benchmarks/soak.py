"""A year of nights on one warehouse: its size and the publish write's seconds, with and without retention.

    python benchmarks/soak.py [--nights 365] [--keep-runs 30,0] [--every 30] [--json OUT]

Each night makes the writes a default nightly run makes, through the same functions (warehouse/runs.py):
`start_run`, one `record_model` per model (`ials` with its loss per epoch and `similar_items` for every
item, `dot_bias` with its loss and `item_biases`), and `publish` (each user's top 10 with stars, the
catalogue, the refits' losses) with the run's `keep_runs`. Tables are shaped as a run on ML-1M's size makes
them (6,040 users, 3,700 items: 37,000 similar-item rows a night); training is left out, so that a year
takes minutes. Every `--every` nights it prints the night, the warehouse's size and the seconds of that
night's publish write (which copies the whole file, like every write).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warehouse.runs import ModelRecord, publish, record_model, start_run

EPOCHS = 16


def _tables(users: int, items: int, night: int) -> dict[str, pl.DataFrame]:
    """One night's frames, shaped as a default run's on `users` x `items` (values differ night to night)."""
    rng = np.random.default_rng(night)
    item_ids = np.arange(1, items + 1)
    metrics = pl.DataFrame(
        {"metric": ["ndcg", "precision", "coverage"], "k": [10] * 3, "value": rng.random(3)},
        schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64},
    )
    history = pl.DataFrame({"epoch": range(1, EPOCHS + 1), "split": ["train"] * EPOCHS, "loss": rng.random(EPOCHS)})
    similar = pl.DataFrame(
        {
            "item_id": np.repeat(item_ids, 10),
            "rank": np.tile(np.arange(1, 11), items),
            "similar_item_id": rng.integers(1, items + 1, items * 10),
            "score": rng.random(items * 10).astype(np.float32),
        }
    )
    biases = pl.DataFrame(
        {
            "item_id": item_ids,
            "bias": rng.normal(size=items),
            "mean_rating": rng.uniform(1, 5, items),
            "n_ratings": rng.integers(1, 500, items),
        }
    )
    lists = pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, users + 1), 10),
            "item_id": rng.integers(1, items + 1, users * 10),
            "rank": np.tile(np.arange(1, 11), users),
            "score": rng.random(users * 10).astype(np.float32),
            "predicted_rating": rng.uniform(1, 5, users * 10).astype(np.float32),
        }
    )
    catalogue = pl.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"Movie {i} (1995)" for i in item_ids],
            "genres": [["Drama"]] * items,
            "year": [1995] * items,
        },
        schema={"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String), "year": pl.Int32},
    )
    return {
        "metrics": metrics,
        "history": history,
        "similar": similar,
        "biases": biases,
        "lists": lists,
        "catalogue": catalogue,
    }


def soak(path: Path, nights: int, keep_runs: int, users: int, items: int, every: int) -> list[dict]:
    """Run `nights` nights into `path`; one row every `every` nights (and the last)."""
    rows, first = [], datetime(2026, 1, 1, 3, tzinfo=UTC)
    for night in range(1, nights + 1):
        t = _tables(users, items, night)
        run_id = f"night-{night:04d}"
        started = time.perf_counter()
        start_run(path, run_id, None, json.dumps({"keep_runs": keep_runs}), first + timedelta(days=night))
        record_model(path, run_id, "ials", ModelRecord(t["metrics"], t["history"], None, t["similar"]))
        record_model(path, run_id, "dot_bias", ModelRecord(t["metrics"], t["history"], t["biases"], None))
        publish_started = time.perf_counter()
        refits = {"ials": t["history"], "dot_bias": t["history"]}
        publish(
            path, run_id, t["lists"], t["catalogue"], {"model": "ials", "rating_model": "dot_bias"}, refits, keep_runs
        )
        done = time.perf_counter()
        if night % every == 0 or night == nights:
            row = {
                "keep_runs": keep_runs,
                "night": night,
                "size_mb": path.stat().st_size / 1e6,
                "publish_seconds": done - publish_started,
                "night_write_seconds": done - started,
            }
            rows.append(row)
            print(
                f"keep_runs {keep_runs:>3}  night {night:>4}: {row['size_mb']:8.1f} MB, publish {row['publish_seconds']:.2f} s, "
                f"the night's four writes {row['night_write_seconds']:.2f} s",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument(
        "--keep-runs", default="30,0", help="comma-separated keep_runs values, one soak each (0: keep all)"
    )
    parser.add_argument("--every", type=int, default=30, help="print every this many nights")
    parser.add_argument("--users", type=int, default=6_040)
    parser.add_argument("--items", type=int, default=3_700)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for keep in (int(k) for k in args.keep_runs.split(",")):
        with tempfile.TemporaryDirectory() as scratch:
            rows += soak(Path(scratch) / "soak.duckdb", args.nights, keep, args.users, args.items, args.every)
    print("\n| night | " + " | ".join(f"keep_runs {k}: MB | publish s" for k in args.keep_runs.split(",")) + " |")
    print("|---|" + "---|---|" * len(args.keep_runs.split(",")))
    for night in sorted({r["night"] for r in rows}):
        cells = [f"{r['size_mb']:.1f} | {r['publish_seconds']:.2f}" for r in rows if r["night"] == night]
        print(f"| {night} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
