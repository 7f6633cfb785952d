"""How many threads torch computes with on CPU: the cores this process may use that other work leaves idle.

torch starts with a thread per core. When another process (or the Prefect API server, a Dask worker beside it) keeps
a core busy, its OpenMP threads wait on each other at every parallel region, and a fit of ML-100k on two cores took
4.8 s instead of 0.6 s; one thread took 0.9 s. So each CPU fit starts by looking at how busy other processes keep the machine.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.05  # how long the CPUs' busy time is watched before a fit


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup v2 quota (a container's `--cpus`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return cpus


def _busy_and_total() -> tuple[int, int] | None:
    """The machine's CPU time so far, busy and in all, in clock ticks (the first line of /proc/stat); None
    where there is no /proc/stat."""
    try:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def _own_ticks() -> int:
    """CPU time so far of this process (every thread) and its children (the temporary Prefect API), in ticks."""
    pids = ["self"]
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids += children.read_text().split()
        except OSError:
            continue
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # a child that just ended
        total += int(fields[11]) + int(fields[12])  # utime and stime
    return total


def idle_cpus(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of the machine's CPUs other processes left idle over the next `seconds` (this process and its
    children count as idle: they wait for the fit), or None when that cannot be measured (no /proc)."""
    before, own_before = _busy_and_total(), _own_ticks()
    time.sleep(seconds)
    after, own_after = _busy_and_total(), _own_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    others = max(0, after[0] - before[0] - (own_after - own_before))
    return (1 - others / (after[1] - before[1])) * (os.cpu_count() or 1)


def fitting_threads(requested: int | None) -> int:
    """`requested` when set; torch's own count when OMP_NUM_THREADS set it (Dask's workers set 1); else the usable
    CPUs that other processes leave idle, rounded up from three quarters of one, at least 1."""
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    usable, idle = usable_cpus(), idle_cpus()
    return usable if idle is None else max(1, min(usable, math.floor(idle + 0.25)))


@contextmanager
def cpu_threads(requested: int | None) -> Iterator[int]:
    """Within the block, torch computes with `fitting_threads(requested)` threads; its count before is restored."""
    before = torch.get_num_threads()
    threads = fitting_threads(requested)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
