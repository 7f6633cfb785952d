"""`ials` trained by shards (on a cluster: flows/cluster.py, the shard task in tasks/shards.py): each half-step solves shards of users (then of items)
as separate tasks, each against the fixed side's vectors and their Gramian, reading only its own rows of the
ratings. The arithmetic is `tasks.models.ials.solve_side` on the shard's rows; shards are made of whole chunks
of `chunk_ratings`, so every row is solved exactly as in process and the fit is the same bit for bit.

A fit's folder (`RunFolder.ials_fit(phase)`) holds:

- `by_user.{indptr,indices,values}.npy`, `by_item.*`: the ratings as CSR (holding c_ui) by user and by item,
  which a shard memory-maps and slices to its rows;
- `users-e<epoch>-<first row>.npy`, `items-...`: each shard's vectors after an epoch (`e000`: the seeded
  initial ones). A shard writes a new file and never changes one, so a retried shard reads the same inputs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.models.base import (
    InitialRows,
    Interactions,
    PreparedShards,
    RatingMatrix,
    column_tensors,
    in_csr_order,
    key_counts,
    stable_order,
)
from tasks.models.ials import (
    ColumnTiles,
    Ials,
    IalsParams,
    confidence,
    gramian,
    initial_vectors,
    non_finite,
    observed_loss,
    rating_matrices,
    row_chunks,
    row_penalty,
    solve_side,
    tile_width,
)
from tasks.run_folder import atomic_write

log = logging.getLogger(__name__)

SIDES = ("users", "items")
MATRIX = {"users": "by_user", "items": "by_item"}  # the ratings a side's rows are solved from
OTHER = {"users": "items", "items": "users"}
WRITE_CHUNK = 1 << 22  # ratings per write of a rating file: what writing holds beside the ratings


def shard_rows(indptr: torch.Tensor, chunk_ratings: int, shard_ratings: int) -> list[tuple[int, int]]:
    """Row ranges made of whole chunks (`row_chunks` of `chunk_ratings`), each holding at most `shard_ratings`
    ratings, or one chunk where a chunk alone holds more."""
    shards: list[tuple[int, int]] = []
    for start, stop in row_chunks(indptr, chunk_ratings):
        if shards and int(indptr[stop]) - int(indptr[shards[-1][0]]) <= shard_ratings:
            shards[-1] = (shards[-1][0], stop)
        else:
            shards.append((start, stop))
    return shards


@dataclass(frozen=True)
class IalsShardPlan:
    """A fit's folder and each side's shards (row ranges)."""

    folder: Path
    shards: dict[str, list[tuple[int, int]]]  # "users" / "items" -> [(first, last), ...]
    n_ratings: int

    def firsts(self, side: str) -> list[int]:
        return [first for first, _ in self.shards[side]]


def vectors_path(folder: Path, side: str, epoch: int, first: int) -> Path:
    return folder / f"{side}-e{epoch:03d}-{first:010d}.npy"


def _save(array: np.ndarray, path: Path) -> None:
    """Through a temporary name, so a shard killed mid-write leaves no half file under the real one."""
    with atomic_write(path) as partial, open(partial, "wb") as handle:
        np.save(handle, array)


def prepare_ials_shards(
    interactions: Interactions, params: IalsParams, seed: int, folder: Path, init: InitialRows | None = None
) -> IalsShardPlan:
    """Write the fit's ratings by user and by item and the seeded initial vectors (as `fit_ials` draws them, with a
    warm start's `init` rows) to `folder` (emptied first), cut into shards; returns the plan."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n_ratings = write_rating_matrices(interactions, params, folder)
    vectors = initial_vectors(interactions.n_users, interactions.n_items, params, torch.device("cpu"), seed, init)
    shards = {}
    for side, side_vectors in zip(SIDES, vectors, strict=True):
        indptr = torch.from_numpy(np.load(folder / f"{MATRIX[side]}.indptr.npy"))
        shards[side] = shard_rows(indptr, params.chunk_ratings, params.shard_ratings)
        for first, last in shards[side]:
            _save(side_vectors[first:last].numpy(), vectors_path(folder, side, 0, first))
    return IalsShardPlan(folder, shards, n_ratings)  # the objective is per stored rating


