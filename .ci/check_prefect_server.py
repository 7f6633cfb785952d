"""Fail fast when the installed libraries break the Prefect server the README tells users to start.

Two known breakages, each pinned in pyproject.toml, each checked here by running the code that broke:

- fastapi >= 0.159: the server's API module fails to import;
- SQLAlchemy 2.1: the scheduler service's bulk insert of scheduled flow runs raises on every loop, so a
  deployment's schedule never creates a run (the server itself keeps answering, which hides it).

Runs in a few seconds on a throwaway SQLite database; exits non-zero naming what broke.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from datetime import timedelta

HOME = tempfile.mkdtemp(prefix="recs-ci-prefect-")
os.environ["PREFECT_HOME"] = HOME
os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{HOME}/check.db"


async def scheduled_runs() -> int:
    """Create a deployment with an hourly schedule and let the scheduler's own code insert its runs."""
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as session:
        flow = await models.flows.create_flow(session, schemas.core.Flow(name="ci-check"))
        deployment = await models.deployments.create_deployment(
            session, schemas.core.Deployment(name="ci-check", flow_id=flow.id)
        )
        hourly = schemas.schedules.IntervalSchedule(interval=timedelta(hours=1))
        await models.deployments.create_deployment_schedules(
            session, deployment.id, [schemas.actions.DeploymentScheduleCreate(schedule=hourly, active=True)]
        )
        return len(await models.deployments.schedule_runs(session, deployment_id=deployment.id))


def main() -> int:
    import fastapi
    import sqlalchemy

    try:
        import prefect.server.api.server  # noqa: F401
    except Exception as exc:
        print(f"CI: prefect's server does not import with fastapi {fastapi.__version__}: {exc}", file=sys.stderr)
        return 1
    try:
        created = asyncio.run(scheduled_runs())
    except Exception as exc:
        print(
            f"CI: prefect's scheduler cannot create runs with SQLAlchemy {sqlalchemy.__version__}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if created < 1:
        print("CI: prefect's scheduler created no run for an hourly schedule", file=sys.stderr)
        return 1
    print(
        f"prefect server: imports with fastapi {fastapi.__version__}; the scheduler created {created} runs "
        f"with SQLAlchemy {sqlalchemy.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
