"""ials's training, the evaluate and the recommend stages on a Dask cluster, through Prefect's DaskTaskRunner
(prefect-dask).

`cluster.address` in the config says where: `local:N` starts one Dask LocalCluster of N worker processes on this host
for the run, shared by its stages (`ClusterSession`); `tcp://host:8786` (or `tls://`) uses a running scheduler, whose workers must share the run's
`data_dir` and be able to import this package. Each stage runs as a subflow whose task runner is the cluster,
mapping a shard task over user shards (tasks/shards.py); each shard reads its inputs from the run's folder and
writes its results there, and this process reads the shards' files back: lists concatenated, evaluation values
summed exactly (`tasks.evaluate.reduce_evaluation`). `ials` trains by shards too, one map per half-step
(tasks/ials_shards.py); the rating model (`dot_bias`) trains in this process, where its SGD belongs.

While shards wait, a cluster left with no worker for `cluster.timeout_seconds` fails the run naming it.

Dask workers report their task runs to the Prefect API of the flow that started them: a LocalCluster's
workers are given this process's `PREFECT_API_URL`; the workers of a running cluster must be started with
it (docs/operations.md).
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from prefect import flow, unmapped
from prefect.client.orchestration import get_client

from tasks.checkpoint import save_checkpoint
from tasks.config import PipelineConfig, setting
from tasks.models import MODELS
from tasks.models.base import InitialRows
from tasks.models.ials import IalsParams
from tasks.models.ials_shards import IalsShardPlan, fit_by_shards
from tasks.run_inputs import RunInputs
from tasks.shards import (
    evaluate_shard_task,
    ials_shard_task,
    recommend_shard_task,
    reduce_shard_evaluations,
    save_list_inputs,
    user_shards,
)
from tasks.train import TrainedModel, train_phase
from warehouse.runs import ListFiles

if TYPE_CHECKING:
    from distributed import LocalCluster

LOCAL = re.compile(r"^local:(\d+)$")
WORKER_POLL_SECONDS = 1.0


class ClusterError(RuntimeError):
    """The Dask cluster could not be reached or lost every worker; nothing was published."""


class ClusterSession:
    """The run's cluster: for `local:N` one LocalCluster, started when a stage first needs it and shared by every
    stage of the run (its workers import torch once), closed with `close`; else the scheduler's address."""

    def __init__(self, config: PipelineConfig) -> None:
        assert config.cluster.address is not None
        self.name, self.timeout = config.cluster.address, config.cluster.timeout_seconds
        self._local: LocalCluster | None = None

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
            self._local = LocalCluster(
                n_workers=int(local.group(1)),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"PREFECT_API_URL": str(api)} if api else {},
            )
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
def evaluate_shards(
    run_dir: str, model_file: str, shards: list[tuple[int, int]], timeout_seconds: float
) -> list[tuple[str, str, str, int]]:
    """Every shard's evaluation values, each a mapped task run on the flow's task runner."""
    futures = evaluate_shard_task.map(run_dir, model_file, [first for first, _ in shards], [last for _, last in shards])
    return _results(futures, timeout_seconds)


@flow(name="recommend-shards", log_prints=True)
def recommend_shards(
    run_dir: str, shards: list[tuple[int, int]], rater: str | None, timeout_seconds: float
) -> list[tuple[str, str, str, int]]:
    """Every shard's lists, each a mapped task run on the flow's task runner; returns (lists file, reasons file,
    worker, the worker's peak resident bytes) per shard."""
    futures = recommend_shard_task.map(run_dir, [first for first, _ in shards], [last for _, last in shards], rater)
    return _results(futures, timeout_seconds)


@flow(name="train-ials-shards", log_prints=True)
def train_ials_shards(
    folder: str,
    shards: dict[str, list[tuple[int, int]]],
    n_ratings: int,
    params: dict,
    label: str,
    timeout_seconds: float,
) -> tuple[list[dict], list[tuple[float, bool, str, int]]]:
    """`ials`'s epochs, each half-step's shards a map of task runs on the flow's task runner; returns the history
    rows and every shard's result (its objective part, finite, worker, the worker's peak resident bytes)."""
    plan = IalsShardPlan(
        Path(folder), {side: [(first, last) for first, last in ranges] for side, ranges in shards.items()}, n_ratings
    )
    done: list[tuple[float, bool, str, int]] = []

    def half_step(
        side: str, epoch: int, side_shards: list[tuple[int, int]], other_firsts: list[int]
    ) -> list[tuple[float, bool]]:
        futures = ials_shard_task.map(
            folder,
            side,
            epoch,
            [first for first, _ in side_shards],
            [last for _, last in side_shards],
            unmapped(other_firsts),
            unmapped(params),
        )
        results = _results(futures, timeout_seconds)
        done.extend(results)
        return [(part, finite) for part, finite, *_ in results]

    return fit_by_shards(plan, IalsParams(**params), label, half_step), done


def _results(futures, timeout_seconds: float) -> list:
    """Each mapped task run's result, waiting for all of them; a ClusterError when the cluster has had no worker
    for `timeout_seconds` meanwhile (without one, Dask would hold the shards until a worker joins)."""
    if not futures:
        return []
    client, idle_since = futures[0].wrapped_future.client, None  # the subflow's task runner's client
    while pending := [future for future in futures if not future.wrapped_future.done()]:
        pending[0].wait(timeout=WORKER_POLL_SECONDS)
        if client.nthreads():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > timeout_seconds:
            raise ClusterError(
                f"{setting('cluster.address')} {client.scheduler.address}: the Dask scheduler lost every worker "
                f"while {len(pending)} shard(s) were waiting, and none joined within {timeout_seconds:g} s "
                f"({setting('cluster.timeout_seconds')}); nothing was published"
            )
    return [future.result() for future in futures]