def write_rating_matrices(interactions: Interactions, params: IalsParams, folder: Path) -> int:
    """The fit's ratings as both sides' CSR files in `folder` (`by_user.*`, `by_item.*`, holding c_ui), the very
    arrays `rating_matrices` builds; returns the number of ratings stored.

    Ratings sorted by user then item with no pair repeated (as reindex and the split write them) are written
    `WRITE_CHUNK` at a time from the frame's own columns, with only the by-item order beside them (4 bytes a
    rating, `stable_order`): building both matrices whole held 12 bytes a rating each, plus the transpose's copies, in the
    flow's process. Other ratings are built whole by `rating_matrices`."""
    ratings = interactions.ratings
    users, items = ratings["user_idx"].to_numpy(), ratings["item_idx"].to_numpy()
    if not in_csr_order(users, items, interactions.n_items):
        matrices = rating_matrices(interactions, params, torch.device("cpu"))
        for side, matrix in zip(SIDES, matrices, strict=True):
            for part in ("indptr", "indices", "values"):
                _save(getattr(matrix, part).numpy(), folder / f"{MATRIX[side]}.{part}.npy")
        return int(matrices[0].indptr[-1])  # repeated pairs are summed into one
    values = ratings["rating"].to_numpy()
    _write_side(folder / MATRIX["users"], users, items, values, interactions.n_users, params, None)
    item_column = column_tensors(ratings, torch.device("cpu"))[1]  # the frame's memory
    by_item = stable_order(item_column, interactions.n_items).numpy()  # as RatingMatrix.transpose orders them
    _write_side(folder / MATRIX["items"], items, users, values, interactions.n_items, params, by_item)
    return len(ratings)


def _write_side(
    name: Path,
    rows: np.ndarray,
    cols: np.ndarray,
    ratings: np.ndarray,
    n_rows: int,
    params: IalsParams,
    order: np.ndarray | None,
) -> None:
    """One side's CSR files (`<name>.indptr.npy`, `.indices.npy`, `.values.npy`) from ratings in that side's row
    order, or in `order` of them; the indices and values are written a chunk at a time."""
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(key_counts(rows, n_rows), out=indptr[1:])
    _save(indptr, Path(f"{name}.indptr.npy"))

    def chunks(column: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(column), WRITE_CHUNK):
            yield column[start : start + WRITE_CHUNK] if order is None else column[order[start : start + WRITE_CHUNK]]

    _save_chunks(Path(f"{name}.indices.npy"), len(cols), (part.astype(np.int64) for part in chunks(cols)))
    c_ui = (confidence(torch.from_numpy(part.astype(np.float32)), params).numpy() for part in chunks(ratings))
    _save_chunks(Path(f"{name}.values.npy"), len(ratings), c_ui)


