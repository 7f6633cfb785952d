"""Prefect's temporary API for `recs run` and `recs backfill` when no server is set (PREFECT_API_URL unset):
started here, before the flow, as Prefect would start it, with two differences.

- The server process dies with this one: Linux's parent-death signal kills it even when this process is
  SIGKILLed. Left to Prefect, it outlives a killed run (220 MB, still serving, every killed night one more).
- It may take longer to answer on a busy machine (`startup_timeout_seconds`), and a server that never answers
  fails the run with a message that says what to do, recorded in `runs` by the caller.

Prefect keeps one temporary server per process (`SubprocessASGIServer()` returns the same instance): the one
started here is that instance, so Prefect's client finds it running and uses it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

# Prefect's own default is 20 s: 20 readers at normal priority on 2 cores starved it past that. Prefect's setting
# PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, when set, is used instead.
STARTUP_TIMEOUT_SECONDS = 120


def startup_timeout_seconds() -> float:
    """How long to wait for the temporary API to answer: Prefect's setting when set, else 120 s."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    return STARTUP_TIMEOUT_SECONDS


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


class TemporaryApiError(RuntimeError):
    """Prefect's temporary API server did not start or did not answer in time."""


def _die_with(parent: int) -> None:
    """In the child, before it runs the server: be killed when `parent` ends (Linux), and end at once if it already
    has."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class _ServerDyingWithUs(SubprocessASGIServer):
    """Prefect's temporary API server whose process is killed when the `recs` process ends, however it ends."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        parent = os.getpid()
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            },
            preexec_fn=lambda: _die_with(parent),  # only a prctl call and a getppid in the child
        )

    def stop(self) -> None:
        """Stop it without Prefect's "Stopping temporary server" line: it comes at exit, after the run's summary."""
        prefect_logger = logging.getLogger("prefect")
        level = prefect_logger.level
        prefect_logger.setLevel(logging.WARNING)
        try:
            super().stop()
        finally:
            prefect_logger.setLevel(level)


@contextmanager
def temporary_api(timeout_seconds: float | None = None) -> Iterator[str | None]:
    """Start Prefect's temporary API server as a child that dies with this process; yields its URL (None, and
    nothing started, when PREFECT_API_URL names a server). It serves until this process exits.

    Raises:
        TemporaryApiError: the server did not answer within `timeout_seconds` (default: `startup_timeout_seconds`).
    """
    if PREFECT_API_URL.value():
        yield None
        return
    timeout_seconds = timeout_seconds or startup_timeout_seconds()
    server = _ServerDyingWithUs()
    try:
        server.start(timeout=timeout_seconds)  # type: ignore[arg-type]  # Prefect's loop compares it as a number
    except RuntimeError as exc:
        server.stop()
        raise TemporaryApiError(
            f"Prefect's temporary API server did not answer within {timeout_seconds:g}s ({str(exc).splitlines()[0]}); "
            "the machine may be too busy. Nothing was trained or published. Try again, or run against a Prefect "
            "server: set PREFECT_API_URL (docs/operations.md)"
        ) from exc
    # Not stopped when the block ends: Prefect stops it at exit (start() registers that), after its log worker has
    # sent the run's last records to it.
    yield server.api_url
