"""Scratch files and folders of ingest (a download in progress, a parse in progress), named after the process
that writes them, so that the next run removes those whose process died (SIGKILL, a crash) instead of letting
every killed night leave one more behind."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_OWNER = re.compile(r"^\.scratch-(\d+)-")


def scratch_prefix() -> str:
    """The name prefix of this process's scratch entries: `.scratch-<pid>-`."""
    return f".scratch-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_scratch(folder: Path) -> int:
    """Delete the scratch entries in `folder` whose process is gone; returns how many."""
    removed = 0
    for entry in folder.glob(".scratch-*") if folder.is_dir() else ():
        owner = _OWNER.match(entry.name)
        if owner is None or _alive(int(owner.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
        log.info("removed %s, left by a run whose process died", entry)
    return removed
