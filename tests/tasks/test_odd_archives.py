"""Odd but realistic archives built from the real ML-100k: exports from other tools, hand-edited files, odd
encodings and odd archive shapes. Each is accepted as the valid data it is, or refused by one IngestError that
names the archive, the member and, where there is one, the line. Each test is a row of docs/failure-modes.md.
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tasks.config import source_scheme
from tasks.ingest import IngestError, fetch_archive, load_dataset
from tasks.publish_check import list_collapse
from tasks.reindex import ratings_as_of, reindex
from tasks.split import split_ratings
from tests.helpers import DATASETS, write_zip


def _member(name: str) -> bytes:
    with zipfile.ZipFile(DATASETS / "ml-100k.zip") as archive:
        return archive.read(f"ml-100k/{name}")


@pytest.fixture(scope="module")
def u_data() -> list[str]:
    """The first 2,000 lines of the real u.data."""
    return _member("u.data").decode().splitlines()[:2000]


@pytest.fixture(scope="module")
def u_item() -> list[str]:
    return _member("u.item").decode("latin-1").splitlines()


def _load(archive: Path, tmp_path: Path, **options):
    return load_dataset(fetch_archive(str(archive), tmp_path / "data"), tmp_path / "data", **options)


def _refused(archive: Path, tmp_path: Path, *says: str, cached: bool = False, **options) -> str:
    """The IngestError's message; it names the archive and says each of `says`. Only a parse that found bad
    ratings rows is cached (the bad-row policy is applied to its counts); any other refusal leaves nothing."""
    with pytest.raises(IngestError) as error:
        _load(archive, tmp_path, **options)
    message = str(error.value)
    assert f"archive {str(archive)!r}" in message
    for part in says:
        assert part in message, message
    assert bool(list((tmp_path / "data" / "datasets").glob("*"))) is cached
    return message


def _ml100k(tmp_path: Path, u_data: list[str] | str, u_item: list[str] | str | bytes, name: str = "odd.zip") -> Path:
    data = "\n".join(u_data) + "\n" if isinstance(u_data, list) else u_data
    item = "\n".join(u_item) + "\n" if isinstance(u_item, list) else u_item
    return write_zip(tmp_path / name, {"ml-100k/u.data": data, "ml-100k/u.item": item}, encoding="latin-1")


# ---- items files


def test_an_items_file_listing_an_id_twice_is_refused_naming_both_lines(tmp_path, u_data, u_item):
    archive = _ml100k(tmp_path, u_data, [*u_item, u_item[9]])  # item 10 again, as line 1683
    _refused(archive, tmp_path, "member 'ml-100k/u.item' lines 10 and 1683: item id 10 is listed twice")


def test_blank_and_whitespace_lines_in_an_items_file_are_skipped(tmp_path, u_data, u_item):
    archive = _ml100k(tmp_path, u_data, [*u_item[:5], "   ", *u_item[5:], "", ""])
    items = _load(archive, tmp_path).items()
    assert items.height == 1682 and items["item_id"].null_count() == 0 and items["item_id"].n_unique() == 1682


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            "abc|Bad (1999)|01-Jan-1999||" + "|0" * 19,
            "'ml-100k/u.item' line 3: field 'movie id' is 'abc', expected a whole number",
        ),
        ("1700|Short row", "'ml-100k/u.item' line 3: has 2 fields, expected 24"),
    ],
)
def test_a_bad_items_row_is_refused_with_its_line_and_nothing_is_cached(line, says, tmp_path, u_data, u_item):
    archive = _ml100k(tmp_path, u_data, [*u_item[:2], line, *u_item[2:]])
    _refused(archive, tmp_path, says)
    _refused(archive, tmp_path, says)  # and again the same: no bad parse was kept


def _csv_archive(tmp_path: Path, u_data: list[str], movies: bytes | str, ratings: str | None = None) -> Path:
    rows = ratings or "userId,movieId,rating,timestamp\n" + "".join(
        ",".join(line.split("\t")) + "\n" for line in u_data
    )
    return write_zip(tmp_path / "csv.zip", {"ml-latest/ratings.csv": rows, "ml-latest/movies.csv": movies})


def test_movies_csv_without_a_genres_column_names_the_header(tmp_path, u_data):
    archive = _csv_archive(tmp_path, u_data, "movieId,title\n1,Toy Story (1995)\n")
    _refused(
        archive,
        tmp_path,
        "member 'ml-latest/movies.csv' line 1: header is movieId,title, expected movieId,title,genres",
    )


def test_latin1_movies_csv_reads_as_the_other_layouts_do(tmp_path, u_data):
    movies = 'movieId,title,genres\n1,"Amélie, Le Fabuleux (2001)",Comedy|Romance\n'.encode("latin-1")
    items = _load(_csv_archive(tmp_path, u_data, movies), tmp_path).items()
    assert items.row(0) == (1, "Amélie, Le Fabuleux (2001)", ["Comedy", "Romance"], 2001)


# ---- ratings files: encodings, control characters, quoting, large ids


def test_invalid_utf8_in_the_ratings_names_the_line(tmp_path, u_data, u_item):
    data = ("\n".join(u_data[:6]) + "\n").encode() + b"7\t\xff\xfe\t3\t881250949\n"
    archive = write_zip(tmp_path / "odd.zip", {"ml-100k/u.data": data, "ml-100k/u.item": "\n".join(u_item)}, "latin-1")
    _refused(archive, tmp_path, "ml-100k/u.data line 7: holds bytes that are not UTF-8 text", cached=True)


def test_utf16_ratings_are_refused_naming_the_encoding(tmp_path, u_data, u_item):
    data = ("\n".join(u_data) + "\n").encode("utf-16")
    archive = write_zip(tmp_path / "odd.zip", {"ml-100k/u.data": data, "ml-100k/u.item": "\n".join(u_item)}, "latin-1")
    _refused(archive, tmp_path, "member 'ml-100k/u.data' line 1: starts with the UTF-16 little-endian byte-order mark")


@pytest.mark.parametrize(("char", "cached"), [("\x1f", False), ("\x01", True)])  # the first is the line reader's own
def test_control_characters_in_the_ratings_name_the_line(char, cached, tmp_path, u_data, u_item):
    lines = [*u_data[:3], u_data[3].replace("\t", char + "\t", 1), *u_data[4:]]
    says = f"ml-100k/u.data{chr(39) if not cached else ''} line 4: holds the control character 0x{ord(char):02x}"
    _refused(_ml100k(tmp_path, lines, u_item), tmp_path, says, cached=cached)


def test_csv_with_every_field_quoted_is_accepted(tmp_path, u_data):
    rows = '"userId","movieId","rating","timestamp"\n' + "".join(
        ",".join(f'"{field}"' for field in line.split("\t")) + "\n" for line in u_data
    )
    dataset = _load(_csv_archive(tmp_path, u_data, "movieId,title,genres\n", rows), tmp_path)
    assert dataset.n_ratings == 2000 and dataset.ratings()["user_id"][0] == int(u_data[0].split("\t")[0])


def test_an_id_past_64_bits_says_so(tmp_path, u_data, u_item):
    lines = [*u_data[:4], "18446744073709551812\t242\t3\t881250949", *u_data[4:]]
    _refused(
        _ml100k(tmp_path, lines, u_item),
        tmp_path,
        "ml-100k/u.data line 5: field 'user_id' is '18446744073709551812', which does not fit in a 64-bit integer",
        cached=True,
    )


# ---- timestamps


def test_millisecond_timestamps_are_converted_and_as_of_works(tmp_path, u_data, u_item, caplog):
    in_ms = ["\t".join([*line.split("\t")[:3], line.split("\t")[3] + "000"]) for line in u_data]
    with caplog.at_level(logging.WARNING):
        ratings = _load(_ml100k(tmp_path, in_ms, u_item), tmp_path).ratings()
    assert "timestamps are in milliseconds" in caplog.text
    assert ratings["timestamp"].to_list() == [int(line.split("\t")[3]) for line in u_data]
    kept = ratings_as_of(ratings, datetime(1997, 12, 31, tzinfo=UTC))
    assert 0 < kept.height < ratings.height


def test_mixed_timestamp_units_are_refused_and_the_as_of_message_never_crashes(tmp_path, u_data, u_item):
    mixed = [*u_data[:-1], "\t".join([*u_data[-1].split("\t")[:3], u_data[-1].split("\t")[3] + "000"])]
    _refused(_ml100k(tmp_path, mixed, u_item), tmp_path, "timestamps mix seconds (", "and milliseconds (")
    far = pl.DataFrame({"user_id": [1], "item_id": [2], "rating": [4.0], "timestamp": [881250949000]})
    with pytest.raises(ValueError, match=r"keeps no ratings: they span timestamp 881250949000 \(beyond the year 9999"):
        ratings_as_of(far, datetime(1990, 1, 1, tzinfo=UTC))


# ---- archive shapes


@pytest.mark.parametrize(
    "members",
    [("ml-100k/u.data", "ml-1m/ratings.dat"), ("a/u.data", "b/u.data")],
    ids=["two layouts", "two folders"],
)
def test_two_ratings_files_are_refused_naming_both(members, tmp_path, u_data):
    text = "\n".join(u_data) + "\n"
    files = {name: text.replace("\t", "::") if name.endswith(".dat") else text for name in members}
    message = _refused(write_zip(tmp_path / "two.zip", files), tmp_path, "holds 2 ratings files")
    assert all(repr(name) in message for name in members)


def test_a_member_listed_twice_is_refused(tmp_path, u_data):
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(tmp_path / "twice.zip", "w") as archive:
        archive.writestr("ml-100k/u.data", "\n".join(u_data[:10]))
        archive.writestr("ml-100k/u.data", "\n".join(u_data))
    _refused(tmp_path / "twice.zip", tmp_path, "holds 2 ratings files (the same name twice)")


def test_items_in_another_folder_are_used_with_a_warning(tmp_path, u_data, u_item, caplog):
    archive = write_zip(
        tmp_path / "apart.zip", {"ratings/u.data": "\n".join(u_data), "meta/u.item": "\n".join(u_item)}, "latin-1"
    )
    with caplog.at_level(logging.WARNING):
        items = _load(archive, tmp_path).items()
    assert "the items file 'meta/u.item' is not beside the ratings 'ratings/u.data'" in caplog.text
    assert items["title"].null_count() == 0 and items.height == 1682


def test_a_gzip_ratings_member_is_unpacked_within_the_size_limit(tmp_path, u_data, u_item):
    packed = gzip.compress(("\n".join(u_data) + "\n").encode())
    archive = write_zip(tmp_path / "gz.zip", {"ml-100k/u.data": packed, "ml-100k/u.item": "\n".join(u_item)}, "latin-1")
    assert _load(archive, tmp_path).n_ratings == 2000
    bomb = gzip.compress(b"1\t1\t1\t881250949\n" * 400_000)  # 7 MB of text in 30 kB
    archive = write_zip(tmp_path / "bomb.zip", {"ml-100k/u.data": bomb})
    message = _refused(
        archive,
        tmp_path / "b",
        "member 'ml-100k/u.data' (gzip-compressed): expands past the 5,000,000 byte limit",
        max_extracted_bytes=5_000_000,
    )
    assert "unreadable" not in message  # the refusal itself, not wrapped as a broken archive


def _patched(path: Path, member: str, *, flags: int | None = None, method: int | None = None) -> Path:
    """`path` with a member's general-purpose flags or compression method rewritten in both of its headers."""
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo(member)
    central = data.index(member.encode(), data.index(b"PK\x01\x02")) - 46  # its central directory header
    for header, offset in ((info.header_offset, 6), (central, 8)):
        if flags is not None:
            data[header + offset : header + offset + 2] = flags.to_bytes(2, "little")
        if method is not None:
            data[header + offset + 2 : header + offset + 4] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("patch", "says"),
    [({"flags": 1}, "is encrypted (password-protected)"), ({"method": 9}, "is compressed with method 9 (deflate64)")],
)
def test_encrypted_or_unsupported_members_are_named_with_the_method(patch, says, tmp_path, u_data, u_item):
    archive = _patched(_ml100k(tmp_path, u_data, u_item), "ml-100k/u.data", **patch)
    _refused(archive, tmp_path, f"member 'ml-100k/u.data': {says}")


