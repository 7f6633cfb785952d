"""The embedding models, trained by minibatch gradient descent in torch.

- `dot_bias` (EmbeddingDotBias): sigmoid(u . v + b_u + b_i) scaled to the rating range; MSE. The seeds' model.
- `dot` (EmbeddingDot): u . v, no biases, no sigmoid; MSE.
- `mlp` (EmbeddingNN): [u, v] through an MLP, sigmoid range out; MSE (fastai's EmbeddingNN).
- `bpr` (BprModel): u . v + b_i ranked by Bayesian personalised ranking on implicit feedback.

Training keeps the whole training set as index tensors on the device, shuffles a permutation per epoch and
slices batches from it: no per-sample Dataset, no DataLoader, no host-to-device copy per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import polars as pl
import torch
from torch import nn

from tasks.config import PipelineConfig
from tasks.models.base import Recommender, check_finite, index_tensors
from tasks.models.sgd import auto_batch_size, sgd_fit_dot_bias

log = logging.getLogger(__name__)


def _embedding(n: int, dim: int, std: float = 0.01) -> nn.Embedding:
    embedding = nn.Embedding(n, dim)
    nn.init.trunc_normal_(embedding.weight, std=std) if std else nn.init.zeros_(embedding.weight)
    return embedding


def _rows(embedding: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    # index_select's backward (index_add) is about a sixth faster per training step on CPU than the
    # embedding op's (embedding_dense_backward); the result is the same.
    return embedding.weight.index_select(0, index)


class _SigmoidRange(Recommender):
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

    def __init__(self, n_users: int, n_items: int, factors: int, hidden: list[int], dropout: float,
                 y_range: tuple[float, float]) -> None:  # fmt: skip
        super().__init__(n_users=n_users, n_items=n_items, factors=factors, hidden=list(hidden), dropout=dropout,
                         y_range=tuple(y_range))  # fmt: skip
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


BatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def minibatch_fit(
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    n: int,
    batch_loss: BatchLoss,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    label: str,
    validate: Callable[[], float] | None = None,
) -> list[dict]:
    """Epochs of shuffled minibatches over examples 0..n-1.

    Args:
        batch_loss: maps a batch's example indices to (loss to minimise, reported loss summed over the batch).
        validate: the validation loss after each epoch, recorded under split "validation".

    Returns:
        History rows: `epoch`, `split` (`label` or "validation"), `loss` (reported loss per example).

    Raises:
        ModelFitError: when the reported loss becomes NaN or infinite.
    """
    rows: list[dict] = []
    device = next(module.parameters()).device
    # fastai's fit_one_cycle: the learning rate warms up over the first quarter, then anneals (cosine) to ~0.
    steps_per_epoch = -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=epochs * steps_per_epoch,
        pct_start=0.25,
    )  # fmt: skip
    for epoch in range(1, epochs + 1):
        module.train()
        started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        total = torch.zeros((), device=device)
        for batch in order.split(batch_size):
            loss, reported = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += reported.detach()
        train_loss = float(total) / n
        check_finite(train_loss, epoch)
        rows.append({"epoch": epoch, "split": label, "loss": train_loss})
        message = f"epoch {epoch}/{epochs}: {label} loss {train_loss:.4f}"
        if validate is not None:
            module.eval()
            with torch.no_grad():
                rows.append({"epoch": epoch, "split": "validation", "loss": validate()})
            message += f", validation loss {rows[-1]['loss']:.4f}"
        log.info("%s (%.2fs)", message, time.perf_counter() - started)
    return rows


def adam(module: nn.Module, lr: float, decoupled_weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam (AdamW when a decoupled weight decay is given), fused into one kernel where torch supports it."""
    cls = torch.optim.AdamW if decoupled_weight_decay is not None else torch.optim.Adam
    options = {"weight_decay": decoupled_weight_decay} if decoupled_weight_decay is not None else {}
    try:  # fused: one kernel for all parameters (CPU since torch 2.4, CUDA), a third less time per step here
        return cls(module.parameters(), lr=lr, fused=True, **options)
    except (RuntimeError, TypeError):
        return cls(module.parameters(), lr=lr, **options)


