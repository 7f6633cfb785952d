"""Evaluation and recommendation by user shards: each shard is a Prefect task that reads its inputs from the
run's folder and writes its results to parquet there, so that a Dask worker (flows/cluster.py) needs only the
model, the id maps and its own users' ratings, never the whole ratings table in memory.

The run's folder holds what every shard reads: `config.json`, the id maps (`user_map.parquet`,
`item_map.parquet`); for evaluation a model's split fit (`model-<name>-train.pt`) and `train.parquet`,
`test.parquet`; for the lists `model.pt` (and `rater.pt` when another model gives the stars) and
`ratings.parquet`; the business rules in `allowed_items.npy` (tasks/rules.py). Shards write
`shards/evaluate-<model file>-<first user>.parquet` (per-user values, and the items shown in `...-shown.parquet`),
`shards/recommend-<first user>.parquet` and the lists' reasons in `shards/reasons-<first user>.parquet`.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checkpoint import load_trained_model, save_checkpoint
from tasks.config import PipelineConfig
from tasks.evaluate import GATE_VALUES, evaluate_shard, reduce_evaluation, with_fit_seconds
from tasks.models.ials import IalsParams
from tasks.models.ials_shards import solve_shard
from tasks.recommend import recommend_with_reasons
from tasks.reindex import IdMaps
from tasks.rules import ListRules
from tasks.run_folder import RunFolder, atomic_write
from tasks.train import TrainedModel, pick_device
from warehouse.runs import ListFiles

if TYPE_CHECKING:
    from tasks.run_inputs import RunInputs

log = logging.getLogger(__name__)

RATER_IS_MODEL = "model"  # the published model also gives the stars (no rater.pt)


def peak_resident_bytes() -> int:
    """This process's peak resident memory. Linux's VmHWM, not `ru_maxrss`: a spawned worker's ru_maxrss keeps
    the high-water mark of the process it was forked from (3.4 GB of a 20M-rating flow), VmHWM starts anew at
    exec."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def user_shards(n_users: int, shard_users: int) -> list[tuple[int, int]]:
    """Consecutive user index ranges of at most `shard_users` users each, covering 0..n_users-1."""
    return [(start, min(start + shard_users, n_users)) for start in range(0, n_users, shard_users)]


def recommend_shard(run_dir: Path, first: int, last: int, rater: str | None) -> tuple[Path, Path]:
    """Users first..last-1's lists and their reasons (`shard_lists`) from the run folder's saved models, as a worker
    makes them; returns the two paths.

    Args:
        run_dir: the run's folder, on storage the worker shares with the flow.
        first, last: the shard's user indices.
        rater: None (no stars), `RATER_IS_MODEL`, or the checkpoint file of the rating model, e.g. `rater.pt`.
    """
    folder = RunFolder(run_dir)
    config = PipelineConfig.from_stored(folder.config.read_text())
    device = pick_device(config.device)
    model, _ = load_trained_model(folder.published_model, device)
    stars = model if rater == RATER_IS_MODEL else load_trained_model(run_dir / rater, device)[0] if rater else None
    maps = IdMaps.load(run_dir)
    rules = ListRules.load(run_dir, maps.n_items)
    return shard_lists(folder, ListModels(model, stars), maps, config, rules, (first, last))


@dataclass(frozen=True)
class ListModels:
    """The model that ranks the lists and the one whose predictions give their stars (None: no stars)."""

    model: TrainedModel
    stars: TrainedModel | None


def shard_lists(
    folder: RunFolder,
    models: ListModels,
    maps: IdMaps,
    config: PipelineConfig,
    rules: ListRules,
    users: tuple[int, int],
) -> tuple[Path, Path]:
    """The lists and reasons (`tasks.recommend.recommend_with_reasons`) of the users first..last-1 in `users`, from
    only their own ratings (the seen items to leave out), written to the run folder's shard files; returns the two
    paths."""
    first, last = users
    ratings = _shard_of(folder.ratings, first, last)
    lists, reasons = recommend_with_reasons(models.model, ratings, maps, config, models.stars, users, rules)
    return _write(lists, folder.recommend_shard(first)), _write(reasons, folder.reasons_shard(first))


def recommend_in_process(models: ListModels, inputs: RunInputs) -> ListFiles:
    """The lists by user shards of `cluster.shard_users` in this process, one after another (each a task run, for
    progress), written to the run folder's shard files as a cluster's shards write them: only a shard's ratings
    and lists are held at a time, never every user's."""
    shards = user_shards(inputs.maps.n_users, inputs.config.cluster.shard_users)
    log.info("recommending for %d users in %d shards in this process", inputs.maps.n_users, len(shards))
    done = [shard_lists_task(models, inputs, shard) for shard in shards]
    return ListFiles.count([lists for lists, _ in done], [reasons for _, reasons in done])


def _write(frame: pl.DataFrame, path: Path) -> Path:
    """`frame` to `path` through a temporary name: a retried shard never leaves half a file behind."""
    with atomic_write(path) as partial:
        frame.write_parquet(partial)
    return path


def _shard_of(path: Path, first: int, last: int) -> pl.DataFrame:
    return pl.scan_parquet(path).filter(pl.col("user_idx").is_between(first, last - 1)).collect()


