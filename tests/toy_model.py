"""A model added from outside the package, as docs/models.md's "Adding a model" says: this module and its
`register` call, no other file touched. Imported before tasks.config (tests/test_adding_a_model.py runs `recs`
in a process that imports it first).

`toy`: each item scored by its number of training ratings raised to `power` (a ranking model, no ratings).
"""

from __future__ import annotations

import polars as pl
import torch
from pydantic import Field

from tasks.models import register
from tasks.models.base import Interactions, ModelParams, ModelSpec, Recommender, index_tensors


class ToyParams(ModelParams):
    """`toy`: items by their number of ratings to a power."""

    power: float = Field(1.0, gt=0, description="Exponent of each item's number of ratings.")


class Toy(Recommender):
    predicts_ratings = False

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items)
        self.register_buffer("item_scores", torch.zeros(n_items))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.item_scores.expand(len(users), -1).clone()


def fit_toy(
    interactions: Interactions,
    params: ToyParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[Toy, list[dict]]:
    _, items, _ = index_tensors(interactions.ratings, device)
    module = Toy(interactions.n_users, interactions.n_items).to(device)
    module.item_scores.copy_(torch.bincount(items, minlength=interactions.n_items).float().pow(params.power))
    return module, []


register("toy", ModelSpec(Toy, ToyParams, fit_toy, "items by their number of ratings to a power"))
