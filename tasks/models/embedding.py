"""The embedding models, trained by minibatch gradient descent in torch.

- `dot_bias` (EmbeddingDotBias): sigmoid(u . v + b_u + b_i) scaled to the rating range; MSE. The seeds' model.
- `dot` (EmbeddingDot): u . v, no biases, no sigmoid; MSE.
- `mlp` (EmbeddingNN): [u, v] through an MLP, sigmoid range out; MSE (fastai's EmbeddingNN).
- `bpr` (BprModel): u . v + b_i ranked by Bayesian personalised ranking on implicit feedback.

Each model's parameter group sits beside its class and its fit. `dot_bias` trains by per-rating SGD
(tasks/models/sgd.py), the others by the minibatch loop of tasks/models/training.py.

The searched defaults were chosen by `benchmarks/tune.py`: a grid per model on ML-100k, scored on a
validation split carved from the stratified training split (per user 75/25 of the training ratings, seed
43), RMSE for rating models and nDCG@10 for ranking models, the cheapest point within 0.001 of the best;
the test split was never used. The grids and scores are in benchmarks/README.md.
"""

from __future__ import annotations

import polars as pl
import torch
from pydantic import Field
from torch import nn

from tasks.models.base import (
    MAX_EPOCHS,
    FoldIn,
    InitialRows,
    Interactions,
    ModelParams,
    Recommender,
    apply_initial_rows,
    column_tensors,
    index_tensors,
)
from tasks.models.sgd import auto_batch_size, sgd_fit_dot_bias
from tasks.models.training import adam, fit_mse, minibatch_fit, validation_loss


def _embedding(n: int, dim: int, std: float = 0.01) -> nn.Embedding:
    embedding = nn.Embedding(n, dim)
    nn.init.trunc_normal_(embedding.weight, std=std) if std else nn.init.zeros_(embedding.weight)
    return embedding


