"""The quality gate between evaluation and publishing.

A candidate run is held to the lists published now, whichever dataset, protocol and model made them: the last
run that published. The candidate's published model is judged on nDCG@k, its rating model (the stars beside the
lists) on RMSE, twice:

- On this run's split, against the published configuration: the published run's model and rating model, with
  the settings it published them with, trained on the candidate's training ratings and scored on its test
  ratings (the run's own fit serves when it trained that model with the same settings). Both sides are judged
  on the same ratings, so the paired bootstrap over users (tasks/noise.py) sees the models' difference and
  nothing else. A worsening beyond `gate.tolerance` whose `gate.confidence` interval lies wholly on the worse
  side of zero rejects. This catches a worse model, worse settings, a worse choice of model.
- Against the published run's recorded metrics, measured on its own test set: this catches a collapse that any
  configuration would share (broken data, a bug in training), which the first comparison cannot see. Test sets
  differ from night to night (a temporal split's nDCG moves by 40% between neighbouring nights on ML-100k), so
  this drift check allows `gate.drift_tolerance`, beyond noise as above (users of both test sets). It applies only
  when the published run measured them on the same dataset (the archive's SHA-256, so a path and a file:// URL of
  one archive share a history) under the same protocol (split, test share, seed, k): a run that changes the
  protocol (`--seed`, `--k`, `--split`, `--test-fraction`, `--as-of`) or the data is judged on its own split alone,
  against the published configuration, so no protocol change side-steps the gate.

A metric the candidate must be judged on that is missing or not finite rejects. When the published run's stored
settings no longer validate, the recorded metrics are held to `gate.tolerance` instead, and a run on another
dataset or protocol, which has nothing comparable, is rejected unless `force`. Only a warehouse with nothing
published yet passes unjudged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

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

    def rejected_by(self, why: str, force: bool) -> GateVerdict:
        """This verdict after a later check on the lists (their coverage, their churn) found `why`: rejected, with
        the gate's own reason kept; with `force`, overridden (the run publishes, and its reason says so)."""
        if force:
            return GateVerdict(False, f"{why}; {self.reason}", self.baseline_run_id).overridden()
        return GateVerdict(False, f"{why}; the quality gate had said: {self.reason}", self.baseline_run_id)


@dataclass(frozen=True)
class PublishedRun:
    """The run whose lists are published now on a dataset and protocol: its models and the settings it used."""

    run_id: str
    model: str
    rating_model: str | None
    config: PipelineConfig | None  # None when its stored config no longer validates (see `unreadable`)
    unreadable: str | None = None
    elsewhere: str | None = None  # how its dataset or protocol differ from the candidate's; None: the same

    @property
    def models(self) -> list[str]:
        """The published model, then the rating model behind its stars when that is another."""
        return [self.model] + ([self.rating_model] if self.rating_model and self.rating_model != self.model else [])

    def describe(self) -> str:
        stars = f" with {self.rating_model}'s stars" if self.rating_model and self.rating_model != self.model else ""
        return f"{self.model}{stars}"

    def to_train_here(self, config: PipelineConfig, trained: Collection[str]) -> list[str]:
        """The published models a run with `config` has not trained with the same settings (the stored settings
        must be readable: `config` is not None)."""
        assert self.config is not None
        return [n for n in self.models if n not in trained or config.params_for(n) != self.config.params_for(n)]

    def settings(self, config: PipelineConfig) -> PipelineConfig:
        """`config` with the published run's settings for the published models: what trains them on this split."""
        assert self.config is not None
        return config.with_overrides({n: self.config.params_for(n).model_dump(mode="json") for n in self.models})


@dataclass(frozen=True)
class Side:
    """One side of a comparison: metrics in long form (`metric`, `k`, `value`; a baseline's with its `run_id`) and
    the per-user values behind them (`user_id`, `metric`, `value`) for the noise test, None when there are none."""

    metrics: pl.DataFrame
    users: pl.DataFrame | None = None


