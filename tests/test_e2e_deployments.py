"""End to end against a real Prefect server on 127.0.0.1, set up by the docs' own commands ("From an
empty machine to a scheduled run", run line by line): the server, the work pools, `prefect deploy --all` of
deploy/prefect.yaml, a worker and the Prefect Variable that names the runs' source (a local copy of ml-100k:
nothing here reaches the internet). Then: the server's scheduler creating the nightly's 03:00 runs and a
short interval schedule's run completing on the worker; a deployment run that reads its source from the
variable and trains through the training deployment; the docs' `deployment run --watch` of a source that does not
exist printing why it failed; the ratings-updated event triggering a run; a run that overrides one setting; two runs at once; a
run on a real Dask cluster (`dask scheduler`, two `dask worker`) whose shards are task runs on the server.
Every process the test starts is stopped by its pid (and its process group) at the end.

Select it with `pytest -m e2e`; it takes three to four minutes.
"""

from __future__ import annotations

import json
import os
import shlex
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

from tests.helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SETUP_DOC = REPO / "docs" / "operations.md"
SETUP_HEADING = "## From an empty machine to a scheduled run"
DOCS_SOURCE = "/srv/recs/ml-100k.zip"  # the source the docs' set-up puts in the recs_source variable
NIGHTLY_MODELS = ["dot_bias", "ials", "ease", "bias", "popularity"]


