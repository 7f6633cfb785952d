"""What every model is: a torch module that scores a chunk of users against all items.

A model is an `nn.Module` whose weights and data live in parameters and buffers, so one checkpoint format
(`state_dict` plus the constructor's arguments) and one device move serve all of them. Rating models
(`predicts_ratings`) also map (user, item) pairs to ratings through `forward`; ranking models only rank.
"""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

# torch warns that sparse CSR is in beta and that invariant checks are off; the products used here are stable
# and the matrices are built by `RatingMatrix.build`, which coalesces them.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


# The most passes a fit may be asked for: settings that multiply a run's time are bounded, so that a typo
# (`--dot-bias-epochs 100000`) is refused at once rather than holding the run lock for hours. The defaults
# are 5 to 30; the tuning searches stay far below this.
MAX_EPOCHS = 1000
GATHER_CHUNK = 1 << 22  # values a sparse matrix's transpose gathers at once (and its order check reads)
SORT_CHUNK = 1 << 20  # keys `stable_order` sorts at a time


class ModelParams(BaseModel):
    """Base of each model's parameter group: frozen, and a misspelt setting is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# A fit's initial state from a previous fit (a warm start, tasks/warm.py): by state tensor name (`user_factors`,
# `item_bias.weight`, ...), the row indices in this fit's index space and their values.
InitialRows = dict[str, tuple[torch.Tensor, torch.Tensor]]


def apply_initial_rows(tensors: dict[str, torch.Tensor], rows: InitialRows | None) -> None:
    """Copy `rows` into the named tensors in place (on their device); names not in `tensors` are skipped."""
    for name, (index, values) in (rows or {}).items():
        if name in tensors:
            target = tensors[name]
            target[index.to(target.device)] = values.to(target.device, target.dtype).view(-1, *target.shape[1:])


@dataclass(frozen=True)
class Interactions:
    """What a model is fitted on: indexed ratings and the sizes of the vocabularies they index into."""

    ratings: pl.DataFrame  # user_idx, item_idx (indices < n_users, n_items), rating
    n_users: int
    n_items: int
    scale: tuple[float, float] | None = None  # the ratings' scale when it is given (rating_scale), not read

    @property
    def rating_range(self) -> tuple[float, float]:
        """The rating scale: as given, else the lowest and highest rating."""
        if self.scale is not None:
            return self.scale
        ratings = self.ratings["rating"]
        return float(cast(float, ratings.min())), float(cast(float, ratings.max()))


P = TypeVar("P", bound=ModelParams, contravariant=True)


class Fit(Protocol[P]):
    """The one signature every model's fit has.

    Args:
        interactions: the ratings to fit and the vocabulary sizes.
        params: the model's own parameter group.
        device: where to train; the module returned lives there.
        validation: held-out ratings whose loss gradient-trained models record per epoch (others ignore it).
        seed: seeds the initialisation, the batch order and any sampling.
        label: the `split` the training loss is recorded under ("train", or "refit").

    Returns:
        The fitted module and its history rows (`epoch`, `split`, `loss`; none for closed-form models).
    """

    def __call__(
        self,
        interactions: Interactions,
        params: P,
        device: torch.device,
        validation: pl.DataFrame | None = None,
        *,
        seed: int = 0,
        label: str = "train",
    ) -> tuple[Recommender, list[dict]]: ...


class WarmFit(Protocol[P]):
    """A fit that can start from a previous fit's rows (a warm start): `Fit` plus `init`."""

    def __call__(
        self,
        interactions: Interactions,
        params: P,
        device: torch.device,
        validation: pl.DataFrame | None = None,
        *,
        seed: int = 0,
        label: str = "train",
        init: InitialRows | None = None,
    ) -> tuple[Recommender, list[dict]]: ...


@dataclass(frozen=True)
class PreparedShards:
    """What a fit by shards wrote from its ratings (its shards' files, named by `plan`) and what it kept of them: all
    its epochs need, so that the ratings can be dropped before they run."""

    plan: Any  # the model's own record of its shards' files
    params: Any  # the model's parameters, as the ratings set them (`for_interactions`)
    n_users: int
    n_items: int
    n_ratings: int
    rating_range: tuple[float, float]