@dataclass(frozen=True)
class Noise:
    """The paired bootstrap over users a worsening beyond a tolerance must survive (tasks/noise.py): the interval's
    coverage (0: the tolerance alone decides), its resamples and seed."""

    confidence: float = 0.0
    resamples: int = 1000
    seed: int = 0

    @classmethod
    def of(cls, config: PipelineConfig) -> Noise:
        return cls(config.gate.confidence, config.gate.resamples, config.seed)


@dataclass(frozen=True)
class OnThisSplit:
    """The published configuration scored on the candidate's split: its metrics like `candidate_metrics`, its
    per-user values like `candidate_user_metrics`, and what had to be trained for it."""

    side: Side
    trained_here: tuple[str, ...]
    same_as_candidate: bool  # the candidate is the published configuration: nothing to compare on this split


# The metrics judged: (metric, k (None: no cut-off; "k": the run's), +1 when higher is worse / -1 when lower is)
JUDGED = (("rmse", None, 1), ("ndcg", "k", -1))


def judge(
    candidate: Side,
    baseline: Side | None,
    k: int,
    tolerance: float,
    noise: Noise = Noise(),
    *,
    against: str | None = None,
    tolerance_setting: str = "gate.tolerance",
) -> GateVerdict:
    """Compare a candidate's metrics with a baseline's: one comparison.

    Args:
        candidate: the run's metrics (nDCG from the model to publish, RMSE from its rating model) and users.
        baseline: the metrics held against it (with the published `run_id`), or None when nothing is published.
        k: the cut-off of the nDCG compared.
        tolerance: the largest allowed worsening, as a fraction of the baseline's value.
        noise: the paired test a worsening beyond the tolerance must pass; it applies when both sides have users.
        against: the baseline in words, for the reason (default: `run <its run_id>`).
        tolerance_setting: the config field `tolerance` came from, named in a rejection.
    """
    if baseline is None or baseline.metrics.height == 0:
        return GateVerdict(True, "nothing is published for this dataset and protocol yet: nothing to compare with")
    baseline_run_id = baseline.metrics["run_id"][0] if "run_id" in baseline.metrics.columns else None
    against = against or f"run {baseline_run_id}"
    failures: list[str] = []
    compared: list[str] = []
    for metric, at, worse in JUDGED:
        outcome = _compare(metric, k if at else None, worse, candidate, baseline, tolerance, noise)
        if outcome is not None:
            (compared if outcome[0] else failures).append(outcome[1])
    if failures:
        reason = f"{'; '.join(failures)}, beyond the {tolerance:.1%} tolerance ({setting(tolerance_setting)}) against {against}"
        return GateVerdict(False, reason, baseline_run_id)
    return GateVerdict(True, f"within {tolerance:.1%} of {against}: {', '.join(compared)}", baseline_run_id)


def _compare(
    metric: str, at: int | None, worse: int, candidate: Side, baseline: Side, tolerance: float, noise: Noise
) -> tuple[bool, str] | None:
    """Whether one metric stayed within the tolerance (or noise), in words; None when the published lists were
    not judged on it (no rating model behind them)."""
    new, old = metric_value(candidate.metrics, metric, at), metric_value(baseline.metrics, metric, at)
    name = metric if at is None else f"{metric}@{at}"
    if old is None:
        return None
    if not math.isfinite(old):
        return False, f"the published run's {name} is {old}, so nothing can be compared with it"
    if new is None or not math.isfinite(new):
        return False, f"{name} is {'missing' if new is None else new} (the published lists have {old:.4f})"
    change = (new - old) / abs(old) if old else (0.0 if new == old else math.copysign(math.inf, new - old))
    moved = f"{name} {'rose' if worse > 0 else 'fell'} from {old:.4f} to {new:.4f} ({change:+.1%})"
    if worse * change <= tolerance:
        return True, f"{name} {old:.4f} -> {new:.4f} ({change:+.1%})"
    interval = None
    if noise.confidence > 0 and candidate.users is not None and baseline.users is not None:
        interval = paired_interval(
            candidate.users, baseline.users, metric, noise.confidence, noise.resamples, noise.seed
        )
    if interval is not None and not (interval.low > 0 if worse > 0 else interval.high < 0):
        return True, f"{moved}, within noise: the {interval.describe(name)} holds 0"
    return False, f"{moved}; the {interval.describe(name)}" if interval else moved


