"""Replay history: the nightly flow once per date, each run seeing only the ratings up to that date.

MovieLens is a static file; replaying it at `as_of` dates shows how a nightly pipeline's metrics move as
the data grows, and fills the trend views the way a season of real nights would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from tasks.config import PipelineConfig

_EVERY = re.compile(r"^(\d+)([dw])$")


def parse_every(text: str) -> timedelta:
    """`14d` or `2w` -> a timedelta (days or weeks, at least one day)."""
    match = _EVERY.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--every is {text!r}, expected a positive number of days or weeks such as 14d or 2w")
    count, unit = int(match.group(1)), match.group(2)
    return timedelta(days=count * (7 if unit == "w" else 1))


def replay_dates(start: date, end: date, every: timedelta) -> list[datetime]:
    """The cutoffs from `start` to `end` inclusive: the end of each day (23:59:59 UTC), every `every`."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    cutoffs, day = [], start
    while day <= end:
        cutoffs.append(datetime.combine(day, time(23, 59, 59), tzinfo=timezone.utc))
        day += every
    return cutoffs


@dataclass(frozen=True)
class ReplayOutcome:
    as_of: datetime
    status: str  # succeeded | rejected | failed
    run_id: str | None
    detail: str


def backfill(options: dict, cutoffs: list[datetime]) -> Iterator[ReplayOutcome]:
    """Run the nightly flow at each cutoff in turn, yielding each outcome; a failed date does not stop the rest.

    Args:
        options: the config fields the user set (the split defaults to temporal, as for any `as_of` run).
        cutoffs: the `as_of` of each run, oldest first.
    """
    from flows.nightly import nightly  # Prefect's import is slow; `recs backfill --help` should not wait

    for as_of in cutoffs:
        run_config = PipelineConfig(**{**options, "as_of": as_of})
        try:
            state = nightly(run_config, return_state=True)
            result = state.result()
        except Exception as exc:  # recorded as failed in `runs` by the flow itself
            yield ReplayOutcome(as_of, "failed", None, f"{type(exc).__name__}: {exc}")
            continue
        yield ReplayOutcome(as_of, result.status, result.run_id, result.gate)
