"""How fast the reading commands answer: each one's wall seconds over a few runs, in fresh processes.

    python benchmarks/readers.py [--warehouse warehouse/recs.duckdb] [--repeats 5]

Runs `recs runs`, `recs recommend <a user with a list>`, `recs sql "SELECT count(*) FROM recommendations"` and
`recs trend` against a warehouse a `recs run` has published to, and prints the median and the slowest wall
seconds of each (the process's start, Python's imports and the query: what a person waits for). They import
neither torch nor Prefect (tests/test_cli.py checks that).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, default=Path("warehouse/recs.duckdb"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.warehouse.exists():
        print(f"{args.warehouse} does not exist: publish to it with `recs run` first", file=sys.stderr)
        return 2
    with duckdb.connect(str(args.warehouse), read_only=True) as con:
        user = con.execute("SELECT min(user_id) FROM recommendations").fetchone()[0]
    where = ["--warehouse", str(args.warehouse)]
    commands = {
        "recs runs": ["runs", *where],
        f"recs recommend {user}": ["recommend", str(user), *where],
        "recs sql": ["sql", "SELECT count(*) FROM recommendations", *where],
        "recs trend": ["trend", *where, "--chart", str(args.warehouse.with_name("readers-trend.png"))],
    }
    print(f"{args.repeats} runs each, fresh processes, warehouse {args.warehouse}")
    for name, command in commands.items():
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "flows.cli", *command], check=True, capture_output=True)
            seconds.append(time.perf_counter() - started)
        print(f"  {name:24s} median {statistics.median(seconds):.2f} s, slowest {max(seconds):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