def _y_range(train: pl.DataFrame, margin: float) -> tuple[float, float]:
    return float(train["rating"].min()) - margin, float(train["rating"].max()) + margin


def _validation_loss(module: Recommender, validation: pl.DataFrame | None,
                     device: torch.device) -> Callable[[], float] | None:  # fmt: skip
    """The held-out ratings' MSE under the module as it is, for the loops to record per epoch (None without any)."""
    if validation is None or validation.height == 0:
        return None
    users, items, ratings = index_tensors(validation, device)
    return lambda: float(nn.functional.mse_loss(module(users, items), ratings))


def _fit_mse(module: Recommender, optimizer: torch.optim.Optimizer, train: pl.DataFrame, regularization: float,
             epochs: int, batch_size: int, config: PipelineConfig, validation: pl.DataFrame | None,
             label: str) -> list[dict]:  # fmt: skip
    device = next(module.parameters()).device
    users, items, ratings = index_tensors(train, device)
    terms = getattr(module, "terms", None)  # prediction and L2 penalty in one pass, where the model has them

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i, r = users[idx], items[idx], ratings[idx]
        if terms is not None:
            prediction, penalty = terms(u, i)
            mse = nn.functional.mse_loss(prediction, r)
            return mse + regularization * penalty, mse * len(idx)
        mse = nn.functional.mse_loss(module(u, i), r)
        return mse, mse * len(idx)

    generator = torch.Generator(device=device).manual_seed(config.seed)
    return minibatch_fit(optimizer, module, len(ratings), batch_loss, epochs, batch_size, generator, label,
                         _validation_loss(module, validation, device))  # fmt: skip


def fit_dot_bias(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """The seeds' model with the top-level factors, epochs, batch_size, learning_rate, regularization, y_margin,
    trained by per-rating SGD (tasks/models/sgd.py)."""
    module = EmbeddingDotBias(n_users, n_items, config.factors, _y_range(train, config.y_margin)).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batch_size = config.batch_size or auto_batch_size(train.height)
    rows = sgd_fit_dot_bias(module, index_tensors(train, device), config.epochs, batch_size, config.learning_rate,
                            config.regularization, generator, label, _validation_loss(module, validation, device))  # fmt: skip
    return module, rows


def fit_dot(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`dot` with `config.dot`."""
    p = config.dot
    module = EmbeddingDot(n_users, n_items, p.factors).to(device)
    optimizer = adam(module, p.learning_rate)
    return module, _fit_mse(module, optimizer, train, p.regularization, p.epochs, p.batch_size, config, validation, label)


def fit_mlp(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`mlp` with `config.mlp` (AdamW: decoupled weight decay, as fastai trains it)."""
    p = config.mlp
    module = EmbeddingNN(n_users, n_items, p.factors, p.hidden, p.dropout, _y_range(train, config.y_margin)).to(device)
    optimizer = adam(module, p.learning_rate, decoupled_weight_decay=p.weight_decay)
    return module, _fit_mse(module, optimizer, train, 0.0, p.epochs, p.batch_size, config, validation, label)


def fit_bpr(train, n_users, n_items, config, device, validation=None, label="train"):  # noqa: ANN001, ANN201
    """`bpr` with `config.bpr`: each rating is a positive; one uniformly sampled item per positive is the negative."""
    p = config.bpr
    module = BprModel(n_users, n_items, p.factors).to(device)
    optimizer = adam(module, p.learning_rate)
    users, items, _ = index_tensors(train, device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = users[idx], items[idx]
        j = torch.randint(n_items, (len(idx),), device=device, generator=generator)
        log_likelihood = nn.functional.logsigmoid(module.pair_scores(u, i) - module.pair_scores(u, j))
        vectors = (module.user_factors(u).pow(2).sum(1) + module.item_factors(i).pow(2).sum(1)
                   + module.item_factors(j).pow(2).sum(1) + module.item_bias(i).squeeze(1).pow(2)
                   + module.item_bias(j).squeeze(1).pow(2))  # fmt: skip
        return -log_likelihood.mean() + p.regularization * vectors.mean(), -log_likelihood.sum()

    return module, minibatch_fit(optimizer, module, len(users), batch_loss, p.epochs, p.batch_size, generator, label)
