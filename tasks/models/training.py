"""The generic minibatch training loop of the gradient-trained models (`dot`, `mlp`, `bpr`).

Training keeps the whole training set as index tensors on the device, shuffles a permutation per epoch and
slices batches from it: no per-sample Dataset, no DataLoader, no host-to-device copy per batch. `dot_bias`
has its own per-rating SGD loop (tasks/models/sgd.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import polars as pl
import torch
from torch import nn

from tasks.models.base import Recommender, index_tensors, record_epoch

log = logging.getLogger(__name__)

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
        History rows: `epoch`, `split` (`label` or "validation"), `loss` (reported loss per example); a
        ModelFitError when the reported loss becomes NaN or infinite.
    """
    rows: list[dict] = []
    device = next(module.parameters()).device

    evaluated = None if validate is None else _in_eval_mode(module, validate)
    # fastai's fit_one_cycle: the learning rate warms up over the first quarter, then anneals (cosine) to ~0.
    steps_per_epoch = -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=epochs * steps_per_epoch,
        pct_start=0.25,
    )
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
        seconds = time.perf_counter() - started
        log.info("%s)", record_epoch(rows, epoch, epochs, label, float(total) / n, seconds, evaluated))
    return rows


def _in_eval_mode(module: nn.Module, validate: Callable[[], float]) -> Callable[[], float]:
    """`validate` run with the module in eval mode (dropout off) and no gradients."""

    def evaluated() -> float:
        module.eval()
        with torch.no_grad():
            return validate()

    return evaluated


def adam(module: nn.Module, lr: float, decoupled_weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam (AdamW when a decoupled weight decay is given), fused into one kernel where torch supports it."""

    def optimizer(fused: bool | None) -> torch.optim.Optimizer:
        if decoupled_weight_decay is None:
            return torch.optim.Adam(module.parameters(), lr=lr, fused=fused)
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=decoupled_weight_decay, fused=fused)

    try:  # fused: one kernel for all parameters (CPU since torch 2.4, CUDA), a third less time per step here
        return optimizer(fused=True)
    except (RuntimeError, TypeError):
        return optimizer(fused=None)


def validation_loss(
    module: Recommender, validation: pl.DataFrame | None, device: torch.device
) -> Callable[[], float] | None:
    """The held-out ratings' MSE under the module as it is, for the loops to record per epoch (None without any)."""
    if validation is None or validation.height == 0:
        return None
    users, items, ratings = index_tensors(validation, device)
    return lambda: float(nn.functional.mse_loss(module(users, items), ratings))


def fit_mse(
    module: Recommender,
    optimizer: torch.optim.Optimizer,
    train: pl.DataFrame,
    regularization: float,
    epochs: int,
    batch_size: int,
    seed: int,
    validation: pl.DataFrame | None,
    label: str,
) -> list[dict]:
    """Minimise the squared error of `module`'s predicted ratings (plus `regularization` times the L2 penalty of
    the rows a batch looks up, where the module reports it through `terms`); returns the history rows."""
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

    generator = torch.Generator(device=device).manual_seed(seed)
    return minibatch_fit(
        optimizer,
        module,
        len(ratings),
        batch_loss,
        epochs,
        batch_size,
        generator,
        label,
        validation_loss(module, validation, device),
    )