def decide(
    candidate: Side, published: PublishedRun | None, recorded: Side, here: OnThisSplit | None, config: PipelineConfig
) -> GateVerdict:
    """The gate's verdict from both comparisons (the module's docstring): on this run's split with `here`, and
    against the published run's `recorded` metrics; rejected when either rejects, the reason naming both."""
    gate = config.gate
    if published is None:
        return judge(candidate, None, config.k, gate.tolerance)
    comparable = published.elsewhere is None and recorded.metrics.height > 0  # its recorded metrics measure ours
    notes: list[str] = []
    if published.elsewhere is not None:
        notes.append(
            f"the published lists (run {published.run_id}) were made {published.elsewhere}, so this run is "
            "judged against their configuration on its own split"
        )
    if here is None and not comparable:
        notes.append(
            f"that configuration cannot be rebuilt ({published.unreadable}), so this run cannot be judged "
            f"against the published lists; {setting('force')} publishes anyway"
        )
        return GateVerdict(False, "; ".join(notes), published.run_id)
    parts = [_on_this_split(candidate, published, recorded, here, config, notes)]
    if here is not None and comparable:
        drift = judge(
            candidate,
            recorded,
            config.k,
            gate.drift_tolerance,
            Noise.of(config),
            against=_recorded_as(published),
            tolerance_setting="gate.drift_tolerance",
        )
        parts.append(drift)
    judged = [part for part in parts if part is not None]
    passed = all(part.passed for part in judged)
    shown = [part.reason for part in judged if not part.passed] if not passed else [part.reason for part in judged]
    return GateVerdict(passed, "; ".join(notes + shown), published.run_id)


def _recorded_as(published: PublishedRun) -> str:
    return f"run {published.run_id}'s recorded metrics (its own test set)"


def _on_this_split(
    candidate: Side,
    published: PublishedRun,
    recorded: Side,
    here: OnThisSplit | None,
    config: PipelineConfig,
    notes: list[str],
) -> GateVerdict | None:
    """The comparison with the published configuration on this run's split (with its recorded metrics instead when
    the configuration cannot be rebuilt); None when the run trains that configuration itself. Adds to `notes`."""
    gate, noise = config.gate, Noise.of(config)
    if here is None:
        notes.append(
            f"the published configuration cannot be rebuilt ({published.unreadable}), so its recorded "
            f"metrics are held to {setting('gate.tolerance')}"
        )
        return judge(candidate, recorded, config.k, gate.tolerance, noise, against=_recorded_as(published))
    if here.same_as_candidate:
        notes.append(f"this run trains the published configuration ({published.describe()}) with the same settings")
        return None
    trained = f", trained here ({', '.join(here.trained_here)})" if here.trained_here else ""
    against = (
        f"the published configuration ({published.describe()}, run {published.run_id}) on this run's split{trained}"
    )
    return judge(candidate, here.side, config.k, gate.tolerance, noise, against=against)


def published_run(path: Path, run_id: str, dataset: str, protocol: str) -> PublishedRun | None:
    """The run whose lists are published now (other than `run_id`), or None; its `elsewhere` says how its dataset
    (`source_sha256`) or protocol differ from the candidate's `dataset` and `protocol`."""
    with warehouse.open_reader(path) as con:
        rows = warehouse.fetch(con, "published_run", {"run_id": run_id})
    if rows.height == 0:
        return None
    row = rows.row(0, named=True)
    try:
        config, unreadable = PipelineConfig.from_stored(row["config"]), None
    except (ValidationError, ValueError, TypeError) as error:
        config, unreadable = None, f"runs.config of run {row['run_id']} does not validate: {str(error).splitlines()[0]}"
    differences = []
    if row["source_sha256"] != dataset:
        differences.append(f"from another archive (sha256 {str(row['source_sha256'])[:12]}, this run's {dataset[:12]})")
    if row["protocol"] != protocol:
        differences.append(f"under another protocol ('{row['protocol']}', this run's '{protocol}')")
    elsewhere = " and ".join(differences) or None
    return PublishedRun(row["run_id"], row["model"], row["rating_model"], config, unreadable, elsewhere)


