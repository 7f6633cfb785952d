"""A run's folder (`data_dir/runs/<run_id>`): every file a run keeps or hands to another process is named here.

What the stages save for each other, for a training deployment and for a cluster's shards (which read their inputs
from the folder on storage they share with the flow), the checkpoints a later night's warm start reads, and the
report's charts. `atomic_write` is the one way such a file is written: under a temporary name beside it, renamed
over the real name only once complete, so a process killed mid-write never leaves half a file under it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

# What the stages after the split read of a rating (a fit, the evaluation, the lists): the files' timestamps are left
# on disk, a third of the frames' memory.
COLUMNS = ["user_idx", "item_idx", "rating"]


def read_ratings(path: Path) -> pl.DataFrame:
    """A run folder's rating file (`COLUMNS`), each column one array filled a batch at a time: polars reads a file
    DuckDB wrote as one chunk per row group (611 at 75M ratings), and joining them into the one chunk a fit's
    tensors can share (`tasks.models.base.column_tensors`) held a second copy for a while."""
    source = pq.ParquetFile(path, pre_buffer=False)
    schema = source.schema_arrow
    arrays = {name: np.empty(source.metadata.num_rows, schema.field(name).type.to_pandas_dtype()) for name in COLUMNS}
    start = 0
    for batch in source.iter_batches(batch_size=1 << 20, columns=COLUMNS):
        for name in COLUMNS:
            arrays[name][start : start + batch.num_rows] = batch.column(name).to_numpy()
        start += batch.num_rows
    return pl.DataFrame({name: pl.Series(name, values) for name, values in arrays.items()})  # no copy


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block ends, removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run, by what they are."""

    path: Path

    @classmethod
    def of(cls, data_dir: Path, run_id: str) -> RunFolder:
        return cls(data_dir / "runs" / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    # The run's inputs, saved by the stages that make them.
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def user_map(self) -> Path:
        return self.path / "user_map.parquet"

    @property
    def item_map(self) -> Path:
        return self.path / "item_map.parquet"

    @property
    def allowed_items(self) -> Path:
        """The business rules, one boolean per item index (tasks/rules.py)."""
        return self.path / "allowed_items.npy"

    @property
    def train(self) -> Path:
        return self.path / "train.parquet"

    @property
    def test(self) -> Path:
        return self.path / "test.parquet"

    @property
    def ratings(self) -> Path:
        """Every rating, indexed (what the refit and the lists' shards read)."""
        return self.path / "ratings.parquet"

    def holdout(self, fraction: float, seed: int) -> tuple[Path, Path]:
        """The training split's part a fit trains on and its validation part, for a validation `fraction` and
        `seed` (`tasks.split.holdout_files`)."""
        name = f"holdout-{fraction:g}-{seed}"
        return self.path / f"{name}-fit.parquet", self.path / f"{name}-validation.parquet"

    # Models.
    def checkpoint(self, phase: str, model: str) -> Path:
        """A model's fit of one phase: what a training deployment writes, a cluster's evaluation shards read and a
        later night's warm start (tasks/warm.py) reads."""
        return self.path / f"model-{model}-{phase}.pt"

    @property
    def published_model(self) -> Path:
        """The model whose lists are published (what the recommend shards score with)."""
        return self.path / "model.pt"

    @property
    def rater(self) -> Path:
        """The model behind the stars, when it is not the published one."""
        return self.path / "rater.pt"

    def ials_fit(self, phase: str) -> Path:
        """The folder of a fit by shards (tasks/ials_shards.py), deleted once the model holds its vectors."""
        return self.path / f"ials-{phase}"

    # The shards' results.
    def recommend_shard(self, first_user: int) -> Path:
        return self.path / "shards" / f"recommend-{first_user:010d}.parquet"

    def reasons_shard(self, first_user: int) -> Path:
        return self.path / "shards" / f"reasons-{first_user:010d}.parquet"

    def evaluate_shard(self, model_file: str, first_user: int) -> tuple[Path, Path]:
        """A shard's per-user values of one model and the items its lists showed."""
        stem = f"evaluate-{Path(model_file).stem}-{first_user:010d}"
        return self.path / "shards" / f"{stem}.parquet", self.path / "shards" / f"{stem}-shown.parquet"

    # The report.
    @property
    def loss_chart(self) -> Path:
        return self.path / "loss.png"

    @property
    def trend_chart(self) -> Path:
        return self.path / "trend.png"
