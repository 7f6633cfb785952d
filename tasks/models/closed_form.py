"""Models fitted in closed form (no gradient descent): EASE and the two baselines.

- `ease`: Steck, "Embarrassingly Shallow Autoencoders" (2019). With X the binary users x items matrix,
  G = X'X + l2 * I + dropout / (1 - dropout) * diag(X'X), P = inverse(G) (the dropout term is the
  emphasised-denoising penalty of Steck, "Autoencoders that don't overfit towards the identity", 2020), the item-item weights are B = -P / diag(P) with a zero diagonal, and a
  user's scores are their row of X times B. Computed with torch, so on a GPU when there is one.
- `bias`: global mean plus damped item and user biases (Koren's baseline predictor):
  b_i = sum(r - mu) / (n_i + item_damping), b_u = sum(r - mu - b_i) / (n_u + user_damping).
- `popularity`: the number of ratings an item has; the same list for everyone (minus what they rated).
"""

from __future__ import annotations

import polars as pl
import torch
from pydantic import Field

from tasks.models.base import FoldIn, Interactions, ModelParams, RatingMatrix, Recommender, index_tensors


class Ease(Recommender):
    """Scores = X_u B, B the closed-form item-item weights."""

    predicts_ratings = False

    weights: torch.Tensor

    def __init__(self, n_users: int, n_items: int, nnz: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items, nnz=nnz)
        self.history = RatingMatrix(n_users, n_items, nnz)
        self.register_buffer("weights", torch.zeros((n_items, n_items)))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.history.rows(users, binary=True) @ self.weights

    def item_affinity(self):
        # score(u, i) = sum over the user's rated j of B[j, i]: each term is that item's contribution
        return lambda items, crow, rated: self.weights[rated, items.repeat_interleave(crow.diff())]


class BiasModel(Recommender):
    """rating = mu + b_u + b_i."""

    global_mean: torch.Tensor
    user_bias: torch.Tensor
    item_bias: torch.Tensor

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items)
        self.register_buffer("global_mean", torch.zeros(()))
        self.register_buffer("user_bias", torch.zeros(n_users))
        self.register_buffer("item_bias", torch.zeros(n_items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.global_mean + self.user_bias[users] + self.item_bias[items]

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.global_mean + self.user_bias[users, None] + self.item_bias[None, :]

    def item_biases(self) -> torch.Tensor:
        return self.item_bias


class Popularity(Recommender):
    """score = the item's number of training ratings."""

    predicts_ratings = False

    counts: torch.Tensor

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items)
        self.register_buffer("counts", torch.zeros(n_items))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()


class EaseParams(ModelParams):
    """`ease`: Steck's EASE, a closed-form item-item model on implicit feedback."""

    l2: float = Field(100.0, gt=0, description="Ridge penalty added to the Gram matrix's diagonal.")
    dropout: float = Field(
        0.67,
        ge=0,
        lt=1,
        description="Emphasised-denoising penalty (Steck 2020, EDLAE): each item's diagonal also gets "
        "dropout / (1 - dropout) times its own count, so popular items are penalised more; 0 is plain EASE.",
    )
    chunk_users: int = Field(
        2048, ge=1, description="Users whose rows are added to the Gram matrix at once (a chunk x items block)."
    )
    # 2 GB: 22,360 items. Its fit holds about six such matrices at once on CPU (the Gram matrix, its inverse in
    # float64, the weights), 12 GB at the bound; its lists score users x items in chunks like any model's.
    max_matrix_bytes: int = Field(
        2_000_000_000,
        ge=0,
        description="ease joins the default models when its items x items matrix of float32 fits in this many bytes "
        "(2 GB: 22,360 items); a larger catalogue never tries it unless models names it.",
    )

    def fits(self, n_items: int) -> bool:
        """Whether a catalogue of `n_items` is small enough for the default models to include ease."""
        return 4 * n_items * n_items <= self.max_matrix_bytes


@torch.no_grad()
def fit_ease(
    interactions: Interactions,
    params: EaseParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[Ease, list[dict]]:
    """`ease`; the Gram matrix is accumulated `chunk_users` users at a time."""
    n_users, n_items = interactions.n_users, interactions.n_items
    users, items, _ = index_tensors(interactions.ratings, device)
    history = RatingMatrix.build(users, items, torch.ones(len(users), device=device), (n_users, n_items))
    gram = torch.zeros((n_items, n_items), device=device)
    for start in range(0, n_users, params.chunk_users):
        rows = history.rows(torch.arange(start, min(start + params.chunk_users, n_users), device=device), binary=True)
        gram += rows.T @ rows
    p = params.dropout
    gram.diagonal().add_(params.l2 + p / (1 - p) * gram.diagonal())
    # the Gram matrix plus a positive diagonal is positive definite: a Cholesky inverse, half the work of LU's
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram.double() if device.type == "cpu" else gram))
    weights = (inverse / -inverse.diagonal()).float()
    weights.fill_diagonal_(0.0)
    module = Ease(n_users, n_items, len(history.values)).to(device)
    module.history.load_state_dict(history.state_dict())
    module.weights.copy_(weights)
    return module, []


