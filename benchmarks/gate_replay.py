"""How often the quality gate rejects healthy nights, and whether it still rejects a broken model, per rule.

    python benchmarks/gate_replay.py --dataset ../shared/datasets/ml-100k.zip [--json OUT]

Replays the operations guide's history (`recs backfill --start 1997-10-15 --end 1998-04-22 --every 14d
--model dot_bias`: 14 nights on the temporal split) once per gate rule, each into a fresh warehouse. After each
healthy night, a deliberately broken model (`dot_bias` trained one epoch at learning rate 0) runs on the same
date against what is published; it should be rejected every time. The rules:

- the gate without a noise test: the published run's recorded metrics (its own test set) held to 10%
  (`gate.drift_tolerance` 0.1), the tolerance alone (`gate.confidence` 0);
- the same, a worsening also outside the 95% interval of a paired bootstrap over the users of both test sets;
- the default: the published configuration trained on the candidate's split held to 10% beyond noise (paired
  over the same test users), and the recorded metrics to 50% beyond noise.

In every rule the broken run is also compared on its own split with the published configuration (a healthy
night trains that configuration unchanged, so for it that comparison is empty). Prints, per rule, how many
healthy nights and how many broken runs were rejected, and each night's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.backfill import replay_dates
from flows.nightly import nightly
from tasks.config import PipelineConfig

RULES = {
    "recorded metrics, 10% alone": {"gate": {"drift_tolerance": 0.1, "confidence": 0.0}},
    "recorded metrics, 10% beyond a 95% paired bootstrap": {"gate": {"drift_tolerance": 0.1, "confidence": 0.95}},
    "same split 10%, recorded 50%, both beyond noise (the default)": {},
}
BROKEN = {"dot_bias": {"epochs": 1, "learning_rate": 0.0}}


def _night(config: PipelineConfig) -> tuple[str, str]:
    result = nightly(config, return_state=True).result()
    return result.status, result.gate


def replay(dataset: Path, rule: dict, work: Path) -> list[dict]:
    """The 14 nights, each a healthy run then a broken one, into a warehouse of their own."""
    rows = []
    for as_of in replay_dates(date(1997, 10, 15), date(1998, 4, 22), timedelta(days=14)):
        common = {
            "source": str(dataset),
            "as_of": as_of,
            "model": "dot_bias",
            **rule,
            "warehouse": work / "replay.duckdb",
            "data_dir": work / "data",
        }
        healthy, healthy_reason = _night(PipelineConfig(**common))
        broken, broken_reason = _night(PipelineConfig(**common, **BROKEN))
        rows.append(
            {
                "as_of": f"{as_of:%Y-%m-%d}",
                "healthy": healthy,
                "healthy_gate": healthy_reason,
                "broken": broken,
                "broken_gate": broken_reason,
            }
        )
        print(f"{as_of:%Y-%m-%d} {rule or 'defaults'}: healthy {healthy}, broken {broken}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="ML-100k's archive")
    parser.add_argument("--json", type=Path, help="write every night's verdicts here")
    args = parser.parse_args(argv)
    results = {}
    for rule, settings in RULES.items():
        with tempfile.TemporaryDirectory() as work:
            results[rule] = replay(args.dataset.resolve(), settings, Path(work))
    print("\n| rule | healthy nights rejected | broken runs rejected |\n|---|---|---|")
    for rule, rows in results.items():
        healthy = sum(r["healthy"] == "rejected" for r in rows)
        broken = sum(r["broken"] == "rejected" for r in rows)
        print(f"| {rule} | {healthy} of {len(rows)} | {broken} of {len(rows)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
