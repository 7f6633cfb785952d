"""Parse: an archive's ratings and items to parquet under `data_dir/datasets/<sha256>/` (with `meta.json`),
once per archive; every ratings row checked, bad rows counted, repeated ratings reduced to the latest."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import polars as pl

from tasks.config import MAX_EXTRACTED_BYTES, BadRowPolicy, OutOfCoreSettings
from tasks.ingest.errors import IngestError
from tasks.ingest.fetch import Archive, sha256_of
from tasks.ingest.movielens import (
    ParsedRatings,
    RatingsFormatError,
    holds_movielens_ratings,
)
from tasks.ingest.own_data import (
    NOT_DATA,
    ReadSettings,
    items_coverage,
    read_own_data,
    say_coverage,
    source_kind,
)
from tasks.ingest.scratch import remove_dead_scratch, scratch_prefix
from tasks.ingest.tables import TableError
from tasks.ingest.unzip import extract_files, extract_members
from tasks.naming import setting
from warehouse.engine import copy_to_parquet, fetch_row, out_of_core

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bump when parsing changes what lands in datasets/<sha256>/, so archives parsed before are parsed again.
PARSER_VERSION = 4


@dataclass(frozen=True)
class Dataset:
    """A parsed archive: where its parquet lives and what it holds."""

    ratings_path: Path
    items_path: Path
    sha256: str
    layout: str
    n_ratings: int
    n_bad_rows: int = 0  # rows dropped under on_bad_rows=drop
    n_duplicate_ratings: int = 0  # repeated (user, item) rows: dropped (latest kept), or added up (implicit)
    feedback: str = "explicit"  # or "implicit": `rating` is then log(1 + weight) (tasks/ingest/interactions.py)
    has_timestamps: bool = True  # False: the source has no time column, and `timestamp` is null

    def ratings(self) -> pl.DataFrame:
        return pl.read_parquet(self.ratings_path)

    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.items_path)


def _apply_bad_row_policy(meta: dict, policy: BadRowPolicy, source: str) -> None:
    n_bad = meta["n_bad_rows"]
    if n_bad and policy == "fail":
        examples = "; ".join(meta["bad_row_examples"][:3])
        what = ("source", "row(s)") if meta["layout"] == "interactions" else ("archive", "ratings row(s)")
        raise IngestError(
            f"{what[0]} {source!r}: {n_bad:,} bad {what[1]}, first: {examples}. "
            "Fix the file, or run with on_bad_rows=drop (--on-bad-rows drop) to skip them and record the count"
        )
    if n_bad:
        log.warning(
            "dropped %d bad ratings row(s) (on_bad_rows=drop, --on-bad-rows drop), first: %s",
            n_bad,
            meta["bad_row_examples"][0],
        )


def load_dataset(
    archive: Archive,
    data_dir: Path,
    on_bad_rows: BadRowPolicy = "fail",
    max_extracted_bytes: int = MAX_EXTRACTED_BYTES,
    settings: ReadSettings | None = None,
    memory_mb: int = OutOfCoreSettings().memory_mb,
) -> Dataset:
    """Unzip the archive's ratings and items files, detect the layout and write parquet, once per sha256; a team's
    own interactions (tasks/ingest/own_data.py) are read with `settings`, once per sha256 and settings.

    Every row is checked; bad rows are left out of the parquet and counted, repeated (user, item) ratings reduced
    to each pair's latest. The parse is cached whatever the policy, which applies to the cached counts.

    Args:
        archive: a verified local archive.
        data_dir: the pipeline's data directory.
        on_bad_rows: `fail` refuses an archive with any bad ratings row, naming the first ones; `drop` skips them.
        max_extracted_bytes: refuse archives whose extracted files exceed this.
        settings: how a team's own interactions are read.
        memory_mb: what DuckDB may hold while it writes a MovieLens archive's ratings (warehouse/engine.py).

    Returns:
        The parsed dataset (cached under `data_dir/datasets/<sha256>[-<settings key>]/`).

    Raises:
        IngestError: an unreadable or unsafe source, the size limit, a malformed file, bad rows under `fail`.
    """
    settings = settings or ReadSettings({})
    own = is_own_data(archive.path, settings)
    out_dir = data_dir / "datasets" / (f"{archive.sha256}-{_own_key(settings)}" if own else archive.sha256)
    remove_dead_scratch(out_dir.parent)  # what a run killed mid-parse left
    meta = _cached_meta(out_dir, archive.sha256)
    if meta.get("parser") == PARSER_VERSION:
        log.info("archive %s already parsed (%s, %d ratings)", archive.sha256[:12], meta["layout"], meta["n_ratings"])
    else:
        meta = _in_scratch(
            archive, out_dir, lambda work: _parse_any(archive, work, own, max_extracted_bytes, settings, memory_mb)
        )
    _apply_bad_row_policy(meta, on_bad_rows, archive.source)
    _refuse_too_few_left(meta, out_dir, archive.source)
    say_coverage(meta, archive.source)
    return _dataset(out_dir, archive.sha256, meta)


def _dataset(out_dir: Path, sha256: str, meta: dict) -> Dataset:
    return Dataset(
        out_dir / "ratings.parquet",
        out_dir / "items.parquet",
        sha256,
        meta["layout"],
        meta["n_ratings"],
        meta["n_bad_rows"],
        meta["n_duplicate_ratings"],
        meta.get("feedback", "explicit"),
        meta.get("has_timestamps", True),
    )


def _refuse_too_few_left(meta: dict, out_dir: Path, source: str) -> None:
    """A team's interactions that the bad-row policy dropped to none, or to one user's (`refuse_too_few`)."""
    if meta["layout"] == "interactions" and meta["n_bad_rows"]:
        ratings = pl.scan_parquet(out_dir / "ratings.parquet")
        refuse_too_few(ratings, meta["n_bad_rows"], meta["bad_row_examples"], f"source {source!r}, {meta['file']}")


def _cached_meta(out_dir: Path, sha256: str) -> dict:
    """The meta of a cached parse whose files read, else {} (nothing cached, or a damaged parse: parsed again)."""
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("parser") == PARSER_VERSION and (damaged := _damaged_parquet(out_dir)):
        log.warning("the cached parse %s cannot be read (%s); parsing archive %s again", *damaged, sha256[:12])
        return {}
    return meta


def is_own_data(path: Path, settings: ReadSettings) -> bool:
    """Whether a source is a team's own interactions rather than a MovieLens archive: anything but a zip, a zip
    that holds no MovieLens ratings file, or one whose member to read is named.

    Raises:
        IngestError: a MovieLens archive given settings that apply to a team's own data only.
    """
    if source_kind(path) != "zip" or settings.member is not None:
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False  # refused as a broken archive by the MovieLens reader, naming it
    if holds_movielens_ratings(names) and settings.any_set:
        raise IngestError(
            f"{str(path)!r} is a MovieLens archive, read as its layout says: {settings.any_set} and the other "
            "settings for a team's own data (docs/data.md) do not apply to it; leave them out"
        )
    return not holds_movielens_ratings(names)


def _own_key(settings: ReadSettings) -> str:
    """The settings' key, with the content of an items file they name (a changed file is parsed again)."""
    if settings.items is None or not Path(settings.items).is_file():
        return settings.key
    return f"{settings.key}{sha256_of(Path(settings.items))[:8]}"


