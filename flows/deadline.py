"""Every run ends: a time limit (`run_timeout_seconds`) and signals (SIGTERM, SIGHUP, SIGINT) end it within
seconds, and what ended it is recorded in `runs` as `cancelled`, with the reason.

Python runs a signal's handler in the main thread between two bytecodes, so the exception it raises reaches the
flow wherever it is (a training epoch, a write), the flow records the run and re-raises, and the process exits.
Inside a Prefect flow run, Prefect's own SIGTERM handler raises `TerminationSignal` instead, then signals the
process again once the flow has ended, which lands on the handler installed here.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.exceptions import TerminationSignal

from tasks.naming import setting

log = logging.getLogger(__name__)


class RunCancelled(BaseException):
    """The run was ended from outside its work: a signal or its time limit. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (a retry, a cleanup) holds it back."""


def cancellation_reason(error: BaseException) -> str | None:
    """Why a run was cancelled, in words, when `error` is a cancellation; None for a failure."""
    if isinstance(error, RunCancelled):
        return str(error)
    if isinstance(error, TerminationSignal):
        return f"ended by {signal.Signals(error.signal).name} (the process was asked to stop)"
    if isinstance(error, KeyboardInterrupt):
        return "ended by SIGINT (interrupted)"
    return None


@contextmanager
def run_deadline(seconds: float | None) -> Iterator[None]:
    """Raise `RunCancelled` in the main thread when the block has run for `seconds` (None: no limit).

    Only the main thread receives signals: elsewhere (a flow run in a thread) the limit cannot be enforced, which
    is logged, and the block runs unbounded."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning(
            "%s cannot be enforced outside the main thread; this run is not bounded", setting("run_timeout_seconds")
        )
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise RunCancelled(f"the run took longer than {setting('run_timeout_seconds')} {seconds:g}s and was ended")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def signals_cancel() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `RunCancelled` (the default would end the process at once,
    leaving the run `running` and its children behind); for `recs run` and `recs backfill`."""

    def cancel(signum: int, frame: object) -> None:
        raise RunCancelled(f"ended by {signal.Signals(signum).name} (the process was asked to stop)")

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
