"""ials's training, evaluation and the lists on a Dask cluster (flows/cluster.py): a LocalCluster (`local:2`) and
a real `dask scheduler` with two `dask worker` processes on 127.0.0.1 publish the same lists and metrics as the
in-process run, their shards are task runs on the flow's Prefect API, a worker killed mid-fit or mid-stage
changes nothing, and a scheduler without workers (at the start or while shards wait) or gone fails the run
naming its address, leaving the published lists as they were."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.settings import PREFECT_API_URL

from flows.nightly import nightly
from tasks.config import PipelineConfig
from tests.helpers import REPO, query_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
DASK = str(Path(sys.executable).parent / "dask")
LISTS = "SELECT user_id, item_id, rank, score, predicted_rating FROM recommendations ORDER BY user_id, rank"


def _config(
    warehouse: Path, address: str | None, shard_users: int = 50_000, timeout: float = 30.0, **fields: object
) -> PipelineConfig:
    """A run's config on the cluster at `address` (None: in process), with the models that train by shards or
    beside them (ease, which joins the defaults on a small catalogue, trains in the flow's process)."""
    cluster = {"address": address, "shard_users": shard_users, "timeout_seconds": timeout}
    models = {} if "model" in fields or "models" in fields else {"models": ["dot_bias", "ials"]}
    return PipelineConfig.model_validate({"warehouse": warehouse, "cluster": cluster, **models, **fields})


def _same_lists(a: Path, b: Path, n_rows: int = 9430) -> None:
    ours, theirs = query_rows(a, LISTS), query_rows(b, LISTS)
    assert len(ours) == len(theirs) == n_rows
    assert [row[:3] for row in ours] == [row[:3] for row in theirs]  # the same items at the same ranks
    assert max(abs(x[3] - y[3]) for x, y in zip(ours, theirs, strict=False)) <= 1e-5
    assert all((x[4] is None and y[4] is None) or abs(x[4] - y[4]) <= 1e-5 for x, y in zip(ours, theirs, strict=False))


def _shard_task_runs(like: str = "recommend-users-") -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=like)))
    return sorted(run.name for run in runs)


def test_local_cluster_publishes_the_in_process_lists_and_metrics(ml100k_zip, tmp_path):
    # ials trained in shards of at most 40,000 ratings (whole chunks of 5,000): 2 or 3 per side and half-step
    ials = {"epochs": 8, "shard_ratings": 40_000, "chunk_ratings": 5_000}
    common = {"source": str(ml100k_zip), "data_dir": tmp_path / "D", "shard_users": 300, "ials": ials}
    earlier = Counter(_shard_task_runs())  # the lists of other tests' runs on this API, in process, by shards too
    in_process = nightly(_config(tmp_path / "a.duckdb", None, **common))
    on_cluster = nightly(_config(tmp_path / "b.duckdb", "local:2", **common))
    _same_lists(tmp_path / "a.duckdb", tmp_path / "b.duckdb")  # ials's lists, dot_bias's stars (rater.pt)
    metrics = "SELECT model, metric, k, round(value, 4) FROM run_metrics WHERE metric <> 'fit_seconds' ORDER BY ALL"
    assert query_rows(tmp_path / "a.duckdb", metrics) == query_rows(tmp_path / "b.duckdb", metrics)
    where = "SELECT cluster, cluster_workers FROM runs WHERE run_id = ?"
    assert query_rows(tmp_path / "b.duckdb", where, [on_cluster.run_id]) == [("local:2", 2)]
    assert query_rows(tmp_path / "a.duckdb", where, [in_process.run_id]) == [(None, None)]
    # each shard a task run on this flow's API (the workers were given its address); in process, the lists are made
    # by the same shards
    shards = [f"users-{first}-{min(first + 300, 943)}" for first in (0, 300, 600, 900)]
    made = sorted((Counter(_shard_task_runs()) - earlier).elements())
    assert made == sorted(f"recommend-{users}" for users in shards for _ in ("in process", "cluster"))
    # the evaluation of both models, by the same shards, reduced to the same metrics as in process
    assert _shard_task_runs("evaluate-model-") == sorted(
        f"evaluate-model-{name}-train.pt-{users}" for name in ("dot_bias", "ials") for users in shards
    )
    # ials's training: every epoch's half-steps by shards, for the split fit and the refit on all ratings
    for side in ("users", "items"):
        training = _shard_task_runs(f"ials-{side}-e")  # ials-users-e3-0-212: rows 0-211 in epoch 3
        assert {name.split("-")[2] for name in training} == {f"e{epoch}" for epoch in range(1, 9)}
        assert len(training) == 8 * (2 + 3)  # 8 epochs of the split fit (2 shards) and the refit (all ratings: 3)
    assert not list((tmp_path / "D" / "runs").glob("*/ials-*"))  # the fits' files are gone


def test_local_cluster_publishes_the_in_process_lists_on_a_synthetic_archive(tmp_path):
    from tasks.synth import SynthSpec, synthesize, write_archive

    archive = tmp_path / "synthetic.zip"  # in ml-20m's layout: half stars, a header, sparse movie ids
    write_archive(*synthesize(SynthSpec(users=800, items=400, ratings=40_000, seed=5)), archive)
    common = {
        "source": str(archive),
        "data_dir": tmp_path / "D",
        "shard_users": 400,
        "ials": {"epochs": 4, "shard_ratings": 20_000, "chunk_ratings": 5_000},
    }
    nightly(_config(tmp_path / "a.duckdb", None, **common))
    nightly(_config(tmp_path / "b.duckdb", "local:2", **common))
    _same_lists(tmp_path / "a.duckdb", tmp_path / "b.duckdb", n_rows=8_000)
    metrics = "SELECT model, metric, k, round(value, 4) FROM run_metrics WHERE metric <> 'fit_seconds' ORDER BY ALL"
    assert query_rows(tmp_path / "a.duckdb", metrics) == query_rows(tmp_path / "b.duckdb", metrics)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # workers report to the flow's API
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _raised(call) -> BaseException | None:
    try:
        call()
    except BaseException as error:
        return error
    return None


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=60)


