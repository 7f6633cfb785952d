"""The model registry: each name the config accepts, with its `ModelSpec`: the module class a checkpoint rebuilds,
the model's parameter group (the config's field of the same name, and its `--<name>-*` options), its fit, and what
it can do (predict ratings, start warm, train by shards).

Every fit has one signature (`tasks.models.base.Fit`): `fit(interactions, params, device, validation=None,
*, seed, label) -> (module, history rows)`, plus `init` for a model that starts warm (`WarmFit`). Nothing here
reads the pipeline's config: a model sees its own parameter group and nothing else.

Adding a model is its module and one line in `MODELS` (docs/models.md, "Adding a model"); the config composes its
parameter group from this registry when tasks.config is first imported.
"""

from __future__ import annotations

import sys

from tasks.models.base import Interactions, ModelFitError, ModelParams, ModelSpec, Range, Recommender
from tasks.models.closed_form import (
    BiasModel,
    BiasParams,
    Ease,
    EaseParams,
    Popularity,
    PopularityParams,
    fit_bias,
    fit_ease,
    fit_popularity,
    fold_in_bias,
    fold_in_ease,
    fold_in_popularity,
)
from tasks.models.embedding import (
    BprModel,
    BprParams,
    DotBiasParams,
    DotParams,
    EmbeddingDot,
    EmbeddingDotBias,
    EmbeddingNN,
    MlpParams,
    fit_bpr,
    fit_dot,
    fit_dot_bias,
    fit_mlp,
    fold_in_dot_bias,
)
from tasks.models.ials import Ials, IalsParams, fit_ials, fold_in_ials
from tasks.models.ials_shards import ShardedIals
from tasks.models.knn import ItemKnn, ItemKnnParams, UserKnn, UserKnnParams, fit_item_knn, fit_user_knn

__all__ = ["MODELS", "Interactions", "ModelFitError", "ModelParams", "ModelSpec", "Range", "Recommender", "register"]

KNN_SEARCH = {"neighbours": Range(10, 1000, log=True, integer=True), "shrinkage": Range(0.0, 200.0)}

MODELS: dict[str, ModelSpec] = {
    "dot_bias": ModelSpec(
        EmbeddingDotBias,
        DotBiasParams,
        fit_dot_bias,
        "embedding dot product + biases, sigmoid range; MSE",
        warm_start=True,
        search={
            "factors": Range(choices=(32, 64, 128), capacity=True),
            "epochs": Range(5, 40, integer=True),
            "learning_rate": Range(0.005, 0.2, log=True),
            "regularization": Range(0.01, 0.5, log=True),
        },
        fold_in=fold_in_dot_bias,
    ),
    "dot": ModelSpec(EmbeddingDot, DotParams, fit_dot, "embedding dot product; MSE"),
    "mlp": ModelSpec(EmbeddingNN, MlpParams, fit_mlp, "embeddings through an MLP, sigmoid range; MSE"),
    "user_knn": ModelSpec(
        UserKnn, UserKnnParams, fit_user_knn, "user-user kNN, mean-centred cosine", search=KNN_SEARCH
    ),
    "item_knn": ModelSpec(
        ItemKnn, ItemKnnParams, fit_item_knn, "item-item kNN, mean-centred cosine", search=KNN_SEARCH
    ),
    "bpr": ModelSpec(
        BprModel,
        BprParams,
        fit_bpr,
        "embeddings ranked by BPR on implicit feedback",
        search={
            "learning_rate": Range(3e-4, 0.03, log=True),
            "regularization": Range(1e-5, 0.1, log=True),
            "epochs": Range(10, 60, integer=True),
        },
    ),
    "ials": ModelSpec(
        Ials,
        IalsParams,
        fit_ials,
        "implicit ALS (Rendle et al.'s recipe), every rating a positive",
        warm_start=True,
        sharded=ShardedIals,
        # The unobserved weight as a multiple of the density rule: it follows the density of whatever is fitted.
        # The penalty is scaled by each row's count (the exponent stays 1, Rendle et al.'s recipe), so a setting
        # kept as it is would grow a user's penalty with their interactions; carried over the ratio of each user's
        # interactions, the penalty a user gets stays what it was in the search (docs/models.md, with the figures).
        search={
            "factors": Range(choices=(32, 64, 128, 256), capacity=True),
            "regularization": Range(1e-3, 0.3, log=True, carry="over interactions per user"),
            "unobserved_weight_ratio": Range(0.03, 30.0, log=True),
            "epochs": Range(4, 24, integer=True),
        },
        reports_epochs=True,
        fold_in=fold_in_ials,
    ),
    "ease": ModelSpec(
        Ease,
        EaseParams,
        fit_ease,
        "EASE closed-form item-item model on implicit feedback",
        search={"l2": Range(1.0, 5000.0, log=True, carry="times users"), "dropout": Range(0.0, 0.9)},
        fold_in=fold_in_ease,
    ),
    "bias": ModelSpec(
        BiasModel, BiasParams, fit_bias, "global mean + damped user and item biases", fold_in=fold_in_bias
    ),
    "popularity": ModelSpec(
        Popularity, PopularityParams, fit_popularity, "most-rated items first", fold_in=fold_in_popularity
    ),
}


def register(name: str, spec: ModelSpec) -> None:
    """Add a model from outside this package (a plugin, a test): the same as a line in `MODELS`, made before
    tasks.config composes the config from the registry.

    Raises:
        ValueError: `name` is taken or is not a lower-case identifier (it becomes a config field and options).
        RuntimeError: tasks.config is already imported, so the config could not offer the model's settings.
    """
    if not name.isidentifier() or name != name.lower() or name in MODELS:
        raise ValueError(f"model name {name!r}: expected a new lower-case identifier (taken: {', '.join(MODELS)})")
    if "tasks.config" in sys.modules:
        raise RuntimeError(
            f"register model {name!r} before tasks.config is imported: the config composes each model's parameter "
            "group from the registry once"
        )
    MODELS[name] = spec
