"""The warehouse: idempotent schema, atomic replacement of the lists, failed runs leave them untouched."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest

import warehouse
from tests.helpers import query_rows
from warehouse import open_writer
from warehouse.runs import ListFiles, ModelRecord, list_counts, mark_failed, publish, record_model, start_run


def _recs(user_ids, run_offset=0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [u for u in user_ids for _ in range(2)],
            "item_id": [i + run_offset for _ in user_ids for i in (1, 2)],
            "rank": [1, 2] * len(user_ids),
            "score": [4.5, 4.0] * len(user_ids),
        }
    )


ITEMS = pl.DataFrame(
    {
        "item_id": [1, 2, 101, 102],
        "title": ["A (1990)", "B", "C", "D"],
        "genres": [["Drama"], [], [], []],
        "year": [1990, None, None, None],
    },
    schema={"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String), "year": pl.Int32},
)


def _start(path, run_id):
    start_run(path, run_id, None, json.dumps({"k": 10}), datetime.now(UTC))


def test_schema_is_idempotent(tmp_path):
    path = tmp_path / "w.duckdb"
    for _ in range(2):
        with open_writer(path):
            pass
    with duckdb.connect(str(path)) as con:
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {
        "recommendations",
        "items",
        "runs",
        "run_metrics",
        "training_history",
        "recommendations_with_titles",
    } <= tables


def test_publish_replaces_lists_and_marks_run(tmp_path):
    path = tmp_path / "w.duckdb"
    _start(path, "run-1")
    publish(path, "run-1", _recs([1, 2]), ITEMS, {"n_ratings": 4, "stage_seconds": {"train": 1.5}})
    _start(path, "run-2")
    publish(path, "run-2", _recs([3], run_offset=100), ITEMS, {"n_ratings": 5})
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [("run-2",)]
        assert con.execute("SELECT user_id, item_id, rank FROM recommendations ORDER BY rank").fetchall() == [
            (3, 101, 1),
            (3, 102, 2),
        ]
        runs = con.execute(
            "SELECT run_id, status, n_ratings, stage_seconds->>'train' FROM runs ORDER BY run_id"
        ).fetchall()
        assert runs == [("run-1", "succeeded", 4, "1.5"), ("run-2", "succeeded", 5, None)]
        titled = warehouse.fetch(con, "user_recommendations", {"user_id": 3})
    assert titled["title"].to_list() == ["C", "D"]


def test_lists_in_shard_files_publish_as_the_same_lists_in_one_write(tmp_path):
    lists = _recs([1, 2, 3]).with_columns(predicted_rating=pl.lit(3.5, pl.Float32))
    paths = []
    for i, shard in enumerate(lists.partition_by("user_id", maintain_order=True)):  # one file per user, as shards
        paths.append(tmp_path / f"recommend-{i}.parquet")
        shard.write_parquet(paths[-1])
    files = ListFiles.count(paths)
    assert list_counts(files) == list_counts(lists) == (6, 3, 2)
    rows = "SELECT user_id, item_id, rank, score, predicted_rating, run_id FROM recommendations ORDER BY ALL"
    for run_id, published in (("from-frame", lists), ("from-files", files)):
        _start(tmp_path / f"{run_id}.duckdb", run_id)
        publish(tmp_path / f"{run_id}.duckdb", run_id, published, ITEMS, {"n_ratings": 6})
    frame_rows, file_rows = (query_rows(tmp_path / f"{run_id}.duckdb", rows) for run_id in ("from-frame", "from-files"))
    assert [row[:5] for row in file_rows] == [row[:5] for row in frame_rows] and len(file_rows) == 6
    assert {row[5] for row in file_rows} == {"from-files"}
    stamped = "SELECT DISTINCT generated_at IS NOT NULL, (SELECT status FROM runs) FROM recommendations"
    assert query_rows(tmp_path / "from-files.duckdb", stamped) == [(True, "succeeded")]


def test_failed_run_leaves_published_lists_untouched(tmp_path):
    path = tmp_path / "w.duckdb"
    _start(path, "good")
    publish(path, "good", _recs([1]), ITEMS, {})
    _start(path, "bad")
    mark_failed(path, "bad", "IngestError: HTTP 404", {"stage_seconds": {"ingest": 0.1}})
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [("good",)]
        assert con.execute("SELECT status, error FROM runs WHERE run_id = 'bad'").fetchall()[0] == (
            "failed",
            "IngestError: HTTP 404",
        )


def test_publish_failure_rolls_back(tmp_path):
    path = tmp_path / "w.duckdb"
    _start(path, "good")
    publish(path, "good", _recs([1]), ITEMS, {})
    _start(path, "broken")
    with pytest.raises(ValueError, match="no settable column"):
        publish(path, "broken", _recs([9]), ITEMS, {"not_a_column": 1})
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [("good",)]
        assert con.execute("SELECT status FROM runs WHERE run_id = 'broken'").fetchall()[0] == ("running",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.duckdb", "w.duckdb.write-lock"]  # no staging copy left


def test_metrics_and_history_in_long_form(tmp_path):
    path = tmp_path / "w.duckdb"
    _start(path, "r")
    metrics = pl.DataFrame(
        {"metric": ["rmse", "ndcg"], "k": [None, 10], "value": [0.9, 0.1]},
        schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64},
    )
    history = pl.DataFrame({"epoch": [1, 2], "split": ["train", "train"], "loss": [1.0, 0.8]})
    record_model(path, "r", "dot_bias", ModelRecord(metrics, history))
    record_model(path, "r", "dot_bias", ModelRecord(metrics, history))  # re-recording replaces, never duplicates
    with duckdb.connect(str(path), read_only=True) as con:
        assert warehouse.fetch(con, "run_metrics", {"run_id": "r"}).rows() == [
            ("dot_bias", "rmse", None, 0.9),
            ("dot_bias", "ndcg", 10, 0.1),
        ]
        assert con.execute("SELECT count(*) FROM training_history WHERE run_id = 'r'").fetchall()[0] == (2,)


def test_a_write_keeps_the_warehouses_permissions(tmp_path):
    path = tmp_path / "w.duckdb"
    with open_writer(path):
        pass
    path.chmod(0o640)
    with open_writer(path) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    assert path.stat().st_mode & 0o777 == 0o640
    assert query_rows(path, "SELECT x FROM t") == [(1,)]


def test_too_little_free_space_is_refused_before_copying(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    path = tmp_path / "w.duckdb"
    with open_writer(path) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    before = path.read_bytes()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 10**6, 10**6))  # 1 MB free
    with pytest.raises(warehouse.WarehouseSpaceError, match=r"not enough free space to write .*w\.duckdb"):
        with open_writer(path):
            pass
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "w.duckdb",
        "w.duckdb.write-lock",
    ]


def test_a_copy_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno
    import shutil

    path = tmp_path / "w.duckdb"
    with open_writer(path) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    before = path.read_bytes()

    def disk_full(source, target):  # the device fills up after half the file
        with open(target, "wb") as out:
            out.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        with open_writer(path):
            pass
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "w.duckdb",
        "w.duckdb.write-lock",
    ]


def test_retention_keeps_the_detail_tables_of_the_last_published_runs_and_every_metric(tmp_path):
    from warehouse.runs import mark_rejected

    path = tmp_path / "w.duckdb"
    record = ModelRecord(
        pl.DataFrame(
            {"metric": ["ndcg"], "k": [10], "value": [0.1]},
            schema={"metric": pl.String, "k": pl.Int32, "value": pl.Float64},
        ),
        pl.DataFrame({"epoch": [1, 2], "split": ["train", "train"], "loss": [1.0, 0.9]}),
        pl.DataFrame({"item_id": [1, 2], "bias": [0.1, -0.1], "mean_rating": [4.0, 3.0], "n_ratings": [3, 2]}),
        pl.DataFrame({"item_id": [1, 2], "rank": [1, 1], "similar_item_id": [2, 1], "score": [0.5, 0.5]}),
    )
    outcomes = ["succeeded", "rejected", "succeeded", "succeeded", "rejected", "succeeded"]
    for night, outcome in enumerate(outcomes):
        run_id = f"r{night}"
        start_run(path, run_id, None, "{}", datetime(2026, 1, 1 + night, tzinfo=UTC))
        record_model(path, run_id, "ials", record)
        if outcome == "succeeded":
            publish(path, run_id, _recs([1]), ITEMS, {"model": "ials"}, keep_runs=2)
        else:
            mark_rejected(path, run_id, {"gate_reason": "worse"}, keep_runs=2)
    # the last two published runs are r3 and r5: details are kept from r3 on (the rejected r4 included)
    for table in ("similar_items", "item_biases", "training_history"):
        kept = query_rows(path, f"SELECT DISTINCT run_id FROM {table} ORDER BY run_id")
        assert kept == [("r3",), ("r4",), ("r5",)], table
    assert query_rows(path, "SELECT count(DISTINCT run_id) FROM run_metrics") == [(6,)]
    assert query_rows(path, "SELECT count(*) FROM runs") == [(6,)]

    publish(path, "r5", _recs([1]), ITEMS, {"model": "ials"}, keep_runs=0)  # 0 keeps all: nothing more goes
    assert query_rows(path, "SELECT count(DISTINCT run_id) FROM similar_items") == [(3,)]
