"""Prefect flows: they wire the stages of `tasks` together and hold no data logic."""

import logging

import prefect  # noqa: F401  (configures Prefect's logging on import)


def _route_task_logs_to_prefect() -> None:
    """Send the `tasks.*` loggers' records to the Prefect run's logs, as PREFECT_LOGGING_EXTRA_LOGGERS does,
    but whatever imported Prefect first (a worker imports it before loading our code)."""
    tasks_logger = logging.getLogger("tasks")
    tasks_logger.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in tasks_logger.handlers:
            tasks_logger.addHandler(handler)


_route_task_logs_to_prefect()
