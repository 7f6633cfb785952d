"""Bookkeeping of one nightly run: its id, its folder, what it learnt about itself, and how long each stage took.

It serves the flow only; what it writes to the warehouse goes through warehouse/runs.py."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.logging import get_run_logger

from flows.deadline import cancellation_reason
from flows.lock import run_lock
from flows.logs import STAGE
from tasks.config import PipelineConfig
from tasks.memory import release_freed_memory
from tasks.run_folder import RunFolder
from warehouse.runs import mark_failed, start_run, utc_now

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Sortable, readable and unique: `20261122T031500Z-3f9a1c`."""
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class RunLog:
    """A run in progress. Facts and stage timings accumulate here and reach `runs` when the run ends."""

    run_id: str
    config: PipelineConfig
    facts: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    _running: tuple[str, float] | None = None  # the stage in progress and when it started

    @property
    def folder(self) -> RunFolder:
        """Where this run's id maps, splits and checkpoints are saved."""
        return RunFolder.of(self.config.data_dir, self.run_id)

    @property
    def directory(self) -> Path:
        return self.folder.path

    def note(self, **facts: Any) -> None:
        self.facts.update(facts)

    def settings_chosen(self, config: PipelineConfig, tuning_run_id: str | None, taken: dict[str, Any]) -> None:
        """The run trains with `config`, which took `taken` from tune `tuning_run_id`: `runs.config` and the run
        folder's config.json say so (the quality gate retrains a published run's models from its stored config)."""
        if tuning_run_id is None:
            return
        self.note(tuning_run_id=tuning_run_id, tuned_settings=json.dumps(taken, sort_keys=True))
        self.note(config=config.model_dump_json())
        self.folder.config.write_text(config.model_dump_json(indent=2))

    @contextmanager
    def stage(self, name: str, detail: str = "", announce: bool = True) -> Iterator[None]:
        """Time the block as stage `name` (the seconds add up when a stage runs per model); unless `announce` is
        false, log its start in one line, the one the console shows without -v: `stage train: ials (2 of 4)`."""
        if announce:
            get_run_logger().info("stage %s%s", name, f": {detail}" if detail else "", extra=STAGE)
        self._running = (name, time.perf_counter())
        try:
            yield
        finally:
            self.stage_seconds = self._seconds()
            self._running = None
            release_freed_memory()  # the stage's working memory goes back before the next stage's peak

    def _seconds(self) -> dict[str, float]:
        seconds = dict(self.stage_seconds)
        if self._running is not None:
            name, started = self._running
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 3)
        return seconds

    def final_facts(self) -> dict[str, Any]:
        """Every fact noted so far, with the stage seconds up to now (the stage in progress included: the
        publishing write takes them at its last statement)."""
        return {**self.facts, "stage_seconds": self._seconds()}

    def fail(self, error: BaseException) -> None:
        """Record the run as failed with the error's type and message, or as cancelled with the reason when a
        signal or the time limit ended it (flows/deadline.py).

        Never raises: if the warehouse cannot be written, that is logged and the original error stands.
        """
        reason = cancellation_reason(error)
        status, said = ("cancelled", reason) if reason else ("failed", f"{type(error).__name__}: {error}")
        try:
            mark_failed(self.config.warehouse, self.run_id, said, self.final_facts(), status)
        except Exception:
            log.exception("could not record run %s as %s in %s", self.run_id, status, self.config.warehouse)
        # An event says why, beside the flow run's own: `prefect deployment run --watch` prints events (a local
        # server streams no logs), the UI lists them, and an automation can alert on `recs.run.failed`.
        emit_event(
            event=f"recs.run.{status}",
            resource={"prefect.resource.id": f"recs.run.{self.run_id}", "prefect.resource.name": said},
            payload={"run_id": self.run_id, "status": status, "reason": said},
        )


def record_unstarted(config: PipelineConfig, reason: str) -> str | None:
    """Record a run that could not start (its flow never ran) as failed with `reason`; returns its id, or None
    when another run holds the warehouse (that run is recorded) or the warehouse cannot be written (logged)."""
    run_id = new_run_id()
    try:
        with run_lock(config.warehouse, owner=run_id):
            start_run(config.warehouse, run_id, None, config.model_dump_json(), utc_now())
            mark_failed(config.warehouse, run_id, reason, {})
    except Exception:
        log.exception("could not record the run that did not start in %s", config.warehouse)
        return None
    return run_id


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(config: PipelineConfig, flow_run_id: str | None) -> RunLog:
    """Insert the run as `running` in the warehouse and return its log."""
    run = RunLog(new_run_id(), config)
    start_run(config.warehouse, run.run_id, flow_run_id, config.model_dump_json(), utc_now())
    run.directory.mkdir(parents=True, exist_ok=True)
    run.folder.config.write_text(config.model_dump_json(indent=2))
    return run
