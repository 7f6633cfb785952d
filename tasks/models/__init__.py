"""The model registry: each name the config accepts, the module class a checkpoint rebuilds and its fit.

Every fit has the same signature: `fit(train, n_users, n_items, config, device, validation=None,
label="train") -> (module, history rows)`, with `train` the indexed ratings (`user_idx`, `item_idx`,
`rating`), `validation` held-out ratings whose loss the gradient-trained models record per epoch, and
`label` the history's split name ("train", or "refit" for the model refitted on all ratings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.models.base import ModelFitError, Recommender
from tasks.models.closed_form import BiasModel, Ease, Popularity, fit_bias, fit_ease, fit_popularity
from tasks.models.embedding import (
    BprModel, EmbeddingDot, EmbeddingDotBias, EmbeddingNN, fit_bpr, fit_dot, fit_dot_bias, fit_mlp,
)  # fmt: skip
from tasks.models.knn import ItemKnn, UserKnn, fit_item_knn, fit_user_knn

__all__ = ["MODELS", "ModelFitError", "ModelSpec", "Recommender"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its module class and the function that fits it."""

    module: type[Recommender]
    fit: Callable
    description: str


MODELS: dict[str, ModelSpec] = {
    "dot_bias": ModelSpec(EmbeddingDotBias, fit_dot_bias, "embedding dot product + biases, sigmoid range; MSE"),
    "dot": ModelSpec(EmbeddingDot, fit_dot, "embedding dot product; MSE"),
    "mlp": ModelSpec(EmbeddingNN, fit_mlp, "embeddings through an MLP, sigmoid range; MSE"),
    "user_knn": ModelSpec(UserKnn, fit_user_knn, "user-user kNN, mean-centred cosine"),
    "item_knn": ModelSpec(ItemKnn, fit_item_knn, "item-item kNN, mean-centred cosine"),
    "bpr": ModelSpec(BprModel, fit_bpr, "embeddings ranked by BPR on implicit feedback"),
    "ease": ModelSpec(Ease, fit_ease, "EASE closed-form item-item model on implicit feedback"),
    "bias": ModelSpec(BiasModel, fit_bias, "global mean + damped user and item biases"),
    "popularity": ModelSpec(Popularity, fit_popularity, "most-rated items first"),
}
