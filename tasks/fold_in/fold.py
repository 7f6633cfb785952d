"""Fold users into the published model and make their lists, as the nightly makes everyone's.

The published run's folder holds what this needs: the model whose lists are live (`model.pt`), the one behind the
stars when it is another (`rater.pt`), the id maps and the business rules it resolved. Each model that can fold in
(`ModelSpec.fold_in`: ials solves the users' vectors in closed form, dot_bias fits their vector and bias with the
items fixed, ease and the baselines score a user's interactions directly) gives a module over only these users; the
lists then come from the nightly's own `recommend_with_reasons`: every item the user has interacted with, today's
included, left out, the rules applied, the stars and the reasons beside each item.

Interactions with items the published model has no vector for (new since the night) are left out: those items
cannot be recommended until the nightly fits them, and a user with nothing else keeps the fallback list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checkpoint import Checkpoint
from tasks.config import PipelineConfig
from tasks.models import MODELS
from tasks.models.base import FoldIn, Interactions
from tasks.recommend import recommend_with_reasons
from tasks.reindex import IdMaps
from tasks.rules import ListRules
from tasks.run_folder import RunFolder
from tasks.train import TrainedModel, pick_device
from warehouse.runs import HISTORY_SCHEMA

log = logging.getLogger(__name__)


class CannotFoldIn(RuntimeError):
    """The published model has no fold-in: its users wait for the nightly."""


@dataclass(frozen=True)
class FoldedLists:
    """The folded-in users' lists and what goes beside them."""

    lists: pl.DataFrame  # user_id, item_id, rank, score, predicted_rating
    reasons: pl.DataFrame  # as the nightly's
    users: pl.DataFrame  # user_id: every user folded in (those with no list left rated every allowed item)
    n_new_items: int  # items of the users' interactions that the published model has no vector for
    users_on_fallback: pl.Series  # user_ids whose every interaction is with such items: they keep the fallback


@dataclass(frozen=True)
class PublishedModel:
    """The published run's models, as its folder keeps them."""

    folder: RunFolder
    model: str
    rating_model: str | None

    def checkpoint_of(self, name: str) -> Path:
        return self.folder.published_model if name == self.model else self.folder.rater

    def check(self) -> None:
        """CannotFoldIn, saying why, when a model the lists need has no file or no fold-in."""
        for name in filter(None, (self.model, self.rating_model)):
            if MODELS[name].fold_in is None:
                raise CannotFoldIn(
                    f"the published model {name} cannot fold in new users (docs/models.md, 'Folding in new users'): "
                    "their lists wait for the nightly"
                )
            if not self.checkpoint_of(name).exists():
                raise CannotFoldIn(
                    f"run {self.folder.run_id} kept no {self.checkpoint_of(name).name} for {name} (a run from before "
                    "fold-ins, or its folder was removed): its users wait for the nightly"
                )


def _indexed(histories: pl.DataFrame, maps: IdMaps) -> tuple[pl.DataFrame, IdMaps, torch.Tensor, int, pl.Series]:
    """The histories on the published items' indices, the folded users indexed 0..n-1 (by id), each one's row in the
    published model (-1: new), how many items have no vector, and the users left with no interaction."""
    known_items = histories.join(maps.items, on="item_id")
    n_new_items = histories.join(maps.items, on="item_id", how="anti")["item_id"].n_unique()
    users = known_items.select(pl.col("user_id").unique().sort()).with_row_index("user_idx")
    users = users.with_columns(pl.col("user_idx").cast(pl.Int32))
    on_fallback = histories.join(users, on="user_id", how="anti")["user_id"].unique().sort()
    rows = known_items.join(users, on="user_id").select("user_idx", "item_idx", "rating")
    before = users.join(maps.users.rename({"user_idx": "before"}), on="user_id", how="left")["before"]
    known = torch.from_numpy(before.fill_null(-1).to_numpy().astype(np.int64))
    return rows.sort("user_idx", "item_idx"), IdMaps(users, maps.items), known, n_new_items, on_fallback


def _folded(name: str, checkpoint: Checkpoint, users: FoldIn, device: torch.device) -> TrainedModel:
    """The model a checkpoint holds with these users folded in."""
    spec, params = MODELS[name], checkpoint.pipeline_config().params_for(name)
    assert spec.fold_in is not None  # PublishedModel.check said so
    module = spec.fold_in(checkpoint.module().to(device), params, users, device)
    scale = checkpoint.training["rating_scale"]
    return TrainedModel(
        name, module, device, pl.DataFrame(schema=HISTORY_SCHEMA), 0.0, users.interactions.ratings.height, tuple(scale)
    )


def fold_in_lists(published: PublishedModel, histories: pl.DataFrame, config: PipelineConfig) -> FoldedLists:
    """The lists of the users in `histories` (user_id, item_id, rating: all they have interacted with), from the
    published model with them folded in, under the published run's list settings (top_n, reasons) and rules."""
    published.check()
    stored = published.folder
    maps = IdMaps.load(stored.path)
    rows, folded_maps, known, n_new_items, on_fallback = _indexed(histories, maps)
    checkpoint = Checkpoint.load(stored.published_model)
    fitted = checkpoint.training["n_ratings"]
    users = FoldIn(Interactions(rows, folded_maps.n_users, maps.n_items), known, fitted, maps.n_users)
    device = pick_device(config.device)
    model = _folded(published.model, checkpoint, users, device)
    rater = None
    if published.rating_model == published.model:
        rater = model
    elif published.rating_model is not None:
        rater = _folded(published.rating_model, Checkpoint.load(stored.rater), users, device)
    rules = ListRules.load(stored.path, maps.n_items)
    lists, reasons = recommend_with_reasons(model, rows, folded_maps, config, rater, rules=rules)
    return FoldedLists(lists, reasons, folded_maps.users.select("user_id"), n_new_items, on_fallback)


@task(name="fold-in-lists", cache_policy=NO_CACHE)
def fold_in_lists_task(published: PublishedModel, histories: pl.DataFrame, config: PipelineConfig) -> FoldedLists:
    """Prefect wrapper of `fold_in_lists`."""
    folded = fold_in_lists(published, histories, config)
    log.info("folded %d users into %s: %d rows", folded.users.height, published.model, folded.lists.height)
    return folded
