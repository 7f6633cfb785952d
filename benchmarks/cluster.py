"""The nightly run in process and with ials's training, evaluation and the lists on a Dask LocalCluster, side by side.

    python benchmarks/cluster.py [--sizes ml-100k,1m,20m,50m,100m] [--modes in-process,cluster] [--workers 2]
        [--shard-users 20000] [--json OUT]

Each size is two `recs run`s on the defaults in child processes (benchmarks/scale.py's `run_once`): in process,
then `--cluster-address local:N --cluster-shard-users S`. Prints wall seconds, the stages' seconds, the peak RSS of the run's
process tree (the largest single process: the flow, or a worker), the flow process's own peak and, for the cluster run, each stage's shard
count (ials: user + item shards per half-step) and each worker's peak RSS as its shards reported it. On two
cores no speed-up is expected; what the figures show is that a worker's memory is its shard and the fixed side's
vectors (or the model), not the whole ratings table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import _archive, run_once  # noqa: E402

REPORT = re.compile(r"(\d+) shards on (\d+) workers; peak RSS per worker: (.+)$", re.MULTILINE)


def _worker_peaks(run_folder: Path) -> dict:
    """Every stage's shard count, in the order the stages reported, and each worker's peak over all of them, from
    the run's log files (`data/logs/`, where the flow's printed reports go) or, failing them, its console."""
    logs = sorted((run_folder / "data" / "logs").glob("*.log")) or [run_folder / "run.log"]
    found = [match for log in logs for match in REPORT.findall(log.read_text())]
    if not found:
        return {}
    peaks: dict[str, float] = {}
    for _, _, line in found:
        for worker, gb in re.findall(r"(\S+) ([\d.]+) GB", line):
            peaks[worker] = max(peaks.get(worker, 0.0), float(gb))
    return {
        "shards": [int(shards) for shards, _, _ in found],
        "workers": int(found[-1][1]),
        "worker_peak_gb": [peaks[worker] for worker in sorted(peaks)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml-100k,1m,20m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-users", type=int, default=20_000)
    parser.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k.zip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recs-scale"))
    parser.add_argument("--modes", default="in-process,cluster", help="in-process, cluster or both")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cluster = ["--cluster-address", f"local:{args.workers}", "--cluster-shard-users", str(args.shard_users)]
    rows = []
    for size in args.sizes.split(","):
        archive, _ = _archive(size, args.ml100k, args.work)
        modes = {"in-process": ("in process", []), "cluster": (f"local:{args.workers}", cluster)}
        for mode, extra in (modes[name] for name in args.modes.split(",")):
            label = size if not extra else f"{size}-local{args.workers}"
            row = run_once(label, archive, args.work, extra)
            row.update(mode=mode, size=size, **_worker_peaks(args.work / f"run-{label}"))
            rows.append(row)
            print(f"{size} {mode}: {row['wall_seconds']:.1f}s wall", flush=True)
    stages = ("train", "evaluate", "gate", "refit", "recommend", "publish")
    print(
        "\n| dataset | where | wall s | "
        + " | ".join(f"{stage} s" for stage in stages)
        + " | shards (per stage) | peak RSS GB (largest process) | flow peak RSS GB | worker peak RSS GB |"
    )
    print("|---|---|---|" + "---|" * len(stages) + "---|---|---|---|")
    for r in rows:
        peaks = ", ".join(f"{gb:.2f}" for gb in r.get("worker_peak_gb", [])) or "-"
        shards = " / ".join(str(n) for n in r.get("shards", [])) or "-"
        seconds = " | ".join(f"{r['stage_seconds'].get(stage, 0):.1f}" for stage in stages)
        print(
            f"| {r['size']} | {r['mode']} | {r['wall_seconds']:.1f} | {seconds} | {shards} | {r['peak_rss_gb']:.2f} | "
            f"{r['flow_peak_rss_gb']:.2f} | {peaks} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