class ShardedFit(Protocol):
    """A model's fit with its work cut into shards that read their inputs from files (`ModelSpec.sharded`), in two
    steps: `prepare` writes the files from the ratings, `fit` runs the epochs from the files alone."""

    def prepare(
        self, interactions: Interactions, params: Any, seed: int, init: InitialRows | None
    ) -> PreparedShards: ...

    def fit(self, prepared: PreparedShards, label: str) -> tuple[Recommender, list[dict]]: ...


# Called after each epoch of a fit that `reports_epochs` with the epoch (1-based) and the module as it stands: the
# tuning search (tasks/tune) scores it there and may stop the fit by raising (a trial pruned).
EpochHook = Callable[[int, "Recommender"], None]


# How a setting chosen on the search's data (a user sample, less its validation split) carries to a nightly's fit
# (tasks/tune/search.py, `carried`): as it is; times the ratio of users fitted; or divided by the ratio of each
# user's interactions fitted.
Carry = Literal["as is", "times users", "over interactions per user"]


@dataclass(frozen=True)
class Range:
    """Where the tuning search (tasks/tune) looks for one setting of a model: whole numbers or reals from `low` to
    `high` (on a log scale with `log`), or one of `choices`; `carry`: how the value chosen on the search's data is
    carried to the nightly's (`Carry`); `capacity`: the choices are the model's sizes in ascending order (factors),
    and the search tries its best trial one size up now and then (tasks/tune/search.py, `_step_up`)."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    carry: Carry = "as is"
    capacity: bool = False


@dataclass(frozen=True)
class FoldIn:
    """Users folded into a fitted model, its items fixed (a fold-in, tasks/fold_in): their interactions, indexed
    0..n-1 over these users and by the fitted model's item indices, and where each user is in the fitted model."""

    interactions: Interactions  # n_users: the users folded in; n_items: the fitted model's
    known: torch.Tensor  # (n_users,) int64: each user's row in the fitted model, -1 for a user it has never seen
    fitted_ratings: int  # ratings the model was fitted on: what its density-scaled settings are resolved from
    fitted_users: int


# A model's fold-in: the fitted module, its parameter group (as the fit had it) and the users, on a device -> a module
# of the same kind over only those users (its item side the fitted one's), which scores and predicts as the fit would.
FoldInFn = Callable[..., "Recommender"]  # (module, params, users: FoldIn, device) -> module


class WarmStartParams(Protocol):
    """What a warm-starting model's parameter group holds besides its own settings."""

    factors: int  # a previous fit's vectors are reused only at the same width
    epochs: int
    warm_epochs: int  # the passes a warm fit runs instead of `epochs`
    refit_epochs: int | None  # the refit starts from tonight's split fit for this many passes; None: from scratch


