"""End to end against a real Prefect server on 127.0.0.1: work pools, `prefect deploy` of deploy/prefect.yaml,
workers, (a) a deployment run that trains through the training deployment, (b) the ratings-updated event
triggering a run. Every process the test starts is stopped by its pid (and its process group) at the end.

Select it with `pytest -m e2e`; it takes one to three minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFECT = str(Path(sys.executable).with_name("prefect"))
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _api(method: str, url: str, **kwargs) -> httpx.Response:
    """One API call, retried like Prefect's own client does when the server is briefly busy (its SQLite
    database locked under load answers 503 / 429)."""
    for attempt in range(10):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code not in (429, 503):
            return response.raise_for_status()
        time.sleep(0.5 * (attempt + 1))
    return response.raise_for_status()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The processes of one e2e session and how to talk to them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkout = root / "checkout"
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.port = port
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no 03:00 runs during the test
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(args, cwd=self.checkout, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        done = subprocess.run([PREFECT, *args], cwd=self.checkout, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def wait_for_run(self, flow_run_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = _api("GET", f"{self.api}/flow_runs/{flow_run_id}").json()
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {flow_run_id} not finished after {timeout}s\n{self.logs()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("e2e"))
    # The deployments run this checkout's code from the folder `prefect deploy` ran in, as a team's would;
    # a copy keeps the runs' relative paths (data/, warehouse/) out of the repository.
    for folder in ("flows", "tasks", "warehouse", "deploy"):
        shutil.copytree(REPO / folder, stack.checkout / folder, ignore=shutil.ignore_patterns("__pycache__", "*.duckdb*", "*.png"))
    try:
        stack.start("server", PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port))
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{stack.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"prefect server did not come up\n{stack.logs()}"
            time.sleep(1)
        stack.cli("work-pool", "create", "recs-cpu", "--type", "process")
        stack.cli("work-pool", "create", "recs-gpu", "--type", "process")  # stands in for the GPU host's pool
        stack.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        stack.start("worker-cpu", PREFECT, "worker", "start", "--pool", "recs-cpu")
        stack.start("worker-gpu", PREFECT, "worker", "start", "--pool", "recs-gpu")
        yield stack
    finally:
        stack.stop_all()
    assert all(process.poll() is not None for process in stack.processes)


@pytest.fixture(scope="module")
def source_url(ml100k_zip, tmp_path_factory) -> Iterator[str]:
    """ML-100k over HTTP on loopback, as a separate process the workers' flow runs can reach."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(ml100k_zip, site / "ml-100k.zip")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=site,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/ml-100k.zip"
        for _ in range(50):
            try:
                httpx.head(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def _deployment_id(stack: Stack, name: str) -> str:
    return _api("GET", f"{stack.api}/deployments/name/{name}").json()["id"]


def _flow_runs(stack: Stack, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return _api("POST", f"{stack.api}/flow_runs/filter", json=body).json()


def _published(warehouse_path: Path) -> tuple[int, list[tuple]]:
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        n_users = con.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchall()[0][0]
        runs = con.execute("SELECT run_id, flow_run_id, status, device FROM runs ORDER BY started_at").fetchall()
    return n_users, runs


def test_prefect_deploy_registered_the_schedule_limit_and_trigger(stack):
    nightly = _api("GET", f"{stack.api}/deployments/name/nightly/nightly").json()
    (schedule,) = nightly["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"], schedule["active"]) == ("0 3 * * *", "UTC", True)
    assert nightly["work_pool_name"] == "recs-cpu"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    automations = _api("POST", f"{stack.api}/automations/filter", json={}).json()
    (trigger,) = [a for a in automations if a["name"] == "nightly__automation_1"]
    assert trigger["trigger"]["expect"] == ["recs.ratings.updated"] and trigger["enabled"]
    gpu = _api("GET", f"{stack.api}/deployments/name/train/gpu").json()
    assert gpu["work_pool_name"] == "recs-gpu"


def test_a_deployment_run_trains_on_the_training_deployment_and_publishes(stack, source_url):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    parameters = {"config": {"source": source_url, "train_deployment": "train/gpu", "models": ["dot_bias", "ease"]}}
    created = _api("POST", f"{stack.api}/deployments/{nightly_id}/create_flow_run", json={"parameters": parameters})
    run = stack.wait_for_run(created.json()["id"])
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"

    n_users, runs = _published(stack.checkout / "warehouse" / "recs.duckdb")
    assert n_users == 943
    assert runs[-1][1:3] == (run["id"], "succeeded")
    training_runs = _flow_runs(stack, _deployment_id(stack, "train/gpu"))
    assert [r["state"]["type"] for r in training_runs] == ["COMPLETED"] * 3  # train both, then refit the published
    phases = sorted((r["parameters"]["phase"], r["parameters"]["model"]) for r in training_runs)
    assert phases == [("refit", "ease"), ("train", "dot_bias"), ("train", "ease")]  # ease: the better nDCG@10


def test_the_ratings_updated_event_triggers_a_nightly_run(stack, source_url):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    before = {r["id"] for r in _flow_runs(stack, nightly_id)}
    stack.cli("event", "emit", "recs.ratings.updated", "--resource-id", "recs.source.e2e-ml-100k",
              "--payload", json.dumps({"source": source_url}))  # fmt: skip

    deadline = time.monotonic() + 60
    while not (new := [r for r in _flow_runs(stack, nightly_id) if r["id"] not in before]):
        assert time.monotonic() < deadline, f"the event started no nightly run\n{stack.logs()}"
        time.sleep(1)
    (triggered,) = new
    assert triggered["parameters"]["source"] == source_url  # the payload's, beside the deployment's config
    run = stack.wait_for_run(triggered["id"])
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"
    n_users, runs = _published(stack.checkout / "warehouse" / "recs.duckdb")
    assert n_users == 943 and runs[-1][1:3] == (triggered["id"], "succeeded")


def test_two_nightly_runs_at_once_run_one_after_the_other(stack, source_url):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    ids = [
        _api("POST", f"{stack.api}/deployments/{nightly_id}/create_flow_run", json={"parameters": {"source": source_url}}).json()["id"]
        for _ in range(2)
    ]
    runs = [stack.wait_for_run(run_id) for run_id in ids]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], stack.logs()
    first, second = sorted(runs, key=lambda r: r["start_time"])
    assert first["end_time"] <= second["start_time"], "the deployment's concurrency limit let two runs overlap"
    with duckdb.connect(str(stack.checkout / "warehouse" / "recs.duckdb"), read_only=True) as con:
        statuses = con.execute("SELECT status FROM runs WHERE flow_run_id IN (?, ?)", ids).fetchall()
    assert sorted(statuses) == [("succeeded",), ("succeeded",)]