def test_a_real_scheduler_and_workers_and_their_faults(ml100k_zip, tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start(
        DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", log=tmp_path / "scheduler.log"
    )
    workers = [
        _start(
            DASK,
            "worker",
            address,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--name",
            f"w{i}",
            log=tmp_path / f"worker-{i}.log",
        )
        for i in range(2)
    ]
    try:
        _wait_for_workers(address, 2)
        common = {
            "source": str(ml100k_zip),
            "data_dir": tmp_path / "D",
            "shard_users": 100,
            "model": "bias",
            "timeout": 5,
        }  # the timeout is unused in process
        nightly(_config(tmp_path / "a.duckdb", None, **common))
        run = nightly(_config(tmp_path / "b.duckdb", address, **common))
        _same_lists(tmp_path / "a.duckdb", tmp_path / "b.duckdb")  # bias gives lists and stars
        assert query_rows(
            tmp_path / "b.duckdb", "SELECT cluster, cluster_workers FROM runs WHERE run_id = ?", [run.run_id]
        ) == [(address, 2)]

        # a worker killed while ials trains by shards: the other one solves them, the same fit and lists
        ials = {**common, "model": "ials", "ials": {"epochs": 4, "shard_ratings": 10_000, "chunk_ratings": 5_000}}
        nightly(_config(tmp_path / "ials-a.duckdb", None, **ials))
        finished = {}
        thread = threading.Thread(
            target=lambda: finished.update(run=nightly(_config(tmp_path / "ials-b.duckdb", address, **ials)))
        )
        thread.start()
        shards = tmp_path / "D" / "runs"
        while not list(shards.glob("*/ials-train/users-e002-*.npy")) and thread.is_alive():
            time.sleep(0.02)
        os.killpg(workers[1].pid, signal.SIGKILL)  # mid-fit: epoch 2's user half-step has begun
        thread.join(timeout=300)
        assert finished["run"].status == "succeeded"
        _same_lists(tmp_path / "ials-a.duckdb", tmp_path / "ials-b.duckdb")
        workers[1] = _start(
            DASK,
            "worker",
            address,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--name",
            "w1b",
            log=tmp_path / "worker-1b.log",
        )
        _wait_for_workers(address, 2)

        # a worker killed while shards are being computed: the scheduler gives its shards to the other one
        finished = {}
        thread = threading.Thread(
            target=lambda: finished.update(
                run=nightly(_config(tmp_path / "c.duckdb", address, **{**common, "shard_users": 30}))
            )
        )
        before = set(shards.glob("*/shards/recommend-*.parquet"))
        thread.start()
        while not set(shards.glob("*/shards/recommend-*.parquet")) - before and thread.is_alive():
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)
        done_at_kill = len(set(shards.glob("*/shards/recommend-*.parquet")) - before)
        thread.join(timeout=300)
        assert done_at_kill < 32 and finished["run"].status == "succeeded"  # 32 shards of 30 users
        _same_lists(tmp_path / "a.duckdb", tmp_path / "c.duckdb")
        published = query_rows(tmp_path / "b.duckdb", LISTS)

        # every worker gone while shards wait: the run fails naming the address once none joined in the timeout
        failed = {}
        thread = threading.Thread(
            target=lambda: failed.update(
                error=_raised(lambda: nightly(_config(tmp_path / "b.duckdb", address, **{**common, "shard_users": 30})))
            )
        )
        before = set(shards.glob("*/shards/recommend-*.parquet"))
        thread.start()
        while not set(shards.glob("*/shards/recommend-*.parquet")) - before and thread.is_alive():
            time.sleep(0.05)
        os.killpg(workers[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        thread.join(timeout=120)
        assert f"cluster.address (--cluster-address) {address}: the Dask scheduler lost every worker while" in str(
            failed["error"]
        )
        assert "none joined within 5 s (cluster.timeout_seconds (--cluster-timeout-seconds))" in str(failed["error"])
        assert time.monotonic() - killed_at < 60
        assert query_rows(tmp_path / "b.duckdb", LISTS) == published  # nothing was replaced

        # and a run started with no worker is refused before any shard waits for one
        deadline = time.monotonic() + 30
        from distributed import Client

        with Client(address, timeout=10) as client:
            while client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.2)
        with pytest.raises(
            Exception, match=f"cluster.address \\(--cluster-address\\) {address}: the Dask scheduler has no workers"
        ):
            nightly(_config(tmp_path / "b.duckdb", address, **common))

        os.killpg(scheduler.pid, signal.SIGKILL)  # the scheduler gone: the run fails naming it, within the timeout
        scheduler.wait()
        started = time.monotonic()
        with pytest.raises(
            Exception,
            match=f"cluster.address \\(--cluster-address\\) {address}: the Dask scheduler could not be reached",
        ):
            nightly(_config(tmp_path / "b.duckdb", address, **common))
        assert time.monotonic() - started < 60
        assert query_rows(tmp_path / "b.duckdb", LISTS) == published  # nothing was replaced
        errors = query_rows(tmp_path / "b.duckdb", "SELECT status, error FROM runs ORDER BY started_at")[-3:]
        assert [status for status, _ in errors] == ["failed"] * 3 and all(address in error for _, error in errors)
    finally:
        for process in [scheduler, *workers]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
