"""Ingest: fetch a MovieLens archive, cache it by content, unzip it safely and parse it to parquet.

Layout under `data_dir`:

- `archives/<sha256>.zip`: downloaded archives, kept only once complete and verified;
- `archives/sources.json`: per source URL, the sha256, ETag and Last-Modified of its last download, so an
  unchanged source is answered by a conditional request (304) instead of a second download;
- `datasets/<sha256>/{ratings,items}.parquet` and `meta.json`: the parsed archive, so it is parsed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
from prefect import task
from prefect.tasks import exponential_backoff
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from tasks.config import MAX_EXTRACTED_BYTES, BadRowPolicy, PipelineConfig, local_path, local_source_problem, redact, setting
from tasks.movielens import Layout, detect_layout, keep_latest_ratings

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
# The first run on a machine without internet access meets this: the default source is GroupLens's URL.
_OFFLINE_HINT = (
    f"If this machine has no internet access, set {setting('source')} to a local copy of the archive, "
    "e.g. `recs run --source path/to/ml-100k.zip` (a path or a file:// URL)"
)
# Bump when parsing changes what lands in datasets/<sha256>/, so archives parsed before are parsed again.
PARSER_VERSION = 2


class IngestError(RuntimeError):
    """The source could not be fetched or is not a usable MovieLens archive."""

    def __init__(self, message: str, *, retryable: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable  # no connection to the source's host could be made (offline, DNS)


@dataclass(frozen=True)
class Archive:
    """A complete, verified archive on local disk."""

    path: Path
    sha256: str
    source: str  # as given, credentials removed


@dataclass(frozen=True)
class Dataset:
    """A parsed archive: where its parquet lives and what it holds."""

    ratings_path: Path
    items_path: Path
    sha256: str
    layout: str
    n_ratings: int
    n_bad_rows: int = 0  # rows dropped under on_bad_rows=drop
    n_duplicate_ratings: int = 0  # repeated (user, item) rows dropped, each pair's latest kept

    def ratings(self) -> pl.DataFrame:
        return pl.read_parquet(self.ratings_path)

    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.items_path)


def _local_path(source: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s). Other schemes are refused."""
    try:
        return local_path(source)
    except ValueError as exc:
        raise IngestError(str(exc)) from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_expected(sha256: str, expected: str | None, source: str) -> None:
    if expected is not None and sha256 != expected.lower():
        raise IngestError(
            f"source {redact(source)!r}: sha256 is {sha256}, expected {expected.lower()}; refused "
            f"(the expected sha256 is set by {setting('source_sha256')})"
        )


class _SourceIndex:
    """`archives/sources.json`: what each URL served last time, for conditional requests."""

    def __init__(self, archive_dir: Path) -> None:
        self.path = archive_dir / "sources.json"
        self.entries: dict[str, dict[str, str]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def cached(self, source: str, archive_dir: Path) -> dict[str, str] | None:
        entry = self.entries.get(redact(source))
        return entry if entry and (archive_dir / f"{entry['sha256']}.zip").exists() else None

    def remember(self, source: str, sha256: str, response: httpx.Response) -> None:
        entry = {"sha256": sha256}
        for header in ("etag", "last-modified"):
            if header in response.headers:
                entry[header] = response.headers[header]
        self.entries[redact(source)] = entry
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=2))
        tmp.replace(self.path)


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
            fd, tmp_name = tempfile.mkstemp(dir=archive_dir, prefix=".partial-", suffix=".zip")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, _DownloadProgress(shown, total) as advance:
                    for chunk in response.iter_bytes(_CHUNK_BYTES):
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
        raise IngestError(f"source {shown!r}: {type(exc).__name__}: {exc}", retryable=True, unreachable=True) from exc
    except httpx.TransportError as exc:
        raise IngestError(f"source {shown!r}: {type(exc).__name__}: {exc}", retryable=True) from exc


