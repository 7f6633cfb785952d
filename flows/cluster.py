"""The evaluate and recommend stages on a Dask cluster, through Prefect's DaskTaskRunner (prefect-dask).

`cluster` in the config says where: `local:N` starts one Dask LocalCluster of N worker processes on this host
for the run, shared by its stages (`ClusterSession`); `tcp://host:8786` (or `tls://`) uses a running scheduler, whose workers must share the run's
`data_dir` and be able to import this package. Each stage runs as a subflow whose task runner is the cluster,
mapping a shard task over user shards (tasks/shards.py); each shard reads its inputs from the run's folder and
writes its results there, and this process reads the shards' files back: lists concatenated, evaluation values
summed exactly (`tasks.evaluate.reduce_evaluation`).

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
from tasks.evaluate import GATE_VALUES, reduce_evaluation
from tasks.shards import RATER_IS_MODEL, evaluate_shard_task, recommend_shard_task, user_shards
from tasks.train import TrainedModel, save_checkpoint

LOCAL = re.compile(r"^local:(\d+)$")


class ClusterError(RuntimeError):
    """The Dask cluster could not be reached or lost every worker; nothing was published."""


class ClusterSession:
    """The run's cluster: for `local:N` one LocalCluster, started when a stage first needs it and shared by every
    stage of the run (its workers import torch once), closed with `close`; else the scheduler's address."""

    def __init__(self, config: PipelineConfig) -> None:
        assert config.cluster is not None
        self.name, self.timeout = config.cluster, config.cluster_timeout_seconds
        self._local = None

    def task_runner(self):
        """A DaskTaskRunner on the cluster, giving up on reaching its scheduler after the timeout."""
        from prefect_dask import DaskTaskRunner  # only a run with a cluster needs dask

        return DaskTaskRunner(address=self.address(), client_kwargs={"timeout": self.timeout})

    def address(self) -> str:
        local = LOCAL.match(self.name)
        if local is None:
            _require_workers(self.name, self.timeout)
            return self.name
        if self._local is None:
            from distributed import LocalCluster

            api = get_client().api_url  # the flow's API, also when Prefect started a temporary one for this process
            self._local = LocalCluster(n_workers=int(local.group(1)), threads_per_worker=1, processes=True,
                                       dashboard_address=None, env={"PREFECT_API_URL": str(api)} if api else {})  # fmt: skip
        return self._local.scheduler_address

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None


@dataclass(frozen=True)
class ClusterReport:
    """How a stage ran on the cluster: shards, and each worker's peak resident bytes."""

    shards: int
    worker_peak_bytes: dict[str, int]

    @property
    def workers(self) -> int:
        return len(self.worker_peak_bytes)

    def describe(self) -> str:
        peaks = ", ".join(f"{worker} {peak / 1e9:.2f} GB" for worker, peak in sorted(self.worker_peak_bytes.items()))
        return f"{self.shards} shards on {self.workers} workers; peak RSS per worker: {peaks}"


@flow(name="evaluate-shards", log_prints=True)
def evaluate_shards(run_dir: str, model_file: str, shards: list[tuple[int, int]]) -> list[tuple[str, str, str, int]]:
    """Every shard's evaluation values, each a mapped task run on the flow's task runner."""
    futures = evaluate_shard_task.map(run_dir, model_file, [first for first, _ in shards], [last for _, last in shards])
    return [future.result() for future in futures]


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


def _on_cluster(subflow, session: ClusterSession, *args):
    """`subflow(*args)` with the cluster as its task runner; a ClusterError naming the cluster when it cannot run."""
    try:
        return subflow.with_options(task_runner=session.task_runner())(*args)
    except (OSError, TimeoutError) as error:
        raise ClusterError(f"{setting('cluster')} {session.name}: the Dask scheduler could not be reached or "
                           f"lost its workers ({type(error).__name__}: {error}); nothing was published") from error


def _report(shards: int, done: list[tuple]) -> ClusterReport:
    peaks: dict[str, int] = {}
    for *_, worker, peak in done:
        peaks[worker] = max(peaks.get(worker, 0), peak)
    report = ClusterReport(shards, peaks)
    print(report.describe())
    return report


def evaluate_on_cluster(model: TrainedModel, model_file: str, train: pl.DataFrame, maps: IdMaps,
                        config: PipelineConfig, run_dir: Path,
                        session: ClusterSession) -> tuple[pl.DataFrame, pl.DataFrame, ClusterReport]:  # fmt: skip
    """`tasks.evaluate.evaluate_users` of `model` (a split fit, saved to `model_file` in the run's folder for the
    workers), computed by user shards on `config.cluster` from the run's saved splits and reduced exactly here;
    returns the metrics, the per-user values the gate pairs, and how the shards ran."""
    assert config.cluster is not None
    save_checkpoint(model, maps, config, run_dir / model_file)
    shards = user_shards(maps.n_users, config.shard_users)
    print(f"evaluating {model.name} for {maps.n_users:,} users in {len(shards)} shards on cluster {config.cluster}")
    done = _on_cluster(evaluate_shards, session, str(run_dir), model_file, shards)
    per_user = pl.read_parquet([values for values, *_ in done])
    shown = pl.read_parquet([items for _, items, *_ in done])["item_idx"].to_numpy()
    metrics = reduce_evaluation(per_user, shown, train["item_idx"].n_unique(), config.k)
    return metrics, per_user.filter(pl.col("metric").is_in(GATE_VALUES)), _report(len(shards), done)


def recommend_on_cluster(model: TrainedModel, rater: TrainedModel | None, ratings: pl.DataFrame, maps: IdMaps,
                         config: PipelineConfig, run_dir: Path,
                         session: ClusterSession) -> tuple[pl.DataFrame, ClusterReport]:  # fmt: skip
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
    shards = user_shards(maps.n_users, config.shard_users)
    print(f"recommending for {maps.n_users:,} users in {len(shards)} shards on cluster {config.cluster}")
    done = _on_cluster(recommend_shards, session, str(run_dir), shards, stars)
    lists = pl.read_parquet([path for path, *_ in done]).sort("user_id", "rank")
    return lists, _report(len(shards), done)
