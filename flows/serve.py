"""`recs serve`: the deployments of deploy/prefect.yaml served from this process (`prefect.serve`), for
teams without a work pool. Schedules, parameters, concurrency limits and triggers come from that file, so
the served and the deployed pipeline cannot drift apart."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentTriggerTypes
from prefect.schedules import Cron
from pydantic import TypeAdapter

from flows.fold_in import fold_in
from flows.nightly import nightly
from flows.refresh import refresh
from flows.train import train
from flows.tune import tune

PREFECT_YAML = Path(__file__).resolve().parents[1] / "deploy" / "prefect.yaml"
FLOWS: dict[str, Flow] = {
    "flows/nightly.py:nightly": nightly,
    "flows/fold_in.py:fold_in": fold_in,
    "flows/refresh.py:refresh": refresh,
    "flows/train.py:train": train,
    "flows/tune.py:tune": tune,
}
_TRIGGERS = TypeAdapter(DeploymentTriggerTypes)


def _concurrency(spec: Any) -> int | ConcurrencyLimitConfig | None:
    return ConcurrencyLimitConfig(**spec) if isinstance(spec, dict) else spec


SERVED = ("nightly", "fold-in", "refresh", "tune")


def served_deployments(path: Path = PREFECT_YAML, names: tuple[str, ...] = SERVED) -> list:
    """`RunnerDeployment`s for the named deployments of a prefect.yaml (work pools do not apply when served)."""
    spec = yaml.safe_load(path.read_text())
    deployments = []
    for entry in spec["deployments"]:
        if entry["name"] not in names:
            continue
        triggers: list[Any] = [
            _TRIGGERS.validate_python({"name": f"{entry['name']}__automation_{i}", **trigger})
            for i, trigger in enumerate(entry.get("triggers", []), start=1)
        ]
        deployments.append(
            FLOWS[entry["entrypoint"]].to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in entry.get("schedules", [])],
                parameters=entry.get("parameters") or {},
                concurrency_limit=_concurrency(entry.get("concurrency_limit")),
                triggers=triggers,
            )
        )
    return deployments


def _stop_before_serving(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve_pipeline(with_training: bool = False) -> None:
    """Serve the nightly, refresh and tune deployments (and the training one when asked) until interrupted.

    SIGTERM ends it cleanly from the start: Prefect's runner handles it once it polls, and until then (while the
    deployments are registered) this process exits at once, instead of dying by the signal."""
    signal.signal(signal.SIGTERM, _stop_before_serving)
    serve(*served_deployments(names=(*SERVED, "gpu") if with_training else SERVED))