class BiasParams(ModelParams):
    """`bias`: global mean plus damped user and item biases (no personalisation beyond the user's offset)."""

    item_damping: float = Field(5.0, ge=0, description="Item bias = sum of residuals / (count + this).")
    user_damping: float = Field(0.0, ge=0, description="User bias = sum of residuals / (count + this).")


@torch.no_grad()
def fit_bias(
    interactions: Interactions,
    params: BiasParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[BiasModel, list[dict]]:
    """`bias`: the damped means of the residuals, items first, then users."""
    n_users, n_items = interactions.n_users, interactions.n_items
    users, items, ratings = index_tensors(interactions.ratings, device)
    mu = ratings.mean()
    zeros_i, zeros_u = torch.zeros(n_items, device=device), torch.zeros(n_users, device=device)
    item_counts = torch.bincount(items, minlength=n_items) + params.item_damping
    item_bias = zeros_i.index_add(0, items, ratings - mu) / item_counts.clamp(min=1e-12)
    residual = ratings - mu - item_bias[items]
    user_counts = torch.bincount(users, minlength=n_users) + params.user_damping
    user_bias = zeros_u.index_add(0, users, residual) / user_counts.clamp(min=1e-12)
    module = BiasModel(n_users, n_items).to(device)
    module.global_mean.copy_(mu)
    module.user_bias.copy_(user_bias)
    module.item_bias.copy_(item_bias)
    return module, []


class PopularityParams(ModelParams):
    """`popularity`: no settings; the same list for everyone, most-rated first."""


@torch.no_grad()
def fit_popularity(
    interactions: Interactions,
    params: PopularityParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[Popularity, list[dict]]:
    """`popularity`: counts of training ratings per item."""
    _, items, _ = index_tensors(interactions.ratings, device)
    module = Popularity(interactions.n_users, interactions.n_items).to(device)
    module.counts.copy_(torch.bincount(items, minlength=interactions.n_items).float())
    return module, []


# Fold-ins (tasks/fold_in): these models score a user from their interactions and what the fit learnt of the items,
# so a user the fit never saw, or one whose interactions changed, is scored as the fit would score them.


def _history(users: FoldIn, device: torch.device) -> RatingMatrix:
    user, item, rating = index_tensors(users.interactions.ratings, device)
    return RatingMatrix.build(user, item, rating, (users.interactions.n_users, users.interactions.n_items))


def fold_in_ease(module: Ease, params: EaseParams, users: FoldIn, device: torch.device) -> Ease:
    """The users' rows of X beside the fitted item-item weights: their scores are X_u B, exactly as in the fit."""
    history = _history(users, device)
    with torch.device("meta"):  # the items x items weights are the fit's, never allocated again
        folded = Ease(users.interactions.n_users, users.interactions.n_items, len(history.values))
    folded.history = history
    folded.weights = module.weights.to(device)
    return folded


@torch.no_grad()
def fold_in_bias(module: BiasModel, params: BiasParams, users: FoldIn, device: torch.device) -> BiasModel:
    """Each user's bias from their ratings against the fitted mean and item biases, as the fit computes it."""
    user, item, rating = index_tensors(users.interactions.ratings, device)
    k = users.interactions.n_users
    mean, item_bias = module.global_mean.to(device), module.item_bias.to(device)
    residual = torch.zeros(k, device=device).index_add_(0, user, rating - mean - item_bias[item])
    folded = BiasModel(0, 0)
    folded.init_args = {"n_users": k, "n_items": len(item_bias)}
    folded.global_mean, folded.item_bias = mean, item_bias
    folded.user_bias = residual / (torch.bincount(user, minlength=k).float() + params.user_damping).clamp(min=1e-12)
    return folded


def fold_in_popularity(module: Popularity, params: PopularityParams, users: FoldIn, device: torch.device) -> Popularity:
    """The same counts for everyone: a user's list is the most popular items they have not interacted with."""
    folded = Popularity(0, 0)
    folded.init_args = {"n_users": users.interactions.n_users, "n_items": users.interactions.n_items}
    folded.counts = module.counts.to(device)
    return folded
