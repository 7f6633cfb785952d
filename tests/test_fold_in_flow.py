"""The fold-in flow on ML-100k in time order: a nightly publishes from the ratings before a cut, then the ratings
after it are folded in. What it publishes, what it leaves alone, and what it refuses."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import polars as pl
import pytest

from flows.fold_in import fold_in
from flows.lock import run_lock
from flows.nightly import nightly
from tasks.config import PipelineConfig
from tasks.fold_in.fold import PublishedModel, fold_in_lists
from tasks.fold_in.read import read_changes
from tasks.run_folder import RunFolder
from tests.helpers import REPO, query_rows
from warehouse.fold_ins import PublishedRunChanged, fold_in_base, publish_fold_in

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

SETTINGS = {"models": ["ials", "dot_bias"], "model": "ials"}


@pytest.fixture(scope="module")
def night(ml100k_zip, tmp_path_factory):
    """ML-100k's ratings before its last tenth (by time) published by a nightly; the next 2,000 ratings as a file of
    new rows. Returns the folder, with `data/` and the published `W.duckdb` that each test copies."""
    folder = tmp_path_factory.mktemp("fold-in")
    raw = zipfile.ZipFile(ml100k_zip).read("ml-100k/u.data")
    columns = ["user_id", "item_id", "rating", "timestamp"]
    ratings = pl.read_csv(io.BytesIO(raw), separator="\t", has_header=False, new_columns=columns).sort("timestamp")
    cut = int(ratings.height * 0.9)
    ratings.head(cut).write_csv(folder / "before.csv")
    ratings.slice(cut, 2000).write_csv(folder / "new.csv")
    config = PipelineConfig(
        source=str(folder / "before.csv"), data_dir=folder / "data", warehouse=folder / "W.duckdb", **SETTINGS
    )
    nightly(config)
    return folder


@pytest.fixture
def published(night, tmp_path) -> PipelineConfig:
    """A copy of the night's warehouse, with the night's data folder."""
    shutil.copy(night / "W.duckdb", tmp_path / "W.duckdb")
    return PipelineConfig(
        source=str(night / "before.csv"), data_dir=night / "data", warehouse=tmp_path / "W.duckdb", **SETTINGS
    )


def _lists(config: PipelineConfig, where: str = "TRUE") -> list[tuple]:
    return query_rows(config.warehouse, f"SELECT * FROM recommendations WHERE {where} ORDER BY user_id, rank")


def _with_new_rows(config: PipelineConfig, path: Path) -> PipelineConfig:
    return config.with_overrides({"fold_in": {"new_rows": str(path)}})


def test_a_fold_in_replaces_its_users_lists_and_no_others(published, night):
    before = _lists(published)
    new = pl.read_csv(night / "new.csv")
    result = fold_in(_with_new_rows(published, night / "new.csv"))
    assert result.status == "published"
    folded = query_rows(
        published.warehouse, "SELECT DISTINCT user_id FROM recommendations WHERE fold_in_id IS NOT NULL"
    )
    users = sorted(user for (user,) in folded)
    assert users == sorted(new["user_id"].unique().to_list())  # every user of the new rows, here all with a list
    others = f"user_id NOT IN ({', '.join(map(str, users))})"
    assert _lists(published, others) == [row for row in before if row[0] not in set(users)]  # byte for byte
    # nothing they rated, today's ratings included, is offered to them; the stars come from the folded dot_bias
    everything = pl.concat([pl.read_csv(night / "before.csv"), new]).select("user_id", "item_id")
    offered = pl.DataFrame(
        query_rows(
            published.warehouse,
            "SELECT user_id, item_id, predicted_rating FROM recommendations WHERE fold_in_id IS NOT NULL",
        ),
        schema=["user_id", "item_id", "predicted_rating"],
        orient="row",
    )
    assert offered.join(everything, on=["user_id", "item_id"]).height == 0
    assert offered["predicted_rating"].null_count() == 0 and offered["predicted_rating"].is_between(1, 5).all()
    (row,) = query_rows(
        published.warehouse,
        "SELECT status, n_new_rows, n_users_added + n_users_changed, n_recommendations, run_id FROM fold_ins",
    )
    assert row[:4] == ("published", 2000, len(users), len(users) * 10)
    assert row[4] == fold_in_base(published.warehouse)["run_id"]  # the night's run, whose model it folded into
    nightly(published)  # the next night replaces every list, folded ones too
    assert query_rows(published.warehouse, "SELECT count(*) FROM recommendations WHERE fold_in_id IS NOT NULL") == [
        (0,)
    ]


def test_a_source_with_no_change_does_nothing_and_says_so(published, night, tmp_path):
    modified = published.warehouse.stat().st_mtime_ns
    unchanged = fold_in(published)  # the night's own source
    assert unchanged.status == "nothing new" and "is unchanged since run" in unchanged.summary
    shuffled = tmp_path / "reordered.csv"  # other bytes, the same ratings
    pl.read_csv(night / "before.csv").sample(fraction=1.0, shuffle=True, seed=1).write_csv(shuffled)
    reordered = fold_in(published.with_overrides({"source": str(shuffled)}))
    assert reordered.status == "nothing new" and "has no interaction that run" in reordered.summary
    assert published.warehouse.stat().st_mtime_ns == modified  # not written: no fold_ins row either


def test_a_fold_in_racing_a_nightly_publishes_nothing_stale(published, night):
    """The fold-in read the live run and folded its users; a nightly published before its write: it refuses."""
    config = _with_new_rows(published, night / "new.csv")
    base = fold_in_base(config.warehouse)
    model = PublishedModel(RunFolder.of(config.data_dir, base["run_id"]), base["model"], base["rating_model"])
    read = read_changes(config, base, model.folder)
    folded = fold_in_lists(model, read.changes.histories, PipelineConfig.from_stored(base["config"]))
    fresh = nightly(published.with_overrides({"source": str(night / "before.csv"), "top_n": 5})).run_id
    nightly_lists = _lists(published)
    record = {"fold_in_id": "racing", "run_id": base["run_id"], "started_at": base_time(published)}
    with pytest.raises(PublishedRunChanged, match=f"run {fresh} published while this fold-in"):
        publish_fold_in(config.warehouse, record, folded.lists, folded.reasons, folded.users)
    assert _lists(published) == nightly_lists
    # and through the flow, the next fold-in folds into the new run's model
    assert fold_in(config).record["run_id"] == fresh


def base_time(config: PipelineConfig):
    return query_rows(config.warehouse, "SELECT max(started_at) FROM runs")[0][0]


def test_a_fold_in_waits_for_a_nightly_holding_the_warehouse_then_publishes_nothing(published, night):
    before = _lists(published)
    config = _with_new_rows(published, night / "new.csv").with_overrides({"fold_in": {"lock_timeout_seconds": 1}})
    with run_lock(config.warehouse, owner="a nightly run"):
        result = fold_in(config)
    assert result.status == "refused" and "another nightly run holds" in result.summary
    assert _lists(published) == before
    assert query_rows(config.warehouse, "SELECT status, reason LIKE '%a nightly run%' FROM fold_ins") == [
        ("refused", True)
    ]


def test_a_model_that_cannot_fold_in_leaves_its_users_to_the_nightly(published, night, tmp_path):
    knn = published.with_overrides({"models": ["user_knn"], "model": None, "warehouse": str(tmp_path / "knn.duckdb")})
    nightly(knn)
    result = fold_in(_with_new_rows(knn, night / "new.csv"))
    assert result.status == "skipped" and "user_knn cannot fold in" in result.summary


def test_sigkill_during_a_fold_in_leaves_the_lists_as_before(published, night):
    """Killed at its write (held at the warehouse's write lock, as behind another writer): the lists stand, and the
    next fold-in publishes."""
    before = _lists(published)
    command = [sys.executable, "-m", "flows.cli", "fold-in", "--source", published.source, "--data-dir"]
    command += [str(published.data_dir), "--warehouse", str(published.warehouse), "--models", "ials,dot_bias"]
    command += ["--fold-in-new-rows", str(night / "new.csv")]
    write_lock = published.warehouse.with_name(published.warehouse.name + ".write-lock")
    with open(write_lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True
        )
        lock = published.warehouse.with_name(published.warehouse.name + ".lock")
        deadline = time.monotonic() + 120
        while '"brief": true' not in (lock.read_text() if lock.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)  # the fold-in holds the run lock: it is at its write
        assert process.poll() is None, "the fold-in ended before its write"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _lists(published) == before
    assert query_rows(published.warehouse, "SELECT count(*) FROM fold_ins") == [(0,)]
    assert fold_in(_with_new_rows(published, night / "new.csv")).status == "published"  # no lock left behind