def _in_scratch(archive: Archive, out_dir: Path, parse: Callable[[Path], dict]) -> dict:
    """`parse(work)` into a scratch folder beside `out_dir`, renamed to `out_dir` whole once it is done."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f"{scratch_prefix()}{archive.sha256[:12]}-"))
    try:
        meta = parse(work)
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():  # parsed by an older version, or by a concurrent parse that finished first
            shutil.rmtree(out_dir)
        work.replace(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _damaged_parquet(out_dir: Path) -> tuple[Path, str] | None:
    """The first cached parquet file of a parse that cannot be read (truncated, overwritten, missing) and why;
    None when both read their footer. Only the footer is read: the whole file is read by the next stage."""
    for name in ("ratings.parquet", "items.parquet"):
        path = out_dir / name
        try:
            pl.read_parquet_schema(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            return path, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def _parse_any(archive: Archive, work: Path, own: bool, limit: int, settings: ReadSettings, memory_mb: int) -> dict:
    """A team's own interactions (`_parse_own_data`) or a MovieLens archive (`_parse`) into `work`; the meta."""
    return (
        _parse_own_data(archive, work, limit, settings, memory_mb) if own else _parse(archive, work, limit, memory_mb)
    )


def _parse(archive: Archive, work: Path, max_extracted_bytes: int, memory_mb: int) -> dict:
    """Parse the MovieLens archive into `work` and return its meta; the ratings pass through files, never held whole
    (`CheckedRatings`, `_write_latest_ratings`)."""
    raw_dir = work / "raw"
    raw_dir.mkdir()
    layout, ratings_member, items_member, ratings_file, items_file = extract_members(
        archive, raw_dir, max_extracted_bytes
    )
    checked = _read(layout.read_ratings, ratings_file, ratings_member, archive.source)
    items = _read(layout.read_items, items_file, items_member, archive.source) if items_file and items_member else None
    # the examples name the file as extracted (`u.data line 7: ...`); the member's path says where it is
    examples = [
        ratings_member + e[len(ratings_file.name) :] if e.startswith(ratings_file.name) else e
        for e in checked.bad_row_examples
    ]
    milliseconds = _in_milliseconds(checked.good(), ratings_member, archive.source)
    n_ratings, n_duplicates = _write_latest_ratings(checked.path, work / "ratings.parquet", milliseconds, memory_mb)
    if n_ratings == 0:
        dropped = f" ({checked.n_bad_rows:,} bad rows, first: {examples[0]})" if checked.n_bad_rows else ""
        raise IngestError(f"archive {archive.source!r}, member {ratings_member!r}: holds no ratings{dropped}")
    if n_duplicates:
        log.warning(
            "%s: %d repeated (user, item) ratings dropped, each pair's latest kept", ratings_member, n_duplicates
        )
    items = items if items is not None else _untitled_items(pl.scan_parquet(work / "ratings.parquet"))
    items.write_parquet(work / "items.parquet")
    shutil.rmtree(raw_dir)
    log.info("parsed %s archive %s: %d ratings, %d items", layout.name, archive.sha256[:12], n_ratings, items.height)
    return {
        "parser": PARSER_VERSION,
        "layout": layout.name,
        "n_ratings": n_ratings,
        "source": archive.source,
        "n_bad_rows": checked.n_bad_rows,
        "bad_row_examples": examples,
        "n_duplicate_ratings": n_duplicates,
    }