@dataclass(frozen=True)
class ModelSpec(Generic[P]):
    """A registered model: the module class a checkpoint rebuilds, its parameter group, its fit, and what it can do.

    Everything the pipeline asks of a model is read here, so adding one is its module plus one registry line
    (tasks/models/__init__.py; docs/models.md, "Adding a model").
    """

    module: type[Recommender]
    params: type[P]
    fit: Fit[P]
    description: str
    # Its fit takes `init` (a `WarmFit`) and its parameter group has factors, epochs, warm_epochs and
    # refit_epochs: with `warm_start`, tonight's fit starts from the last published run's vectors, and with
    # refit_epochs the refit starts from tonight's split fit (tasks/warm.py).
    warm_start: bool = False
    # Given a folder and what runs its epochs over shards (on a cluster, flows/cluster.py), the same fit with its work
    # cut into shards that read their inputs from that folder (ials: tasks/models/ials_shards.py).
    sharded: Callable[..., ShardedFit] | None = None
    # What the tuning search varies, by setting of the parameter group (`recs tune`, tasks/tune); the settings
    # left out keep their defaults. Empty: the model is not tuned.
    search: dict[str, Range] = field(default_factory=dict)
    # Its fit takes `on_epoch` (an `EpochHook`), so that a tuning trial can be scored and pruned by epoch.
    reports_epochs: bool = False
    # How it takes users it was not fitted on, or whose interactions changed, without refitting (`recs fold-in`):
    # None leaves them to the next nightly (docs/models.md, "Folding in new users").
    fold_in: FoldInFn | None = None

    def __post_init__(self) -> None:
        if unknown := [name for name in self.search if name not in self.params.model_fields]:
            raise TypeError(f"{self.module.__name__}: search names settings its parameters lack: {', '.join(unknown)}")
        if self.reports_epochs and "on_epoch" not in inspect.signature(self.fit).parameters:
            raise TypeError(f"{self.module.__name__}: a model that reports epochs has a fit that takes `on_epoch`")
        if self.warm_start:
            takes = inspect.signature(self.fit).parameters
            missing = [
                field
                for field in ("factors", "epochs", "warm_epochs", "refit_epochs")
                if field not in self.params.model_fields
            ]
            if "init" not in takes or missing:
                raise TypeError(
                    f"{self.module.__name__}: a warm-starting model's fit takes `init` and its parameters have "
                    f"factors, epochs, warm_epochs and refit_epochs (missing: "
                    f"{', '.join(missing + (['init'] if 'init' not in takes else []))})"
                )

    @property
    def trains_by_shards(self) -> bool:
        return self.sharded is not None

    @property
    def predicts_ratings(self) -> bool:
        """Whether it predicts ratings (a rating model: RMSE, stars beside the lists) or only ranks."""
        return self.module.predicts_ratings

    def warm_fit(self) -> WarmFit[P]:
        """The fit, with the `init` argument it declares (only for a `warm_start` model)."""
        if not self.warm_start:
            raise TypeError(f"{self.module.__name__} does not start warm")
        return cast(WarmFit[P], self.fit)

    def warm_params(self, params: ModelParams) -> WarmStartParams:
        """`params` as the warm-start settings they hold (only for a `warm_start` model)."""
        if not self.warm_start:
            raise TypeError(f"{self.module.__name__} does not start warm")
        return cast(WarmStartParams, params)


class ModelFitError(RuntimeError):
    """Training diverged (a non-finite loss); nothing trained this way may be published."""


def record_epoch(
    rows: list[dict],
    epoch: int,
    epochs: int,
    label: str,
    loss: float,
    seconds: float,
    validate: Callable[[], float] | None,
) -> str:
    """One epoch's bookkeeping in every gradient-trained fit: the loss checked (`check_finite`), its history row
    and, with `validate`, the validation loss's row appended to `rows`; returns the epoch's line for the log."""
    check_finite(loss, epoch)
    rows.append({"epoch": epoch, "split": label, "loss": loss})
    message = f"epoch {epoch}/{epochs}: {label} loss {loss:.4f}"
    if validate is not None:
        rows.append({"epoch": epoch, "split": "validation", "loss": validate()})
        message += f", validation loss {rows[-1]['loss']:.4f}"
    return f"{message} ({seconds:.2f}s"