def _require_workers(address: str, timeout_seconds: float) -> int:
    """The number of workers the scheduler at `address` has; a ClusterError when it has none (shards would wait
    for one forever) or cannot be reached."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout_seconds) as client:
            workers = len(client.scheduler_info()["workers"])
    except (OSError, TimeoutError) as error:
        raise ClusterError(
            f"{setting('cluster.address')} {address}: the Dask scheduler could not be reached "
            f"({type(error).__name__}: {error}); nothing was published"
        ) from error
    if workers == 0:
        raise ClusterError(
            f"{setting('cluster.address')} {address}: the Dask scheduler has no workers; start some with "
            f"`dask worker {address}` (nothing was published)"
        )
    return workers


def _on_cluster(subflow, session: ClusterSession, *args):
    """`subflow(*args)` with the cluster as its task runner; a ClusterError naming the cluster when it cannot run.

    A full garbage collection follows it: what the subflow's machinery leaves in reference cycles can hold the
    frames that called it, and their data with them. In a 100M night, 858 MiB, the size of the split fit's
    ratings, came back only at the collector's next full pass, six minutes into the refit (a full pass costs
    0.25 s, too much to run after every stage)."""
    try:
        return subflow.with_options(task_runner=session.task_runner())(*args)
    except (OSError, TimeoutError) as error:
        raise ClusterError(
            f"{setting('cluster.address')} {session.name}: the Dask scheduler could not be reached or "
            f"lost its workers ({type(error).__name__}: {error}); nothing was published"
        ) from error
    finally:
        gc.collect()


def _report(shards: int, done: list[tuple]) -> ClusterReport:
    peaks: dict[str, int] = {}
    for *_, worker, peak in done:
        peaks[worker] = max(peaks.get(worker, 0), peak)
    report = ClusterReport(shards, peaks)
    print(report.describe())
    return report


def evaluate_on_cluster(
    model: TrainedModel, phase: str, inputs: RunInputs, session: ClusterSession
) -> tuple[pl.DataFrame, pl.DataFrame, ClusterReport]:
    """`tasks.evaluate.evaluate_users` of `model` (a fit of `phase`, saved to its checkpoint for the workers), by
    user shards on the cluster from the run's saved splits, reduced exactly here; returns the metrics, the per-user
    values the gate pairs, and how the shards ran."""
    config, checkpoint = inputs.config, inputs.folder.checkpoint(phase, model.name)
    save_checkpoint(model, inputs.maps, config, checkpoint)
    shards = user_shards(inputs.maps.n_users, config.cluster.shard_users)
    print(
        f"evaluating {model.name} for {inputs.maps.n_users:,} users in {len(shards)} shards on cluster {session.name}"
    )
    folder = str(inputs.folder.path)
    done = _on_cluster(evaluate_shards, session, folder, checkpoint.name, shards, session.timeout)
    metrics, per_user = reduce_shard_evaluations(done, model, inputs.catalogue, config.k)
    return metrics, per_user, _report(len(shards), done)


def recommend_on_cluster(
    model: TrainedModel, rater: TrainedModel | None, inputs: RunInputs, session: ClusterSession
) -> tuple[ListFiles, ClusterReport]:
    """The lists `tasks.recommend.recommend` makes, computed by user shards on the cluster; returns the shards'
    files (which publish reads in one DuckDB statement) and how the shards ran.

    Raises:
        ClusterError: the scheduler could not be reached, or the shards failed after their retries; the message
            names the cluster.
    """
    stars = save_list_inputs(model, rater, inputs)
    shards = user_shards(inputs.maps.n_users, inputs.config.cluster.shard_users)
    print(f"recommending for {inputs.maps.n_users:,} users in {len(shards)} shards on cluster {session.name}")
    folder, timeout = str(inputs.folder.path), session.timeout
    done = _on_cluster(recommend_shards, session, folder, shards, stars, timeout)
    lists = ListFiles.count([Path(path) for path, *_ in done], [Path(reasons) for _, reasons, *_ in done])
    return lists, _report(len(shards), done)


def train_on_cluster(
    inputs: RunInputs, phase: str, name: str, session: ClusterSession, init: InitialRows | None = None
) -> tuple[TrainedModel, ClusterReport]:
    """`tasks.train.train_phase` of `name` (a model that trains by shards) with its work cut into shards that run
    on the cluster (`ModelSpec.sharded`): the same fit. Its files go through the run folder's `ials_fit(phase)`,
    deleted once the model holds the vectors. `init`: a warm start's initial rows (tasks/warm.py)."""
    sharded, done, counts = MODELS[name].sharded, [], []
    assert sharded is not None, f"{name} does not train by shards"

    def run_epochs(plan: IalsShardPlan, params: IalsParams, label: str) -> list[dict]:
        counts.append(len(plan.shards["users"]) + len(plan.shards["items"]))
        args = (str(plan.folder), plan.shards, plan.n_ratings, params.model_dump(), label)
        rows, results = _on_cluster(train_ials_shards, session, *args, session.timeout)
        done.extend(results)
        return rows

    fit = sharded(inputs.folder.ials_fit(phase), run_epochs)
    model = train_phase(inputs.folder, inputs.maps, inputs.config, name, phase, init, fit)
    return model, _report(sum(counts), done)