def _write_latest_ratings(checked: Path, out: Path, milliseconds: bool, memory_mb: int) -> tuple[int, int]:
    """The checked file's valid rows (`CheckedRatings`, `CheckedInteractions` of explicit feedback) to `out`
    (ratings.parquet), timestamps in seconds, repeated (user, item) ratings reduced to each pair's latest by
    timestamp (the later line on a tie), out of core (warehouse/engine.py); returns how many ratings it holds and
    how many repeats were dropped."""
    params = {"checked": str(checked), "milliseconds": milliseconds}
    with out_of_core(memory_mb, out.parent / "spill", keep_order=True) as con:
        n_rows, n_pairs = fetch_row(con, "pair_count", {"checked": str(checked)})
        copy_to_parquet(con, "latest_checked_ratings" if n_pairs < n_rows else "checked_ratings", out, params)
    return n_pairs, n_rows - n_pairs


def _write_summed_interactions(checked: Path, out: Path, milliseconds: bool, memory_mb: int) -> tuple[int, int]:
    """Implicit feedback's checked rows to `out` (ratings.parquet): one row per (user, item), its weights added, its
    rating log(1 + weight) (tasks/ingest/interactions.py), out of core; returns how many pairs it holds and how many
    rows were added into another's pair."""
    pairs = out.with_name("pairs.parquet")
    with out_of_core(memory_mb, out.parent / "spill", keep_order=True) as con:
        n_rows, n_pairs = fetch_row(con, "pair_count", {"checked": str(checked)})
        copy_to_parquet(con, "summed_interactions", pairs, {"checked": str(checked), "milliseconds": milliseconds})
    rating = pl.col("weight").log1p().cast(pl.Float32).alias("rating")
    pl.scan_parquet(pairs).select("user_id", "item_id", rating, "timestamp").sink_parquet(out)
    pairs.unlink()
    return pl.scan_parquet(out).select(pl.len()).collect().item(), n_rows - n_pairs