def _save_chunks(path: Path, length: int, chunks: Iterator[np.ndarray]) -> None:
    """A one-dimensional .npy file of `length` values written chunk by chunk (all of one dtype), as `_save`
    writes it whole."""
    first = next(chunks, None)
    dtype = np.dtype(np.float32) if first is None else first.dtype
    with atomic_write(path) as partial, open(partial, "wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in itertools.chain([] if first is None else [first], chunks):
            handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def load_side(folder: Path, side: str, epoch: int, firsts: list[int]) -> torch.Tensor:
    """A whole side's vectors after `epoch`, from its shards' files."""
    return torch.from_numpy(np.concatenate([np.load(vectors_path(folder, side, epoch, first)) for first in firsts]))


@functools.lru_cache(maxsize=2)  # a worker alternates between a user shard and an item shard
def _shard_ratings(folder: str, side: str, first: int, last: int, width: int) -> ColumnTiles:
    """Rows first..last-1 of a side's ratings (columns: the other side) as column tiles, read from the
    memory-mapped arrays, so only these rows' ratings are loaded."""
    name = Path(folder) / MATRIX[side]
    indptr = np.load(f"{name}.indptr.npy", mmap_mode="r")
    start, stop = int(indptr[first]), int(indptr[last])
    n_other = int(np.load(Path(folder) / f"{MATRIX[OTHER[side]]}.indptr.npy", mmap_mode="r").shape[0]) - 1
    matrix = RatingMatrix(last - first, n_other, stop - start)
    matrix.indptr.copy_(torch.from_numpy(np.array(indptr[first : last + 1]) - start))
    for part in ("indices", "values"):  # copies of the slices: the rest of the file is never read
        getattr(matrix, part).copy_(
            torch.from_numpy(np.array(np.load(f"{name}.{part}.npy", mmap_mode="r")[start:stop]))
        )
    return ColumnTiles(matrix, width)


@torch.no_grad()
def solve_shard(
    folder: Path, side: str, epoch: int, first: int, last: int, other_firsts: list[int], params: IalsParams
) -> tuple[float, bool]:
    """Rows first..last-1 of `side` in `epoch`'s half-step, written to `vectors_path`.

    Returns:
        The shard's part of the epoch's objective (users: their penalty; items: the observed loss over their
        ratings, their penalty and their part of the unobserved term, from the final vectors of the epoch), and
        whether its vectors are finite.
    """
    other_epoch = epoch - 1 if side == "users" else epoch  # users are solved first, against last epoch's items
    other = load_side(folder, OTHER[side], other_epoch, other_firsts)
    x = torch.from_numpy(np.load(vectors_path(folder, side, epoch - 1, first))).clone()
    tiles = _shard_ratings(
        str(folder), side, first, last, tile_width(params.factors, params.cache_bytes, torch.device("cpu"))
    )
    penalty = row_penalty(tiles.indptr, tiles.n_cols, params)
    gram = gramian(other, params.a0)
    solve_side(x, other, gram, tiles, penalty, params.cg_steps, params.chunk_ratings)
    part = (penalty * x.pow(2).sum(1)).double().sum()
    if side == "items":  # the epoch's vectors are final now: this shard's ratings and its share of every pair
        part += observed_loss(tiles, x, other, params.chunk_ratings) + (gram * (x.T @ x)).double().sum()
    _save(x.numpy(), vectors_path(folder, side, epoch, first))
    return float(part), bool(torch.isfinite(x).all())


def drop_epoch(plan: IalsShardPlan, epoch: int) -> None:
    """Delete `epoch`'s vector files once the next epoch no longer reads them."""
    for side in SIDES:
        for first in plan.firsts(side):
            vectors_path(plan.folder, side, epoch, first).unlink(missing_ok=True)


# Solves one half-step's shards somewhere: (side, epoch, shards, the other side's shard firsts) -> each shard's
# (objective part, finite), as `solve_shard` returns them
HalfStep = Callable[[str, int, list[tuple[int, int]], list[int]], list[tuple[float, bool]]]


def fit_by_shards(plan: IalsShardPlan, params: IalsParams, label: str, half_step: HalfStep) -> list[dict]:
    """The epochs of `fit_ials` with each half-step's shards solved by `half_step` (on a cluster: mapped task
    runs); returns the history rows, as `fit_ials` records them."""
    rows = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        parts = [part for side in SIDES for part in half_step(side, epoch, plan.shards[side], plan.firsts(OTHER[side]))]
        if not all(finite for _, finite in parts):
            raise non_finite(epoch)
        rows.append({"epoch": epoch, "split": label, "loss": sum(part for part, _ in parts) / max(plan.n_ratings, 1)})
        drop_epoch(plan, epoch - 1)
        log.info(
            "epoch %d/%d: %s loss %.4f (%.2fs, %d + %d shards)",
            epoch,
            params.epochs,
            label,
            rows[-1]["loss"],
            time.perf_counter() - started,
            len(plan.shards["users"]),
            len(plan.shards["items"]),
        )
    return rows


def in_process(plan: IalsShardPlan, params: IalsParams) -> HalfStep:
    """A `HalfStep` that solves the shards one after another in this process."""
    return lambda side, epoch, shards, other_firsts: [
        solve_shard(plan.folder, side, epoch, first, last, other_firsts, params) for first, last in shards
    ]


def assemble_ials(plan: IalsShardPlan, epoch: int, n_users: int, n_items: int, factors: int) -> Ials:
    """The fitted module from the shards' files of `epoch` (the last); the fit's folder is deleted after."""
    module = Ials(n_users, n_items, factors)
    module.user_factors.copy_(load_side(plan.folder, "users", epoch, plan.firsts("users")))
    module.item_factors.copy_(load_side(plan.folder, "items", epoch, plan.firsts("items")))
    shutil.rmtree(plan.folder, ignore_errors=True)
    return module.eval()


# Runs a prepared fit's epochs over its shards somewhere (on a cluster: a subflow mapping `solve_shard` tasks) and
# returns the history rows: (plan, params, label) -> rows, as `fit_by_shards` records them
RunEpochs = Callable[[IalsShardPlan, IalsParams, str], list[dict]]


@dataclass(frozen=True)
class ShardedIals:
    """`fit_ials` with its epochs run by `run_epochs` over shards prepared in `folder`: the same fit bit for bit,
    since each shard solves whole chunks of rows as the in-process fit does. `prepare` writes the shards' files
    from the ratings; `fit` runs the epochs from those files alone, and the module comes back on the CPU."""

    folder: Path
    run_epochs: RunEpochs

    def prepare(
        self, interactions: Interactions, params: IalsParams, seed: int, init: InitialRows | None
    ) -> PreparedShards:
        params = params.for_interactions(interactions)
        plan = prepare_ials_shards(interactions, params, seed, self.folder, init)
        return PreparedShards(
            plan, params, interactions.n_users, interactions.n_items, plan.n_ratings, interactions.rating_range
        )

    def fit(self, prepared: PreparedShards, label: str) -> tuple[Ials, list[dict]]:
        plan, params = prepared.plan, prepared.params
        log.info(
            "training ials on %d ratings: %d user and %d item shards per epoch",
            plan.n_ratings,
            len(plan.shards["users"]),
            len(plan.shards["items"]),
        )
        rows = self.run_epochs(plan, params, label)
        return assemble_ials(plan, params.epochs, prepared.n_users, prepared.n_items, params.factors), rows
