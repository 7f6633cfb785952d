"""Train the seeds' model in torch: embedding dot product plus biases, a sigmoid scaled to the rating range.

Training keeps the whole training set as index tensors on the device, shuffles a permutation per epoch
and slices batches from it: no per-sample Dataset, no DataLoader, no host-to-device copy per batch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks.config import Device, PipelineConfig
from tasks.reindex import IdMaps
from tasks.split import holdout

log = logging.getLogger(__name__)


class ModelFitError(RuntimeError):
    """Training diverged (a non-finite loss); nothing trained this way may be published."""


class EmbeddingDotBias(nn.Module):
    """rating = sigmoid(u . v + b_u + b_i) scaled to `y_range` (fastai's EmbeddingDotBias)."""

    def __init__(self, n_users: int, n_items: int, factors: int, y_range: tuple[float, float]) -> None:
        super().__init__()
        self.user_factors = nn.Embedding(n_users, factors)
        self.item_factors = nn.Embedding(n_items, factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.register_buffer("y_range", torch.tensor(y_range, dtype=torch.float32))
        for embedding in (self.user_factors, self.item_factors):
            nn.init.trunc_normal_(embedding.weight, std=0.01)
        for embedding in (self.user_bias, self.item_bias):
            nn.init.zeros_(embedding.weight)

    def _scale(self, logits: torch.Tensor) -> torch.Tensor:
        low, high = self.y_range[0], self.y_range[1]
        return torch.sigmoid(logits) * (high - low) + low

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of the (user, item) pairs."""
        dot = (self.user_factors(users) * self.item_factors(items)).sum(1)
        return self._scale(dot + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1))

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the parameters a batch looks up (the classic per-rating MF L2 term)."""
        return (
            self.user_factors(users).pow(2).sum(1)
            + self.item_factors(items).pow(2).sum(1)
            + self.user_bias(users).squeeze(1).pow(2)
            + self.item_bias(items).squeeze(1).pow(2)
        ).mean()

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of `users` for every item: a (len(users), n_items) matrix."""
        logits = self.user_factors(users) @ self.item_factors.weight.T
        logits += self.user_bias(users) + self.item_bias.weight.T
        return self._scale(logits)


def pick_device(requested: Device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not available is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[requested]:
        raise RuntimeError(f"config device={requested!r}, but torch reports no {requested} device on this machine")
    return torch.device(requested)


@dataclass
class TrainedModel:
    """A fitted model with what its training recorded."""

    module: EmbeddingDotBias
    device: torch.device
    history: pl.DataFrame  # epoch, split ("train" | "validation" | "refit"), loss (MSE)
    seconds: float
    n_ratings: int
    rating_scale: tuple[float, float]  # lowest and highest rating seen in training

    @property
    def ratings_per_second(self) -> float:
        epochs = int(self.history["epoch"].max() or 0)
        return self.n_ratings * epochs / self.seconds if self.seconds > 0 else float("nan")

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
        """Predicted ratings of (user, item) index pairs, on the CPU, clipped to the rating scale."""
        self.module.eval()
        parts = [
            self.module(users[s : s + chunk].to(self.device), items[s : s + chunk].to(self.device)).float().cpu()
            for s in range(0, len(users), chunk)
        ]
        return (torch.cat(parts) if parts else torch.empty(0)).clamp(*self.rating_scale)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of `users` (indices, on the model's device) against every item."""
        self.module.eval()
        return self.module.score_users(users)


def _as_tensors(ratings: pl.DataFrame, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(ratings["user_idx"].to_numpy().astype("int64")).to(device),
        torch.from_numpy(ratings["item_idx"].to_numpy().astype("int64")).to(device),
        torch.from_numpy(ratings["rating"].to_numpy().astype("float32")).to(device),
    )


def fit(
    train: pl.DataFrame,
    n_users: int,
    n_items: int,
    config: PipelineConfig,
    validation: pl.DataFrame | None = None,
    history_label: str = "train",
) -> TrainedModel:
    """Fit `EmbeddingDotBias` on indexed ratings by minibatch Adam on MSE plus the L2 penalty.

    The sigmoid spans the training ratings' lowest to highest value, widened by `config.y_margin`.

    Args:
        train: `user_idx`, `item_idx`, `rating`.
        n_users: size of the user vocabulary (indices are < n_users).
        n_items: size of the item vocabulary.
        config: factors, epochs, batch size, learning rate, regularisation, seed, device.
        validation: held-out ratings whose MSE is recorded after each epoch.
        history_label: the `split` the training loss is recorded under ("train", or "refit").

    Returns:
        The trained model and its loss per epoch.

    Raises:
        ModelFitError: when the loss becomes NaN or infinite.
    """
    if train.height == 0:
        raise ValueError("no training ratings")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rating_scale = (float(train["rating"].min()), float(train["rating"].max()))
    y_range = (rating_scale[0] - config.y_margin, rating_scale[1] + config.y_margin)
    module = EmbeddingDotBias(n_users, n_items, config.factors, y_range).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    users, items, ratings = _as_tensors(train, device)
    valid = _as_tensors(validation, device) if validation is not None and validation.height else None

    rows: list[dict] = []
    started = time.perf_counter()
    n, batch = len(ratings), config.batch_size
    for epoch in range(1, config.epochs + 1):
        module.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        total = torch.zeros((), device=device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            u, i, r = users[idx], items[idx], ratings[idx]
            mse = nn.functional.mse_loss(module(u, i), r)
            loss = mse + config.regularization * module.penalty(u, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += mse.detach() * len(idx)
        train_mse = float(total) / n
        if not math.isfinite(train_mse):
            raise ModelFitError(
                f"training loss became {train_mse} in epoch {epoch}; lower learning_rate "
                f"(now {config.learning_rate}) or raise regularization"
            )
        rows.append({"epoch": epoch, "split": history_label, "loss": train_mse})
        message = f"epoch {epoch}/{config.epochs}: train mse {train_mse:.4f}"
        if valid is not None:
            with torch.no_grad():
                module.eval()
                valid_mse = float(nn.functional.mse_loss(module(valid[0], valid[1]), valid[2]))
            rows.append({"epoch": epoch, "split": "validation", "loss": valid_mse})
            message += f", validation mse {valid_mse:.4f}"
        log.info("%s (%.2fs)", message, time.perf_counter() - epoch_started)
    seconds = time.perf_counter() - started
    history = pl.DataFrame(rows, schema={"epoch": pl.Int32, "split": pl.String, "loss": pl.Float64})
    model = TrainedModel(module, device, history, seconds, n, rating_scale)
    log.info(
        "trained %d factors on %d ratings for %d epochs on %s in %.1fs (%.0f ratings/s)",
        config.factors, n, config.epochs, device, seconds, model.ratings_per_second,
    )  # fmt: skip
    return model


def save_checkpoint(model: TrainedModel, maps: IdMaps, config: PipelineConfig, path: Path) -> None:
    """Save weights, id maps and config together, so the run can be reproduced or re-published."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model": config.model,
        "state_dict": {name: tensor.cpu() for name, tensor in model.module.state_dict().items()},
        "user_ids": torch.from_numpy(maps.users["user_id"].to_numpy().copy()),
        "item_ids": torch.from_numpy(maps.items["item_id"].to_numpy().copy()),
        "config": config.model_dump(mode="json"),
        # What the training recorded, so a model trained elsewhere (a training deployment) reports the same.
        "training": {
            "history": model.history.to_dict(as_series=False),
            "seconds": model.seconds,
            "n_ratings": model.n_ratings,
            "rating_scale": list(model.rating_scale),
            "device": str(model.device),
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[EmbeddingDotBias, IdMaps, PipelineConfig]:
    """Rebuild the model, id maps and config that `save_checkpoint` wrote."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = PipelineConfig.model_validate(checkpoint["config"])
    state = checkpoint["state_dict"]
    n_users, factors = state["user_factors.weight"].shape
    module = EmbeddingDotBias(n_users, state["item_factors.weight"].shape[0], factors, tuple(state["y_range"].tolist()))
    module.load_state_dict(state)
    users = pl.DataFrame({"user_idx": pl.int_range(n_users, eager=True).cast(pl.Int32), "user_id": checkpoint["user_ids"].numpy()})
    n_items = len(checkpoint["item_ids"])
    items = pl.DataFrame({"item_idx": pl.int_range(n_items, eager=True).cast(pl.Int32), "item_id": checkpoint["item_ids"].numpy()})
    return module, IdMaps(users, items), config


def load_trained_model(path: Path, device: torch.device) -> tuple[TrainedModel, str]:
    """The `TrainedModel` a checkpoint holds, moved to `device`, and the device it was trained on."""
    module, _, _ = load_checkpoint(path)
    training = torch.load(path, map_location="cpu", weights_only=True)["training"]
    history = pl.DataFrame(training["history"], schema={"epoch": pl.Int32, "split": pl.String, "loss": pl.Float64})
    model = TrainedModel(module.to(device), device, history, training["seconds"], training["n_ratings"],
                         tuple(training["rating_scale"]))  # fmt: skip
    return model, training["device"]


@task(name="train", cache_policy=NO_CACHE)
def train_task(ratings: pl.DataFrame, maps: IdMaps, config: PipelineConfig, phase: str = "train") -> TrainedModel:
    """Prefect wrapper of `fit`.

    phase "train" fits on the training split, holding out `validation_fraction` of it for a validation
    loss; phase "refit" fits on all ratings, with no holdout.
    """
    if phase == "train":
        fit_on, validation = holdout(ratings, config.validation_fraction, config.seed)
    else:
        fit_on, validation = ratings, None
    return fit(fit_on, maps.n_users, maps.n_items, config, validation, history_label=phase)


@task(name="save-checkpoint", cache_policy=NO_CACHE)
def save_checkpoint_task(model: TrainedModel, maps: IdMaps, config: PipelineConfig, path: Path) -> None:
    """Prefect wrapper of `save_checkpoint`."""
    save_checkpoint(model, maps, config, path)
