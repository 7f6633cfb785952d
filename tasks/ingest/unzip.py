"""Safe unzip: refuse members that climb out of the folder or are links, and archives that expand past the
size limit (declared or actually inflated) or the free disk; extract only the ratings and items files."""

from __future__ import annotations

import gzip
import logging
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import CHUNK_BYTES, Archive
from tasks.ingest.movielens import (
    Layout,
    detect_layout,
    holds_movielens_ratings,
    ratings_csv_header_problem,
    read_ratings_csv,
)
from tasks.ingest.own_data import ReadSettings, quick_problem, source_kind
from tasks.naming import setting

log = logging.getLogger(__name__)


def _unsafe_members(archive: zipfile.ZipFile) -> list[str]:
    """Members whose path climbs out (`..`), is absolute, names a drive, or that are symbolic links."""
    unsafe = []
    for info in archive.infolist():
        name = info.filename
        climbs = (
            name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts or ":" in name.split("/")[0]
        )
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
        raise IngestError(
            f"archive {source!r}: {', '.join(members)} expand to {declared:,} bytes; {out_dir} has {free:,} free"
        )


# Zip compression methods by number (APPNOTE 4.4.5), for messages; zipfile reads stored, deflate, bzip2, lzma.
_METHODS = {
    0: "stored",
    8: "deflate",
    9: "deflate64",
    12: "bzip2",
    14: "lzma",
    93: "zstandard",
    95: "xz",
    97: "WavPack",
    98: "PPMd",
    99: "AES encryption",
}
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}

# What a member that is itself compressed starts with. gzip is unpacked (within the size limit); the others are
# refused, as polars would otherwise decompress some of them behind the limit's back.
_GZIP = b"\x1f\x8b"
_OTHER_COMPRESSION = {b"\x28\xb5\x2f\xfd": "zstandard", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}


def _refuse_unreadable_members(archive: zipfile.ZipFile, members: list[str], source: str) -> None:
    """Refuse encrypted members and compression methods zipfile cannot read, naming the member and the method."""
    for name in members:
        info = archive.getinfo(name)
        if info.flag_bits & 0x1:
            raise IngestError(
                f"archive {source!r}, member {name!r}: is encrypted (password-protected); expected a plain zip member"
            )
        if info.compress_type not in _READABLE_METHODS:
            method = _METHODS.get(info.compress_type, "unknown")
            raise IngestError(
                f"archive {source!r}, member {name!r}: is compressed with method {info.compress_type} ({method}), "
                "which cannot be read here; expected stored, deflate, bzip2 or lzma: re-create the zip with "
                "plain deflate (e.g. `zip -r`)"
            )


def _copy_within(src, out, budget: list[int], limit: int, what: str) -> None:
    """Copy `src` to `out` in chunks, stopping once more than the budget has come out."""
    while chunk := src.read(CHUNK_BYTES):
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise IngestError(
                f"{what}: expands past the {limit:,} byte limit ({setting('max_extracted_bytes')}); refused"
            )
        out.write(chunk)


def _extract_member(
    archive: zipfile.ZipFile, name: str, target_dir: Path, budget: list[int], limit: int, source: str
) -> Path:
    """Copy one member into `target_dir` (flat), stopping once more than the budget has come out; a member that
    is itself gzip-compressed is unpacked within the same budget, and other compressed content is refused.

    The declared sizes were checked already; counting what is actually inflated catches a header that lies.
    """
    target = target_dir / Path(name).name
    what = f"archive {source!r}, member {name!r}"
    with archive.open(name) as src, target.open("wb") as out:
        _copy_within(src, out, budget, limit, what)
    with target.open("rb") as file:
        head = file.read(8)
    if head.startswith(_GZIP):
        packed = target.with_name(target.name + ".gz")
        target.replace(packed)
        try:
            with gzip.open(packed) as src, target.open("wb") as out:
                _copy_within(src, out, budget, limit, f"{what} (gzip-compressed)")
        except (OSError, EOFError, zlib.error) as exc:
            raise IngestError(f"{what}: is gzip-compressed and its gzip data is unreadable: {exc}") from exc
        finally:
            packed.unlink()
        log.warning("%s is gzip-compressed: unpacked to %s bytes", what, f"{target.stat().st_size:,}")
        return target
    for magic, kind in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise IngestError(
                f"{what}: holds {kind}-compressed data, not text; unpack it before zipping (gzip is unpacked here)"
            )
    return target


