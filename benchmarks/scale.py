"""The nightly run at three sizes: real ML-100k, a 1M and a 20M synthetic archive (`recs synth`).

Each size is one `recs run` on its defaults in a child process (its own warehouse and data folder), so the
peak resident memory is that run's alone (os.wait4). Stage timings and the training rate come from the
run's row in `runs`; scoring users/s is users over the `recommend` stage (seen-item sets, scoring, top-n).

    python benchmarks/scale.py [--sizes ml-100k,1m,20m] [--json OUT] [--work DIR] [-- extra recs run options]

Synthetic archives are generated once into --work and reused; their generation time is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import warehouse  # noqa: E402
from tasks.synth import SynthSpec, synth  # noqa: E402

SYNTHETIC = {
    "1m": SynthSpec(users=6_040, items=3_700, ratings=1_000_000, seed=1),  # ML-1M's shape
    "20m": SynthSpec(users=138_000, items=27_000, ratings=20_000_000, seed=20),  # ML-20M's shape
    "50m": SynthSpec(users=500_000, items=40_000, ratings=50_000_000, seed=50),  # the largest both modes fit in 24 GB
    "100m": SynthSpec(users=1_000_000, items=50_000, ratings=100_000_000, seed=100),  # on a cluster only, here
}
STAGES = ("ingest", "reindex", "rules", "split", "train", "evaluate", "inspect", "refit", "recommend", "publish")


def _archive(size: str, ml100k: Path, work: Path) -> tuple[Path, float | None]:
    """The archive of `size` and the seconds it took to generate (None when real or already there)."""
    if size == "ml-100k":
        return ml100k, None
    path = work / f"synthetic-{size}.zip"
    if path.exists():
        return path, None
    made = synth(SYNTHETIC[size], path)
    return path, made["generate_seconds"] + made["write_seconds"]


def run_once(
    size: str, archive: Path, work: Path, extra: list[str], folder: Path | None = None, fresh: bool = True
) -> dict:
    """One `recs run` on `archive` in a child process: wall seconds, peak RSS and the run's row in `runs`.

    Its warehouse and data folder are in `folder` (default `work/run-<size>`), emptied first when `fresh`."""
    folder = folder or work / f"run-{size}"
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    warehouse_path = folder / "warehouse.duckdb"
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--source",
        str(archive),
        "--warehouse",
        str(warehouse_path),
        "--data-dir",
        str(folder / "data"),
        *extra,
    ]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(folder / "run.log", "a") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        flow_peak = _FlowPeak(child.pid)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        flow_peak.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"recs run on {archive} failed; see {folder / 'run.log'}")
    with warehouse.open_reader(warehouse_path) as con:
        row = warehouse.fetch(con, "latest_run_facts").row(0)
    n_ratings, n_users, n_items, model, device, rate, stages, n_recommendations = row
    stages = json.loads(stages)
    return {
        "dataset": size,
        "n_ratings": n_ratings,
        "n_users": n_users,
        "n_items": n_items,
        "model": model,
        "device": device,
        "wall_seconds": wall,
        "peak_rss_gb": usage.ru_maxrss / 1024**2,  # ru_maxrss is in KiB
        "flow_peak_rss_gb": flow_peak.bytes / 1024**3,
        "stage_seconds": stages,
        "train_ratings_per_second": rate,
        "scoring_users_per_second": n_users / stages["recommend"],
        "n_recommendations": n_recommendations,
    }


class _FlowPeak:
    """The flow process's own peak resident memory (its VmHWM, read every second until it ends): `ru_maxrss`
    from `os.wait4` is the largest of the process and its children, which on a LocalCluster may be a worker."""

    def __init__(self, pid: int) -> None:
        self.bytes, self._status, self._done = 0, Path(f"/proc/{pid}/status"), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(1.0):
            try:
                line = next(x for x in self._status.read_text().splitlines() if x.startswith("VmHWM:"))
            except (OSError, StopIteration):  # gone, or a zombie without its memory lines
                return
            self.bytes = max(self.bytes, int(line.split()[1]) * 1024)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def markdown(rows: list[dict]) -> str:
    header = [
        "dataset",
        "ratings",
        "users",
        "items",
        "wall s",
        *[f"{s} s" for s in STAGES],
        "train M ratings/s",
        "scoring users/s",
        "peak RSS GB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["dataset"],
            f"{r['n_ratings']:,}",
            f"{r['n_users']:,}",
            f"{r['n_items']:,}",
            f"{r['wall_seconds']:.1f}",
            *[f"{r['stage_seconds'].get(s, 0):.1f}" for s in STAGES],
            f"{r['train_ratings_per_second'] / 1e6:.2f}",
            f"{r['scoring_users_per_second']:,.0f}",
            f"{r['peak_rss_gb']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml-100k,1m,20m", help="comma-separated: ml-100k, 1m, 20m")
    parser.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k.zip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recs-scale"), help="archives, warehouses, logs")
    parser.add_argument("--json", type=Path, help="write the rows and the machine here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: options for every `recs run`")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        archive, generated = _archive(size, args.ml100k, args.work)
        if generated is not None:
            print(f"generated {archive} in {generated:.1f}s", flush=True)
        rows.append({**run_once(size, archive, args.work, extra), "generate_seconds": generated})
        print(f"{size}: {rows[-1]['wall_seconds']:.1f}s wall, {rows[-1]['peak_rss_gb']:.2f} GB peak", flush=True)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "recs_run_options": extra,
    }
    print(f"\nmachine: {machine}\n")
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