def evaluate_shard_files(run_dir: Path, model_file: str, first: int, last: int) -> tuple[Path, Path]:
    """Users first..last-1's per-user evaluation values (`tasks.evaluate.evaluate_shard`) of the model in
    `model_file`, written to parquet; returns the values' file and the file of the items their top-k showed."""
    folder = RunFolder(run_dir)
    config = PipelineConfig.from_stored(folder.config.read_text())
    model, _ = load_trained_model(run_dir / model_file, pick_device(config.device))
    train, test = (_shard_of(path, first, last) for path in (folder.train, folder.test))
    n_items = IdMaps.load(run_dir).n_items
    allowed = ListRules.load(run_dir, n_items).for_evaluation(config)
    per_user, shown = evaluate_shard(model, train, test, n_items, config, (first, last), allowed)
    values_file, shown_file = folder.evaluate_shard(model_file, first)
    return _write(per_user, values_file), _write(pl.DataFrame({"item_idx": shown}), shown_file)


def reduce_shard_evaluations(
    done: list[tuple[str, str, str, int]], model: TrainedModel, catalogue: int, k: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The metrics of `model` (with its fit seconds) from its evaluation shards' files (`evaluate_shard_task`'s
    results), reduced exactly as in process (`tasks.evaluate.reduce_evaluation`), and the per-user values the gate
    pairs."""
    per_user = pl.read_parquet([values for values, *_ in done])
    shown = pl.read_parquet([items for _, items, *_ in done])["item_idx"].to_numpy()
    metrics = with_fit_seconds(reduce_evaluation(per_user, shown, catalogue, k), model.seconds)
    return metrics, per_user.filter(pl.col("metric").is_in(GATE_VALUES))


def save_list_inputs(model: TrainedModel, rater: TrainedModel | None, inputs: RunInputs) -> str | None:
    """Save what the recommend shards read beyond the run's inputs (which hold every rating): the published model
    and the rating model when it is another; returns the shards' `rater` argument."""
    folder = inputs.folder
    save_checkpoint(model, inputs.maps, inputs.config, folder.published_model)
    if rater is None:
        return None
    if rater is model:
        return RATER_IS_MODEL
    save_checkpoint(rater, inputs.maps, inputs.config, folder.rater)
    return folder.rater.name


def worker_address() -> str:
    """The Dask worker this runs on ("" in process)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not on a Dask worker
        return ""


def _where() -> tuple[str, int]:
    """The Dask worker this runs on ("" in process) and this process's peak resident bytes so far."""
    return worker_address(), peak_resident_bytes()


@task(
    name="evaluate-shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
    task_run_name="evaluate-{model_file}-users-{first}-{last}",
)
def evaluate_shard_task(run_dir: str, model_file: str, first: int, last: int) -> tuple[str, str, str, int]:
    """Prefect wrapper of `evaluate_shard_files`, retried when it fails (a worker lost); returns the two files,
    the worker and its peak resident bytes."""
    values, shown = evaluate_shard_files(Path(run_dir), model_file, first, last)
    return (str(values), str(shown), *_where())


@task(
    name="recommend-shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
    task_run_name="recommend-users-{first}-{last}",
)
def recommend_shard_task(run_dir: str, first: int, last: int, rater: str | None) -> tuple[str, str, str, int]:
    """Prefect wrapper of `recommend_shard`, retried on another attempt when it fails (a worker lost); returns
    the shard's lists and reasons files, the worker that wrote them ("" in process) and that process's peak
    resident bytes so far."""
    path, reasons = recommend_shard(Path(run_dir), first, last, rater)
    worker, peak = _where()
    log.info("users %d-%d: %s (worker peak RSS %.2f GB)", first, last - 1, path.name, peak / 1e9)
    return str(path), str(reasons), worker, peak


@task(name="recommend-shard", cache_policy=NO_CACHE, task_run_name="recommend-users-{users[0]}-{users[1]}")
def shard_lists_task(models: ListModels, inputs: RunInputs, users: tuple[int, int]) -> tuple[Path, Path]:
    """Prefect wrapper of `shard_lists` in this process, on the run's inputs."""
    first, last = users
    files = shard_lists(inputs.folder, models, inputs.maps, inputs.config, inputs.rules, users)
    log.info("users %d-%d: %s (peak RSS %.2f GB)", first, last - 1, files[0].name, peak_resident_bytes() / 1e9)
    return files


@task(
    name="ials-shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
    task_run_name="ials-{side}-e{epoch}-{first}-{last}",
)
def ials_shard_task(
    folder: str, side: str, epoch: int, first: int, last: int, other_firsts: list[int], params: dict
) -> tuple[float, bool, str, int]:
    """Prefect wrapper of `solve_shard`, retried when it fails (a worker lost); returns its objective part,
    whether it is finite, the worker and that worker's peak resident bytes."""
    started = time.perf_counter()
    part, finite = solve_shard(Path(folder), side, epoch, first, last, other_firsts, IalsParams(**params))
    log.info("ials %s %d-%d epoch %d: %.2fs", side, first, last - 1, epoch, time.perf_counter() - started)
    return part, finite, worker_address(), peak_resident_bytes()