def _source_files(archive: Archive, work: Path, limit: int) -> dict[str, Path]:
    """The files of a source: a zip's data members (extracted with the archive checks), a folder's files, or the
    file itself under the name its source gives it."""
    kind = source_kind(archive.path)
    if kind == "zip":
        (work / "raw").mkdir()
        return extract_files(archive, work / "raw", limit, lambda name: not NOT_DATA.search(name))
    if kind == "folder":
        files = sorted(path for path in archive.path.rglob("*") if path.is_file())
        found = {str(path.relative_to(archive.path)): path for path in files}
    else:
        found = {Path(urlsplit(archive.source).path).name or archive.path.name: archive.path}
    size = sum(path.stat().st_size for path in found.values())
    if size > limit:  # as a zip's members are held to it (the disk the parse fills is a few times this)
        raise IngestError(
            f"source {archive.source!r}: {size:,} bytes, over the {limit:,} byte limit "
            f"({setting('max_extracted_bytes')}); refused"
        )
    return found


def _parse_own_data(archive: Archive, work: Path, limit: int, settings: ReadSettings, memory_mb: int) -> dict:
    """Read a team's own interactions (tasks/ingest/own_data.py) into `work` and return the meta; the rows pass
    through files, never held whole: the source copied to Parquet, checked by polars' streaming engine, reduced to
    one row per (user, item) by DuckDB within `memory_mb`."""
    try:
        checked, items_read, name = read_own_data(_source_files(archive, work, limit), settings, work, memory_mb)
    except TableError as exc:
        raise IngestError(f"source {archive.source!r}: {exc}") from exc
    milliseconds = _in_milliseconds(pl.scan_parquet(checked.path), name, archive.source)
    write = _write_latest_ratings if checked.feedback == "explicit" else _write_summed_interactions
    n_ratings, n_repeated = write(checked.path, work / "ratings.parquet", milliseconds, memory_mb)
    for scratch in (checked.path, work / "staged.parquet"):
        scratch.unlink(missing_ok=True)
    ratings = pl.scan_parquet(work / "ratings.parquet")
    if checked.n_bad_rows == 0:  # with bad rows, what the policy says of them comes first (load_dataset)
        refuse_too_few(ratings, 0, [], f"source {archive.source!r}, {name}")
    items = items_read[1] if items_read else _untitled_items(ratings)
    items.select("item_id", "title", "genres", "year").write_parquet(work / "items.parquet")
    shutil.rmtree(work / "raw", ignore_errors=True)
    log.info(
        "parsed %s of %s: %d %s interactions, %d items", name, archive.source, n_ratings, checked.feedback, items.height
    )
    schema = ratings.collect_schema()
    meta = {
        "parser": PARSER_VERSION,
        "layout": "interactions",
        "file": name,
        "feedback": checked.feedback,
        "has_timestamps": checked.has_timestamps,
        "id_types": {role: str(schema[f"{role}_id"]) for role in ("user", "item")},
        "n_ratings": n_ratings,
        "source": archive.source,
        "n_bad_rows": checked.n_bad_rows,
        "bad_row_examples": checked.bad_row_examples,
        "n_duplicate_ratings": n_repeated,
    }
    if items_read:
        meta |= {"items_file": items_read[0], **items_coverage(ratings, items)}
    return meta


