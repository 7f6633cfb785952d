"""Safe unzip: refuse members that climb out of the folder or are links, and archives that expand past the
size limit (declared or actually inflated) or the free disk; extract only the ratings and items files."""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from tasks.config import setting
from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import CHUNK_BYTES, Archive
from tasks.ingest.movielens import Layout, detect_layout


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
        while chunk := src.read(CHUNK_BYTES):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise IngestError(
                    f"archive member {name!r}: expands past the {limit:,} byte limit ({setting('max_extracted_bytes')}); refused"
                )
            out.write(chunk)
    return target


def extract_members(archive: Archive, raw_dir: Path, limit: int) -> tuple[Layout, str, Path, Path | None]:
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