def _rows(embedding: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    # index_select's backward (index_add) is about a sixth faster per training step on CPU than the
    # embedding op's (embedding_dense_backward); the result is the same.
    return embedding.weight.index_select(0, index)


class _SigmoidRange(Recommender):
    y_range: torch.Tensor

    def __init__(self, **init_args) -> None:
        super().__init__(**init_args)
        self.register_buffer("y_range", torch.tensor(init_args["y_range"], dtype=torch.float32))

    def _scale(self, logits: torch.Tensor) -> torch.Tensor:
        low, high = self.y_range[0], self.y_range[1]
        return torch.sigmoid(logits) * (high - low) + low


class EmbeddingDotBias(_SigmoidRange):
    """rating = sigmoid(u . v + b_u + b_i) scaled to `y_range` (fastai's EmbeddingDotBias)."""

    def __init__(self, n_users: int, n_items: int, factors: int, y_range: tuple[float, float]) -> None:
        super().__init__(n_users=n_users, n_items=n_items, factors=factors, y_range=tuple(y_range))
        self.user_factors = _embedding(n_users, factors)
        self.item_factors = _embedding(n_items, factors)
        self.user_bias = _embedding(n_users, 1, std=0)
        self.item_bias = _embedding(n_items, 1, std=0)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u, v = _rows(self.user_factors, users), _rows(self.item_factors, items)
        b_u, b_i = _rows(self.user_bias, users).squeeze(1), _rows(self.item_bias, items).squeeze(1)
        return self._scale((u * v).sum(1) + b_u + b_i)

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self._scale(self.rank_users(users))

    def rank_users(self, users: torch.Tensor) -> torch.Tensor:
        """The logits u . v + b_u + b_i as one matrix product of [u, b_u, 1] and [v, 1, b_i]: no pass over the
        (users x items) block for the biases or the sigmoid, which top-k does not need."""
        ones_u = torch.ones(len(users), 1, device=users.device, dtype=self.user_bias.weight.dtype)
        ones_i = torch.ones_like(self.item_bias.weight)
        left = torch.cat([self.user_factors(users), self.user_bias(users), ones_u], dim=1)
        right = torch.cat([self.item_factors.weight, ones_i, self.item_bias.weight], dim=1)
        return left @ right.T

    def rank_to_score(self, values: torch.Tensor) -> torch.Tensor:
        return self._scale(values)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors.weight

    def item_biases(self) -> torch.Tensor:
        return self.item_bias.weight.squeeze(1)


class EmbeddingDot(Recommender):
    """rating = u . v: plain matrix factorisation, no biases, no output range."""

    predicts_unseen = False  # an untrained vector's dot product is near 0: the `bias` fallback predicts instead

    def __init__(self, n_users: int, n_items: int, factors: int, init_std: float = 0.1) -> None:
        super().__init__(n_users=n_users, n_items=n_items, factors=factors, init_std=init_std)
        # Larger initial vectors than dot_bias: with no biases, u . v must reach the ratings (~3.5) on its own.
        self.user_factors = _embedding(n_users, factors, init_std)
        self.item_factors = _embedding(n_items, factors, init_std)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.terms(users, items)[0]

    def terms(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ratings and the L2 penalty, from one lookup per table."""
        u, v = _rows(self.user_factors, users), _rows(self.item_factors, items)
        return (u * v).sum(1), (u.pow(2).sum(1) + v.pow(2).sum(1)).mean()

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors(users) @ self.item_factors.weight.T

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors.weight


class EmbeddingNN(_SigmoidRange):
    """rating = sigmoid(MLP([u, v])) scaled to `y_range` (fastai's EmbeddingNN)."""

    def __init__(
        self, n_users: int, n_items: int, factors: int, hidden: list[int], dropout: float, y_range: tuple[float, float]
    ) -> None:
        super().__init__(
            n_users=n_users,
            n_items=n_items,
            factors=factors,
            hidden=list(hidden),
            dropout=dropout,
            y_range=tuple(y_range),
        )
        self.user_factors = _embedding(n_users, factors)
        self.item_factors = _embedding(n_items, factors)
        layers: list[nn.Module] = []
        width = 2 * factors
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.layers = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([self.user_factors(users), self.item_factors(items)], dim=1)
        return self._scale(self.layers(pairs).squeeze(1))

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        n_items = self.item_factors.num_embeddings
        width = max(2 * self.init_args["factors"], *self.init_args["hidden"])
        per_pass = max(1, (1 << 24) // (n_items * width))  # users per pass: ~16M activations at once
        items = torch.arange(n_items, device=users.device)
        parts = [
            self.forward(part.repeat_interleave(n_items), items.repeat(len(part))).view(len(part), n_items)
            for part in users.split(per_pass)
        ]
        return torch.cat(parts)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors.weight


class BprModel(Recommender):
    """score = u . v + b_i, trained to rank a user's items above sampled others (Rendle et al., 2009)."""

    predicts_ratings = False

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items, factors=factors)
        self.user_factors = _embedding(n_users, factors, 0.1)
        self.item_factors = _embedding(n_items, factors, 0.1)
        self.item_bias = _embedding(n_items, 1, std=0)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_factors(users) * self.item_factors(items)).sum(1) + self.item_bias(items).squeeze(1)

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors(users) @ self.item_factors.weight.T + self.item_bias.weight.T

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors.weight

    def item_biases(self) -> torch.Tensor:
        return self.item_bias.weight.squeeze(1)


def _y_range(interactions: Interactions, margin: float) -> tuple[float, float]:
    low, high = interactions.rating_range
    return low - margin, high + margin


class DotBiasParams(ModelParams):
    """`dot_bias`: the seeds' model, sigmoid(u . v + b_u + b_i) scaled to the rating range, per-rating SGD.

    Searched over factors 32/64, epochs 10/20, regularization 0.05/0.1/0.15 and learning rate 0.02/0.05/0.1:
    64, 20, 0.1, 0.05 is the best, validation RMSE 0.9284."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and items.")
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description="Passes over the training ratings.")
    warm_epochs: int = Field(
        5,
        ge=1,
        le=MAX_EPOCHS,
        description="Passes when the fit starts from the last published run's vectors (warm_start).",
    )
    # benchmarks/stars.py (the validation RMSE of the refit's stars): 10 passes from the split fit lose nothing to 20
    # from scratch at 20M ratings (-0.0003, 30 s against 53), at ML-1M's size (-0.0008) or on anime (+0.0004), and
    # 0.0063 on ML-100k; 5 passes save 15 s more at 20M for 0.0018 to 0.0055 everywhere.
    refit_epochs: int | None = Field(
        10,
        ge=1,
        le=MAX_EPOCHS,
        description="Passes of the refit on every rating when it starts from this run's split fit (unless warm_start "
        "found the last published run's refit); unset: the refit starts from scratch and runs epochs.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Ratings per vectorised SGD step (their updates are summed); unset: a thousandth of the "
        "training ratings as a power of two, from 4096 to 65536 (4096 for ML-100k, 16384 for 20M; larger made the "
        "100M synthetic night diverge).",
    )
    shuffle_copy_mb: int = Field(
        512,
        ge=0,
        description="The largest copy of the training ratings (12 bytes each) the SGD makes to shuffle them in "
        "place, which keeps each epoch's reads in blocks (fastest); with more ratings it reads them where they are "
        "through a shuffled order (4 bytes each, slower). The same fit either way.",
    )
    learning_rate: float = Field(
        0.05, ge=0, description="SGD learning rate per rating (start of the cosine decay to 0)."
    )
    regularization: float = Field(
        0.1, ge=0, description="L2 weight decay per rating on the vectors and biases it updates."
    )
    y_margin: float = Field(
        0.5, ge=0, description="The sigmoid spans the rating scale widened by this much on each side (fastai y_range)."
    )
    fold_in_steps: int = Field(
        30,
        ge=1,
        le=MAX_EPOCHS,
        description="`recs fold-in`: L-BFGS iterations on a folded-in user's vector and bias, the items fixed.",
    )


def fit_dot_bias(
    interactions: Interactions,
    params: DotBiasParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
    init: InitialRows | None = None,
) -> tuple[EmbeddingDotBias, list[dict]]:
    """`dot_bias` by per-rating SGD (tasks/models/sgd.py); `init`: rows of the tables from a previous fit (a warm
    start)."""
    train = interactions.ratings
    module = EmbeddingDotBias(
        interactions.n_users, interactions.n_items, params.factors, _y_range(interactions, params.y_margin)
    ).to(device)
    with torch.no_grad():
        apply_initial_rows(module.state_dict(), init)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch_size = params.batch_size or auto_batch_size(train.height)
    rows = sgd_fit_dot_bias(
        module,
        column_tensors(train, device),  # the frame's own memory on the CPU
        params.epochs,
        batch_size,
        params.learning_rate,
        params.regularization,
        generator,
        label,
        validation_loss(module, validation, device),
        copy_bytes=params.shuffle_copy_mb * 2**20,
    )
    return module, rows


class DotParams(ModelParams):
    """`dot`: plain dot product of user and item embeddings, trained on squared error."""

    factors: int = Field(32, ge=1, le=4096, description="Embedding size.")
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description="Passes over the training ratings.")
    batch_size: int = Field(1024, ge=1, description="Ratings per optimiser step.")
    learning_rate: float = Field(0.01, ge=0, description="Adam learning rate (peak of the one-cycle schedule).")
    regularization: float = Field(0.1, ge=0, description="L2 penalty on the embeddings looked up in each batch.")


def fit_dot(
    interactions: Interactions,
    params: DotParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[EmbeddingDot, list[dict]]:
    """`dot` by Adam on squared error plus the L2 penalty."""
    module = EmbeddingDot(interactions.n_users, interactions.n_items, params.factors).to(device)
    optimizer = adam(module, params.learning_rate)
    return module, fit_mse(
        module,
        optimizer,
        interactions.ratings,
        params.regularization,
        params.epochs,
        params.batch_size,
        seed,
        validation,
        label,
    )


class MlpParams(ModelParams):
    """`mlp`: fastai's EmbeddingNN, the concatenated embeddings through an MLP, sigmoid range out."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and of items (not searched).")
    hidden: list[int] = Field([128], min_length=1, description="Sizes of the hidden layers ([256, 64] was no better).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout after each hidden layer (not searched).")
    epochs: int = Field(5, ge=1, le=MAX_EPOCHS, description="Passes over the training ratings.")
    batch_size: int = Field(1024, ge=1, description="Ratings per optimiser step.")
    learning_rate: float = Field(0.003, ge=0, description="AdamW learning rate (peak of the one-cycle schedule).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    y_margin: float = Field(
        0.5, ge=0, description="The sigmoid spans the rating scale widened by this much on each side (fastai y_range)."
    )


def fit_mlp(
    interactions: Interactions,
    params: MlpParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[EmbeddingNN, list[dict]]:
    """`mlp` by AdamW (decoupled weight decay, as fastai trains it) on squared error."""
    module = EmbeddingNN(
        interactions.n_users,
        interactions.n_items,
        params.factors,
        params.hidden,
        params.dropout,
        _y_range(interactions, params.y_margin),
    ).to(device)
    optimizer = adam(module, params.learning_rate, decoupled_weight_decay=params.weight_decay)
    return module, fit_mse(
        module, optimizer, interactions.ratings, 0.0, params.epochs, params.batch_size, seed, validation, label
    )


class BprParams(ModelParams):
    """`bpr`: Bayesian personalised ranking on implicit feedback (every rating is a positive)."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size.")
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS, description="Passes over the training interactions.")
    batch_size: int = Field(1024, ge=1, description="Positives per optimiser step (one sampled negative each).")
    learning_rate: float = Field(0.003, ge=0, description="Adam learning rate (peak of the one-cycle schedule).")
    regularization: float = Field(0.01, ge=0, description="L2 penalty on the vectors and biases in each batch.")


def fit_bpr(
    interactions: Interactions,
    params: BprParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[BprModel, list[dict]]:
    """`bpr`: each rating is a positive; one uniformly sampled item per positive is the negative."""
    n_items = interactions.n_items
    module = BprModel(interactions.n_users, n_items, params.factors).to(device)
    optimizer = adam(module, params.learning_rate)
    users, items, _ = index_tensors(interactions.ratings, device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = users[idx], items[idx]
        j = torch.randint(n_items, (len(idx),), device=device, generator=generator)
        log_likelihood = nn.functional.logsigmoid(module.pair_scores(u, i) - module.pair_scores(u, j))
        vectors = (
            module.user_factors(u).pow(2).sum(1)
            + module.item_factors(i).pow(2).sum(1)
            + module.item_factors(j).pow(2).sum(1)
            + module.item_bias(i).squeeze(1).pow(2)
            + module.item_bias(j).squeeze(1).pow(2)
        )
        return -log_likelihood.mean() + params.regularization * vectors.mean(), -log_likelihood.sum()

    return module, minibatch_fit(
        optimizer, module, len(users), batch_loss, params.epochs, params.batch_size, generator, label
    )


def fold_in_dot_bias(
    module: EmbeddingDotBias, params: DotBiasParams, users: FoldIn, device: torch.device
) -> EmbeddingDotBias:
    """Each user's vector and bias fitted to their ratings with the items' vectors and biases fixed: the fit's loss
    per user (the mean squared error of their ratings plus the regularization on their vector and bias, as the
    per-rating decay of the SGD weighs it), minimised by L-BFGS for `fold_in_steps` iterations from their fitted
    vector (zero for a new user). Users do not interact, so one joint minimisation fits every user at once; its
    gradient is written out (one gather and one scatter per rating), three times faster than autograd's."""
    k, n_items = users.interactions.n_users, users.interactions.n_items
    user, item, rating = index_tensors(users.interactions.ratings, device)
    folded = EmbeddingDotBias(0, 0, params.factors, tuple(module.init_args["y_range"])).to(device)
    folded.init_args = {**module.init_args, "n_users": k, "n_items": n_items}
    folded.item_factors, folded.item_bias = module.item_factors.to(device), module.item_bias.to(device)
    folded.requires_grad_(False)
    known, seen = users.known.to(device).clamp(min=0), (users.known >= 0).to(device)[:, None]
    vectors = torch.where(seen, module.user_factors.weight.detach().to(device)[known], 0.0)
    biases = torch.where(seen, module.user_bias.weight.detach().to(device)[known], 0.0)
    item_vectors, item_biases = folded.item_factors.weight[item], folded.item_bias.weight[item, 0]  # fixed
    weight = 1.0 / torch.bincount(user, minlength=k).clamp(min=1).float()[user]  # each user's ratings: a mean
    low, high = (float(x) for x in folded.y_range)
    optimiser = torch.optim.LBFGS([vectors, biases], max_iter=params.fold_in_steps, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def loss() -> torch.Tensor:
        s = ((vectors[user] * item_vectors).sum(1) + biases[user, 0] + item_biases).sigmoid_()
        error = s * (high - low) + low - rating
        value = (error.pow(2) * weight).sum() + params.regularization * (vectors.pow(2).sum() + biases.pow(2).sum())
        at_logit = error.mul_(weight).mul_(s).mul_(1.0 - s).mul_(2.0 * (high - low))  # d value / d logit
        vectors.grad = torch.zeros_like(vectors).index_add_(0, user, at_logit[:, None] * item_vectors)
        vectors.grad.add_(vectors, alpha=2.0 * params.regularization)
        biases.grad = torch.zeros_like(biases).index_add_(0, user, at_logit[:, None])
        biases.grad.add_(biases, alpha=2.0 * params.regularization)
        return value

    optimiser.step(loss)
    folded.user_factors = nn.Embedding.from_pretrained(vectors, freeze=True)
    folded.user_bias = nn.Embedding.from_pretrained(biases, freeze=True)
    return folded.eval()
