"""The recommend stage on a Dask cluster, through Prefect's DaskTaskRunner (prefect-dask).

`cluster` in the config says where: `local:N` starts a Dask LocalCluster of N worker processes on this host
for the stage; `tcp://host:8786` (or `tls://`) uses a running scheduler, whose workers must share the run's
`data_dir` and be able to import this package. The stage runs as a subflow whose task runner is the
cluster, mapping `recommend_shard_task` over user shards; each shard reads its inputs from the run's folder
and writes its lists there, and this process reads the shards' files back.

Dask workers report their task runs to the Prefect API of the flow that started them: a LocalCluster's
workers are given this process's `PREFECT_API_URL`; the workers of a running cluster must be started with
it (docs/operations.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import flow
from prefect.client.orchestration import get_client

from tasks.config import PipelineConfig, setting
from tasks.reindex import IdMaps
from tasks.shards import RATER_IS_MODEL, recommend_shard_task, user_shards
from tasks.train import TrainedModel, save_checkpoint

LOCAL = re.compile(r"^local:(\d+)$")


class ClusterError(RuntimeError):
    """The Dask cluster could not be reached or lost every worker; nothing was published."""


def task_runner(cluster: str, timeout_seconds: float):
    """The DaskTaskRunner for `cluster` (`local:N` or a scheduler address), giving up on reaching its scheduler
    after `timeout_seconds`."""
    from prefect_dask import DaskTaskRunner  # only a run with a cluster needs dask

    local = LOCAL.match(cluster)
    if local is None:
        return DaskTaskRunner(address=cluster, client_kwargs={"timeout": timeout_seconds})
    api = get_client().api_url  # the flow's API, also when Prefect started a temporary one for this process
    return DaskTaskRunner(client_kwargs={"timeout": timeout_seconds}, cluster_kwargs={
        "n_workers": int(local.group(1)), "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        "env": {"PREFECT_API_URL": str(api)} if api else {},
    })  # fmt: skip


@dataclass(frozen=True)
class ClusterReport:
    """How the recommend stage ran on the cluster: shards, and each worker's peak resident bytes."""

    shards: int
    worker_peak_bytes: dict[str, int]

    @property
    def workers(self) -> int:
        return len(self.worker_peak_bytes)

    def describe(self) -> str:
        peaks = ", ".join(f"{worker} {peak / 1e9:.2f} GB" for worker, peak in sorted(self.worker_peak_bytes.items()))
        return f"{self.shards} shards on {self.workers} workers; peak RSS per worker: {peaks}"


@flow(name="recommend-shards", log_prints=True)
def recommend_shards(run_dir: str, shards: list[tuple[int, int]], rater: str | None) -> list[tuple[str, str, int]]:
    """Every shard's lists, each a mapped task run on the flow's task runner; returns (file, worker, the worker's
    peak resident bytes) per shard."""
    futures = recommend_shard_task.map(run_dir, [first for first, _ in shards], [last for _, last in shards], rater)
    return [future.result() for future in futures]


def _require_workers(address: str, timeout_seconds: float) -> int:
    """The number of workers the scheduler at `address` has; a ClusterError when it has none (shards would wait
    for one forever) or cannot be reached."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout_seconds) as client:
            workers = len(client.scheduler_info()["workers"])
    except (OSError, TimeoutError) as error:
        raise ClusterError(f"{setting('cluster')} {address}: the Dask scheduler could not be reached "
                           f"({type(error).__name__}: {error}); nothing was published") from error  # fmt: skip
    if workers == 0:
        raise ClusterError(f"{setting('cluster')} {address}: the Dask scheduler has no workers; start some with "
                           f"`dask worker {address}` (nothing was published)")  # fmt: skip
    return workers


def recommend_on_cluster(model: TrainedModel, rater: TrainedModel | None, ratings: pl.DataFrame, maps: IdMaps,
                         config: PipelineConfig, run_dir: Path) -> tuple[pl.DataFrame, ClusterReport]:  # fmt: skip
    """The lists `tasks.recommend.recommend` makes, computed by user shards on `config.cluster`; returns them and
    how the shards ran.

    Raises:
        ClusterError: the scheduler could not be reached, or the shards failed after their retries; the message
            names the cluster.
    """
    assert config.cluster is not None
    save_checkpoint(model, maps, config, run_dir / "model.pt")
    stars = None
    if rater is not None and rater is not model:
        save_checkpoint(rater, maps, config, run_dir / "rater.pt")
        stars = "rater.pt"
    elif rater is not None:
        stars = RATER_IS_MODEL
    ratings.select("user_idx", "item_idx").write_parquet(run_dir / "ratings.parquet")
    if not LOCAL.match(config.cluster):
        _require_workers(config.cluster, config.cluster_timeout_seconds)
    shards = user_shards(maps.n_users, config.shard_users)
    print(f"recommending for {maps.n_users:,} users in {len(shards)} shards on cluster {config.cluster}")
    try:
        runner = task_runner(config.cluster, config.cluster_timeout_seconds)
        done = recommend_shards.with_options(task_runner=runner)(str(run_dir), shards, stars)
    except (OSError, TimeoutError) as error:
        raise ClusterError(f"{setting('cluster')} {config.cluster}: the Dask scheduler could not be reached or "
                           f"lost its workers ({type(error).__name__}: {error}); nothing was published") from error
    lists = pl.read_parquet([path for path, _, _ in done]).sort("user_id", "rank")
    peaks: dict[str, int] = {}
    for _, worker, peak in done:
        peaks[worker] = max(peaks.get(worker, 0), peak)
    report = ClusterReport(len(shards), peaks)
    print(report.describe())
    return lists, report