def readme_setup_commands() -> list[str]:
    """The command lines of the first block under SETUP_HEADING in SETUP_DOC, comments dropped."""
    section = SETUP_DOC.read_text().split(SETUP_HEADING, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _api(method: str, url: str, **kwargs) -> httpx.Response:
    """One API call, retried like Prefect's own client does when the server is briefly busy (its SQLite
    database locked under load answers 503 / 429, or not within the timeout)."""
    for attempt in range(10):
        try:
            response = httpx.request(method, url, timeout=30, **kwargs)
        except httpx.TimeoutException:
            if attempt == 9:
                raise
        else:
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

    def __init__(self, root: Path, source: Path) -> None:
        self.root = root
        self.source = source  # what the docs' DOCS_SOURCE stands for here
        self.checkout = root / "checkout"
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.port = port
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The scheduler is on, as on a user's server; it looks for new schedules every 5 s, not 60.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(
            args, cwd=self.checkout, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        return self.command(PREFECT, *args)

    def command(self, *args: str) -> str:
        done = subprocess.run(args, cwd=self.checkout, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def readme_line(self, line: str) -> None:
        """One line of the docs' set-up block, as a user types it: `export` sets the environment, a
        trailing `&` starts a background process, anything else must exit 0. `.venv/bin/` is this Python's
        folder, port 4200 the test's free port and DOCS_SOURCE the test's copy of ml-100k."""
        line = line.replace(".venv/bin/", f"{BIN}/").replace("4200", str(self.port))
        line = line.replace(DOCS_SOURCE, str(self.source))
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            self.env[name] = value
        elif line.endswith("&"):
            args = shlex.split(line.removesuffix("&"))
            self.start("-".join(arg for arg in args[1:4] if not arg.startswith("-")), *args)
        else:
            self.command(*shlex.split(line))

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
def stack(tmp_path_factory, ml100k_zip) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    shutil.copy(ml100k_zip, root / "ml-100k.zip")
    stack = Stack(root, root / "ml-100k.zip")
    # The deployments run this checkout's code from the folder `prefect deploy` ran in, as a team's would;
    # a copy keeps the runs' relative paths (data/, warehouse/) out of the repository.
    for folder in ("flows", "tasks", "warehouse", "deploy"):
        shutil.copytree(
            REPO / folder, stack.checkout / folder, ignore=shutil.ignore_patterns("__pycache__", "*.duckdb*", "*.png")
        )
    try:
        for line in readme_setup_commands():
            if " deployment run " in line:  # the tests below start the runs
                continue
            stack.readme_line(line)
        assert stack.env["PREFECT_API_URL"] == stack.api, "the docs' set-up no longer exports the API's URL"
        assert json.loads(stack.cli("variable", "get", "recs_source")) == str(stack.source), "the docs set no source"
        # The GPU host's worker, on the pool the docs created for it.
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
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"], schedule["active"]) == (
        "0 3 * * *",
        "UTC",
        True,
    )
    assert nightly["work_pool_name"] == "recs-cpu"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    automations = _api("POST", f"{stack.api}/automations/filter", json={}).json()
    (trigger,) = [a for a in automations if a["name"] == "nightly__automation_1"]
    assert trigger["trigger"]["expect"] == ["recs.ratings.updated"] and trigger["enabled"]
    gpu = _api("GET", f"{stack.api}/deployments/name/train/gpu").json()
    assert gpu["work_pool_name"] == "recs-gpu"


def _wait_for(what: str, stack: Stack, probe, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what} after {timeout}s\n{stack.logs()}"
        time.sleep(1)
    return found


def test_the_servers_scheduler_creates_runs_and_a_worker_completes_one(stack, source_url):
    # The nightly's cron: the scheduler service (not the test, not `prefect deploy`) creates its next runs.
    nightly_id = _deployment_id(stack, "nightly/nightly")
    upcoming = _wait_for(
        "the scheduler created no nightly run",
        stack,
        lambda: [r for r in _flow_runs(stack, nightly_id) if r["auto_scheduled"] and r["state"]["type"] == "SCHEDULED"],
    )
    assert all(r["expected_start_time"][11:19] == "03:00:00" for r in upcoming), [
        r["expected_start_time"] for r in upcoming
    ]

    # A short interval schedule made for the test: the scheduler creates its runs, the docs' worker runs one.
    config = {
        "source": source_url,
        "models": ["popularity"],
        "refit_on_all": False,
        "warehouse": "warehouse/scheduled.duckdb",
        "lock_timeout_seconds": 120,
    }
    stack.cli(
        "--no-prompt",
        "deploy",
        "flows/nightly.py:nightly",
        "--name",
        "every-30s",
        "--pool",
        "recs-cpu",
        "--interval",
        "30",
        "--concurrency-limit",
        "1",
        "--params",
        json.dumps({"config": config}),
    )
    every_30s = _deployment_id(stack, "nightly/every-30s")
    (completed, *_) = _wait_for(
        "no scheduled run completed",
        stack,
        lambda: [r for r in _flow_runs(stack, every_30s) if r["auto_scheduled"] and r["state"]["type"] == "COMPLETED"],
        timeout=240,
    )
    stack.cli("deployment", "delete", "nightly/every-30s")  # no more runs of it during the other tests
    with duckdb.connect(str(stack.checkout / "warehouse" / "scheduled.duckdb"), read_only=True) as con:
        runs = con.execute("SELECT status FROM runs WHERE flow_run_id = ?", [completed["id"]]).fetchall()
        n_users = con.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchone()[0]
    assert runs == [("succeeded",)] and n_users == 943


def test_a_deployment_run_reads_its_source_from_the_variable_and_trains_on_the_training_deployment(stack):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    # no source in the run's config: the recs_source variable the docs' set-up wrote names the local archive
    parameters = {"config": {"train_deployment": "train/gpu", "models": ["dot_bias", "ease"]}}
    created = _api("POST", f"{stack.api}/deployments/{nightly_id}/create_flow_run", json={"parameters": parameters})
    run = stack.wait_for_run(created.json()["id"])
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"

    n_users, runs = _published(stack.checkout / "warehouse" / "recs.duckdb")
    assert n_users == 943
    assert runs[-1][1:3] == (run["id"], "succeeded")
    with duckdb.connect(str(stack.checkout / "warehouse" / "recs.duckdb"), read_only=True) as con:
        assert con.execute("SELECT source FROM runs WHERE flow_run_id = ?", [run["id"]]).fetchone() == (
            str(stack.source),
        )
    training_runs = _flow_runs(stack, _deployment_id(stack, "train/gpu"))
    # Train both, then refit the published ranker (ease: the better nDCG@10) and the model behind its stars.
    assert [r["state"]["type"] for r in training_runs] == ["COMPLETED"] * 4
    phases = sorted((r["parameters"]["phase"], r["parameters"]["model"]) for r in training_runs)
    assert phases == [("refit", "dot_bias"), ("refit", "ease"), ("train", "dot_bias"), ("train", "ease")]


def test_a_run_whose_source_does_not_exist_says_why_in_its_state_and_in_watch(stack):
    missing = stack.root / "no-such" / "ml-100k.zip"
    stack.cli("variable", "set", "recs_source", str(missing), "--overwrite")
    try:
        (line,) = [line for line in readme_setup_commands() if " deployment run " in line]  # step 4, as written
        args = shlex.split(line.replace(".venv/bin/", f"{BIN}/"))
        watched = subprocess.run(args, cwd=stack.checkout, env=stack.env, capture_output=True, text=True, timeout=180)
    finally:
        stack.cli("variable", "set", "recs_source", str(stack.source), "--overwrite")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    output = " ".join((watched.stdout + watched.stderr).split())  # rich wraps long lines
    assert f"no such file {str(missing)!r}" in output and "prefect variable set recs_source" in output, output
    nightly_id = _deployment_id(stack, "nightly/nightly")
    failed = [r for r in _flow_runs(stack, nightly_id) if r["state"]["type"] == "FAILED"][-1]
    message = failed["state"]["message"]
    assert f"no such file {str(missing)!r}" in message and "--params" in message, message
    with duckdb.connect(str(stack.checkout / "warehouse" / "recs.duckdb"), read_only=True) as con:
        status, reason = con.execute("SELECT status, error FROM runs WHERE flow_run_id = ?", [failed["id"]]).fetchone()
    assert status == "failed" and "no such file" in reason


def test_the_ratings_updated_event_triggers_a_nightly_run(stack, source_url):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    before = {r["id"] for r in _flow_runs(stack, nightly_id)}
    stack.cli(
        "event",
        "emit",
        "recs.ratings.updated",
        "--resource-id",
        "recs.source.e2e-ml-100k",
        "--payload",
        json.dumps({"source": source_url}),
    )

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


def test_two_runs_at_once_run_one_after_the_other_and_overrides_keep_the_deployments_config(stack, source_url):
    nightly_id = _deployment_id(stack, "nightly/nightly")
    # Some settings changed for these runs (the list length, business rules, warm starts); the deployment's models
    # and everything else stay.
    overrides = {"top_n": 5, "exclude_genres": ["Horror"], "min_item_ratings": 20, "warm_start": True}
    parameters = {"source": source_url, "overrides": overrides}
    ids = [
        _api("POST", f"{stack.api}/deployments/{nightly_id}/create_flow_run", json={"parameters": parameters}).json()[
            "id"
        ]
        for _ in range(2)
    ]
    runs = [stack.wait_for_run(run_id) for run_id in ids]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], stack.logs()
    first, second = sorted(runs, key=lambda r: r["start_time"])
    assert first["end_time"] <= second["start_time"], "the deployment's concurrency limit let two runs overlap"
    with duckdb.connect(str(stack.checkout / "warehouse" / "recs.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT status, config FROM runs WHERE flow_run_id IN (?, ?)", ids).fetchall()
        list_lengths = con.execute("SELECT DISTINCT count(*) FROM recommendations GROUP BY user_id").fetchall()
        horror = con.execute(
            "SELECT count(*) FROM recommendations_with_titles WHERE list_contains(genres, 'Horror')"
        ).fetchone()
        extras = con.execute(
            "SELECT (SELECT count(*) FROM fallback_recommendations), "
            "(SELECT count(*) FROM recommendations_with_reasons WHERE reason IS NOT NULL)"
        ).fetchone()
        second_run = con.execute("SELECT run_id FROM runs WHERE flow_run_id = ?", [second["id"]]).fetchone()[0]
        churn = con.execute(
            "SELECT count(*) FROM run_metrics WHERE run_id = ? AND metric = 'churn'", [second_run]
        ).fetchone()
        warm_refit = con.execute(
            "SELECT model, max(epoch) FROM training_history WHERE run_id = ? AND split = 'refit' "
            "GROUP BY ALL ORDER BY 1",
            [second_run],
        ).fetchall()
    assert sorted(status for status, _ in rows) == ["succeeded", "succeeded"]
    for _, config in rows:
        config = json.loads(config)
        assert (config["top_n"], config["models"], config["gate"]["tolerance"]) == (5, NIGHTLY_MODELS, 0.1)
    assert list_lengths == [(5,)] and horror == (0,) and extras[0] == 5 and extras[1] > 0 and churn == (1,)
    # the second run's refits started from the first's vectors: their warm_epochs, not their epochs
    assert dict(warm_refit) == {"dot_bias": 5, "ials": 4}


def _start_dask(stack: Stack, port: int, n_workers: int) -> str:
    """`dask scheduler` and `n_workers` `dask worker` processes on 127.0.0.1, as docs/operations.md starts them:
    the workers with the server's PREFECT_API_URL (stack.env), so their task runs report to it."""
    address = f"tcp://127.0.0.1:{port}"
    dask = str(BIN / "dask")
    stack.start("dask-scheduler", dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
    for i in range(n_workers):
        stack.start(f"dask-worker-{i}", dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}")
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(n_workers, timeout=120)
    return address


def test_a_deployment_run_on_a_dask_cluster_maps_its_shards_as_task_runs_on_the_server(stack, source_url):
    address = _start_dask(stack, _free_port(), 2)
    nightly_id = _deployment_id(stack, "nightly/nightly")
    overrides = {
        "cluster": {"address": address, "shard_users": 300},
        "warehouse": "warehouse/cluster.duckdb",
        "models": ["dot_bias", "ials"],
        "ials": {"epochs": 8, "shard_ratings": 40_000, "chunk_ratings": 5_000},
    }
    created = _api(
        "POST",
        f"{stack.api}/deployments/{nightly_id}/create_flow_run",
        json={"parameters": {"source": source_url, "overrides": overrides}},
    )
    run = stack.wait_for_run(created.json()["id"], timeout=420)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"

    with duckdb.connect(str(stack.checkout / "warehouse" / "cluster.duckdb"), read_only=True) as con:
        facts = con.execute(
            "SELECT status, cluster, cluster_workers FROM runs WHERE flow_run_id = ?", [run["id"]]
        ).fetchall()
        n_users = con.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchone()[0]
    assert facts == [("succeeded", address, 2)] and n_users == 943

    # the stages' subflows and their mapped task runs, on the server, under this flow run
    body = {"flow_runs": {"parent_flow_run_id": {"operator": "and_", "any_": [run["id"]]}}}
    subflows = _api("POST", f"{stack.api}/flow_runs/filter", json=body).json()
    names = sorted({_flow_name(stack, subflow["flow_id"]) for subflow in subflows})
    assert names == ["evaluate-shards", "recommend-shards", "train-ials-shards"]
    body = {"flow_runs": {"id": {"any_": [subflow["id"] for subflow in subflows]}}, "limit": 200}
    offset, task_runs = 0, []
    while page := _api("POST", f"{stack.api}/task_runs/filter", json={**body, "offset": offset}).json():
        task_runs, offset = task_runs + page, offset + len(page)
    recommend = sorted(r["name"] for r in task_runs if r["name"].startswith("recommend-users-"))
    assert recommend == [f"recommend-users-{first}-{min(first + 300, 943)}" for first in (0, 300, 600, 900)]
    training = [r for r in task_runs if r["name"].startswith(("ials-users-e", "ials-items-e"))]
    assert len(training) == 2 * 8 * (2 + 3)  # two sides, 8 epochs, the split fit (2 shards) and the refit (3)
    assert {r["state"]["type"] for r in task_runs} == {"COMPLETED"}


def _flow_name(stack: Stack, flow_id: str) -> str:
    return _api("GET", f"{stack.api}/flows/{flow_id}").json()["name"]
