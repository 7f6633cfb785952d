"""Route the `tasks.*` loggers to Prefect: imported by every flow module, so the records of the pure task
functions reach the run's logs in the Prefect UI."""

import logging

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