@pytest.mark.parametrize(
    ("member", "separator", "header"),
    [
        ("ml-100k/u.data", "\t", ""),
        ("ml-1m/ratings.dat", "::", ""),
        ("ml-latest/ratings.csv", ",", "userId,movieId,rating,timestamp\n"),
    ],
    ids=["ml-100k", "ml-1m/10m", "csv"],
)
def test_a_corrupted_member_of_each_layout_is_named(member, separator, header, tmp_path, u_data):
    text = header + "".join(separator.join(line.split("\t")) + "\n" for line in u_data)
    archive = write_zip(tmp_path / "corrupt.zip", {member: text})
    data = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo(member)
    start = info.header_offset + 30 + len(info.filename)
    data[start + 200 : start + 260] = bytes(60)  # the member's compressed bytes, zeroed part way
    archive.write_bytes(bytes(data))
    _refused(archive, tmp_path, f"is unreadable at member {member!r}")


# ---- sources and degenerate data


def test_a_local_path_with_a_colon_is_a_path(tmp_path):
    archive = tmp_path / "nightly-2024-01-01T03:00.zip"
    archive.write_bytes((DATASETS / "ml-100k.zip").read_bytes())
    assert source_scheme(str(archive)) == "" and source_scheme("nightly-2024-01-01T03:00.zip") == ""
    assert fetch_archive(str(archive), tmp_path / "d").sha256 == fetch_archive(archive.as_uri(), tmp_path / "d").sha256
    with pytest.raises(ValueError, match="scheme 's3' is not supported"):
        source_scheme("s3://bucket/ml-100k.zip")


def test_every_user_with_one_rating_is_refused_saying_why(tmp_path, u_data, u_item):
    once = [
        line
        for i, line in enumerate(u_data)
        if line.split("\t")[0] not in {earlier.split("\t")[0] for earlier in u_data[:i]}
    ]
    ratings, _ = reindex(_load(_ml100k(tmp_path, once, u_item), tmp_path).ratings())
    with pytest.raises(ValueError, match=f"every one of the {len(once)} users has a single rating.*at least 3 ratings"):
        split_ratings(ratings, "stratified", 0.25, 42)


def test_lists_that_collapse_against_the_live_ones_are_named_with_the_counts():
    live = {"run_id": "live", "users": 943, "items": 400}
    one_user = pl.DataFrame({"user_id": [7] * 10, "item_id": range(10)})
    assert list_collapse(one_user, live, 0.5) == (
        "its lists cover 1 users against the live lists' 943 and 10 distinct items against the live lists' 400 "
        "(run live), under the 50% share min_list_share (--min-list-share) allows"
    )
    assert list_collapse(one_user, None, 0.5) is None and list_collapse(one_user, live, 0.0) is None
