"""Fetch: make a complete, verified copy of the source archive available on local disk.

An http(s) source is streamed into `data_dir/archives/<sha256>.zip` (kept only once complete), and
`archives/sources.json` keeps each URL's sha256, ETag and Last-Modified so that an unchanged source is
answered by a conditional request (304) instead of a second download. A local path is used in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from tasks.ingest.errors import IngestError
from tasks.ingest.scratch import remove_dead_scratch, scratch_prefix
from tasks.naming import setting
from tasks.run_folder import atomic_write
from tasks.sources import local_path, local_source_problem, redact, source_scheme

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """A complete, verified archive on local disk."""

    path: Path
    sha256: str
    source: str  # as given, credentials removed


def _local_path(source: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s). Other schemes are refused."""
    try:
        return local_path(source)
    except ValueError as exc:
        raise IngestError(str(exc)) from exc


def sha256_of(path: Path) -> str:
    """The file's sha256; a folder's is that of its files' relative paths and sha256s, in order."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = "\n".join(f"{p.relative_to(path)}\t{sha256_of(p)}" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_expected(sha256: str, expected: str | None, source: str) -> None:
    if expected is not None and sha256 != expected.lower():
        raise IngestError(
            f"source {redact(source)!r}: sha256 is {sha256}, expected {expected.lower()}; refused "
            f"(the expected sha256 is set by {setting('source_sha256')})"
        )


def _verified_cached(archive_dir: Path, sha256: str) -> Path | None:
    """The cached `archive_dir/<sha256>.zip` if it exists and its bytes still hash to its name; a cached archive
    that was changed on disk (overwritten, truncated) is deleted, so that it is downloaded again, never used."""
    path = archive_dir / f"{sha256}.zip"
    if not path.exists():
        return None
    actual = sha256_of(path)
    if actual == sha256:
        return path
    log.warning(
        "cached archive %s no longer has sha256 %s (it has %s): deleted, downloading it again", path, sha256, actual
    )
    path.unlink()
    return None


class _SourceIndex:
    """`archives/sources.json`: what each URL served last time, for conditional requests."""

    def __init__(self, archive_dir: Path) -> None:
        self.path = archive_dir / "sources.json"
        self.entries: dict[str, dict[str, str]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def cached(self, source: str, archive_dir: Path) -> dict[str, str] | None:
        """What `source` served last time, if its archive is still cached intact (verified: a 304 reuses it)."""
        entry = self.entries.get(redact(source))
        return entry if entry and _verified_cached(archive_dir, entry["sha256"]) else None

    def remember(self, source: str, sha256: str, response: httpx.Response) -> None:
        entry = {"sha256": sha256}
        for header in ("etag", "last-modified"):
            if header in response.headers:
                entry[header] = response.headers[header]
        self.entries[redact(source)] = entry
        with atomic_write(self.path) as partial:
            partial.write_text(json.dumps(self.entries, indent=2))


def unresolvable_host(source: str) -> str | None:
    """Why an http(s) source cannot be reached at all: its host name has no address (offline, or misspelt); None
    when it resolves or `source` is not a URL. `recs run` asks this before Prefect starts."""
    host = urlsplit(source).hostname if source_scheme(source) in ("http", "https") else None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        return f"the host {host!r} of {redact(source)!r} cannot be resolved (no DNS answer)"
    return None


def _cannot_connect(error: httpx.ConnectError, source: str, shown: str) -> IngestError:
    """The IngestError of a failed connection: retried, unless the host has no DNS answer (offline, or a misspelt
    host: a retry seconds later gets none either)."""
    if _unresolvable(error):
        host = urlsplit(source).hostname
        return IngestError(f"source {shown!r}: the host {host!r} cannot be resolved (no DNS answer)", unreachable=True)
    return IngestError(f"source {shown!r}: {type(error).__name__}: {error}", retryable=True, unreachable=True)


def _unresolvable(error: BaseException) -> bool:
    """Whether a connection failed because its host name has no address (a `socket.gaierror` in its chain)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _download(source: str, archive_dir: Path, timeout: float, index: _SourceIndex) -> tuple[Path, str]:
    """Stream `source` into `archive_dir`, hashing as it goes; return the archive path and its sha256."""
    headers = {}
    previous = index.cached(source, archive_dir)
    if previous:
        if "etag" in previous:
            headers["If-None-Match"] = previous["etag"]
        if "last-modified" in previous:
            headers["If-Modified-Since"] = previous["last-modified"]
    shown = redact(source)
    try:
        with httpx.stream("GET", source, headers=headers, timeout=timeout, follow_redirects=True) as response:
            if response.status_code == 304 and previous:
                log.info("%s unchanged since the last download (HTTP 304); using archive %s", shown, previous["sha256"])
                return archive_dir / f"{previous['sha256']}.zip", previous["sha256"]
            if response.status_code >= 400:
                raise IngestError(
                    f"source {shown!r}: HTTP {response.status_code} {response.reason_phrase}",
                    retryable=response.status_code >= 500 or response.status_code in (408, 429),
                )
            total = int(response.headers.get("content-length", 0)) or None
            digest = hashlib.sha256()
            received = 0
            fd, tmp_name = tempfile.mkstemp(dir=archive_dir, prefix=f"{scratch_prefix()}partial-", suffix=".zip")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, _DownloadProgress(shown, total) as advance:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                if total is not None and received != total:
                    raise IngestError(f"source {shown!r}: body cut short ({received} of {total} bytes)", retryable=True)
                sha256 = digest.hexdigest()
                final = archive_dir / f"{sha256}.zip"
                tmp.replace(final)
            finally:
                tmp.unlink(missing_ok=True)
            index.remember(source, sha256, response)
            return final, sha256
    except httpx.ConnectError as exc:
        raise _cannot_connect(exc, source, shown) from exc
    except httpx.TransportError as exc:
        raise IngestError(f"source {shown!r}: {type(exc).__name__}: {exc}", retryable=True) from exc