def local_archive_problem(path: Path, settings: ReadSettings | None = None) -> str | None:
    """Why a local source cannot be a run's source, from a MovieLens archive's member names and a ratings.csv's
    first line, or the first lines of a team's own file (nothing extracted): a csv without its header, columns that
    do not resolve; None when it may be (the run checks the rest). `recs run` asks this before Prefect starts, so
    such a file is refused in a second rather than after the run has begun."""
    settings = settings or ReadSettings({})
    if source_kind(path) != "zip" or settings.member is not None:
        return quick_problem(path, settings)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{str(path)!r} is not a zip archive ({exc}); expected a MovieLens .zip archive or a team's interactions"
    with zf:
        names = zf.namelist()
        if not holds_movielens_ratings(names):
            return quick_problem(path, settings)  # a zip of a team's own files: the run finds its interactions file
        if settings.any_set:
            return f"{str(path)!r} is a MovieLens archive: {settings.any_set} applies to a team's own data only"
        try:
            layout, ratings_member, _ = detect_layout(names)
        except ValueError as exc:
            return f"{str(path)!r}: {exc}"
        if layout.read_ratings is not read_ratings_csv:
            return None
        try:
            with zf.open(ratings_member) as member:  # its first line only: the header
                first_line = member.readline(4096).decode("utf-8-sig", errors="replace")
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error):
            return None  # encrypted, an unknown compression, damaged: the run's unzip says which, with its checks
    problem = ratings_csv_header_problem(ratings_member, first_line)
    return f"{str(path)!r}: {problem}" if problem else None


def _members(zf: zipfile.ZipFile, source: str) -> tuple[Layout, str, str | None, list[str]]:
    """The archive's layout, its ratings and items members, and every member to extract (ml-100k's u.genre too)."""
    try:
        layout, ratings_member, items_member = detect_layout(zf.namelist())
    except ValueError as exc:
        raise IngestError(f"archive {source!r}: {exc}") from exc
    ratings_folder, items_folder = ratings_member.rpartition("/")[0], (items_member or "").rpartition("/")[0]
    if items_member and items_folder != ratings_folder:
        log.warning(
            "archive %r: the items file %r is not beside the ratings %r; its titles are used",
            source,
            items_member,
            ratings_member,
        )
    members = [ratings_member, *([items_member] if items_member else [])]
    genre_member = (items_member or "").rsplit("/", 1)[0] + "/u.genre"
    if layout.name == "ml-100k" and genre_member in zf.namelist():
        members.append(genre_member)
    return layout, ratings_member, items_member, members


def extract_members(archive: Archive, raw_dir: Path, limit: int) -> tuple[Layout, str, str | None, Path, Path | None]:
    """Check the archive, find its layout and extract the ratings and items files into `raw_dir` (flat).

    Returns:
        The layout, the ratings and items members' names, and the extracted ratings and items files.
    """
    with _open_checked(archive) as zf:
        layout, ratings_member, items_member, members = _members(zf, archive.source)
        files = _extract(zf, members, raw_dir, limit, archive.source)
    return layout, ratings_member, items_member, files[0], files[1] if items_member else None


def _open_checked(archive: Archive) -> zipfile.ZipFile:
    """The archive opened, refused when a member is a link or climbs out of the folder."""
    try:
        zf = zipfile.ZipFile(archive.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"archive {archive.source!r} is unreadable: {exc}") from exc
    unsafe = _unsafe_members(zf)
    if unsafe:
        zf.close()
        raise IngestError(
            f"archive {archive.source!r}: member(s) {', '.join(map(repr, unsafe[:5]))} are symbolic links or point "
            "outside the archive's folder; refused, nothing extracted"
        )
    return zf


def extract_files(archive: Archive, raw_dir: Path, limit: int, wanted: Callable[[str], bool]) -> dict[str, Path]:
    """Every file member `wanted` keeps, extracted into `raw_dir` (flat) with the same checks as a MovieLens
    archive's: by member name, the extracted file."""
    with _open_checked(archive) as zf:
        members = [info.filename for info in zf.infolist() if not info.is_dir() and wanted(info.filename)]
        names = [Path(member).name for member in members]
        if twice := sorted({member for member in members if names.count(Path(member).name) > 1}):
            raise IngestError(
                f"archive {archive.source!r}: members {', '.join(map(repr, twice[:4]))} share a file name; expected "
                "one file of each name"
            )
        files = _extract(zf, members, raw_dir, limit, archive.source)
    return dict(zip(members, files, strict=True))


def _extract(zf: zipfile.ZipFile, members: list[str], raw_dir: Path, limit: int, source: str) -> list[Path]:
    """`members` extracted within the size limit (declared and inflated), each refused when unreadable."""
    _refuse_unreadable_members(zf, members, source)
    _check_size(zf, members, raw_dir, limit, source)
    budget, files = [limit], []
    for name in members:
        try:
            files.append(_extract_member(zf, name, raw_dir, budget, limit, source))
        except IngestError:  # a RuntimeError too: our own refusal, not a broken archive
            raise
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            zlib.error,
            RuntimeError,
            NotImplementedError,
        ) as exc:
            raise IngestError(
                f"archive {source!r} is unreadable at member {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return files
