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

import torch

from tasks.models.base import Recommender, RatingMatrix, index_tensors


class Ease(Recommender):
    """Scores = X_u B, B the closed-form item-item weights."""

    predicts_ratings = False

    def __init__(self, n_users: int, n_items: int, nnz: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items, nnz=nnz)
        self.history = RatingMatrix(n_users, n_items, nnz)
        self.register_buffer("weights", torch.zeros((n_items, n_items)))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.history.rows(users, binary=True) @ self.weights


class BiasModel(Recommender):
    """rating = mu + b_u + b_i."""

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

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items)
        self.register_buffer("counts", torch.zeros(n_items))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()


@torch.no_grad()
def fit_ease(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`ease` with `config.ease`; the Gram matrix is accumulated `score_chunk_users` users at a time."""
    users, items, _ = index_tensors(train, device)
    history = RatingMatrix.build(users, items, torch.ones(len(users), device=device), (n_users, n_items))
    gram = torch.zeros((n_items, n_items), device=device)
    for start in range(0, n_users, config.score_chunk_users):
        rows = history.rows(torch.arange(start, min(start + config.score_chunk_users, n_users), device=device), binary=True)
        gram += rows.T @ rows
    p = config.ease.dropout
    gram.diagonal().add_(config.ease.l2 + p / (1 - p) * gram.diagonal())
    inverse = torch.linalg.inv(gram.double() if device.type == "cpu" else gram)
    weights = (inverse / -inverse.diagonal()).float()
    weights.fill_diagonal_(0.0)
    module = Ease(n_users, n_items, len(history.values)).to(device)
    module.history.load_state_dict(history.state_dict())
    module.weights.copy_(weights)
    return module, []


@torch.no_grad()
def fit_bias(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`bias` with `config.bias`."""
    users, items, ratings = index_tensors(train, device)
    mu = ratings.mean()
    zeros_i, zeros_u = torch.zeros(n_items, device=device), torch.zeros(n_users, device=device)
    item_bias = zeros_i.index_add(0, items, ratings - mu) / (torch.bincount(items, minlength=n_items) + config.bias.item_damping).clamp(min=1e-12)
    residual = ratings - mu - item_bias[items]
    user_bias = zeros_u.index_add(0, users, residual) / (torch.bincount(users, minlength=n_users) + config.bias.user_damping).clamp(min=1e-12)
    module = BiasModel(n_users, n_items).to(device)
    module.global_mean.copy_(mu)
    module.user_bias.copy_(user_bias)
    module.item_bias.copy_(item_bias)
    return module, []


@torch.no_grad()
def fit_popularity(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`popularity`: counts of training ratings per item."""
    _, items, _ = index_tensors(train, device)
    module = Popularity(n_users, n_items).to(device)
    module.counts.copy_(torch.bincount(items, minlength=n_items).float())
    return module, []
