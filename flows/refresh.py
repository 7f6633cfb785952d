"""The refresh flow: announce `recs.ratings.updated` when, and only when, the source archive changed.

Its deployment runs on a schedule (deploy/prefect.yaml); the nightly deployment's trigger turns the event
into a nightly run on the announced source. An outside system can announce a change the same way; see
docs/operations.md, "Triggers".
"""

from __future__ import annotations

import logging

from prefect import flow
from prefect.events import emit_event

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
from tasks.config import PipelineConfig
from tasks.ingest import with_default_source
from tasks.refresh import RATINGS_UPDATED, check_source_task, remember_announced, source_resource_id

log = logging.getLogger("tasks.refresh")


@flow(name="refresh", log_prints=True)
def refresh(config: PipelineConfig = PipelineConfig()) -> bool:
    """Check `config.source`; if its archive changed since the last announcement, emit the event.

    Returns:
        Whether the event was emitted.
    """
    config = with_default_source(config)  # the nightly's source, found the same way
    check = check_source_task(config)
    if not check.changed:
        log.info("source %s unchanged (sha256 %s); nothing to announce", check.source, check.sha256[:12])
        return False
    emit_event(
        event=RATINGS_UPDATED,
        resource={"prefect.resource.id": source_resource_id(config.source), "prefect.resource.name": check.source},
        # the source without credentials: Prefect keeps events; the nightly run keeps its configured URL for it
        payload={"source": check.source, "sha256": check.sha256, "previous_sha256": check.previous_sha256},
    )
    remember_announced(config.data_dir, check)
    log.info(
        "source %s changed (sha256 %s -> %s): announced %s",
        check.source,
        (check.previous_sha256 or "none")[:12],
        check.sha256[:12],
        RATINGS_UPDATED,
    )
    return True
