"""The stars at scale: what the refit of the rating model (`dot_bias`, the stars beside each listed item) costs, and
what each cheaper way to make it loses, side by side.

    python benchmarks/stars.py [--sizes ml-100k,anime,1m,20m] [--json OUT] [--work DIR]

A night fits `dot_bias` twice: on the training split (evaluated) and again on every rating (the refit, whose stars are
published), 20 epochs from scratch each time. The refit cannot be scored on the night's own test ratings (it trained
on them), so this benchmark moves the night one level down: a dataset's stratified 75/25 split (seed 7, not the
accuracy benchmarks' seed 42: this chooses a setting, so it never reads their test split) gives a *night* (the 75%)
and a validation set no fit sees; the night is split again as the nightly splits its data (stratified 75/25, seed 8)
into the split fit's ratings and the rest. Each way of making the refit starts from there, fits on the whole night
and is scored by RMSE on the validation set:

- `cold 20`: today's refit, from scratch, the model's `epochs` (20).
- `warm k` (k = 2, 5, 10): from the split fit's vectors and biases, k epochs (the learning rate's cosine starts again).
- `warm 5, half the users`: from the split fit, 5 epochs on the ratings of a random half of the users (the others keep
  the split fit's vectors; every item still moves).
- `split fit`: no refit: the split fit's stars (0 s).

RMSE lost per second saved is against `cold 20`. The sizes: ml-100k (real), anime (real, ratings 1-10), 1m and 20m
(`recs synth`, benchmarks/scale.py's archives, made once in --work). lastfm-2k and amazon hold no ratings (implicit
feedback: no rating model trains, there are no stars). One process, one CPU fit at a time; seconds are fit seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import _archive  # noqa: E402
from tasks.config import PipelineConfig  # noqa: E402
from tasks.ingest import fetch_archive, load_dataset  # noqa: E402
from tasks.ingest.own_data import ReadSettings  # noqa: E402
from tasks.reindex import reindex  # noqa: E402
from tasks.split import split_ratings  # noqa: E402
from tasks.train import TrainedModel, fit  # noqa: E402
from tasks.warm import split_fit_start  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
REAL = {
    "ml-100k": (DATASETS / "ml-100k.zip", ReadSettings({})),
    "anime": (DATASETS / "real" / "anime.zip", ReadSettings({}, member="anime_ratings.dat")),
}


def _ratings(size: str, work: Path) -> pl.DataFrame:
    """The size's ratings, reindexed (`user_idx`, `item_idx`, `rating`, `timestamp`)."""
    path, settings = REAL[size] if size in REAL else (_archive(size, DATASETS / "ml-100k.zip", work)[0], None)
    parsed = load_dataset(fetch_archive(str(path), work), work, settings=settings)
    return reindex(parsed.ratings())[0]


def _rmse(model: TrainedModel, test: pl.DataFrame) -> float:
    users, items = (torch.from_numpy(test[c].to_numpy().astype(np.int64)) for c in ("user_idx", "item_idx"))
    errors = model.predict(users, items).double().numpy() - test["rating"].to_numpy().astype(np.float64)
    return math.sqrt(float(np.mean(errors**2)))


def _fit(night: pl.DataFrame, n_users: int, n_items: int, config: PipelineConfig, init: dict | None) -> TrainedModel:
    return fit(night, n_users, n_items, config, name="dot_bias", history_label="refit", init=init)


def _from_split_fit(
    night: pl.DataFrame, n_users: int, n_items: int, config: PipelineConfig, split_fit: TrainedModel, epochs: int
) -> TrainedModel:
    """The refit as the nightly makes it from its split fit (`tasks.warm.split_fit_start`), for `epochs` passes."""
    start = split_fit_start(
        config.with_overrides({"dot_bias": {"refit_epochs": epochs}}), "dot_bias", "refit", split_fit
    )
    assert start is not None
    rows, refit_config = start
    return _fit(night, n_users, n_items, refit_config, rows)


def measure(size: str, work: Path) -> list[dict]:
    """Every way of making the refit on one size (see the module docstring)."""
    ratings = _ratings(size, work)
    n_users, n_items = ratings["user_idx"].max() + 1, ratings["item_idx"].max() + 1
    night, validation = split_ratings(ratings, "stratified", 0.25, 7)
    split_part, _ = split_ratings(night, "stratified", 0.25, 8)
    config = PipelineConfig()
    split_fit = fit(split_part, n_users, n_items, config, name="dot_bias")
    rows = [{"way": "split fit (no refit)", "seconds": 0.0, "rmse": _rmse(split_fit, validation)}]
    cold = _fit(night, n_users, n_items, config, None)
    rows.insert(0, {"way": "cold 20", "seconds": cold.seconds, "rmse": _rmse(cold, validation)})
    for epochs in (2, 5, 10):
        model = _from_split_fit(night, n_users, n_items, config, split_fit, epochs)
        rows.append({"way": f"warm {epochs}", "seconds": model.seconds, "rmse": _rmse(model, validation)})
    users = night.select(pl.col("user_idx").unique().sample(fraction=0.5, seed=44))["user_idx"]
    half = night.filter(pl.col("user_idx").is_in(users.implode()))
    model = _from_split_fit(half, n_users, n_items, config, split_fit, 5)
    rows.append({"way": "warm 5, half the users", "seconds": model.seconds, "rmse": _rmse(model, validation)})
    base = rows[0]
    for row in rows:
        saved = base["seconds"] - row["seconds"]
        row |= {
            "dataset": size,
            "n_ratings": night.height,
            "rmse_lost": row["rmse"] - base["rmse"],
            "seconds_saved": saved,
        }
        row["rmse_lost_per_100s_saved"] = 100 * row["rmse_lost"] / saved if saved > 0 else None
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| dataset | refit ratings | way | fit s | validation RMSE | RMSE lost | s saved | RMSE lost per 100 s saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = "-" if r["rmse_lost_per_100s_saved"] is None else f"{r['rmse_lost_per_100s_saved']:+.4f}"
        lines.append(
            f"| {r['dataset']} | {r['n_ratings']:,} | {r['way']} | {r['seconds']:.1f} | {r['rmse']:.4f} | "
            f"{r['rmse_lost']:+.4f} | {r['seconds_saved']:.1f} | {per} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml-100k,anime,1m,20m")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recs-scale"), help="archives and parses")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [row for size in args.sizes.split(",") for row in measure(size, args.work)]
    print(markdown(rows))
    if args.json:
        machine = {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
