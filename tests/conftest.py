"""Shared fixtures: the real ML-100k archive, a loopback HTTP server, small ratings and a Prefect harness."""

from __future__ import annotations

import os
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RECS_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def ml100k_zip() -> Path:
    """The real GroupLens ML-100k archive beside the repository (never committed: its licence forbids it)."""
    path = DATASETS / "ml-100k.zip"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read the real ML-100k from ../shared/datasets (or $RECS_DATASETS)")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def log_request(self, code="-", size="-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))


class ServedDirectory:
    """A directory served over HTTP on 127.0.0.1, with a log of (path, status) per request."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[tuple[str, int]] = []
        handler = type("Handler", (_QuietHandler,), {"requests": self.requests})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Path], ServedDirectory]]:
    """Serve a directory on loopback for the test's duration: `base = serve(folder).url`."""
    servers: list[ServedDirectory] = []

    def start(directory: Path) -> ServedDirectory:
        servers.append(ServedDirectory(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class _FaultHandler(BaseHTTPRequestHandler):
    """Serves `body` at any path, failing the first `failures` requests the way `fault` says."""

    body: bytes
    fault: str
    failures: int
    requests: list[int]

    def do_GET(self) -> None:
        self.requests.append(len(self.requests))
        fault = self.fault if len(self.requests) <= self.failures else "none"
        if fault == "503":
            self.send_error(503, "Service Unavailable")
            return
        if fault == "slow":
            time.sleep(5)  # past any test's timeout: the client gives up first
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2] if fault == "short" else self.body)

    def log_message(self, *args) -> None:
        pass


class FaultyServer:
    """A loopback HTTP server whose first `failures` requests fail: `503`, `slow` (no answer in time),
    `short` (half the promised body, then the connection closes) or `refused` (nothing listens)."""

    def __init__(self, body: bytes, fault: str, failures: int) -> None:
        self.requests: list[int] = []
        handler = type("Handler", (_FaultHandler,), {"body": body, "fault": fault, "failures": failures, "requests": self.requests})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        if fault == "refused":  # a port that was just free, with nothing listening on it
            self.server.server_close()
        else:
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}/ml-100k.zip"
        self.fault = fault

    def close(self) -> None:
        if self.fault != "refused":
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def faulty_server() -> Iterator[Callable[..., FaultyServer]]:
    """`faulty_server(body, fault, failures=10**6)`: see FaultyServer; closed after the test."""
    servers: list[FaultyServer] = []

    def start(body: bytes, fault: str, failures: int = 10**6) -> FaultyServer:
        servers.append(FaultyServer(body, fault, failures))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API and database for the whole session (Prefect's testing guide)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def query_rows(warehouse_path: Path, sql: str, params=()) -> list[tuple]:
    """Run one query on the warehouse, read-only, as a SQL consumer would."""
    import duckdb

    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def write_zip(path: Path, files: dict[str, bytes | str], encoding: str = "utf-8") -> Path:
    """A zip archive holding `files` (member name -> content)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content.encode(encoding) if isinstance(content, str) else content)
    return path


@pytest.fixture
def small_ratings() -> pl.DataFrame:
    """Indexed ratings of 4 users over 5 items; user 3 has a single rating."""
    return pl.DataFrame(
        {
            "user_idx": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3],
            "item_idx": [0, 1, 2, 3, 0, 1, 3, 4, 1, 2, 3, 4, 2],
            "rating": [5.0, 4.0, 1.0, 2.0, 4.0, 5.0, 2.0, 1.0, 1.0, 2.0, 5.0, 4.0, 3.0],
            "timestamp": [10, 20, 30, 40, 11, 21, 31, 41, 12, 22, 32, 42, 5],
        },
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64},
    )


@pytest.fixture(scope="session")
def ml100k_dataset(ml100k_zip, tmp_path_factory):
    """ML-100k parsed once for the session."""
    from tasks.ingest import fetch_archive, load_dataset

    data_dir = tmp_path_factory.mktemp("ml100k-data")
    return load_dataset(fetch_archive(str(ml100k_zip), data_dir), data_dir)


@pytest.fixture(scope="session")
def ml100k_indexed(ml100k_dataset):
    """ML-100k ratings reindexed, with the id maps."""
    from tasks.reindex import reindex

    return reindex(ml100k_dataset.ratings())


@pytest.fixture(scope="session")
def ml100k_ratings(ml100k_indexed) -> pl.DataFrame:
    return ml100k_indexed[0]
