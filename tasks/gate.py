"""The quality gate between evaluation and publishing.

A candidate run is compared with the lists published now: the last published run on the same dataset (the
archive's SHA-256, so a path and a file:// URL of one archive share a history) and protocol (split, test
share, seed, k), whichever model made them. The candidate's published model is held to the baseline's nDCG@k,
and its rating model (the stars beside the lists) to the baseline rating model's RMSE. It is rejected when
its nDCG@k fell, or its RMSE rose, by more than `gate_tolerance` of the baseline's value and the change is
unlikely to be noise (the `gate_confidence` interval of a paired bootstrap over the users of both test sets,
tasks/noise.py, lies wholly on the worse side of zero), or when a metric it must be judged on is missing or
not finite. Only a run on a dataset and protocol with nothing published yet passes unjudged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.config import PipelineConfig, setting
from tasks.evaluate import metric_value
from tasks.noise import paired_interval
from tasks.reindex import IdMaps

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


def judge(candidate: pl.DataFrame, baseline: pl.DataFrame | None, k: int, tolerance: float,
          candidate_users: pl.DataFrame | None = None, baseline_users: pl.DataFrame | None = None,
          confidence: float = 0.0, resamples: int = 1000, seed: int = 0) -> GateVerdict:  # fmt: skip
    """Compare a candidate's metrics with the baseline's (both long form: `metric`, `k`, `value`).

    Args:
        candidate: the run's metrics (nDCG from the model to publish, RMSE from its rating model).
        baseline: the published run's metrics with its `run_id`, or None when nothing is published.
        k: the cut-off of the nDCG compared.
        tolerance: the largest allowed worsening, as a fraction of the baseline's value.
        candidate_users, baseline_users: the per-user values behind the metrics (`user_id`, `metric`,
            `value`), for the noise test; without them (or with `confidence` 0) the tolerance alone decides.
        confidence: the coverage of the paired bootstrap interval a worsening must lie outside of.
        resamples, seed: of the bootstrap.
    """
    if baseline is None or baseline.height == 0:
        return GateVerdict(True, "nothing is published for this dataset and protocol yet: nothing to compare with")
    baseline_run_id = baseline["run_id"][0]
    paired = confidence > 0 and candidate_users is not None and baseline_users is not None
    # (metric, k, +1 when higher is worse / -1 when lower is worse)
    checks = [("rmse", None, 1), ("ndcg", k, -1)]
    failures, compared = [], []
    for metric, at, worse in checks:
        new, old = metric_value(candidate, metric, at), metric_value(baseline, metric, at)
        name = metric if at is None else f"{metric}@{at}"
        if old is None:
            continue  # the published lists were not judged on it (no rating model behind them)
        if not math.isfinite(old):
            failures.append(f"the published run's {name} is {old}, so nothing can be compared with it")
            continue
        if new is None or not math.isfinite(new):
            failures.append(f"{name} is {'missing' if new is None else new} (the published lists have {old:.4f})")
            continue
        change = (new - old) / abs(old) if old else (0.0 if new == old else math.copysign(math.inf, new - old))
        moved = f"{name} {'rose' if worse > 0 else 'fell'} from {old:.4f} to {new:.4f} ({change:+.1%})"
        if worse * change <= tolerance:
            compared.append(f"{name} {old:.4f} -> {new:.4f} ({change:+.1%})")
            continue
        interval = None
        if paired:
            interval = paired_interval(candidate_users, baseline_users, metric, confidence, resamples, seed)
        if interval is not None and not (interval.low > 0 if worse > 0 else interval.high < 0):
            compared.append(f"{moved}, within noise: the {interval.describe(name)} holds 0")
            continue
        failures.append(f"{moved}; the {interval.describe(name)}" if interval else moved)
    if failures:
        reason = (
            f"{'; '.join(failures)}, beyond the {tolerance:.1%} tolerance ({setting('gate_tolerance')}) "
            f"against run {baseline_run_id}"
        )
        return GateVerdict(False, reason, baseline_run_id)
    return GateVerdict(True, f"within {tolerance:.1%} of run {baseline_run_id}: {', '.join(compared)}", baseline_run_id)


def baseline_metrics(path: Path, run_id: str, dataset: str, protocol: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The metrics of the lists published last on the same dataset and protocol (empty when there are none),
    and the per-user values stored with them (empty for runs published before they were kept)."""
    with warehouse.open_reader(path) as con:
        metrics = warehouse.fetch(con, "gate_baseline", {"dataset": dataset, "protocol": protocol, "run_id": run_id})
        published = metrics["run_id"][0] if metrics.height else ""
        return metrics, warehouse.fetch(con, "gate_baseline_users", {"run_id": published})


def candidate_metrics(metrics: dict[str, pl.DataFrame], model: str, rating_model: str | None) -> pl.DataFrame:
    """What the gate judges a run on: the published model's ranking metrics, the rating model's errors."""
    ranking = metrics[model].filter(~pl.col("metric").is_in(["rmse", "mae"]))
    errors = [metrics[rating_model].filter(pl.col("metric").is_in(["rmse", "mae"]))] if rating_model else []
    return pl.concat([ranking, *errors], how="diagonal_relaxed")


def candidate_user_metrics(per_user: dict[str, pl.DataFrame], model: str, rating_model: str | None,
                           maps: IdMaps) -> pl.DataFrame:  # fmt: skip
    """The per-user values behind `candidate_metrics`, by the dataset's user ids (so that runs with other
    indexings pair up): `model`, `user_id`, `metric`, `value`. Stored with the lists when they are published."""
    parts = [per_user[model].filter(pl.col("metric") == "ndcg").with_columns(model=pl.lit(model))]
    if rating_model:
        errors = per_user[rating_model].filter(pl.col("metric").is_in(["squared_error", "n_ratings"]))
        parts.append(errors.with_columns(model=pl.lit(rating_model)))
    ids = maps.users.select(pl.col("user_idx").cast(pl.Int64), pl.col("user_id").cast(pl.Int64))
    return pl.concat(parts).join(ids, on="user_idx").select("model", "user_id", "metric", "value")


@task(name="quality-gate", cache_policy=NO_CACHE)
def gate_task(path: Path, run_id: str, dataset: str, candidate: pl.DataFrame, candidate_users: pl.DataFrame,
              config: PipelineConfig) -> GateVerdict:  # fmt: skip
    """Judge the run's `candidate_metrics` (and `candidate_user_metrics`) against the lists published on the
    same dataset (`source_sha256`) and protocol; logs the verdict.

    With `force`, a failed verdict comes back overridden: `publishes` is true and the reason says why."""
    baseline, baseline_users = baseline_metrics(path, run_id, dataset, config.protocol)
    verdict = judge(candidate, baseline, config.k, config.gate_tolerance, candidate_users,
                    baseline_users if baseline_users.height else None, config.gate_confidence,
                    config.gate_resamples, config.seed)  # fmt: skip
    if verdict.passed:
        log.info("quality gate passed: %s", verdict.reason)
    elif config.force:
        log.warning("quality gate failed but %s publishes anyway: %s", setting("force"), verdict.reason)
        return verdict.overridden()
    else:
        log.warning("quality gate rejected the run: %s", verdict.reason)
    return verdict
