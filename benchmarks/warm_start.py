"""Warm starts against cold ones: list quality and training seconds, night by night.

    python benchmarks/warm_start.py --ml100k ../shared/datasets/ml-100k.zip [--sizes ml-100k,20m] [--json OUT]

- **ml-100k**: the operations guide's replay (14 nights from 1997-10-15 to 1998-04-22, every 14 days, the
  temporal split, the default models) twice, each into a fresh warehouse: cold (the defaults) and with
  `warm_start`. On the temporal split both the evaluated split fit and the published refit start warm
  (tasks/warm.py). Per night: the published model's nDCG@10 and the train and refit stages' seconds of each.
- **20m**: the 20M synthetic archive (`recs synth`, benchmarks/scale.py's), as two nights whose data grew by 1%:
  night 1 sees the ratings up to the timestamp that holds 99% of them (`as_of`), night 2 all of them, both on
  the default (stratified) split with `warm_start`, in one warehouse; then night 2 cold (the defaults, a fresh
  warehouse). On a stratified split only the refit starts warm. Each night is a `recs run` in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import warehouse  # noqa: E402
from benchmarks.scale import _archive, run_once  # noqa: E402
from flows.backfill import replay_dates  # noqa: E402
from flows.nightly import nightly  # noqa: E402
from tasks.config import PipelineConfig  # noqa: E402

NIGHTS = (date(1997, 10, 15), date(1998, 4, 22), timedelta(days=14))
PER_RUN = """
SELECT r.run_id, r.as_of, r.status, r.model,
       (SELECT value FROM run_metrics m WHERE m.run_id = r.run_id AND m.model = r.model AND m.metric = 'ndcg') AS ndcg,
       CAST(r.stage_seconds->>'train' AS DOUBLE) AS train_s, CAST(r.stage_seconds->>'refit' AS DOUBLE) AS refit_s
FROM runs AS r ORDER BY r.started_at
"""  # a benchmark's own read of its warehouses, not a query the product runs


def _runs(path: Path) -> pl.DataFrame:
    with warehouse.open_reader(path) as con:
        return pl.from_arrow(con.sql(PER_RUN).to_arrow_table())


def replay_ml100k(dataset: Path, work: Path) -> list[dict]:
    """The 14 nights cold and warm, side by side."""
    frames = {}
    for mode, extra in (("cold", {}), ("warm", {"warm_start": True})):
        folder = work / f"ml-100k-{mode}"
        for as_of in replay_dates(*NIGHTS):
            config = PipelineConfig(
                source=str(dataset), as_of=as_of, warehouse=folder / "replay.duckdb", data_dir=folder / "data", **extra
            )
            result = nightly(config, return_state=True).result()
            print(f"{mode} {as_of:%Y-%m-%d}: {result.status}", flush=True)
        frames[mode] = _runs(folder / "replay.duckdb")
    cold, warm = frames["cold"], frames["warm"]
    return [
        {
            "as_of": f"{c['as_of']:%Y-%m-%d}",
            "cold_status": c["status"],
            "warm_status": w["status"],
            "cold_ndcg": c["ndcg"],
            "warm_ndcg": w["ndcg"],
            "cold_train_s": c["train_s"],
            "warm_train_s": w["train_s"],
            "cold_refit_s": c["refit_s"],
            "warm_refit_s": w["refit_s"],
        }
        for c, w in zip(cold.iter_rows(named=True), warm.iter_rows(named=True), strict=True)
    ]


def _cutoff_of_share(archive: Path, share: float) -> datetime:
    """The timestamp at or before which `share` of the archive's ratings fall (ml-20m layout)."""
    with zipfile.ZipFile(archive) as zipped:
        name = next(n for n in zipped.namelist() if n.endswith("ratings.csv"))
        with zipped.open(name) as handle:
            stamps = pl.read_csv(handle.read(), columns=["timestamp"])["timestamp"]
    return datetime.fromtimestamp(int(stamps.quantile(share, "lower")), tz=UTC)


def grow_20m(size: str, ml100k: Path, work: Path) -> list[dict]:
    """Night 1 on 99% of the ratings, night 2 on all, warm; night 2 cold for comparison."""
    archive, _ = _archive(size, ml100k, work)
    cutoff = _cutoff_of_share(archive, 0.99)
    warm = work / f"warm-{size}"
    rows = []
    for night, options, fresh in (
        ("night 1 (99%), warm_start", ["--as-of", cutoff.isoformat(), "--split", "stratified", "--warm-start"], True),
        ("night 2 (100%), warm_start", ["--warm-start"], False),
    ):
        rows.append({"night": night, **run_once(size, archive, work, options, folder=warm, fresh=fresh)})
        print(f"{night}: {rows[-1]['wall_seconds']:.1f}s wall", flush=True)
    rows.append({"night": "night 2 (100%), cold", **run_once(size, archive, work, [], folder=work / f"cold-{size}")})
    print(f"{rows[-1]['night']}: {rows[-1]['wall_seconds']:.1f}s wall", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml-100k", help="comma-separated: ml-100k, 20m")
    parser.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k.zip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recs-scale"), help="archives, warehouses, logs")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    out: dict = {}
    for size in args.sizes.split(","):
        if size == "ml-100k":
            with tempfile.TemporaryDirectory() as work:
                out[size] = replay_ml100k(args.ml100k, Path(work))
            print(
                "\n| as_of | nDCG@10 cold | nDCG@10 warm | train s cold | train s warm | refit s cold | refit s warm |"
            )
            print("|---|---|---|---|---|---|---|")
            for r in out[size]:
                print(
                    f"| {r['as_of']} | {r['cold_ndcg']:.4f} | {r['warm_ndcg']:.4f} | {r['cold_train_s']:.2f} | "
                    f"{r['warm_train_s']:.2f} | {r['cold_refit_s']:.2f} | {r['warm_refit_s']:.2f} |"
                )
        else:
            args.work.mkdir(parents=True, exist_ok=True)
            out[size] = grow_20m(size, args.ml100k, args.work)
            print("\n| night | wall s | train s | refit s | recommend s | peak RSS GB |")
            print("|---|---|---|---|---|---|")
            for r in out[size]:
                stages = r["stage_seconds"]
                print(
                    f"| {r['night']} | {r['wall_seconds']:.1f} | {stages['train']:.1f} | {stages['refit']:.1f} | "
                    f"{stages['recommend']:.1f} | {r['peak_rss_gb']:.2f} |"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
