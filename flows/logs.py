"""Route the `tasks.*` loggers to Prefect: imported by every flow module, so the records of the pure task
functions reach the run's logs in the Prefect UI."""

import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import prefect  # noqa: F401  (configures Prefect's logging on import)
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler


class _InsidePrefectRun(logging.Filter):
    """Pass records only inside a flow or task run: the pure task functions also run outside Prefect
    (tests, benchmarks), where the API handler has no run to attach them to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _route_task_logs_to_prefect() -> None:
    """Send the `tasks.*` loggers' records to the console and to the Prefect run's logs, as
    PREFECT_LOGGING_EXTRA_LOGGERS does, whatever imported Prefect first (a worker imports it before our code)."""
    tasks_logger = logging.getLogger("tasks")
    if tasks_logger.handlers:
        return
    tasks_logger.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if not isinstance(handler, APILogHandler):
            tasks_logger.addHandler(handler)
    api_handler = APILogHandler()
    api_handler.addFilter(_InsidePrefectRun())
    tasks_logger.addHandler(api_handler)


_route_task_logs_to_prefect()


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback: the console gets one line per record,
    the run's log file keeps the whole record."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = bare.exc_text = bare.stack_info = None
        return self.inner.format(bare)


class _RunLogFile(logging.FileHandler):
    """The run's log file. When a record cannot be written (a full disk), says so once on stderr and writes no more,
    instead of logging's `--- Logging error ---` and a traceback for every record that follows."""

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        if self.level > logging.CRITICAL:
            return
        self.setLevel(logging.CRITICAL + 1)
        error = sys.exc_info()[1]
        print(
            f"recs: cannot write the log file {self.baseFilename} ({type(error).__name__}: {error}); the rest of this "
            "run's log goes to the console only",
            file=sys.stderr,
        )

    def close(self) -> None:
        try:
            super().close()  # flushes what is buffered: on a full disk, that fails too
        except OSError:
            self.stream = None  # type: ignore[assignment]  # closed as far as this handler is concerned


class _StagesAndProblems(logging.Filter):
    """The console's share of a run's records without `-v`: each stage's line (logged with `STAGE`), warnings and
    errors. Epochs, task-run states and the rest stay in the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "stage", False)


# `extra` of the record a stage's start logs: the one INFO line per stage the console keeps without -v.
STAGE = {"stage": True}


@contextmanager
def log_to_file(path: Path, verbose: bool = True) -> Iterator[Path]:
    """Within the block, send every log record of this process to `path`, tracebacks included, and keep
    tracebacks off the console, where each record stays one line; unless `verbose`, the console shows only the
    stages' lines, warnings and errors. For `recs run` and `recs backfill`: a failed run prints its reason and
    this path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = _RunLogFile(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    logging.getLogger().addHandler(to_file)
    consoles = [(handler, handler.formatter) for handler in _console_handlers()]
    brief = _StagesAndProblems()
    for handler, formatter in consoles:
        handler.setFormatter(_WithoutTraceback(formatter))
        if not verbose:
            handler.addFilter(brief)
    try:
        yield path
    finally:
        for handler, formatter in consoles:  # as they were: tracebacks reach the console again outside the block
            handler.setFormatter(formatter)
            handler.removeFilter(brief)
        logging.getLogger().removeHandler(to_file)
        to_file.close()


def _console_handlers() -> list[logging.StreamHandler]:
    """The stream handlers of every logger that write to a console, each once: not files, not memory (pytest's
    capture, which must keep every record)."""
    loggers = [entry for entry in logging.root.manager.loggerDict.values() if isinstance(entry, logging.Logger)]
    handlers = {id(h): h for logger in [logging.getLogger(), *loggers] for h in logger.handlers}.values()
    return [
        h
        for h in handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and not isinstance(h.stream, io.StringIO)
    ]
