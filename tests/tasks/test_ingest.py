"""Ingest: every MovieLens layout, the download path over loopback HTTP, caching and refusals."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tasks.config import redact
from tasks.ingest import IngestError, fetch_archive, load_dataset
from tests.helpers import write_zip

RATINGS_COLUMNS = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}
ITEMS_COLUMNS = {"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String), "year": pl.Int32}


def _load(path: Path, data_dir: Path):
    return load_dataset(fetch_archive(str(path), data_dir), data_dir)


def test_ml100k_real_archive(ml100k_zip, tmp_path):
    dataset = _load(ml100k_zip, tmp_path)
    ratings, items = dataset.ratings(), dataset.items()
    assert dataset.layout == "ml-100k"
    assert dict(ratings.schema) == RATINGS_COLUMNS and dict(items.schema) == ITEMS_COLUMNS
    assert ratings.height == 100_000
    assert ratings["user_id"].n_unique() == 943 and ratings["item_id"].n_unique() == 1682
    assert ratings["rating"].min() == 1 and ratings["rating"].max() == 5
    toy_story = items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy_story["title"] == "Toy Story (1995)" and toy_story["year"] == 1995
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    # u.item is Latin-1: accented titles must come through decoded, not mangled.
    assert items.filter(pl.col("title").str.contains("Misérables")).height >= 1


def test_parsed_once_per_archive(ml100k_zip, tmp_path):
    first = _load(ml100k_zip, tmp_path)
    stamp = first.ratings_path.stat().st_mtime_ns
    second = _load(ml100k_zip, tmp_path)
    assert second == first and second.ratings_path.stat().st_mtime_ns == stamp


def test_ml1m_layout(tmp_path):
    archive = write_zip(
        tmp_path / "ml-1m.zip",
        {
            "ml-1m/ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
            "ml-1m/movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "661::James and the Giant Peach: The Movie (1996)::Animation|Children's|Musical\n"
            "7::Café Society (1995)::Drama\n",
        },
        encoding="latin-1",
    )
    dataset = _load(archive, tmp_path / "data")
    ratings, items = dataset.ratings(), dataset.items()
    assert dataset.layout == "ml-1m/10m"
    assert ratings.rows() == [(1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109), (2, 1193, 4.0, 978298413)]
    peach = items.filter(pl.col("item_id") == 661).row(0, named=True)
    assert peach["title"] == "James and the Giant Peach: The Movie (1996)"
    assert peach["genres"] == ["Animation", "Children's", "Musical"] and peach["year"] == 1996
    assert items.filter(pl.col("item_id") == 7)["title"].item() == "Café Society (1995)"


def test_ml10m_layout_half_stars(tmp_path):
    archive = write_zip(
        tmp_path / "ml-10m.zip",
        {
            "ml-10M100K/ratings.dat": "1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::838983392\n",
            "ml-10M100K/movies.dat": "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n",
            "ml-10M100K/tags.dat": "15::4973::excellent!::1215184630\n",
        },
    )
    ratings = _load(archive, tmp_path / "data").ratings()
    assert ratings["rating"].to_list() == [5.0, 4.5, 0.5]


def test_csv_layout(tmp_path):
    archive = write_zip(
        tmp_path / "ml-latest-small.zip",
        {
            "ml-latest-small/ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n",
            "ml-latest-small/movies.csv": "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
            '3,"American President, The (1995)",Comedy|Drama|Romance\n4,Unknown Film,(no genres listed)\n',
            "ml-latest-small/links.csv": "movieId,imdbId,tmdbId\n1,0114709,862\n",
        },
    )
    dataset = _load(archive, tmp_path / "data")
    items = dataset.items()
    assert dataset.layout == "csv" and dataset.ratings()["rating"].to_list() == [4.0, 4.5]
    president = items.filter(pl.col("item_id") == 3).row(0, named=True)
    assert president["title"] == "American President, The (1995)" and president["year"] == 1995
    unknown = items.filter(pl.col("item_id") == 4).row(0, named=True)
    assert unknown["genres"] == [] and unknown["year"] is None


def test_a_zip_without_movielens_ratings_is_read_as_interactions_and_says_what_it_holds(tmp_path):
    archive = write_zip(tmp_path / "other.zip", {"data/readme.txt": "hello", "data/scores.tsv": "1\t2\n"})
    with pytest.raises(IngestError) as error:
        _load(archive, tmp_path / "data")
    assert str(error.value) == (
        f"source '{archive}', data/scores.tsv: holds the interactions of one user (1); a recommender learns from "
        "many users' interactions: expected two or more"
    )
    prose = write_zip(tmp_path / "prose.zip", {"notes/a.txt": "hello world\n"})
    with pytest.raises(IngestError, match=r"notes/a.txt: header hello,world: no user column .* \(--user-column\)"):
        _load(prose, tmp_path / "data")


def test_malformed_rating_names_file_line_and_field(tmp_path):
    archive = write_zip(
        tmp_path / "bad.zip",
        {
            "ml-100k/u.data": "1\t10\t4\t881250949\n2\t20\tfour\t881250950\n",
            "ml-100k/u.item": "10|A (1990)|||" + "|0" * 19 + "\n",
        },
    )
    with pytest.raises(IngestError, match=r"u\.data line 2: field 'rating' is 'four', expected a number"):
        _load(archive, tmp_path / "data")


def test_corrupt_zip_is_refused(tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(IngestError, match="unreadable"):
        _load(broken, tmp_path / "data")


def test_download_caches_and_reuses_unchanged_source(ml100k_zip, tmp_path, serve):
    served = tmp_path / "site"
    served.mkdir()
    (served / "ml-100k.zip").write_bytes(ml100k_zip.read_bytes())
    server = serve(served)
    data_dir = tmp_path / "data"

    first = fetch_archive(f"{server.url}/ml-100k.zip", data_dir)
    assert first.sha256 == "f6399316c2793efe71b296b24c481a4a3e888982b85f93ffb392adc221391eb8"
    assert first.path == data_dir / "archives" / f"{first.sha256}.zip"
    assert first.path.read_bytes() == ml100k_zip.read_bytes()
    assert not list((data_dir / "archives").glob(".scratch-*"))

    again = fetch_archive(f"{server.url}/ml-100k.zip", data_dir)
    assert again == first
    assert server.requests == [("/ml-100k.zip", 200), ("/ml-100k.zip", 304)]

    by_hash = fetch_archive(f"{server.url}/ml-100k.zip", data_dir, expected_sha256=first.sha256)
    assert by_hash.path == first.path and len(server.requests) == 2  # not even asked


def test_sha256_mismatch_is_refused(ml100k_zip, tmp_path):
    with pytest.raises(IngestError, match="expected 0000"):
        fetch_archive(str(ml100k_zip), tmp_path, expected_sha256="0" * 64)


def test_http_404_is_not_retryable(tmp_path, serve):
    server = serve(tmp_path)
    with pytest.raises(IngestError, match="HTTP 404") as error:
        fetch_archive(f"{server.url}/missing.zip", tmp_path / "data")
    assert error.value.retryable is False


def test_a_host_with_no_dns_answer_is_not_retried(tmp_path):
    # .invalid never resolves (RFC 6761): offline, or a misspelt host, a retry seconds later gets no answer either
    with pytest.raises(IngestError, match="the host 'no-such-host.invalid' cannot be resolved") as error:
        fetch_archive("http://no-such-host.invalid/ml-100k.zip", tmp_path / "data")
    assert error.value.retryable is False and error.value.unreachable is True


@pytest.mark.parametrize("source", ["ftp://example.com/ml-100k.zip", "s3://bucket/ml-100k.zip"])
def test_unsupported_scheme_is_refused(source, tmp_path):
    with pytest.raises(IngestError, match="not supported"):
        fetch_archive(source, tmp_path)


def test_missing_local_file(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        fetch_archive(str(tmp_path / "nope.zip"), tmp_path)


def test_redact_removes_credentials():
    assert redact("https://alice:s3cret@example.com:8443/a.zip") == "https://***@example.com:8443/a.zip"
    assert redact("https://example.com/a.zip") == "https://example.com/a.zip"
