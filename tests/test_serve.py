"""`recs serve` serves the deployments of deploy/prefect.yaml until it is asked to stop, and SIGTERM (what `kill`,
systemd and Kubernetes send) ends it within seconds, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import PREFECT_API_URL

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_recs_serve_ends_on_sigterm_within_seconds(tmp_path):
    api = PREFECT_API_URL.value()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        serving = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"],
            cwd=REPO,
            env={**os.environ, "PREFECT_API_URL": api},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "deployments are being served" not in log_path.read_text():
            assert serving.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        asked = time.monotonic()
        serving.send_signal(signal.SIGTERM)
        status = serving.wait(timeout=30)
        seconds = time.monotonic() - asked
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGKILL)
    assert status == 0 and seconds < 10, (status, seconds, log_path.read_text())
    # (Prefect's runner says "SIGTERM received" when the signal comes after it started polling; before that,
    # flows/serve.py's own handler ends the process, also with status 0)
    deadline = time.monotonic() + 5
    while left := subprocess.run(["pgrep", "-s", str(serving.pid)], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, f"processes of recs serve still running: {left}"
        time.sleep(0.2)
