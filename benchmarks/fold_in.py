"""Fold-ins: how much of a full night's gain folding a day's users into last night's model recovers, and how fast.

    python benchmarks/fold_in.py --ml100k ../shared/datasets/ml-100k.zip [--sizes ml-100k,20m] [--json OUT]

- **ml-100k** (quality): ML-100k replayed in time order. For each day D on which at least `--min-users` users who
  rated on D rate again within the week after (D+1 to D+7), three lists for those users: **stale**, what a nightly
  on the ratings before D published (their list, or the fallback for a user it did not know: what
  `recommendations_for` serves); **fold-in**, the same warehouse after `recs fold-in` of day D's ratings
  (`fold_in.new_rows`); **nightly**, a full nightly on every rating up to the end of D. Each is scored by nDCG@10
  against the ratings of D+1 to D+7 (every rated item relevant, as the product's evaluation). Recovered: (fold-in
  - stale) / (nightly - stale), of the means over every evaluated user of every D. The default models, settings and
  business rules throughout.
- **anime, lastfm-2k, amazon-video-games** (quality, new users; none of the three has timestamps): a seeded tenth
  of the users with 4 interactions or more is held out of the data; a nightly publishes from the rest (stale: the
  fallback, as for any user the night did not know), the first 75% of each held-out user's interactions (amazon's
  in the file's order, its users' sequences; the others' drawn at random) are folded in, and a nightly on the rest
  plus that 75% is the reference. All three are scored by nDCG@10 on the remaining 25%.
- **20m** (speed): the 20M synthetic archive (`recs synth`, benchmarks/scale.py's), published by a nightly on all
  but the last ratings of `--changed` users; those ratings are then folded in as a file of new rows, by `recs
  fold-in` in its own process: the seconds from the flow's start to the publish (`fold_ins.seconds`), the
  command's wall time and its peak memory, for each number of changed users (memory should follow the users
  changed, not users x items).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import warehouse  # noqa: E402
from benchmarks.datasets import DATASETS  # noqa: E402
from benchmarks.scale import _archive  # noqa: E402
from flows.fold_in import fold_in  # noqa: E402
from flows.nightly import nightly  # noqa: E402
from tasks.config import PipelineConfig  # noqa: E402
from tasks.ingest import fetch_archive, load_dataset  # noqa: E402
from tasks.ingest.own_data import ReadSettings  # noqa: E402

K = 10
# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]: what `recs fold-in` itself held.
MEASURED = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(child.pid, 0); "
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(status))"
)
LISTS = """
SELECT user_id, item_id, rank FROM recommendations
UNION ALL
SELECT u.user_id, f.item_id, f.rank FROM fallback_recommendations AS f, (SELECT unnest($users) AS user_id) AS u
WHERE NOT EXISTS (SELECT 1 FROM recommendations AS r WHERE r.user_id = u.user_id)
"""  # a benchmark's own read: what recommendations_for(user) serves, for many users at once


def _ml100k(archive: Path) -> pl.DataFrame:
    raw = zipfile.ZipFile(archive).read("ml-100k/u.data")
    frame = pl.read_csv(io.BytesIO(raw), separator="\t", has_header=False, new_columns=["user", "item", "r", "t"])
    return frame.rename({"user": "user_id", "item": "item_id", "r": "rating", "t": "timestamp"}).with_columns(
        day=pl.from_epoch("timestamp").dt.date()
    )


def _days(ratings: pl.DataFrame, min_users: int) -> list[tuple[date, pl.DataFrame, pl.DataFrame]]:
    """Each day D with at least `min_users` users who rated on D and again in D+1..D+7: (D, D's ratings, the week's
    ratings of those users)."""
    days = []
    for day in ratings["day"].unique().sort()[1:]:  # the first day has no night before it
        today = ratings.filter(pl.col("day") == day)
        week = ratings.filter(pl.col("day").is_between(day + timedelta(days=1), day + timedelta(days=7)))
        week = week.join(today.select("user_id").unique(), on="user_id", how="semi")
        if week["user_id"].n_unique() >= min_users:
            days.append((day, today, week))
    return days


def _served(path: Path, users: list[int]) -> pl.DataFrame:
    with warehouse.open_reader(path) as con:
        served = pl.from_arrow(con.sql(LISTS, params={"users": users}).to_arrow_table())
    assert isinstance(served, pl.DataFrame)
    return served.filter(pl.col("user_id").is_in(users))


def ndcg_by_user(lists: pl.DataFrame, relevant: pl.DataFrame) -> pl.DataFrame:
    """nDCG@K per user of `relevant` (user_id, item_id) for lists (user_id, item_id, rank); 0 without a list."""
    gains = lists.filter(pl.col("rank") <= K).join(relevant, on=["user_id", "item_id"])
    dcg = gains.group_by("user_id").agg((1 / (pl.col("rank") + 1).log(2)).sum().alias("dcg"))
    ideal = relevant.group_by("user_id").agg(pl.len().clip(upper_bound=K).cast(pl.Int64).alias("n"))
    discounts = pl.DataFrame({"n": np.arange(1, K + 1), "idcg": np.cumsum(1 / np.log2(np.arange(2, K + 2)))})
    ideal = ideal.join(discounts, on="n")
    return ideal.join(dcg, on="user_id", how="left").select(
        "user_id", (pl.col("dcg").fill_null(0) / pl.col("idcg")).alias("ndcg")
    )


def replay_ml100k(archive: Path, work: Path, min_users: int) -> list[dict]:
    ratings = _ml100k(archive)
    columns = ["user_id", "item_id", "rating", "timestamp"]
    rows = []
    for day, today, week in _days(ratings, min_users):
        folder = work / f"{day}"
        folder.mkdir()
        before, through = folder / "before.csv", folder / "through.csv"
        ratings.filter(pl.col("day") < day).select(columns).write_csv(before)
        ratings.filter(pl.col("day") <= day).select(columns).write_csv(through)
        today.select(columns).write_csv(folder / "today.csv")
        data = folder / "data"
        nightly(PipelineConfig(source=str(before), data_dir=data, warehouse=folder / "stale.duckdb"))
        shutil.copy(folder / "stale.duckdb", folder / "fold.duckdb")
        started = time.perf_counter()
        folded = fold_in(
            PipelineConfig(
                source=str(before),
                data_dir=data,
                warehouse=folder / "fold.duckdb",
                fold_in={"new_rows": str(folder / "today.csv")},
            )
        )
        fold_seconds = time.perf_counter() - started
        nightly(PipelineConfig(source=str(through), data_dir=data, warehouse=folder / "full.duckdb"))
        users = week["user_id"].unique().sort().to_list()
        relevant = week.select("user_id", "item_id")
        scores = {
            name: ndcg_by_user(_served(folder / f"{name}.duckdb", users), relevant).rename({"ndcg": name})
            for name in ("stale", "fold", "full")
        }
        per_user = scores["stale"].join(scores["fold"], on="user_id").join(scores["full"], on="user_id")
        new = today.join(ratings.filter(pl.col("day") < day), on="user_id", how="anti")["user_id"].n_unique()
        rows.append(
            {
                "day": str(day),
                "users": len(users),
                "new_that_day": new,
                "stale": per_user["stale"].mean(),
                "fold_in": per_user["fold"].mean(),
                "nightly": per_user["full"].mean(),
                "fold_in_status": folded.status,
                "fold_in_seconds": round(fold_seconds, 2),
                "per_user": per_user.rows(),
            }
        )
        print(
            f"{day}: {len(users)} users ({new} new that day): stale {rows[-1]['stale']:.4f}, fold-in "
            f"{rows[-1]['fold_in']:.4f}, nightly {rows[-1]['nightly']:.4f}",
            flush=True,
        )
        shutil.rmtree(folder)
    return rows


def _pooled(rows: list[dict], resamples: int = 2000) -> dict:
    """The means over every evaluated user of every day, and the share of the nightly's gain the fold-in recovers
    with its 95% interval (a bootstrap over those users)."""
    values = np.array([user[1:] for row in rows for user in row["per_user"]])
    stale, fold, full = values.mean(axis=0)
    draws = np.random.default_rng(0).integers(0, len(values), (resamples, len(values)))
    means = values[draws].mean(axis=1)
    ratios = (means[:, 1] - means[:, 0]) / (means[:, 2] - means[:, 0])
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {
        "days": len(rows),
        "published": sum(row["fold_in_status"] == "published" for row in rows),
        "users": len(values),
        "stale": stale,
        "fold_in": fold,
        "nightly": full,
        "recovered": (fold - stale) / (full - stale),
        "recovered_95": [low, high],
    }


def new_users(name: str, path: Path, settings: ReadSettings, work: Path, share: float = 0.1) -> list[dict]:
    """A seeded tenth of the users (those with 4 interactions or more) held out of a real dataset, then folded in with
    the first 75% of their interactions (in the file's order for amazon's sequences, else drawn at random) and scored
    on the rest: stale (the fallback: the night did not know them), fold-in, and a nightly that knew that 75%."""
    folder = work / name.split()[0]
    folder.mkdir()
    dataset = load_dataset(fetch_archive(str(path.resolve()), folder), folder, settings=settings)
    ratings = dataset.ratings().with_row_index("line")
    eligible = ratings.group_by("user_id").len().filter(pl.col("len") >= 4).sort("user_id")
    held = eligible.sample(fraction=share, seed=0).select("user_id")
    drawn = pl.struct("user_id", "item_id").hash(seed=0)  # a seeded draw per interaction
    order = pl.col("line") if name.startswith("amazon") else drawn
    theirs = ratings.join(held, on="user_id").with_columns(
        position=order.rank("ordinal").over("user_id"), n=pl.len().over("user_id")
    )
    known = pl.col("position") <= (pl.col("n") * 0.75).ceil()
    value = pl.col("rating") if dataset.feedback == "explicit" else (pl.col("rating").exp() - 1).alias("weight")
    columns = ["user_id", "item_id", value]
    base, today = folder / "base.csv", folder / "today.csv"
    ratings.join(held, on="user_id", how="anti").select(columns).write_csv(base)
    theirs.filter(known).select(columns).write_csv(today)
    pl.concat([pl.read_csv(base), pl.read_csv(today)]).write_csv(folder / "full.csv")
    data = folder / "data"
    nightly(PipelineConfig(source=str(base), data_dir=data, warehouse=folder / "stale.duckdb"))
    shutil.copy(folder / "stale.duckdb", folder / "fold.duckdb")
    settings_in = {"new_rows": str(today)}
    folded = fold_in(
        PipelineConfig(source=str(base), data_dir=data, warehouse=folder / "fold.duckdb", fold_in=settings_in)
    )
    nightly(PipelineConfig(source=str(folder / "full.csv"), data_dir=data, warehouse=folder / "full.duckdb"))
    future = theirs.filter(~known).select("user_id", "item_id")
    users = future["user_id"].unique().sort().to_list()
    scores = {
        label: ndcg_by_user(_served(folder / f"{label}.duckdb", users), future).rename({"ndcg": label})
        for label in ("stale", "fold", "full")
    }
    per_user = scores["stale"].join(scores["fold"], on="user_id").join(scores["full"], on="user_id")
    shutil.rmtree(folder)
    return [{"day": name, "users": len(users), "fold_in_status": folded.status, "per_user": per_user.rows()}]


def speed_20m(ml100k: Path, work: Path, changed: list[int]) -> list[dict]:
    """The 20M synthetic archive published without the last 5 ratings of the most changed users, then folded in."""
    archive, _ = _archive("20m", ml100k, work)
    ratings = pl.read_csv(zipfile.ZipFile(archive).read("ml-20m/ratings.csv"))
    ratings = ratings.rename({"userId": "user_id", "movieId": "item_id"})
    last = ratings.sort("timestamp").group_by("user_id", maintain_order=True).tail(5)  # each user's last 5 ratings
    users = ratings.select("user_id").unique().sort("user_id")
    picked = users.sample(max(changed), seed=0)["user_id"]
    held_back = last.filter(pl.col("user_id").is_in(picked.implode()))
    base = work / "base.csv"
    config = ["--source", str(base), "--data-dir", str(work / "data"), "--warehouse", str(work / "W.duckdb")]
    if not (work / "W.duckdb").exists():  # kept from an earlier run of this benchmark in the same --work folder
        ratings.join(held_back, on=["user_id", "item_id"], how="anti").write_csv(base)
        subprocess.run([sys.executable, "-m", "flows.cli", "run", *config], cwd=REPO, check=True)
    del ratings
    published = work / "W.duckdb"
    out = []
    for n in changed:
        new_rows = work / f"new-{n}.csv"
        held_back.filter(pl.col("user_id").is_in(picked.head(n).implode())).write_csv(new_rows)
        shutil.copy(published, work / "F.duckdb")
        command = [sys.executable, "-m", "flows.cli", "fold-in", *config[:4], "--warehouse", str(work / "F.duckdb")]
        started = time.perf_counter()
        peak = work / f"peak-{n}.kib"
        # through a small process: a child forked from this one (which holds 20M ratings) would report its size
        done = subprocess.run(
            [sys.executable, "-c", MEASURED, str(peak), *command, "--fold-in-new-rows", str(new_rows)], cwd=REPO
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"recs fold-in of {n} users failed")
        with warehouse.open_reader(work / "F.duckdb") as con:
            ((seconds, published_rows),) = con.sql("SELECT seconds, n_recommendations FROM fold_ins").fetchall()
        out.append(
            {
                "changed_users": n,
                "flow_seconds": seconds,
                "command_seconds": round(wall, 1),
                "rows": published_rows,
                "peak_rss_mb": round(int(peak.read_text()) / 1024),  # ru_maxrss is in KiB
            }
        )
        print(
            f"20m: {n:,} changed users: published in {seconds:.2f}s of the flow ({wall:.1f}s the command)", flush=True
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ml100k", type=Path, required=True, help="ML-100k's archive")
    parser.add_argument(
        "--sizes", default="ml-100k", help="comma-separated: ml-100k, anime, lastfm-2k, amazon-video-games, 20m"
    )
    parser.add_argument("--min-users", type=int, default=5, help="days with at least this many users to score")
    parser.add_argument("--changed", default="100,1000,10000", help="20m: changed users per fold-in")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--work", type=Path, help="keep the archives and warehouses here (default: a temporary folder)")
    args = parser.parse_args(argv)
    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    sizes = args.sizes.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        work = str(args.work or scratch)
        if "ml-100k" in sizes:
            results["ml-100k"] = days = replay_ml100k(args.ml100k.resolve(), Path(work), args.min_users)
            pooled = results["ml-100k-pooled"] = _pooled(days)
            print("\n| days (fold-ins published) | users | stale | fold-in | nightly | recovered (95% interval) |")
            print("|---|---|---|---|---|---|")
            low, high = pooled["recovered_95"]
            print(
                f"| {len(days)} ({pooled['published']}) | {pooled['users']} | {pooled['stale']:.4f} | "
                f"{pooled['fold_in']:.4f} | {pooled['nightly']:.4f} | {pooled['recovered']:.0%} ({low:.0%} to {high:.0%}) |"
            )
        real = [(name, path, settings) for name, path, settings in DATASETS[1:] if name.split()[0] in sizes]
        for name, path, settings in real:
            results[name.split()[0]] = _pooled(new_users(name, args.ml100k.parent / path, settings, Path(work)))
        if real:
            print("\n| dataset | new users scored | stale (fallback) | fold-in | nightly | recovered (95% interval) |")
            print("|---|---|---|---|---|---|")
        for name, _, _ in real:
            pooled = results[name.split()[0]]
            low, high = pooled["recovered_95"]
            print(
                f"| {name} | {pooled['users']} | {pooled['stale']:.4f} | {pooled['fold_in']:.4f} | "
                f"{pooled['nightly']:.4f} | {pooled['recovered']:.0%} ({low:.0%} to {high:.0%}) |"
            )
        if "20m" in sizes:
            results["20m"] = speed_20m(args.ml100k, Path(work), [int(n) for n in args.changed.split(",")])
    if args.json:
        for row in results.get("ml-100k", []):
            row.pop("per_user")
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
