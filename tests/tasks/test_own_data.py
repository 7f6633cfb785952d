"""A team's own interactions as the source: the three real files of ../shared/datasets/real, the layouts teams
export (separators, headers, encodings, Parquet, DuckDB, zip and folder), and every bad input refused in one line."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from tasks.config import PipelineConfig
from tasks.ingest import IngestError, fetch_archive, load_dataset
from tasks.ingest.own_data import ReadSettings, read_settings
from tests.helpers import DATASETS

REAL = DATASETS / "real"


def _load(source: Path | str, data_dir: Path, policy: str = "fail", **settings):
    columns = {role: settings.pop(f"{role}_column", None) for role in ("user", "item", "rating", "weight", "timestamp")}
    archive = fetch_archive(str(source), data_dir)
    return load_dataset(archive, data_dir, policy, settings=ReadSettings(columns, **settings))  # type: ignore[arg-type]


def _refusal(source: Path | str, data_dir: Path, **settings) -> str:
    with pytest.raises(IngestError) as error:
        _load(source, data_dir, **settings)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_three_real_files_read_as_their_publishers_describe_them(tmp_path):
    anime = _load(REAL / "anime.zip", tmp_path, member="anime_ratings.dat")
    ratings = anime.ratings()
    assert (anime.layout, anime.feedback, anime.has_timestamps) == ("interactions", "explicit", False)
    assert (
        ratings.height == 419_943 and ratings["user_id"].n_unique() == 4_714 and ratings["item_id"].n_unique() == 7_157
    )
    assert (ratings["rating"].min(), ratings["rating"].max()) == (1.0, 10.0)
    assert ratings["timestamp"].null_count() == ratings.height
    titles = anime.items()  # anime_info.dat, found beside it: the same numbering, whatever its README says
    assert titles.height == 7_390 and titles.filter(pl.col("item_id") == 6)["title"].to_list() == ["Death Note"]
    assert "Mystery" in titles.filter(pl.col("item_id") == 6)["genres"][0]

    lastfm = _load(REAL / "lastfm-2k.zip", tmp_path)
    plays = lastfm.ratings()
    assert (lastfm.feedback, plays.height, plays["item_id"].n_unique()) == ("implicit", 92_834, 17_632)
    assert plays.schema["user_id"] == pl.Int64
    top = plays.sort("rating").row(-1, named=True)
    assert math.isclose(top["rating"], math.log1p(352_698), rel_tol=1e-6)  # the most plays, log(1 + weight)
    titles = lastfm.items()
    assert titles.height == 17_632 and titles.filter(pl.col("title") == "Radiohead").height == 1

    amazon = _load(REAL / "amazon-video-games.txt", tmp_path)
    pairs = amazon.ratings()
    assert (amazon.feedback, pairs.height, pairs["user_id"].n_unique(), pairs["item_id"].n_unique()) == (
        "implicit",
        287_107,
        31_013,
        23_715,
    )
    assert amazon.items()["title"].null_count() == 23_715  # no item names


def test_anime_holds_two_interactions_files_and_the_run_asks_which(tmp_path):
    message = _refusal(REAL / "anime.zip", tmp_path)
    assert message.endswith(
        "holds 2 files of interactions, anime/anime_history.dat, anime/anime_ratings.dat; name the one to read with "
        "source_member (--source-member NAME)"
    )


@pytest.mark.parametrize(
    ("separator", "header"),
    [("::", False), ("\t", True), ("|", True), (";", True), (",", False), (" ", False)],
)
def test_every_separator_with_or_without_a_header(tmp_path, separator, header):
    rows = [["u1", "i1", "4", "978300760"], ["u1", "i2", "3", "978300761"], ["u2", "i1", "5", "978300762"]]
    lines = ([separator.join(["user", "item", "rating", "timestamp"])] if header else []) + [
        separator.join(row) for row in rows
    ]
    source = tmp_path / "export.txt"
    source.write_text("\n".join(lines) + "\n")
    ratings = _load(source, tmp_path / "data").ratings()
    assert ratings.to_dicts() == [
        {"user_id": "u1", "item_id": "i1", "rating": 4.0, "timestamp": 978300760},
        {"user_id": "u1", "item_id": "i2", "rating": 3.0, "timestamp": 978300761},
        {"user_id": "u2", "item_id": "i1", "rating": 5.0, "timestamp": 978300762},
    ]


def test_latin1_text_quoted_fields_dates_and_named_columns(tmp_path):
    source = tmp_path / "ventes.csv"
    source.write_bytes(
        "client;produit;note;quand\n"
        '"Zoë";"Crème brûlée";4;2024-01-02T10:00:00\n'
        '"Zoë";"Pain";2;2024-01-03\n'
        '"Noël";"Pain";5;2024-01-04 08:30:00\n'.encode("latin-1")
    )
    settings = {"user_column": "client", "item_column": "produit", "rating_column": "note", "timestamp_column": 4}
    ratings = _load(source, tmp_path / "data", **settings).ratings()
    assert ratings["user_id"].to_list() == ["Zoë", "Zoë", "Noël"]
    assert ratings["item_id"].to_list() == ["Crème brûlée", "Pain", "Pain"]
    assert ratings["timestamp"].to_list() == [1704189600, 1704240000, 1704357000]


def test_implicit_rows_add_up_and_weights_scale_by_log(tmp_path):
    source = tmp_path / "plays.tsv"
    source.write_text("visitorid\tproduct\tplays\na\tx\t3\na\tx\t4\na\ty\t0\nb\tx\t1\nb\ty\t0\nb\ty\t0\n")
    dataset = _load(source, tmp_path / "data")
    ratings = dataset.ratings().sort("user_id", "item_id")
    assert dataset.feedback == "implicit" and dataset.n_duplicate_ratings == 2  # 6 rows in 4 pairs, 2 of them weigh 0
    assert ratings.select("user_id", "item_id").rows() == [("a", "x"), ("b", "x")]
    assert ratings["rating"].to_list() == pytest.approx([math.log1p(7), math.log1p(1)])
    counted = tmp_path / "events.csv"  # no weight column: each row weighs 1
    counted.write_text("user,item\n1,10\n1,10\n2,10\n")
    assert _load(counted, tmp_path / "data").ratings()["rating"].to_list() == pytest.approx(
        [math.log1p(2), math.log1p(1)]
    )


def test_a_given_rating_scale_makes_rows_off_it_bad(tmp_path):
    source = tmp_path / "scores.csv"
    source.write_text("user,item,score\n1,1,7\n1,2,11\n2,1,0\n2,2,10\n")
    message = _refusal(source, tmp_path / "data", rating_scale=(1.0, 10.0))
    assert "2 bad row(s), first: scores.csv line 3: field 'score' is '11.0', off the rating scale 1 to 10" in message
    kept = _load(source, tmp_path / "data", "drop", rating_scale=(1.0, 10.0))
    assert (kept.n_ratings, kept.n_bad_rows) == (2, 2)


def test_parquet_duckdb_folder_and_zip_sources(tmp_path):
    frame = pl.DataFrame({"user_id": ["a", "a", "b"], "sku": ["s1", "s2", "s1"], "quantity": [2, 1, 5]})
    frame.write_parquet(tmp_path / "orders.parquet")
    assert _load(tmp_path / "orders.parquet", tmp_path / "d").ratings()["item_id"].to_list() == ["s1", "s2", "s1"]
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("CREATE TABLE orders AS SELECT * FROM read_parquet(?)", [str(tmp_path / "orders.parquet")])
    by_table = _load(tmp_path / "shop.duckdb", tmp_path / "d", table="orders")
    by_query = _load(tmp_path / "shop.duckdb", tmp_path / "d", query="SELECT * FROM orders WHERE quantity > 1")
    assert (by_table.n_ratings, by_query.n_ratings) == (3, 2)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "README.md").write_text("# our export\n")
    (folder / "orders.csv").write_text("customer,sku\nc1,s1\nc2,s1\nc2,s2\n")
    (folder / "products.csv").write_text("sku,name,tags\ns1,Kettle,kitchen|steel\ns2,Toaster,kitchen\n")
    dataset = _load(folder, tmp_path / "d")
    assert dataset.items().select("item_id", "title", "genres").rows() == [
        ("s1", "Kettle", ["kitchen", "steel"]),
        ("s2", "Toaster", ["kitchen"]),
    ]
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        for path in folder.iterdir():
            archive.write(path, f"export/{path.name}")
    assert _load(tmp_path / "export.zip", tmp_path / "d").items().height == 2


def test_the_config_carries_the_read_settings_and_the_feedback_rules():
    config = PipelineConfig(user_column="customer", item_column="2", rating_scale=[1, 10], source_member="a.csv")
    settings = read_settings(config)
    assert settings.columns["user"] == "customer" and settings.columns["item"] == "2"
    assert (settings.rating_scale, settings.member) == ((1.0, 10.0), "a.csv")
    assert PipelineConfig().for_data("implicit", True).models == ["ials"]  # the default set loses dot_bias
    with pytest.raises(ValueError, match="dot_bias predicts ratings, and implicit feedback has none"):
        PipelineConfig(models=["dot_bias", "ials"]).for_data("implicit", True)
    with pytest.raises(ValueError, match="dot_bias predicts ratings"):
        PipelineConfig(feedback="implicit", models=["dot_bias"])
    for no_time in ({"split": "temporal"}, {"as_of": "2020-01-01"}):
        with pytest.raises(ValueError, match="the data has no time column: .* needs one"):
            PipelineConfig(**no_time).for_data("explicit", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a scale: expected MIN,MAX"):
        PipelineConfig(rating_scale=[5, 1])


# Bad input: each refused in one line that names the file, line or column and what was expected.


def test_a_column_that_cannot_be_resolved(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text("when,what,who\n1,2,3\n")
    assert _refusal(source, tmp_path / "d").endswith(
        "events.csv: header when,what,who: no user column (a name such as user/userid/users/visitorid); name it "
        "with user_column (--user-column)"
    )
    assert _refusal(source, tmp_path / "d", user_column="customer").endswith(
        "events.csv: user_column (--user-column) is 'customer', which is not a column of the file (header: "
        "when,what,who)"
    )


def test_a_non_numeric_rating(tmp_path):
    source = tmp_path / "ratings.tsv"
    source.write_text("user\titem\trating\n1\t1\t4\n\n2\t1\tfive\n3\t1\t2\n")
    assert _refusal(source, tmp_path / "d").endswith(
        "1 bad row(s), first: ratings.tsv line 4: field 'rating' is 'five', expected a number. Fix the file, "
        "or run with on_bad_rows=drop (--on-bad-rows drop) to skip them and record the count"
    )


def test_an_empty_or_unreadable_time_and_repeats_kept_latest_first(tmp_path):
    source = tmp_path / "rated.csv"
    source.write_text(
        "user,item,rating,ts\na,x,4,10\na,y,3,20\nb,x,5,30\nb,x,2,30\nc,z,1,\nc,y,4.5,40\na,x,1,5\nd,y,2,soon\n"
    )
    message = _refusal(source, tmp_path / "d")
    assert "rated.csv line 6: field 'ts' is empty, expected Unix seconds or a date and time (ISO 8601)" in message
    assert "rated.csv line 9: field 'ts' is 'soon', expected Unix seconds or a date and time (ISO 8601)" in message
    dataset = _load(source, tmp_path / "d", "drop")
    # each pair's latest by time: (a, x) keeps the earlier line's 4 (time 10, not 5); on a tie the later line
    ratings = dataset.ratings().sort("user_id", "item_id")
    assert ratings.select("user_id", "item_id", "rating").rows() == [
        ("a", "x", 4.0),
        ("a", "y", 3.0),
        ("b", "x", 2.0),
        ("c", "y", 4.5),
    ]
    assert dataset.n_duplicate_ratings == 2 and dataset.n_bad_rows == 2
    assert sorted(path.name for path in dataset.ratings_path.parent.iterdir()) == [
        "items.parquet",
        "meta.json",
        "ratings.parquet",
    ]


def test_negative_or_non_finite_weights(tmp_path):
    source = tmp_path / "plays.csv"
    source.write_text("user,item,plays\n1,1,3\n1,2,-2\n2,1,inf\n2,2,1\n")
    message = _refusal(source, tmp_path / "d")
    assert (
        "2 bad row(s), first: plays.csv line 3: field 'plays' is '-2.0', expected a finite number, 0 or more" in message
    )
    assert "plays.csv line 4: field 'plays' is 'inf'" in message


def test_mixed_id_types_in_one_column(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text("user,item\n1,10\n2,10\nguest,11\n")
    assert _refusal(source, tmp_path / "d").endswith(
        "events.csv: column 'user' (the user) mixes whole numbers (events.csv line 2: '1') and text (events.csv "
        "line 4: 'guest'); expected ids of one kind: all whole numbers, or all text"
    )


def test_a_header_repeated_mid_file(tmp_path):
    source = tmp_path / "joined.csv"
    source.write_text("user,item\na,x\nb,x\nuser,item\nc,y\n")
    assert _refusal(source, tmp_path / "d").endswith(
        "joined.csv line 4: repeats the header (user, item, ...): two files joined into one? Expected the header "
        "once, on the first line"
    )


def test_an_empty_file_and_a_file_of_one_user(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert _refusal(empty, tmp_path / "d").endswith(
        "empty.csv: is empty, expected lines of interactions (user, item, ...)"
    )
    alone = tmp_path / "alone.csv"
    alone.write_text("user,item\nann,x\nann,y\n")
    assert _refusal(alone, tmp_path / "d").endswith(
        "alone.csv: holds the interactions of one user (ann); a recommender learns from many users' interactions: "
        "expected two or more"
    )


def test_a_parquet_column_of_the_wrong_type(tmp_path):
    pl.DataFrame({"user": [1, 2], "item": [1, 1], "rating": ["good", "bad"]}).write_parquet(tmp_path / "r.parquet")
    assert _refusal(tmp_path / "r.parquet", tmp_path / "d").endswith(
        "r.parquet: column 'rating' (the rating) holds String, expected numbers"
    )


def test_a_duckdb_table_that_does_not_exist_and_a_query_that_writes(tmp_path):
    database = tmp_path / "shop.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE orders (user_id INT, item_id INT)")
    assert _refusal(database, tmp_path / "d", table="order").endswith(
        "shop.duckdb: has no table 'order'; its tables: orders (source_table, --source-table)"
    )
    for writes in ("DELETE FROM orders", "SELECT 1; DROP TABLE orders"):
        assert "source_query (--source-query) is " in _refusal(database, tmp_path / "d", query=writes)
        assert "expected one SELECT: the source is only read" in _refusal(database, tmp_path / "d", query=writes)
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orders").fetchone() == (0,)  # the table is still there
    secret = tmp_path / "secret.csv"
    secret.write_text("user_id,item_id\nroot,hunter2\nadmin,letmein\n")
    reads_a_file = f"SELECT * FROM read_csv('{secret}')"  # a query reads the database, never the machine's files
    assert "source_query (--source-query) fails: Permission Error" in _refusal(
        database, tmp_path / "d", query=reads_a_file
    )
    assert _refusal(database, tmp_path / "d").endswith(
        "shop.duckdb is a DuckDB database: name the table to read with source_table (--source-table NAME), or give "
        "one SELECT with source_query (--source-query 'SELECT ...')"
    )


def test_a_csv_over_http_is_downloaded_cached_and_named_by_its_url(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    (site / "events.csv").write_text("visitorid,itemid\nv1,a\nv1,b\nv2,a\nv3,c\n")
    url = f"{serve(site).url}/events.csv"
    dataset = _load(url, tmp_path / "d")
    assert (dataset.feedback, dataset.n_ratings) == ("implicit", 4)
    (site / "later.csv").write_text("visitorid,itemid\nv1,a\nv2,a\nguest,\n")
    message = _refusal(url.replace("events.csv", "later.csv"), tmp_path / "d")
    assert "later.csv line 4: field 'itemid' is empty, expected an id" in message  # the URL's file name, its line


def test_text_ids_survive_a_checkpoint_and_a_warm_start_matches_them(tmp_path):
    from tasks.checkpoint import save_checkpoint
    from tasks.reindex import reindex
    from tasks.train import fit
    from tasks.warm import WarmStart

    users = [f"u{u}" for u in range(30) for _ in range(6)]
    items = [f"sku-{(u * 5 + k) % 20}" for u in range(30) for k in range(6)]
    frame = pl.DataFrame({"user_id": users, "item_id": items, "rating": [1.0] * 180, "timestamp": [None] * 180})
    ratings, maps = reindex(frame.with_columns(pl.col("timestamp").cast(pl.Int64)))
    config = PipelineConfig(device="cpu", ials={"epochs": 2, "factors": 4})  # type: ignore[arg-type]
    model = fit(ratings, maps.n_users, maps.n_items, config, name="ials")
    save_checkpoint(model, maps, config, tmp_path / "model.pt")
    tonight = reindex(frame.filter(pl.col("user_id") != "u0").with_columns(pl.col("timestamp").cast(pl.Int64)))[1]
    rows = WarmStart.load(tmp_path / "model.pt", "last-night").initial_rows(tonight)
    now, values = rows["user_factors"]
    assert len(now) == 29  # every user but u0, matched by their text ids
    u1_now = int(tonight.users.filter(pl.col("user_id") == "u1")["user_idx"][0])
    u1_then = int(maps.users.filter(pl.col("user_id") == "u1")["user_idx"][0])
    assert torch.equal(values[now.tolist().index(u1_now)], model.module.user_factors[u1_then])


def test_an_items_file_of_another_catalogue_is_said_with_the_counts(tmp_path, caplog):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "orders.csv").write_text("customer,sku\nc1,s1\nc2,s1\nc2,s2\nc3,s3\n")
    (folder / "catalogue.csv").write_text("sku,name\ns1,Kettle\nx9,Lamp\nx8,Desk\n")
    with caplog.at_level("WARNING"):
        dataset = _load(folder, tmp_path / "d")
    assert "only 1 of the 3 rated items have a row in the items file catalogue.csv (3 rows)" in caplog.text
    assert dataset.items().filter(pl.col("item_id") == "s1")["title"].to_list() == ["Kettle"]  # and the run goes on


def test_settings_that_cannot_apply_are_refused(tmp_path, ml100k_zip):
    source = tmp_path / "events.csv"
    source.write_text("user,item\na,x\nb,x\n")
    assert _refusal(source, tmp_path / "d", items=str(tmp_path / "nope.csv")).endswith(
        f"items (--items): no such file '{tmp_path / 'nope.csv'}'; expected a file of item ids and titles"
    )
    assert _refusal(source, tmp_path / "d", table="orders").endswith(
        "events.csv: is text, not a DuckDB database; source_table (--source-table) and source_query (--source-query) "
        "read a DuckDB file's tables"
    )
    assert _refusal(ml100k_zip, tmp_path / "d", feedback="implicit").endswith(
        "is a MovieLens archive, read as its layout says: --feedback and the other settings for a team's own data "
        "(docs/data.md) do not apply to it; leave them out"
    )


def test_a_file_past_the_size_limit_is_refused_naming_the_setting(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text("user,item\n" + "".join(f"u{i},i{i % 7}\n" for i in range(100)))
    archive = fetch_archive(str(source), tmp_path / "d")
    with pytest.raises(IngestError, match=r"over the 500 byte limit \(max_extracted_bytes \(--max-extracted-bytes\)\)"):
        load_dataset(archive, tmp_path / "d", "fail", 500, ReadSettings({}))
