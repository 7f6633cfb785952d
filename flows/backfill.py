"""Replay history: the nightly flow once per date, each run seeing only the ratings up to that date.

MovieLens is a static file; replaying it at `as_of` dates shows how a nightly pipeline's metrics move as
the data grows, and fills the trend views the way a season of real nights would.

A replay publishes each date's lists like a real night, so it never runs on the warehouse that applications
read: it writes to `warehouse/replay.duckdb` unless told otherwise, and refuses a warehouse that holds lists
published by a live (not replayed) run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import warehouse
from tasks.config import PipelineConfig

if TYPE_CHECKING:
    from flows.nightly import RunResult

REPLAY_WAREHOUSE = Path("warehouse/replay.duckdb")  # where `recs backfill` writes unless --warehouse says
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
        cutoffs.append(datetime.combine(day, time(23, 59, 59), tzinfo=UTC))
        day += every
    return cutoffs


@dataclass(frozen=True)
class ReplayOutcome:
    as_of: datetime
    status: str  # succeeded | rejected | failed
    run_id: str | None
    detail: str


class LiveWarehouseError(RuntimeError):
    """A replay was pointed at a warehouse whose lists live runs published."""


def replay_options(options: dict) -> dict:
    """The user's options with the replay's own warehouse unless they named one."""
    return {"warehouse": REPLAY_WAREHOUSE, **options}


def refuse_before_replay(config: PipelineConfig) -> None:
    """Raise before any night is replayed: a live warehouse (`refuse_live_warehouse`), data without a time column
    (`refuse_timeless_data`)."""
    refuse_live_warehouse(config.warehouse)
    refuse_timeless_data(config)


def refuse_timeless_data(config: PipelineConfig) -> None:
    """Raise, before any night is replayed, when a local source's data has no time column: every date would fail
    alike. The source is read as the first night would read it (and that parse is kept for it)."""
    from tasks.ingest.fetch import fetch_archive
    from tasks.ingest.own_data import read_settings
    from tasks.ingest.parse import load_dataset
    from tasks.sources import local_path

    if local_path(config.source) is None:
        return
    archive = fetch_archive(config.source, config.data_dir, config.source_sha256)
    dataset = load_dataset(
        archive, config.data_dir, config.on_bad_rows, config.max_extracted_bytes, read_settings(config)
    )
    if not dataset.has_timestamps:
        raise ValueError(
            f"the data of {config.source} has no time column: a replay at dates needs one (timestamp_column, "
            "--timestamp-column). Nothing was run"
        )


def refuse_live_warehouse(path: Path) -> None:
    """Raise when `path` holds lists published by a live run: a replay would replace them with its last date's."""
    if not path.exists():
        return
    with warehouse.open_reader(path) as con:
        live = warehouse.fetch_value(con, "live_published_run")
    if live is not None:
        raise LiveWarehouseError(
            f"{path} holds lists published by live runs (the last: run {live}); a replay publishes each date's "
            f"lists and would leave the last replayed date's in their place. Replay into a warehouse of its own: "
            f"--warehouse {REPLAY_WAREHOUSE} (the default for recs backfill) or any new file. "
            "Nothing was run."
        )


def backfill(options: dict, cutoffs: list[datetime]) -> Iterator[ReplayOutcome]:
    """Run the nightly flow at each cutoff in turn, yielding each outcome; a failed date does not stop the rest.

    Args:
        options: the config fields the user set (the split defaults to temporal, as for any `as_of` run;
            the warehouse to `REPLAY_WAREHOUSE`).
        cutoffs: the `as_of` of each run, oldest first.

    Raises:
        LiveWarehouseError: before any run, when the warehouse holds lists that live runs published.
    """
    from flows.nightly import nightly  # Prefect's import is slow; `recs backfill --help` should not wait

    options = replay_options(options)
    refuse_live_warehouse(Path(options["warehouse"]))
    for as_of in cutoffs:
        run_config = PipelineConfig(**{**options, "as_of": as_of})
        try:
            # a rejected run's state is Completed("Rejected") with its RunResult as the data
            result = cast("RunResult", nightly(run_config, return_state=True).result())
        except Exception as exc:  # recorded as failed in `runs` by the flow itself
            yield ReplayOutcome(as_of, "failed", None, f"{type(exc).__name__}: {exc}")
            continue
        yield ReplayOutcome(as_of, result.status, result.run_id, result.gate)
