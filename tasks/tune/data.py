"""The data a search scores its trials on: carved from the training split, never the test split."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.config import PipelineConfig
from tasks.split import split_ratings


@dataclass(frozen=True)
class TuningData:
    """A search's fit and validation parts (user indices compact over the sampled users) and what the carry to the
    full data needs."""

    fit: pl.DataFrame  # user_idx, item_idx, rating
    validation: pl.DataFrame
    n_users: int  # the sampled users
    n_items: int  # the full catalogue's indices
    n_users_full: int  # every user of the training split
    # The same sample split again with another seed: the search's choice is confirmed there, on validation users'
    # interactions it was not chosen on (the best of many trials on one split is flattered by that split).
    confirm_fit: pl.DataFrame
    confirm_validation: pl.DataFrame

    @property
    def sampled(self) -> bool:
        return self.n_users < self.n_users_full

    @property
    def users_growth(self) -> float:
        """How many times more users a nightly's fit sees than a trial's (`Range.carry` "times users")."""
        return self.n_users_full / max(self.n_users, 1)

    @property
    def per_user_growth(self) -> float:
        """How many times more interactions a user has in a nightly's fit than in a trial's: the validation split's
        holdout (`Range.carry` "over interactions per user"). The user sample does not change a user's."""
        return (self.fit.height + self.validation.height) / max(self.fit.height, 1)


def sample_users(train: pl.DataFrame, n_users: int | None, seed: int) -> pl.DataFrame:
    """At most `n_users` users of `train`, each with all their interactions (a seeded draw), renumbered 0..n-1."""
    users = train.select(pl.col("user_idx").unique().sort())
    if n_users is not None and users.height > n_users:
        users = users.sample(n_users, seed=seed).sort("user_idx")
    mapping = users.with_row_index("sample_idx").with_columns(pl.col("sample_idx").cast(pl.Int64))
    return (
        train.join(mapping, on="user_idx", how="inner")
        .drop("user_idx")
        .rename({"sample_idx": "user_idx"})
        .select(train.columns)
    )


def tuning_data(train: pl.DataFrame, n_items: int, config: PipelineConfig) -> TuningData:
    """The search's data from a run's training split (the test split is not an argument: it is never read): a
    sample of `tune.sample_users` users, split again per user by the run's split method into fit and validation
    (`tune.validation_fraction`, seed + 1, as benchmarks/tune.py carves it), and once more with seed + 2 to
    confirm the choice on."""
    settings = config.tune
    sample = sample_users(train, settings.sample_users, config.seed)
    fit, validation = split_ratings(sample, config.split, settings.validation_fraction, config.seed + 1)
    confirm = split_ratings(sample, config.split, settings.validation_fraction, config.seed + 2)
    n_users = sample["user_idx"].n_unique()
    return TuningData(fit, validation, n_users, n_items, train["user_idx"].n_unique(), *confirm)
