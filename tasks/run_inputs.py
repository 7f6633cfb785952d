"""What a run's stages pass each other: its prepared data in one value, and every model it trained.

`RunInputs` is what every stage after the split reads (the config, the run's folder, the id maps, the business rules,
and the ratings and the split as the folder's files, which the stage that needs them reads and drops after: the
run never holds them for its whole length); `Candidates` collects each trained model with its metrics, picks the one to publish
and the one behind its stars, and gives the gate what it judges.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import polars as pl

from tasks.config import PipelineConfig
from tasks.evaluate import comparison_table, published_model, rating_model
from tasks.gate import GateVerdict, Side, candidate_metrics, candidate_user_metrics
from tasks.ingest import Dataset
from tasks.reindex import IdMaps
from tasks.rules import ListRules
from tasks.run_folder import RunFolder, read_ratings
from tasks.train import TrainedModel
from warehouse.runs import ListExtras, ListFiles


@dataclass(frozen=True)
class RunInputs:
    """The run's prepared data: every stage after the split reads it."""

    config: PipelineConfig
    folder: RunFolder
    dataset: Dataset  # as parsed: the items file, the layout, the bad and duplicate row counts
    maps: IdMaps
    rules: ListRules

    @property
    def train(self) -> pl.DataFrame:
        return read_ratings(self.folder.train)

    @property
    def test(self) -> pl.DataFrame:
        return read_ratings(self.folder.test)

    def scan_ratings(self) -> pl.LazyFrame:
        """Every rating, as a query over the folder's file (for what only counts them)."""
        return pl.scan_parquet(self.folder.ratings)

    def scan_train(self) -> pl.LazyFrame:
        """The training split, as a query over the folder's file."""
        return pl.scan_parquet(self.folder.train)

    def with_settings(self, config: PipelineConfig) -> RunInputs:
        """The same data under other settings (the gate trains the published run's models with theirs)."""
        return replace(self, config=config)

    @property
    def catalogue(self) -> int:
        """The items a model could recommend from the training split: what coverage is a share of."""
        return self.scan_train().select(pl.col("item_idx").n_unique()).collect(engine="streaming").item()


@dataclass(frozen=True)
class Lists:
    """The lists a run made, what goes beside them, the refits' loss histories, and the verdict after the lists'
    own checks (coverage, churn)."""

    recommendations: pl.DataFrame | ListFiles  # on a cluster, the shards' files
    extras: ListExtras
    refit_histories: dict[str, pl.DataFrame]
    verdict: GateVerdict


@dataclass(frozen=True)
class Choice:
    """The model whose lists are published, the rating model behind its stars (None when no model predicts
    ratings), and why that model."""

    model: str
    stars: str | None
    why: str

    @property
    def models(self) -> tuple[str, str | None]:
        return self.model, self.stars


@dataclass
class Candidates:
    """Every model the run trained: the model, where it trained, its metrics and the per-user values behind them."""

    models: dict[str, TrainedModel] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, pl.DataFrame] = field(default_factory=dict)
    per_user: dict[str, pl.DataFrame] = field(default_factory=dict)

    def add(self, model: TrainedModel, device: str, metrics: pl.DataFrame, per_user: pl.DataFrame) -> None:
        self.models[model.name], self.devices[model.name] = model, device
        self.metrics[model.name], self.per_user[model.name] = metrics, per_user

    def choose(self, config: PipelineConfig) -> Choice:
        """The config's `model` or the best by nDCG@k, and the lowest-RMSE rating model for the stars."""
        model, why = published_model(self.metrics, config)
        return Choice(model, rating_model(self.metrics), why)

    def judged(self, choice: Choice, maps: IdMaps) -> Side:
        """What the gate judges: the chosen models' metrics and, by user id, the per-user values behind them."""
        return Side(
            candidate_metrics(self.metrics, choice.model, choice.stars),
            candidate_user_metrics(self.per_user, choice.model, choice.stars, maps),
        )

    def comparison(self) -> pl.DataFrame:
        return comparison_table(self.metrics)