def check_finite(loss: float, epoch: int) -> None:
    """Raise ModelFitError when an epoch's loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise ModelFitError(
            f"training loss became {loss} in epoch {epoch}; lower the learning rate or raise the regularization"
        )


class Recommender(nn.Module, ABC):
    """Base of the models. Subclasses call `super().__init__(**shape)` with every constructor argument and define
    `score_users`; a rating model (`predicts_ratings`) defines `forward` too."""

    predicts_ratings: ClassVar[bool] = True
    # False where the prediction for a user or item with no training rating means nothing (a dot product with
    # an untrained vector, a neighbour average over no neighbours): tasks/train.py then predicts as `bias`
    predicts_unseen: ClassVar[bool] = True

    def __init__(self, **init_args: Any) -> None:
        super().__init__()
        self.init_args = init_args  # saved in checkpoints: `type(self)(**init_args)` rebuilds the shapes

    @abstractmethod
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of `users` against every item, (len(users), n_items); higher is better."""

    def rank_users(self, users: torch.Tensor) -> torch.Tensor:
        """An increasing function of `score_users`, cheaper to compute (top-k needs only the order);
        `rank_to_score` maps its values back to scores."""
        return self.score_users(users)

    def rank_to_score(self, values: torch.Tensor) -> torch.Tensor:
        """Scores from `rank_users` values (the identity unless a model ranks on a cheaper function)."""
        return values

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of (user, item) pairs (rating models only)."""
        raise NotImplementedError(f"{type(self).__name__} ranks items; it does not predict ratings")

    def item_embeddings(self) -> torch.Tensor | None:
        """One vector per item, for the similar-items inspection; None when the model has none."""
        return None

    def item_biases(self) -> torch.Tensor | None:
        """One bias per item, for the item-bias inspection; None when the model has none."""
        return None

    def item_affinity(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """How much a rated item speaks for a recommended one, for the published reasons (tasks/reasons.py); None
        when the model has no such measure.

        A function of (recommended items, p of them; `crow`, p + 1 offsets; rated items) giving one value per
        rated item: rated[crow[j]:crow[j + 1]] are those of pair j. Here the cosine of their embeddings (the model's
        item space), as a sampled product over that pattern, so no (entries x factors) block is gathered; a model
        that scores from item-item weights (EASE) gives the weight the rated item adds to the recommended one's
        score instead."""
        vectors = self.item_embeddings()
        if vectors is None:
            return None
        unit = torch.nn.functional.normalize(vectors.detach().float(), dim=1)

        def cosine(items: torch.Tensor, crow: torch.Tensor, rated: torch.Tensor) -> torch.Tensor:
            pattern = torch.sparse_csr_tensor(
                crow, rated, torch.zeros(len(rated), device=unit.device), (len(items), len(unit))
            )
            return torch.sparse.sampled_addmm(pattern, unit[items], unit.T, beta=0.0).values()

        return cosine


def index_tensors(ratings: pl.DataFrame, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`user_idx`, `item_idx` (int64) and `rating` (float32) as tensors on `device`, copies of the frame's
    columns."""
    return (
        torch.from_numpy(ratings["user_idx"].to_numpy().astype(np.int64)).to(device),
        torch.from_numpy(ratings["item_idx"].to_numpy().astype(np.int64)).to(device),
        torch.from_numpy(ratings["rating"].to_numpy().astype(np.float32)).to(device),
    )