class _DownloadProgress:
    """A download progress bar on a terminal; a log line every 10% elsewhere (Prefect logs, CI)."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done, self.next_log = label, total, 0, 0.1
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            disable=not sys.stderr.isatty(),
        )
        self.started = time.perf_counter()

    def __enter__(self):
        self.bar.start()
        task_id = self.bar.add_task(f"download {self.label}", total=self.total)

        def advance(n: int) -> None:
            self.done += n
            self.bar.update(task_id, advance=n)
            if self.total and self.done / self.total >= self.next_log:
                log.info("downloaded %d%% of %s (%d bytes)", 100 * self.done // self.total, self.label, self.done)
                self.next_log += 0.1

        return advance

    def __exit__(self, *exc_info) -> None:
        self.bar.stop()
        log.info("downloaded %d bytes from %s in %.1fs", self.done, self.label, time.perf_counter() - self.started)


def fetch_archive(source: str, data_dir: Path, expected_sha256: str | None = None, timeout: float = 60.0) -> Archive:
    """Make a complete, verified copy of the source archive available locally.

    A local path or `file://` URL is used in place. An http(s) URL is downloaded once into
    `data_dir/archives/<sha256>.zip`; later calls reuse it when `expected_sha256` names a cached archive,
    or when the server answers a conditional request with 304 Not Modified, in both cases only after hashing
    the cached file again: one changed on disk is deleted and downloaded anew.

    Args:
        source: http(s) URL, `file://` URL or local path.
        data_dir: the pipeline's data directory.
        expected_sha256: refuse the archive unless its sha256 is this.
        timeout: connect and read timeout, seconds.

    Returns:
        The archive's local path and sha256.

    Raises:
        IngestError: unsupported scheme, missing file, HTTP error, cut-short body or sha256 mismatch;
            `retryable` tells whether trying again may help.
    """
    local = _local_path(source)
    if local is not None:
        if problem := local_source_problem(source):
            raise IngestError(f"source: {problem}", unreachable=True)
        sha256 = sha256_of(local)
        _check_expected(sha256, expected_sha256, source)
        return Archive(local, sha256, str(local))
    archive_dir = data_dir / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(archive_dir)
    if expected_sha256 and (cached := _verified_cached(archive_dir, expected_sha256.lower())):
        log.info("archive %s already downloaded (verified); not fetching %s", expected_sha256.lower(), redact(source))
        return Archive(cached, expected_sha256.lower(), redact(source))
    path, sha256 = _download(source, archive_dir, timeout, _SourceIndex(archive_dir))
    _check_expected(sha256, expected_sha256, source)
    return Archive(path, sha256, redact(source))