def recorded_metrics(path: Path, run_id: str) -> Side:
    """A published run's metrics as the gate judges them (its published model's ranking metrics, its rating model's
    errors) and the per-user values stored with its lists (None for runs published before they were kept)."""
    with warehouse.open_reader(path) as con:
        metrics = warehouse.fetch(con, "gate_baseline", {"run_id": run_id})
        users = warehouse.fetch(con, "gate_baseline_users", {"run_id": run_id})
    return Side(metrics, users if users.height else None)


def candidate_metrics(metrics: Mapping[str, pl.DataFrame], model: str, rating_model: str | None) -> pl.DataFrame:
    """What the gate judges a run on: the published model's ranking metrics, the rating model's errors."""
    ranking = metrics[model].filter(~pl.col("metric").is_in(["rmse", "mae"]))
    errors = [metrics[rating_model].filter(pl.col("metric").is_in(["rmse", "mae"]))] if rating_model else []
    return pl.concat([ranking, *errors], how="diagonal_relaxed")


def candidate_user_metrics(
    per_user: Mapping[str, pl.DataFrame], model: str, rating_model: str | None, maps: IdMaps
) -> pl.DataFrame:
    """The per-user values behind `candidate_metrics`, by the dataset's user ids (so that runs with other
    indexings pair up): `model`, `user_id`, `metric`, `value`. Stored with the lists when they are published."""
    parts = [per_user[model].filter(pl.col("metric") == "ndcg").with_columns(model=pl.lit(model))]
    if rating_model:
        errors = per_user[rating_model].filter(pl.col("metric").is_in(["squared_error", "n_ratings"]))
        parts.append(errors.with_columns(model=pl.lit(rating_model)))
    ids = maps.users.select(pl.col("user_idx").cast(pl.Int64), "user_id")
    return pl.concat(parts).join(ids, on="user_idx").select("model", "user_id", "metric", "value")


def on_this_split(
    published: PublishedRun,
    metrics: Mapping[str, pl.DataFrame],
    per_user: Mapping[str, pl.DataFrame],
    maps: IdMaps,
    trained_here: Collection[str],
    candidate: tuple[str, str | None],
) -> OnThisSplit:
    """The published configuration's side of the comparison on this split, from every model's metrics on it (the
    run's own and those trained for the gate); `candidate` is the run's (published model, rating model)."""
    same = not trained_here and (published.model, published.rating_model) == candidate
    return OnThisSplit(
        Side(
            candidate_metrics(metrics, published.model, published.rating_model),
            candidate_user_metrics(per_user, published.model, published.rating_model, maps),
        ),
        tuple(trained_here),
        same,
    )


@task(name="published-run", cache_policy=NO_CACHE)
def published_run_task(path: Path, run_id: str, dataset: str, protocol: str) -> PublishedRun | None:
    """Prefect wrapper of `published_run`; logs which configuration the gate holds the run to."""
    published = published_run(path, run_id, dataset, protocol)
    if published is not None:
        log.info("the published lists are run %s's %s", published.run_id, published.describe())
    return published


@task(name="quality-gate", cache_policy=NO_CACHE)
def gate_task(
    path: Path,
    published: PublishedRun | None,
    candidate: Side,
    here: OnThisSplit | None,
    config: PipelineConfig,
) -> GateVerdict:
    """Judge the run's `candidate_metrics` (and `candidate_user_metrics`) against the published configuration on
    this split (`here`) and the published run's recorded metrics (`decide`); logs the verdict.

    With `force`, a failed verdict comes back overridden: `publishes` is true and the reason says why."""
    recorded = recorded_metrics(path, published.run_id) if published else Side(pl.DataFrame())
    verdict = decide(candidate, published, recorded, here, config)
    if verdict.passed:
        log.info("quality gate passed: %s", verdict.reason)
    elif config.force:
        log.warning("quality gate failed but %s publishes anyway: %s", setting("force"), verdict.reason)
        return verdict.overridden()
    else:
        log.warning("quality gate rejected the run: %s", verdict.reason)
    return verdict
