"""Ingest under faults: broken downloads, hostile or broken archives, malformed and repeated rows.

Each test here is a row of the table in docs/failure-modes.md.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from tasks.ingest import IngestError, fetch_archive, load_dataset
from tests.helpers import write_zip

U_ITEM = "10|A (1990)|||" + "|0" * 19 + "\n20|B (1991)|||" + "|0" * 19 + "\n"


def _load(path: Path, data_dir: Path, **options):
    return load_dataset(fetch_archive(str(path), data_dir), data_dir, **options)


def _ml100k(tmp_path: Path, u_data: str) -> Path:
    return write_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": u_data, "ml-100k/u.item": U_ITEM})


@pytest.mark.parametrize("fault", ["refused", "503", pytest.param("slow", marks=pytest.mark.slow), "short"])
def test_transient_download_faults_are_retryable_name_the_source_and_leave_no_file(fault, faulty_server, tmp_path):
    server = faulty_server(b"PK" * 5000, fault)
    with pytest.raises(IngestError) as error:
        fetch_archive(server.url, tmp_path, timeout=0.5)
    assert error.value.retryable is True
    assert server.url in str(error.value)
    assert list((tmp_path / "archives").iterdir()) == []  # no partial file, nothing cached to be used later


def test_sha256_mismatch_over_http_is_refused_before_parsing(ml100k_zip, faulty_server, tmp_path):
    server = faulty_server(ml100k_zip.read_bytes(), "none")
    with pytest.raises(IngestError, match=f"sha256 is f6399316.*expected {'0' * 64}; refused"):
        fetch_archive(server.url, tmp_path, expected_sha256="0" * 64)
    assert not (tmp_path / "datasets").exists()


def test_truncated_archive_is_unreadable(ml100k_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(ml100k_zip.read_bytes()[: ml100k_zip.stat().st_size // 2])
    with pytest.raises(IngestError, match="is unreadable"):
        _load(truncated, tmp_path / "data")


def test_archive_with_corrupt_compressed_data_is_unreadable(tmp_path):
    archive = _ml100k(tmp_path, "".join(f"{u}\t10\t4\t88125{u:04d}\n" for u in range(1, 5000)))
    data = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo("ml-100k/u.data")
    start = info.header_offset + 30 + len(info.filename)  # the local header, then the member's compressed bytes
    data[start + 20 : start + 60] = bytes(40)
    archive.write_bytes(bytes(data))
    with pytest.raises(IngestError, match="is unreadable"):
        _load(archive, tmp_path / "data")
    assert not list((tmp_path / "data" / "datasets").iterdir())  # nothing half-parsed left behind


def _zip_with(path: Path, members: list[zipfile.ZipInfo | str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/u.item", U_ITEM)
        for member in members:
            archive.writestr(member, "1\t10\t4\t881250949\n")
    return path


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member",
    ["ml-100k/../../u.data", "/ml-100k/u.data", _symlink("ml-100k/u.data"), "../escape.txt"],
    ids=["dot-dot", "absolute", "symlink", "extra-member-outside"],
)
def test_members_escaping_the_folder_or_symlinks_are_refused(member, tmp_path):
    members = [member] if isinstance(member, zipfile.ZipInfo) or "u.data" in member else ["ml-100k/u.data", member]
    archive = _zip_with(tmp_path / "hostile.zip", members)
    data_dir = tmp_path / "deep" / "data"
    with pytest.raises(IngestError, match="symbolic links or point outside the archive's folder; refused"):
        _load(archive, data_dir)
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"hostile.zip"}, written  # nothing extracted anywhere


def test_archive_expanding_past_the_limit_is_refused_before_extracting(tmp_path):
    rows = "1\t10\t4\t881250949\n" * 500_000  # 8.5 MB that deflates to a few KB: a small zip bomb
    archive = _ml100k(tmp_path, rows)
    assert archive.stat().st_size < 100_000
    with pytest.raises(
        IngestError,
        match=r"expand to 8,500,\d+ bytes, over the 1,000,000 byte limit \(max_extracted_bytes \(--max-extracted-bytes\)\)",
    ):
        _load(archive, tmp_path / "data", max_extracted_bytes=1_000_000)
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.name != "ml-100k.zip"]
    assert _load(archive, tmp_path / "data").n_ratings == 1  # under the default limit it parses (one pair, repeated)


BAD_ROWS = {
    "wrong column count": ("7\t10\t4\n", "line 2: has 3 fields, expected 4 separated by '\\t'"),
    "non-numeric": ("7\tten\t4\t881250950\n", "line 2: field 'item_id' is 'ten', expected a whole number"),
    "off the scale": ("7\t10\t6\t881250950\n", "line 2: field 'rating' is '6', expected a rating from 0.5 to 5"),
    "NaN": ("7\t10\tNaN\t881250950\n", "line 2: field 'rating' is 'NaN', expected a finite number"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_malformed_row_fails_naming_file_line_and_field_or_is_dropped(case, tmp_path):
    bad_line, says = BAD_ROWS[case]
    archive = _ml100k(tmp_path, "1\t10\t4\t881250949\n" + bad_line + "2\t20\t3\t881250951\n")
    with pytest.raises(IngestError) as error:
        _load(archive, tmp_path / "data")
    assert f"u.data {says}" in str(error.value) and "--on-bad-rows drop" in str(error.value)
    dropped = _load(archive, tmp_path / "data", on_bad_rows="drop")
    assert dropped.n_bad_rows == 1
    assert dropped.ratings().select("user_id", "item_id").rows() == [(1, 10), (2, 20)]


def test_every_bad_row_is_counted_and_the_first_ones_named(tmp_path):
    rows = ["1\t10\t4\t881250949"] + [f"{u}\t10\tinf\t881250949" for u in range(2, 12)] + ["", "12\t20\t5\t881250951"]
    archive = _ml100k(tmp_path, "\n".join(rows) + "\n")
    with pytest.raises(
        IngestError,
        match=r"10 bad ratings row\(s\), first: ml-100k/u.data line 2: .*; ml-100k/u.data line 3: .*; ml-100k/u.data line 4:",
    ):
        _load(archive, tmp_path / "data")
    assert _load(archive, tmp_path / "data", on_bad_rows="drop").n_ratings == 2  # the blank line is not a bad row


def test_duplicate_pairs_keep_the_latest_rating_and_are_counted(tmp_path):
    rows = "1\t10\t2\t100\n1\t10\t5\t300\n2\t10\t4\t100\n1\t10\t3\t200\n2\t10\t1\t100\n"
    dataset = _load(_ml100k(tmp_path, rows), tmp_path / "data")
    assert dataset.n_duplicate_ratings == 3
    kept = dataset.ratings().sort("user_id").select("user_id", "rating", "timestamp").rows()
    assert kept == [(1, 5.0, 300), (2, 1.0, 100)]  # the latest; on a timestamp tie, the later line


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"ml-100k/u.data": "", "ml-100k/u.item": U_ITEM}, r"member 'ml-100k/u.data': is empty"),
        ({"ml-latest/ratings.csv": ""}, r"member 'ml-latest/ratings.csv': is empty"),
        (
            {"ml-latest/ratings.csv": "userId,movieId,rating,timestamp\n"},
            r"member 'ml-latest/ratings.csv': holds no ratings",
        ),
    ],
    ids=["u.data", "csv", "csv-header-only"],
)
def test_empty_ratings_file_is_a_clear_error(files, says, tmp_path):
    with pytest.raises(IngestError, match=says):
        _load(write_zip(tmp_path / "empty.zip", files), tmp_path / "data")


def test_parse_is_cached_whatever_the_policy(tmp_path):
    archive = _ml100k(tmp_path, "1\t10\t4\t881250949\n1\t10\tx\t881250949\n")
    with pytest.raises(IngestError, match="field 'rating' is 'x'"):
        _load(archive, tmp_path / "data")
    meta = next((tmp_path / "data" / "datasets").glob("*/meta.json"))
    stamp = meta.stat().st_mtime_ns
    with pytest.raises(IngestError, match="field 'rating' is 'x'"):  # still refused, from the cache
        _load(archive, tmp_path / "data")
    assert _load(archive, tmp_path / "data", on_bad_rows="drop").ratings().height == 1
    assert meta.stat().st_mtime_ns == stamp


def test_source_scheme_is_checked_by_the_config_too():
    from pydantic import ValidationError

    from tasks.config import PipelineConfig

    with pytest.raises(ValidationError, match="scheme 'gopher' is not supported"):
        PipelineConfig(source="gopher://example.com/ml-100k.zip")
    assert PipelineConfig(source="file:///data/ml-100k.zip").source == "file:///data/ml-100k.zip"