def column_tensors(ratings: pl.DataFrame, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`user_idx`, `item_idx` (32-bit where the frame's are) and `rating` (float32) as read-only tensors on `device`:
    on the CPU they share the frame's memory (through DLPack) where its columns are of these types in one chunk, so
    a fit that only reads its ratings holds no copy of them (1.2 GB at 100M ratings)."""

    def column(name: str, dtype: pl.DataType) -> torch.Tensor:
        series = ratings[name].rechunk()
        if series.dtype not in (dtype, pl.Int64) or series.has_nulls():
            series = series.cast(dtype)
        return torch.from_dlpack(series.to_arrow()).to(device)

    return column("user_idx", pl.Int32()), column("item_idx", pl.Int32()), column("rating", pl.Float32())


def in_csr_order(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> bool:
    """`sorted_and_distinct` of numpy columns, checked `GATHER_CHUNK` pairs at a time (each chunk overlapping the
    next by one pair), so the check holds no 64-bit copy of all the keys."""
    return all(
        sorted_and_distinct(
            torch.from_numpy(rows[start : start + GATHER_CHUNK + 1].astype(np.int64)),  # copies: a frame's arrays
            torch.from_numpy(cols[start : start + GATHER_CHUNK + 1].astype(np.int64)),  # are read-only
            n_cols,
        )
        for start in range(0, max(len(rows) - 1, 1), GATHER_CHUNK)
    )


def sorted_and_distinct(rows: torch.Tensor, cols: torch.Tensor, n_cols: int) -> bool:
    """Whether the (row, col) pairs are in row-major order with none repeated."""
    keys = rows.to(torch.int64) * n_cols
    keys += cols
    return bool((keys[1:] > keys[:-1]).all())


def key_counts(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """How often each of 0..n_keys-1 occurs in `keys` (64-bit counts), `SORT_CHUNK` keys at a time: numpy's
    `bincount` casts 32-bit keys to 64-bit ones first, a copy of 0.8 GB at 100M ratings."""
    counts, chunk = np.zeros(n_keys, dtype=np.int64), max(SORT_CHUNK, n_keys)  # a chunk costs n_keys steps more
    for start in range(0, len(keys), chunk):
        counts += np.bincount(keys[start : start + chunk], minlength=n_keys)
    return counts


def stable_order(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """The positions of `keys` (whole numbers below `n_keys`) in a stable sort of them, as 32-bit numbers where they
    fit. On the CPU a counting sort: each chunk of `SORT_CHUNK` keys (or of `n_keys`, where more) is sorted and
    its positions go to each key's next free places. Beside the keys it holds the order and one chunk's sort: torch's
    stable sort of 20M 32-bit keys held 460 MB, this 150 MB, in the same time. Elsewhere torch's sort."""
    if keys.device.type != "cpu":
        return torch.sort(keys, stable=True).indices
    order = torch.empty(len(keys), dtype=torch.int32 if len(keys) < 2**31 else torch.int64)
    next_free = torch.zeros(n_keys, dtype=torch.int64)  # where each key's next position goes
    next_free[1:] = torch.bincount(keys, minlength=n_keys)[:-1].cumsum(0)
    chunk = max(SORT_CHUNK, n_keys)  # each chunk costs n_keys steps besides its own
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        sorted_keys, in_part = torch.sort(part, stable=True)
        counts = torch.bincount(part, minlength=n_keys)
        first_in_part = counts.cumsum(0) - counts  # each key's first place in the chunk's sort
        places = (next_free - first_in_part)[sorted_keys] + torch.arange(len(part))
        order[places] = (in_part + start).to(order.dtype)
        next_free += counts
    return order


class RatingMatrix(nn.Module):
    """A users x items sparse matrix kept as CSR buffers (so it saves and moves with the model that holds it).

    The models that score from a user's history (EASE, kNN) keep their training matrix in one of these.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    def __init__(self, n_rows: int, n_cols: int, nnz: int) -> None:
        super().__init__()
        self.shape = (n_rows, n_cols)
        self.register_buffer("indptr", torch.zeros(n_rows + 1, dtype=torch.int64))
        self.register_buffer("indices", torch.zeros(nnz, dtype=torch.int64))
        self.register_buffer("values", torch.zeros(nnz, dtype=torch.float32))

    @classmethod
    def of_ratings(
        cls,
        ratings: pl.DataFrame,
        shape: tuple[int, int],
        device: torch.device,
        value_of: Callable[[torch.Tensor], torch.Tensor] = lambda rating: rating,
    ) -> RatingMatrix:
        """Users x items holding `value_of` each rating (float32, computed in place), from indexed ratings
        (`user_idx`, `item_idx`, `rating`), as `build` makes it from their `index_tensors`. Ratings sorted by user
        then item with no pair repeated (as reindex and the split write them) are copied straight into a matrix
        on the CPU: the index tensors and the order check held 25 bytes a rating more."""
        users, items = ratings["user_idx"].to_numpy(), ratings["item_idx"].to_numpy()
        if device.type != "cpu" or not in_csr_order(users, items, shape[1]):
            rows, cols, values = index_tensors(ratings, device)
            return cls.build(rows, cols, value_of(values), shape)
        matrix = cls(shape[0], shape[1], len(items))
        matrix.indptr[1:] = torch.from_numpy(key_counts(users, shape[0])).cumsum(0)
        matrix.indices.numpy()[:] = items  # numpy's casts into the tensors' memory
        matrix.values.numpy()[:] = ratings["rating"].to_numpy()
        value_of(matrix.values)
        return matrix

    @classmethod
    def build(
        cls, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
    ) -> RatingMatrix:
        """From coordinates (duplicates are summed), on the device of `rows`. Coordinates already sorted by row then
        column, none repeated (as reindex and the split write the ratings), are taken as they are: the sparse
        tensor's sort and sum would copy them several times over (1.6 GB at 20M ratings)."""
        if sorted_and_distinct(rows, cols, shape[1]):
            matrix = cls(shape[0], shape[1], len(cols)).to(rows.device)
            matrix.indptr[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
            matrix.indices.copy_(cols)
            matrix.values.copy_(values)
            return matrix
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values.float(), shape).coalesce()
        r, c = coo.indices()
        matrix = cls(shape[0], shape[1], len(c)).to(rows.device)
        matrix.indptr.copy_(
            torch.cat(
                [torch.zeros(1, dtype=torch.int64, device=rows.device), torch.bincount(r, minlength=shape[0]).cumsum(0)]
            )
        )
        matrix.indices.copy_(c)
        matrix.values.copy_(coo.values())
        return matrix

    def rows(self, which: torch.Tensor, binary: bool = False) -> torch.Tensor:
        """The dense rows `which`, (len(which), n_cols); with `binary`, 1 where a value is stored."""
        starts, stops = self.indptr[which], self.indptr[which + 1]
        counts = stops - starts
        row = torch.repeat_interleave(torch.arange(len(which), device=which.device), counts)
        first = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts)
        position = first + torch.arange(int(counts.sum()), device=which.device)
        dense = torch.zeros((len(which), self.shape[1]), device=self.values.device)
        dense[row, self.indices[position]] = 1.0 if binary else self.values[position]
        return dense

    def csr(self, binary: bool = False) -> torch.Tensor:
        """As a torch sparse CSR tensor (for sparse @ dense products); with `binary`, ones for the values."""
        values = torch.ones_like(self.values) if binary else self.values
        return torch.sparse_csr_tensor(self.indptr, self.indices, values, self.shape)

    def row_of_values(self) -> torch.Tensor:
        """The row index of each stored value."""
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.indptr.device), self.indptr.diff())

    def row_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per row, the sum of `values` (one per stored value, e.g. `self.values ** 2`)."""
        return torch.zeros(self.shape[0], device=values.device).index_add_(0, self.row_of_values(), values)

    def with_values(self, values: torch.Tensor) -> RatingMatrix:
        """The same sparsity pattern holding other values."""
        out = RatingMatrix(*self.shape, len(values)).to(values.device)
        out.indptr.copy_(self.indptr)
        out.indices.copy_(self.indices)
        out.values.copy_(values)
        return out

    def transpose(self) -> RatingMatrix:
        """The n_cols x n_rows matrix (a stable sort by column keeps each new row's columns in order). The sort's
        order and the row numbers are 32-bit where they fit (`stable_order`) and the gathers go `GATHER_CHUNK` at a
        time, so beside the two matrices it holds 8 bytes a value and little else: at 20M ratings the whole gathers
        and 64-bit row numbers held 0.3 GB more, and torch's sort 0.3 GB more again."""
        narrow = torch.int32 if max(self.shape) < 2**31 else torch.int64
        order = stable_order(self.indices, self.shape[1])
        matrix = RatingMatrix(self.shape[1], self.shape[0], len(order)).to(self.indptr.device)
        matrix.indptr[1:] = torch.bincount(self.indices, minlength=self.shape[1]).cumsum(0)
        row_of_values = torch.repeat_interleave(
            torch.arange(self.shape[0], dtype=narrow, device=self.indptr.device), self.indptr.diff()
        )
        for start in range(0, len(order), GATHER_CHUNK):
            taken = order[start : start + GATHER_CHUNK]
            matrix.indices[start : start + GATHER_CHUNK] = row_of_values[taken]
            matrix.values[start : start + GATHER_CHUNK] = self.values[taken]
        return matrix

    def row_means(self) -> torch.Tensor:
        """Mean of each row's stored values (0 for an empty row)."""
        return self.row_sums(self.values) / self.indptr.diff().clamp(min=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint's matrix has its own number of stored values: take its buffers' sizes.
        for name in ("indptr", "indices", "values"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def pair_scores(score_users, users: torch.Tensor, items: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """`score_users(u)[u, i]` for each pair, scoring each distinct user once, `chunk` users at a time."""
    distinct, position = torch.unique(users, return_inverse=True)
    out = torch.empty(len(users), device=users.device)
    for start in range(0, len(distinct), chunk):
        in_chunk = (position >= start) & (position < start + chunk)
        scores = score_users(distinct[start : start + chunk])
        out[in_chunk] = scores[position[in_chunk] - start, items[in_chunk]]
    return out
