"""torch's CPU threads fit what the machine has free: a busy process beside the run takes its core out of the count,
the run's own threads and children do not, and a setting or OMP_NUM_THREADS wins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from tasks.cpu_threads import cpu_threads, fitting_threads, idle_cpus, usable_cpus


def _busy_stranger() -> int:
    """A busy loop that is not this process's child (its shell parent exits at once): its pid."""
    started = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(started.stdout)


def test_a_busy_process_beside_the_run_takes_its_core_out_of_the_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)
    stranger = _busy_stranger()
    try:
        time.sleep(0.3)
        idle = idle_cpus(0.3)
        assert idle is not None and idle <= (os.cpu_count() or 1) - 0.5
        assert fitting_threads(None) <= max(1, usable_cpus() - 1)
    finally:
        os.kill(stranger, signal.SIGKILL)


def test_the_setting_and_omp_num_threads_win_and_the_count_is_restored(monkeypatch):
    before = torch.get_num_threads()
    with cpu_threads(3) as threads:
        assert threads == torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Dask's workers start
    assert fitting_threads(None) == torch.get_num_threads()
