"""The quality gate between evaluation and publishing.

A candidate run is compared with the last published run on the same source and protocol (split, test
share, seed, k). It is rejected when its RMSE rose, or its nDCG@k fell, by more than `gate_tolerance` of
the baseline's value, the same model's metrics in both. The first run of a model on a source and protocol has
nothing to compare with and passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.config import PipelineConfig, setting
from tasks.evaluate import metric_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateVerdict:
    """Whether a run may publish, the run it was compared with, and why, in words."""

    passed: bool
    reason: str
    baseline_run_id: str | None = None
    forced: bool = False  # failed, but `force` publishes anyway

    @property
    def publishes(self) -> bool:
        return self.passed or self.forced

    def overridden(self) -> GateVerdict:
        """This failed verdict overridden by `force`: the run publishes, and its reason says so."""
        return GateVerdict(False, f"overridden by force: {self.reason}", self.baseline_run_id, forced=True)


def judge(candidate: pl.DataFrame, baseline: pl.DataFrame | None, k: int, tolerance: float) -> GateVerdict:
    """Compare a candidate's metrics with the baseline's (both long form: `metric`, `k`, `value`).

    Args:
        candidate: the run's metrics.
        baseline: the last published run's metrics with its `run_id`, or None when there is none.
        k: the cut-off of the nDCG compared.
        tolerance: the largest allowed worsening, as a fraction of the baseline's value.
    """
    if baseline is None or baseline.height == 0:
        return GateVerdict(True, "first run of this model on this source and protocol: nothing to compare with")
    baseline_run_id = baseline["run_id"][0]
    # (metric, k, +1 when higher is worse / -1 when lower is worse)
    checks = [("rmse", None, 1), ("ndcg", k, -1)]
    failures, compared = [], []
    for metric, at, worse in checks:
        new, old = metric_value(candidate, metric, at), metric_value(baseline, metric, at)
        if new is None or old is None:
            continue
        name = metric if at is None else f"{metric}@{at}"
        change = (new - old) / abs(old) if old else 0.0
        compared.append(f"{name} {old:.4f} -> {new:.4f} ({change:+.1%})")
        if worse * change > tolerance:
            failures.append(f"{name} {'rose' if worse > 0 else 'fell'} from {old:.4f} to {new:.4f} ({change:+.1%})")
    if failures:
        reason = (
            f"{'; '.join(failures)}, beyond the {tolerance:.1%} tolerance ({setting('gate_tolerance')}) "
            f"against run {baseline_run_id}"
        )
        return GateVerdict(False, reason, baseline_run_id)
    return GateVerdict(True, f"within {tolerance:.1%} of run {baseline_run_id}: {', '.join(compared)}", baseline_run_id)


def baseline_metrics(path: Path, run_id: str, source: str, protocol: str, model: str) -> pl.DataFrame:
    """The last published run's metrics on the same source and protocol (empty when there is none)."""
    with warehouse.open_reader(path) as con:
        params = {"source": source, "protocol": protocol, "model": model, "run_id": run_id}
        return warehouse.fetch(con, "gate_baseline", params)


@task(name="quality-gate", cache_policy=NO_CACHE)
def gate_task(
    path: Path, run_id: str, source: str, model: str, metrics: pl.DataFrame, config: PipelineConfig
) -> GateVerdict:
    """Judge the run's model to publish against the same model in the baseline run; logs the verdict.

    With `force`, a failed verdict comes back overridden: `publishes` is true and the reason says why."""
    baseline = baseline_metrics(path, run_id, source, config.protocol, model)
    verdict = judge(metrics, baseline, config.k, config.gate_tolerance)
    if verdict.passed:
        log.info("quality gate passed: %s", verdict.reason)
    elif config.force:
        log.warning("quality gate failed but %s publishes anyway: %s", setting("force"), verdict.reason)
        return verdict.overridden()
    else:
        log.warning("quality gate rejected the run: %s", verdict.reason)
    return verdict
