"""Per-rating SGD for `dot_bias`, with hand-written gradients and sparse row updates.

Why not autograd and Adam: both cost time in proportion to the whole model on every step (Adam moves every
row; autograd's backward of a lookup fills a dense gradient of the table's size), which caps training at
about half a million ratings per second on two cores when the tables are 138k users x 64. Funk's SGD, as
Surprise runs it, touches only the rows a rating names. Here a batch of ratings is one vectorised
step: look up the rows, compute each rating's gradient in closed form, scatter-add the updates into the
tables. Ratings in one batch that share a row add their updates (Hogwild-style); on ML-100k batches of 1024
to 8192 give the same test RMSE within 0.0005. A row that takes a large share of a batch (an item in several
percent of all ratings) can overshoot; the loss check then fails the run rather than publish it.

For one rating r of user u and item i, with s = sigmoid(u . v + b_u + b_i), prediction p = low + s (high - low)
and e = p - r, the step with learning rate eta and regularization lam is

    g   = e s (1 - s) (high - low)          (the gradient of e^2 / 2 with respect to the logit)
    u  -= eta (g v + lam u)        v  -= eta (g u + lam v)
    b_u -= eta (g + lam b_u)       b_i -= eta (g + lam b_i)

and eta follows a cosine from `learning_rate` to 0 over the run's steps.

Everything stays on the module's device: the ratings are index tensors there, shuffled once in full and then
each epoch by blocks (`epoch_batches`), with the permutations drawn there. Within `copy_bytes` a copy of them is
shuffled and batches are slices of it; beyond, a batch gathers its ratings through the shuffled order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tasks.models.base import record_epoch

if TYPE_CHECKING:
    from tasks.models.embedding import EmbeddingDotBias

log = logging.getLogger(__name__)

SHUFFLE_BLOCK = 256  # ratings that stay together when an epoch reorders the (once fully shuffled) data
# The largest batch `auto_batch_size` gives: a popular item's summed update grows with the batch, and at 131,072
# the 100M synthetic night's refit (from its split fit, 100M ratings) diverged in its first epoch, where 65,536
# trains it (benchmarks/cluster.py --sizes 100m; docs/scale.md).
MAX_AUTO_BATCH = 1 << 16


def auto_batch_size(n_ratings: int) -> int:
    """A thousandth of the ratings, as a power of two, at least 4096 and at most `MAX_AUTO_BATCH`.

    Why it grows with the data: the share of a batch that falls on the most popular item (whose summed update
    is the largest) stays bounded, so one learning rate serves ML-100k and 20M ratings; and a large batch
    spreads the fixed cost of a step (about twenty tensor ops) over more ratings. On ML-100k, 1024, 4096 and
    8192 give the same test RMSE (0.9076-0.9081); 16384 there is 5 steps an epoch, and worse (0.9109).
    """
    return min(max(4096, 2 ** round(math.log2(max(n_ratings, 1) / 1000))), MAX_AUTO_BATCH)


def epoch_batches(
    columns: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch's batches: the columns' rows in a new random order of blocks of SHUFFLE_BLOCK consecutive rows (the
    tail block last), cut into batches of `batch_size`, each batch gathered when it is used.

    On rows already shuffled once, this gives every epoch new batches (each batch gathers blocks from all over
    the data) for the price of copying contiguous blocks: a full permutation of 15M ratings and its random
    gathers took 1.5 s an epoch on two cores, 30% of the epoch; this takes a few hundredths. Gathering per batch
    rather than reordering the whole epoch first keeps no second copy of the ratings (400 MB at 20M).
    """
    n = len(columns[0])
    n_blocks = n // SHUFFLE_BLOCK
    whole = n_blocks * SHUFFLE_BLOCK
    order = torch.randperm(n_blocks, device=columns[0].device, generator=generator)
    blocks = [column[:whole].view(n_blocks, SHUFFLE_BLOCK) for column in columns]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if start % SHUFFLE_BLOCK == 0 and (stop % SHUFFLE_BLOCK == 0 or stop == n):  # whole blocks (and the tail)
            taken = order[start // SHUFFLE_BLOCK : min(stop, whole) // SHUFFLE_BLOCK]
            parts = [block.index_select(0, taken).view(-1) for block in blocks]
            yield tuple(
                torch.cat([part, column[whole:stop]]) if stop > whole else part
                for part, column in zip(parts, columns, strict=True)
            )
        else:  # a batch size that cuts blocks: each row's position in the epoch's order
            yield tuple(column.index_select(0, _epoch_rows(order, whole, start, stop)) for column in columns)


def _epoch_rows(order: torch.Tensor, whole: int, start: int, stop: int) -> torch.Tensor:
    """The rows at positions start..stop-1 of the epoch's order (`epoch_batches`)."""
    position = torch.arange(start, stop, device=order.device)
    if len(order) == 0:
        return position
    block = torch.div(position, SHUFFLE_BLOCK, rounding_mode="floor").clamp_(max=len(order) - 1)
    return torch.where(position < whole, order[block] * SHUFFLE_BLOCK + position % SHUFFLE_BLOCK, position)


def shuffle_in_place(columns: tuple[torch.Tensor, ...], order: torch.Tensor) -> None:
    """Reorder the columns' rows by `order`, each column overwritten (no second copy is kept)."""
    for column in columns:
        column.copy_(column.index_select(0, order))


def shuffled_order(n: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """One random permutation of 0..n-1: the rows in their once-shuffled order, as 32-bit numbers where they fit
    (the same permutation as 64-bit ones, in half the memory)."""
    return torch.randperm(n, device=device, generator=generator, dtype=torch.int32 if n < 2**31 else torch.int64)


def _shuffled_epochs(
    ratings: tuple[torch.Tensor, ...], copy_bytes: int, batch_size: int, generator: torch.Generator
) -> Callable[[], Iterator[tuple[torch.Tensor, ...]]]:
    """What gives each epoch's batches: one full shuffle of the ratings, then each epoch reorders blocks of
    SHUFFLE_BLOCK of it (`epoch_batches`). Within `copy_bytes`, a copy of the ratings is shuffled in place, so an
    epoch copies contiguous blocks; beyond it, the shuffle stays an order of the rows, and each batch gathers its
    ratings through it: random reads (the 20M night's `dot_bias` fits took about 15% longer so, in one run each
    way), but no copy (1.2 GB at 100M). The batches are the same ones either way."""
    order = shuffled_order(len(ratings[0]), ratings[0].device, generator)
    if sum(column.element_size() for column in ratings) * len(order) <= copy_bytes:
        columns = tuple(column.clone() for column in ratings)
        shuffle_in_place(columns, order)
        del order
        return lambda: epoch_batches(columns, batch_size, generator)

    def through_the_order() -> Iterator[tuple[torch.Tensor, ...]]:
        for (rows,) in epoch_batches((order,), batch_size, generator):
            yield tuple(column.index_select(0, rows) for column in ratings)

    return through_the_order


def cosine_rate(peak: float, step: int, total_steps: int) -> float:
    """The learning rate at `step` of `total_steps`: a half cosine from `peak` down to 0."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


@torch.no_grad()
def sgd_fit_dot_bias(
    module: EmbeddingDotBias,
    ratings: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    regularization: float,
    generator: torch.Generator,
    label: str,
    validate: Callable[[], float] | None = None,
    copy_bytes: int = 1 << 30,
) -> list[dict]:
    """Train an EmbeddingDotBias in place by per-rating SGD (see the module docstring).

    Args:
        module: an `EmbeddingDotBias`; its tables are updated in place.
        ratings: (users, items, ratings) index tensors on the module's device (the indices 32- or 64-bit), only
            read: they may share the memory of the ratings frame (`tasks.models.base.column_tensors`).
        copy_bytes: the largest copy of the ratings to shuffle in place (`DotBiasParams.shuffle_copy_mb`).
        validate: the validation loss after each epoch, recorded under split "validation".

    Returns:
        History rows: `epoch`, `split` (`label` or "validation"), `loss` (mean squared error of the epoch).

    Raises:
        ModelFitError: when the epoch's loss becomes NaN or infinite.
    """
    n, tables = len(ratings[2]), _Tables.of(module)
    epoch_of = _shuffled_epochs(ratings, copy_bytes, batch_size, generator)
    steps_per_epoch = -(-n // batch_size)
    total_steps, step = epochs * steps_per_epoch, 0
    rows: list[dict] = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        squared_error = torch.zeros((), device=ratings[2].device, dtype=torch.float64)
        for u, i, t in epoch_of():
            eta = cosine_rate(learning_rate, step, total_steps)
            step += 1
            squared_error += tables.step(u, i, t, eta, regularization)
        seconds = time.perf_counter() - started
        line = record_epoch(rows, epoch, epochs, label, float(squared_error) / n, seconds, validate)
        log.info("%s, %.2fM ratings/s)", line, n / seconds / 1e6)
    return rows


@dataclass(frozen=True)
class _Tables:
    """An EmbeddingDotBias's tables as the SGD step updates them in place, and its rating range."""

    user_vectors: torch.Tensor
    item_vectors: torch.Tensor
    user_bias: torch.Tensor
    item_bias: torch.Tensor
    low: float
    width: float

    @classmethod
    def of(cls, module: EmbeddingDotBias) -> _Tables:
        low, high = (float(x) for x in module.y_range)
        return cls(
            module.user_factors.weight,
            module.item_factors.weight,
            module.user_bias.weight.view(-1),
            module.item_bias.weight.view(-1),
            low,
            high - low,
        )

    def step(
        self, u: torch.Tensor, i: torch.Tensor, targets: torch.Tensor, eta: float, regularization: float
    ) -> torch.Tensor:
        """One batch's step (the module docstring's update, every rating of the batch at once); returns the batch's
        summed squared error before the step. `u` and `i` may be 32-bit (scatter_add_ takes only 64-bit)."""
        u, i = u.long(), i.long()
        a, b = self.user_vectors.index_select(0, u), self.item_vectors.index_select(0, i)
        a_bias, b_bias = self.user_bias.index_select(0, u), self.item_bias.index_select(0, i)
        s = torch.einsum("bf,bf->b", a, b).add_(a_bias).add_(b_bias).sigmoid_()
        error = s * self.width + self.low - targets
        squared_error = torch.dot(error, error)
        step_size = error.mul_(s).mul_(1.0 - s).mul_(-eta * self.width)  # -eta g, per rating
        decay = -eta * regularization
        item_delta = b.mul(decay).addcmul_(a, step_size[:, None])
        user_delta = a.mul_(decay).addcmul_(b, step_size[:, None])
        # scatter_add_ with an expanded index: about 4x faster on CPU than index_add_ for 2-D rows.
        self.user_vectors.scatter_add_(0, u[:, None].expand_as(user_delta), user_delta)
        self.item_vectors.scatter_add_(0, i[:, None].expand_as(item_delta), item_delta)
        self.user_bias.index_add_(0, u, a_bias.mul_(decay).add_(step_size))
        self.item_bias.index_add_(0, i, b_bias.mul_(decay).add_(step_size))
        return squared_error