class _DownloadProgress:
    """A download progress bar on a terminal; a log line every 10% elsewhere (Prefect logs, CI)."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done, self.next_log = label, total, 0, 0.1
        self.bar = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            disable=not sys.stderr.isatty(),
        )  # fmt: skip
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
    or when the server answers a conditional request with 304 Not Modified.

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
            raise IngestError(f"source: {problem}")
        sha256 = sha256_of(local)
        _check_expected(sha256, expected_sha256, source)
        return Archive(local, sha256, str(local))
    archive_dir = data_dir / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    if expected_sha256 and (archive_dir / f"{expected_sha256.lower()}.zip").exists():
        log.info("archive %s already downloaded; not fetching %s", expected_sha256.lower(), redact(source))
        return Archive(archive_dir / f"{expected_sha256.lower()}.zip", expected_sha256.lower(), redact(source))
    path, sha256 = _download(source, archive_dir, timeout, _SourceIndex(archive_dir))
    _check_expected(sha256, expected_sha256, source)
    return Archive(path, sha256, redact(source))


def _unsafe_members(archive: zipfile.ZipFile) -> list[str]:
    """Members whose path climbs out (`..`), is absolute, names a drive, or that are symbolic links."""
    unsafe = []
    for info in archive.infolist():
        name = info.filename
        climbs = name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts or ":" in name.split("/")[0]
        if climbs or stat.S_ISLNK(info.external_attr >> 16):
            unsafe.append(name)
    return unsafe


def _check_size(archive: zipfile.ZipFile, members: list[str], out_dir: Path, limit: int, source: str) -> None:
    """Refuse before extracting when the members declare more than `limit` bytes or than the disk has free."""
    declared = sum(archive.getinfo(name).file_size for name in members)
    if declared > limit:
        raise IngestError(
            f"archive {source!r}: {', '.join(members)} expand to {declared:,} bytes, over the "
            f"{limit:,} byte limit ({setting('max_extracted_bytes')}); refused"
        )
    free = shutil.disk_usage(out_dir).free
    if declared > free:
        raise IngestError(f"archive {source!r}: {', '.join(members)} expand to {declared:,} bytes; {out_dir} has {free:,} free")


def _extract_member(archive: zipfile.ZipFile, name: str, target_dir: Path, budget: list[int], limit: int) -> Path:
    """Copy one member into `target_dir` (flat), stopping once more than the budget has come out.

    The declared sizes were checked already; counting what is actually inflated catches a header that lies.
    """
    target = target_dir / Path(name).name
    with archive.open(name) as src, target.open("wb") as out:
        while chunk := src.read(_CHUNK_BYTES):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise IngestError(
                    f"archive member {name!r}: expands past the {limit:,} byte limit ({setting('max_extracted_bytes')}); refused"
                )
            out.write(chunk)
    return target


def _extract_members(archive: Archive, raw_dir: Path, limit: int) -> tuple[Layout, str, Path, Path | None]:
    """Check the archive, find its layout and extract the ratings and items files into `raw_dir`.

    Returns:
        The layout, the ratings member's name, and the extracted ratings and items files.
    """
    try:
        zf = zipfile.ZipFile(archive.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"archive {archive.source!r} is unreadable: {exc}") from exc
    with zf:
        unsafe = _unsafe_members(zf)
        if unsafe:
            raise IngestError(
                f"archive {archive.source!r}: member(s) {', '.join(map(repr, unsafe[:5]))} are symbolic links or point "
                "outside the archive's folder; refused, nothing extracted"
            )
        try:
            layout, ratings_member, items_member = detect_layout(zf.namelist())
        except ValueError as exc:
            raise IngestError(f"archive {archive.source!r}: {exc}") from exc
        members = [ratings_member, *([items_member] if items_member else [])]
        genre_member = (items_member or "").rsplit("/", 1)[0] + "/u.genre"
        if layout.name == "ml-100k" and genre_member in zf.namelist():
            members.append(genre_member)
        _check_size(zf, members, raw_dir, limit, archive.source)
        budget = [limit]
        try:
            files = [_extract_member(zf, name, raw_dir, budget, limit) for name in members]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise IngestError(f"archive {archive.source!r} is unreadable: {type(exc).__name__}: {exc}") from exc
    return layout, ratings_member, files[0], files[1] if items_member else None


def _apply_bad_row_policy(meta: dict, policy: BadRowPolicy, source: str) -> None:
    n_bad = meta["n_bad_rows"]
    if n_bad and policy == "fail":
        examples = "; ".join(meta["bad_row_examples"][:3])
        raise IngestError(
            f"archive {source!r}: {n_bad:,} bad ratings row(s), first: {examples}. "
            "Fix the file, or run with on_bad_rows=drop (--on-bad-rows drop) to skip them and record the count"
        )
    if n_bad:
        log.warning("dropped %d bad ratings row(s) (on_bad_rows=drop, --on-bad-rows drop), first: %s", n_bad, meta["bad_row_examples"][0])


def load_dataset(
    archive: Archive, data_dir: Path, on_bad_rows: BadRowPolicy = "fail", max_extracted_bytes: int = MAX_EXTRACTED_BYTES
) -> Dataset:
    """Unzip the archive's ratings and items files, detect the layout and write parquet, once per sha256.

    Every ratings row is checked (tasks/movielens.py); bad rows are left out of the parquet and counted, and
    repeated (user, item) ratings are reduced to each pair's latest. The parse is cached whatever the policy;
    the policy is applied to the cached counts, so a failed run and a later `drop` run parse once.

    Args:
        archive: a verified local archive.
        data_dir: the pipeline's data directory.
        on_bad_rows: `fail` refuses an archive with any bad ratings row, naming the first ones; `drop` skips them.
        max_extracted_bytes: refuse archives whose extracted files exceed this.

    Returns:
        The parsed dataset (cached under `data_dir/datasets/<sha256>/`).

    Raises:
        IngestError: unreadable zip, unsafe member, size limit, unknown layout, empty or malformed file,
            bad rows under `fail`.
    """
    out_dir = data_dir / "datasets" / archive.sha256
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("parser") == PARSER_VERSION:
        log.info("archive %s already parsed (%s, %d ratings)", archive.sha256[:12], meta["layout"], meta["n_ratings"])
    else:
        meta = _parse(archive, out_dir, max_extracted_bytes)
    _apply_bad_row_policy(meta, on_bad_rows, archive.source)
    return Dataset(out_dir / "ratings.parquet", out_dir / "items.parquet", archive.sha256, meta["layout"], meta["n_ratings"],
                   meta["n_bad_rows"], meta["n_duplicate_ratings"])  # fmt: skip


def _parse(archive: Archive, out_dir: Path, max_extracted_bytes: int) -> dict:
    """Parse the archive into `out_dir` (written whole or not at all) and return its meta."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{archive.sha256[:12]}-"))
    try:
        raw_dir = work / "raw"
        raw_dir.mkdir()
        layout, ratings_member, ratings_file, items_file = _extract_members(archive, raw_dir, max_extracted_bytes)
        try:
            parsed = layout.read_ratings(ratings_file)
            items = layout.read_items(items_file) if items_file else None
        except ValueError as exc:
            raise IngestError(f"archive {archive.source!r}, {exc}") from exc
        if parsed.ratings.height == 0:
            dropped = f" ({parsed.n_bad_rows:,} bad rows, first: {parsed.bad_row_examples[0]})" if parsed.n_bad_rows else ""
            raise IngestError(f"archive {archive.source!r}, {ratings_member}: holds no ratings{dropped}")
        ratings, n_duplicates = keep_latest_ratings(parsed.ratings)
        if n_duplicates:
            log.warning("%s: %d repeated (user, item) ratings dropped, each pair's latest kept", ratings_member, n_duplicates)
        items = items if items is not None else _untitled_items(ratings)
        ratings.write_parquet(work / "ratings.parquet")
        items.write_parquet(work / "items.parquet")
        shutil.rmtree(raw_dir)
        meta = {
            "parser": PARSER_VERSION, "layout": layout.name, "n_ratings": ratings.height, "source": archive.source,
            "n_bad_rows": parsed.n_bad_rows, "bad_row_examples": parsed.bad_row_examples,
            "n_duplicate_ratings": n_duplicates,
        }  # fmt: skip
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():  # parsed by an older version, or by a concurrent parse that finished first
            shutil.rmtree(out_dir)
        work.replace(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("parsed %s archive %s: %d ratings, %d items", layout.name, archive.sha256[:12], ratings.height, items.height)
    return meta


def _untitled_items(ratings: pl.DataFrame) -> pl.DataFrame:
    """Items with no titles, for archives that ship ratings alone."""
    return ratings.select(pl.col("item_id").unique().sort()).with_columns(
        title=pl.lit(None, pl.String), genres=pl.lit([], pl.List(pl.String)), year=pl.lit(None, pl.Int32)
    )


def _retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry network faults and 5xx, not a 404 or a sha256 mismatch."""
    try:
        state.result()
    except IngestError as exc:
        return exc.retryable
    except Exception:
        return False
    return False


@task(name="fetch-archive", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient)
def fetch_archive_task(config: PipelineConfig) -> Archive:
    """Prefect wrapper of `fetch_archive`; see `fetch_with_retries` for the retries."""
    return fetch_archive(config.source, config.data_dir, config.source_sha256, config.download_timeout_seconds)


def fetch_with_retries(config: PipelineConfig) -> Archive:
    """Run `fetch_archive_task`, retrying transient faults `config.download_retries` times.

    The wait doubles from `config.download_retry_delay_seconds`; Prefect's jitter draws each wait between
    0.63 and 1.5 times its value, keeping the average.
    """
    fetch = fetch_archive_task.with_options(
        retries=config.download_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.download_retry_delay_seconds),
    )
    try:
        return fetch(config)
    except IngestError as exc:
        if exc.unreachable:  # said once, when the retries are spent, not in every retry's log line
            raise IngestError(f"{exc}. {_OFFLINE_HINT}") from exc
        raise


@task(name="parse-archive")
def load_dataset_task(archive: Archive, config: PipelineConfig) -> Dataset:
    """Prefect wrapper of `load_dataset` (cached on disk by the archive's sha256)."""
    return load_dataset(archive, config.data_dir, config.on_bad_rows, config.max_extracted_bytes)
