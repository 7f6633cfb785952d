"""What test files share besides fixtures: the repository's paths, loopback HTTP servers, small writers and
a read-only query helper. Fixtures that use these are in conftest.py."""

from __future__ import annotations

import os
import threading
import time
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RECS_DATASETS", REPO.parent / "shared" / "datasets"))


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]]

    def log_message(self, format: str, *args) -> None:
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
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
        handler = type(
            "Handler", (_FaultHandler,), {"body": body, "fault": fault, "failures": failures, "requests": self.requests}
        )
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        if fault == "refused":  # a port that was just free, with nothing listening on it
            self.server.server_close()
        else:
            threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}/ml-100k.zip"
        self.fault = fault

    def close(self) -> None:
        if self.fault != "refused":
            self.server.shutdown()
            self.server.server_close()


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
