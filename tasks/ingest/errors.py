"""The one error ingest raises, with whether trying again may help."""

from __future__ import annotations


class IngestError(RuntimeError):
    """The source could not be fetched or is not a usable MovieLens archive."""

    def __init__(self, message: str, *, retryable: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = (
            unreachable  # the source cannot be reached: no connection to its host (offline, DNS), no such file
        )
