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
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.evaluate import evaluate_shard
from tasks.recommend import recommend_with_reasons
from tasks.reindex import IdMaps
from tasks.rules import ListRules
from tasks.train import load_trained_model, pick_device

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


def shard_path(run_dir: Path, first_user: int) -> Path:
    return run_dir / "shards" / f"recommend-{first_user:010d}.parquet"


def recommend_shard(run_dir: Path, first: int, last: int, rater: str | None) -> tuple[Path, Path]:
    """Users first..last-1's lists and their reasons (`tasks.recommend.recommend_with_reasons`), written to
    `shard_path` and beside it; returns the two paths.

    Args:
        run_dir: the run's folder, on storage the worker shares with the flow.
        first, last: the shard's user indices.
        rater: None (no stars), `RATER_IS_MODEL`, or the checkpoint file of the rating model, e.g. `rater.pt`.
    """
    config = PipelineConfig.from_stored((run_dir / "config.json").read_text())
    device = pick_device("auto" if config.device == "auto" else config.device)
    model, _ = load_trained_model(run_dir / "model.pt", device)
    stars = model if rater == RATER_IS_MODEL else load_trained_model(run_dir / rater, device)[0] if rater else None
    # only this shard's users' ratings: the seen items to leave out of their lists
    ratings = _shard_of(run_dir / "ratings.parquet", first, last)
    maps = IdMaps.load(run_dir)
    rules = ListRules.load(run_dir, maps.n_items)
    lists, reasons = recommend_with_reasons(model, ratings, maps, config, stars, (first, last), rules)
    reasons_path = run_dir / "shards" / f"reasons-{first:010d}.parquet"
    return _write(lists, shard_path(run_dir, first)), _write(reasons, reasons_path)


def _write(frame: pl.DataFrame, path: Path) -> Path:
    """`frame` to `path` through a temporary name: a retried shard never leaves half a file behind."""
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    frame.write_parquet(partial)
    partial.replace(path)
    return path


def _shard_of(path: Path, first: int, last: int) -> pl.DataFrame:
    return pl.scan_parquet(path).filter(pl.col("user_idx").is_between(first, last - 1)).collect()


def evaluate_shard_files(run_dir: Path, model_file: str, first: int, last: int) -> tuple[Path, Path]:
    """Users first..last-1's per-user evaluation values (`tasks.evaluate.evaluate_shard`) of the model in
    `model_file`, written to parquet; returns the values' file and the file of the items their top-k showed."""
    config = PipelineConfig.from_stored((run_dir / "config.json").read_text())
    model, _ = load_trained_model(run_dir / model_file, pick_device(config.device))
    train, test = (_shard_of(run_dir / name, first, last) for name in ("train.parquet", "test.parquet"))
    n_items = IdMaps.load(run_dir).n_items
    allowed = ListRules.load(run_dir, n_items).for_evaluation(config)
    per_user, shown = evaluate_shard(model, train, test, n_items, config, (first, last), allowed)
    stem = f"evaluate-{Path(model_file).stem}-{first:010d}"
    return (
        _write(per_user, run_dir / "shards" / f"{stem}.parquet"),
        _write(pl.DataFrame({"item_idx": shown}), run_dir / "shards" / f"{stem}-shown.parquet"),
    )


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
