"""Is a change in a metric more than noise? A paired bootstrap over the users of two runs' test sets.

The gate compares a candidate run with the published lists on one number per metric. On a small or temporal
test set that number moves by more than the gate's tolerance from night to night by chance alone: ML-100k's
temporal nDCG@10 sits near 0.03, where a lucky night becomes a baseline nothing later reaches. So a drop
must also be unlikely to be noise: over the users in both runs' test sets, resample users with replacement,
recompute the difference of the metric each time, and take the central `confidence` interval of those
differences. The drop counts only when the whole interval lies on the worse side of zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class PairedInterval:
    """The candidate's metric minus the baseline's over the users both were judged on, with its interval."""

    difference: float
    low: float
    high: float
    n_users: int
    confidence: float

    def describe(self, name: str) -> str:
        return (
            f"{self.confidence:.0%} interval of the paired {name} difference over {self.n_users:,} users "
            f"[{self.low:+.4f}, {self.high:+.4f}]"
        )


def _statistic(metric: str, values: dict[str, np.ndarray], picks: np.ndarray) -> np.ndarray:
    """The metric of each resample (rows of `picks`: user positions): mean nDCG, or RMSE from the users'
    squared errors and counts."""
    if metric == "rmse":
        return np.sqrt(values["squared_error"][picks].sum(1) / np.maximum(values["n_ratings"][picks].sum(1), 1))
    return values[metric][picks].mean(1)


def paired_interval(
    candidate: pl.DataFrame, baseline: pl.DataFrame, metric: str, confidence: float, resamples: int, seed: int = 0
) -> PairedInterval | None:
    """The bootstrap interval of candidate minus baseline for `metric` (`ndcg` or `rmse`), or None when the two
    runs share no user with it.

    Args:
        candidate, baseline: per-user metrics in long form: `user_id`, `metric` (`ndcg`; or `squared_error`
            and `n_ratings` for RMSE), `value`.
        confidence: the interval's coverage, e.g. 0.95.
        resamples: bootstrap resamples of the users.
    """
    needed = ["squared_error", "n_ratings"] if metric == "rmse" else [metric]
    wide = [
        frame.filter(pl.col("metric").is_in(needed)).pivot(on="metric", index="user_id", values="value")
        for frame in (candidate, baseline)
    ]
    if any(set(needed) - set(w.columns) for w in wide):
        return None
    if wide[0].schema["user_id"] != wide[1].schema["user_id"]:  # a warehouse whose ids became text (docs/warehouse.md)
        wide = [w.with_columns(pl.col("user_id").cast(pl.String)) for w in wide]
    paired = wide[0].join(wide[1], on="user_id", suffix="_baseline").drop_nulls().sort("user_id")
    n = paired.height
    if n == 0:
        return None
    ours = {name: paired[name].to_numpy() for name in needed}
    theirs = {name: paired[f"{name}_baseline"].to_numpy() for name in needed}
    everyone = np.arange(n)[None, :]
    difference = float(_statistic(metric, ours, everyone)[0] - _statistic(metric, theirs, everyone)[0])
    rng = np.random.default_rng(seed)
    draws = []
    batch = max(1, (1 << 24) // n)  # resamples per batch: about 16M user positions at a time
    for start in range(0, resamples, batch):
        picks = rng.integers(0, n, size=(min(batch, resamples - start), n))
        draws.append(_statistic(metric, ours, picks) - _statistic(metric, theirs, picks))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(draws), [tail, 1 - tail])
    return PairedInterval(difference, float(low), float(high), n, confidence)
