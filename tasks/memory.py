"""Giving freed memory back to the system between stages.

torch allocates on the CPU through the C library's malloc. glibc keeps the heap memory a fit freed for reuse instead
of returning it, so a run's resident memory only ever grew: after `ials` was fitted on 20M ratings, 410 MB of the
1.07 GB the process held was free heap, and the next stage's peak stacked on top of it. `malloc_trim` returns it
(a few milliseconds); elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import pyarrow


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """Return the memory freed so far to the system: Arrow's pool (the split's batches, 200 MB at 20M ratings),
    then the C library's heap (glibc's `malloc_trim`)."""
    pyarrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
