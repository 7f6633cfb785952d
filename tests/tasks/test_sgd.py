"""The per-rating SGD that trains dot_bias: its hand-written step is autograd's, it keeps work on the device."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from tasks.models.embedding import EmbeddingDotBias
from tasks.models.sgd import SHUFFLE_BLOCK, auto_batch_size, cosine_rate, epoch_batches, sgd_fit_dot_bias


def _model(seed: int = 0) -> EmbeddingDotBias:
    torch.manual_seed(seed)
    module = EmbeddingDotBias(n_users=3, n_items=4, factors=5, y_range=(0.5, 5.5))
    with torch.no_grad():
        for table in (module.user_factors, module.item_factors, module.user_bias, module.item_bias):
            table.weight.normal_(0, 0.3)  # away from zero, so every term of the gradient counts
    return module


# Users 0 and 2 and item 1 appear twice: their rows receive the sum of two ratings' updates.
USERS, ITEMS = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 3, 1, 0, 2])
RATINGS = torch.tensor([4.0, 1.5, 3.0, 5.0, 2.0])


@pytest.mark.parametrize("regularization", [0.0, 0.3])
def test_one_step_is_autograds_gradient_step_on_the_summed_per_rating_loss(regularization):
    """One batch holding every rating: the parameters move by -eta times the gradient of
    sum_r [ (p_r - r)^2 / 2 + lam / 2 (|u|^2 + |v|^2 + b_u^2 + b_i^2) ]."""
    trained, reference = _model(), _model()
    lr = 0.2
    sgd_fit_dot_bias(
        trained,
        (USERS, ITEMS, RATINGS),
        epochs=1,
        batch_size=len(RATINGS),
        learning_rate=lr,
        regularization=regularization,
        generator=torch.Generator().manual_seed(0),
        label="train",
    )
    prediction = reference(USERS, ITEMS)
    looked_up = [
        reference.user_factors.weight[USERS].pow(2).sum(1),
        reference.item_factors.weight[ITEMS].pow(2).sum(1),
        reference.user_bias.weight[USERS, 0].pow(2),
        reference.item_bias.weight[ITEMS, 0].pow(2),
    ]
    loss = (0.5 * (prediction - RATINGS).pow(2) + 0.5 * regularization * sum(looked_up)).sum()
    loss.backward()
    for name, parameter in reference.named_parameters():
        expected = parameter.detach() - lr * parameter.grad
        assert torch.allclose(dict(trained.named_parameters())[name], expected, atol=1e-6), name


def test_learning_rate_follows_a_cosine_to_zero():
    assert cosine_rate(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_rate(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_rate(0.1, 10, 10) == pytest.approx(0.0, abs=1e-12)


def test_training_reduces_the_loss_and_is_seeded_and_a_copy_changes_nothing():
    def run(copy_bytes: int) -> tuple[list[dict], EmbeddingDotBias]:
        module = _model()
        rows = sgd_fit_dot_bias(
            module,
            (USERS, ITEMS, RATINGS),  # only read
            epochs=40,
            batch_size=2,
            learning_rate=0.5,
            regularization=0.0,
            generator=torch.Generator().manual_seed(1),
            label="train",
            copy_bytes=copy_bytes,
        )
        return rows, module

    before = (USERS.clone(), ITEMS.clone(), RATINGS.clone())
    rows, module = run(1 << 30)  # a shuffled copy of the ratings
    again, module_again = run(0)  # no copy: each batch gathered through the shuffled order
    assert rows[-1]["loss"] < rows[0]["loss"] / 10
    assert rows == again
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), module_again.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before, (USERS, ITEMS, RATINGS), strict=True))  # only read


def test_no_per_batch_copies_or_host_syncs():
    """Batches are slices of tensors already on the device: the only host reads are one loss per epoch, so a
    GPU run never waits on the host per batch. (Checked on the CPU through the ops the loop dispatches.)"""
    module = _model()
    n = 64
    users, items = torch.randint(3, (n,)), torch.randint(4, (n,))
    ratings = torch.rand(n) * 4 + 1
    with profile(record_shapes=True) as trace:
        sgd_fit_dot_bias(
            module,
            (users, items, ratings),
            epochs=3,
            batch_size=4,
            learning_rate=0.1,
            regularization=0.1,
            generator=torch.Generator().manual_seed(0),
            label="train",
        )
    counts = {event.key: event.count for event in trace.key_averages()}
    assert counts.get("aten::scatter_add_", 0) == 2 * 3 * (n // 4)  # the loop ran: two tables per step
    # Host reads: the rating range once, then the loss once per epoch (3), never per batch (48 batches).
    assert counts.get("aten::_local_scalar_dense", 0) <= 2 + 3
    # No .to(device) / .cpu() of data inside training: the only conversions are of Python scalars (0-dim).
    copied = [event.input_shapes for event in trace.events() if event.name == "aten::_to_copy"]
    assert all(shapes[0] == [] for shapes in copied), [s for s in copied if s[0] != []][:3]


@pytest.mark.parametrize("batch_size", [2 * SHUFFLE_BLOCK, 300, 10_000])
def test_epoch_batches_reorder_whole_blocks_and_keep_rows_aligned(batch_size):
    """Whatever the batch size (whole blocks, or one that cuts them), the batches put together are the rows in one
    random order of whole blocks with the short tail block last, the same order for every column."""
    n = 5 * SHUFFLE_BLOCK + 7
    rows = torch.arange(n)
    batches = list(epoch_batches((rows, rows * 2), batch_size, torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    shuffled, doubled = (torch.cat([b[i] for b in batches]) for i in (0, 1))
    assert sorted(shuffled.tolist()) == list(range(n)) and torch.equal(doubled, shuffled * 2)
    blocks = shuffled[: 5 * SHUFFLE_BLOCK].view(5, SHUFFLE_BLOCK)
    assert torch.equal(blocks - blocks[:, :1], torch.arange(SHUFFLE_BLOCK).expand(5, -1))  # blocks stay whole
    assert blocks[:, 0].tolist() != [0, SHUFFLE_BLOCK, 2 * SHUFFLE_BLOCK, 3 * SHUFFLE_BLOCK, 4 * SHUFFLE_BLOCK]
    assert shuffled[-7:].tolist() == list(range(5 * SHUFFLE_BLOCK, n))  # the short tail block last
    again = torch.cat([b[0] for b in epoch_batches((rows,), SHUFFLE_BLOCK, torch.Generator().manual_seed(0))])
    assert torch.equal(again, shuffled)  # the order depends on the generator alone, not on the batch size


def test_auto_batch_size_grows_with_the_data_up_to_a_cap():
    assert auto_batch_size(75_000) == 4096  # ML-100k's training split
    assert auto_batch_size(15_000_000) == 16384 and auto_batch_size(20_000_000) == 16384
    assert auto_batch_size(71_250_000) == 65536  # the 100M night's split fit
    assert auto_batch_size(100_000_000) == 65536  # 131,072 made the 100M night's refit diverge in its first epoch