def refuse_too_few(ratings: pl.LazyFrame, n_bad: int, examples: list[str], where: str) -> None:
    """No interactions left, or one user's: nothing a recommender can learn from."""
    n_ratings, n_users, user = (
        ratings.select(pl.len(), pl.col("user_id").n_unique().alias("users"), pl.col("user_id").first())
        .collect(engine="streaming")
        .row(0)
    )
    if n_ratings == 0:
        dropped = f" ({n_bad:,} bad rows, first: {examples[0]})" if n_bad else ""
        raise IngestError(f"{where}: holds no interactions{dropped}")
    if n_users == 1:
        raise IngestError(
            f"{where}: holds the interactions of one user ({user}); a recommender learns from many users' "
            "interactions: expected two or more"
        )


def _read(reader: Callable[[Path], T], file: Path, member: str, source: str) -> T:
    """`reader(file)`, with any error of the file's contents (a format error naming the line, or whatever polars
    or decoding raise) as one IngestError naming the archive and the member."""
    try:
        return reader(file)
    except (ValueError, UnicodeError, pl.exceptions.PolarsError) as exc:
        detail = str(exc)
        if isinstance(exc, RatingsFormatError) and detail.startswith(file.name):
            detail = detail[len(file.name) :]  # " line 7: ..." or ": is empty ...": the file is the member
        else:
            detail = f": cannot be read: {type(exc).__name__}: {detail}"
        raise IngestError(f"archive {source!r}, member {member!r}{detail}") from exc


# Unix seconds of 5138-11-16: a larger timestamp is in milliseconds (MovieLens's are seconds since 1995).
_LARGEST_SECONDS = 10**11


def _seconds(parsed: ParsedRatings, member: str, source: str) -> ParsedRatings:
    """The ratings with millisecond timestamps (an export from a tool that writes them) converted to seconds
    (`_in_milliseconds`)."""
    if not _in_milliseconds(parsed.ratings, member, source):
        return parsed
    converted = parsed.ratings.with_columns(pl.col("timestamp") // 1000)
    return ParsedRatings(converted, parsed.n_bad_rows, parsed.bad_row_examples)


def _in_milliseconds(ratings: pl.DataFrame | pl.LazyFrame, member: str, source: str) -> bool:
    """Whether the ratings' timestamps are milliseconds since 1970 (an export from a tool that writes them), said in
    the log; a query over a file is read by the streaming engine, never whole.

    Raises:
        IngestError: timestamps in both units in one file, naming the member and an example of each.
    """
    large = pl.col("timestamp") >= _LARGEST_SECONDS
    n_large, n_timestamps, largest, small, big = (
        ratings.lazy()
        .select(
            large.sum().alias("n_large"),
            pl.col("timestamp").count().alias("n"),
            pl.col("timestamp").max().alias("largest"),
            pl.col("timestamp").filter(~large).first().alias("small"),
            pl.col("timestamp").filter(large).first().alias("big"),
        )
        .collect(engine="streaming")
        .row(0)
    )
    if n_large == 0:
        return False
    if n_large < n_timestamps:
        raise IngestError(
            f"archive {source!r}, member {member!r}: timestamps mix seconds ({small}) and milliseconds ({big}) since 1970; expected one "
            "unit: Unix seconds, as MovieLens writes them"
        )
    log.warning("%s: timestamps are in milliseconds since 1970 (the largest %d); converted to seconds", member, largest)
    return True


def _untitled_items(ratings: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Items with no titles, for archives that ship ratings alone."""
    return (
        ratings.lazy()
        .select(pl.col("item_id").unique().sort())
        .with_columns(title=pl.lit(None, pl.String), genres=pl.lit([], pl.List(pl.String)), year=pl.lit(None, pl.Int32))
        .collect(engine="streaming")
    )
