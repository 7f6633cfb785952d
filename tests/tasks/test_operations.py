"""Operations without Prefect: the run lock, replay cutoffs, source change checks and the deployment file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from flows.backfill import parse_every, replay_dates
from flows.lock import RunLockedError, lock_path, run_lock
from tasks.config import PipelineConfig
from tasks.refresh import check_source, remember_announced
from tasks.reindex import ratings_as_of
from tests.helpers import REPO, write_zip


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
    warehouse_path = tmp_path / "w.duckdb"
    with run_lock(warehouse_path, owner="first-run"):
        with pytest.raises(
            RunLockedError,
            match=r"first-run.*not waiting \(lock_timeout_seconds \(--lock-timeout-seconds\) sets the wait\)\. Nothing was changed",
        ):
            with run_lock(warehouse_path, owner="second-run"):
                pass
    with run_lock(warehouse_path, owner="third-run"):  # released on exit
        assert "third-run" in lock_path(warehouse_path).read_text()


@pytest.mark.slow  # waits on another process's lock
def test_waiting_holder_gets_the_lock_once_released(tmp_path):
    warehouse_path = tmp_path / "w.duckdb"
    order, held = [], threading.Event()

    def first():
        with run_lock(warehouse_path, owner="first"):
            order.append("first in")
            held.set()
            time.sleep(0.5)  # holding it while the second one waits
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(timeout=30), "the first holder never got the lock"
    with run_lock(warehouse_path, owner="second", timeout_seconds=10, poll_seconds=0.05):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_a_run_that_does_not_wait_still_waits_out_a_fold_ins_brief_hold(tmp_path):
    """A fold-in holds the run lock for its one write: a nightly at the same minute waits for it, not refused."""
    warehouse_path, held, order = tmp_path / "w.duckdb", threading.Event(), []

    def fold_in():
        with run_lock(warehouse_path, owner="fold-in", brief=True):
            held.set()
            time.sleep(0.3)
            order.append("fold-in out")

    thread = threading.Thread(target=fold_in)
    thread.start()
    assert held.wait(timeout=30)
    with run_lock(warehouse_path, owner="nightly", timeout_seconds=0, poll_seconds=0.05):
        order.append("nightly in")
    thread.join()
    assert order == ["fold-in out", "nightly in"]


@pytest.mark.slow  # SIGKILLs a process
def test_lock_of_a_killed_process_is_released(tmp_path):
    warehouse_path = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from flows.lock import run_lock\n"
            f"with run_lock(Path({str(warehouse_path)!r}), 'doomed'):\n    print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="doomed"):
            with run_lock(warehouse_path, owner="me"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(warehouse_path, owner="me", timeout_seconds=5, poll_seconds=0.05):
        pass


def test_as_of_keeps_ratings_up_to_the_cutoff_and_defaults_to_temporal(ml100k_dataset):
    ratings = ml100k_dataset.ratings()
    cutoff = datetime(1997, 12, 31, 23, 59, 59, tzinfo=UTC)
    kept = ratings_as_of(ratings, cutoff)
    assert 0 < kept.height < ratings.height and kept["timestamp"].max() <= cutoff.timestamp()
    assert kept.height == ratings.filter(ratings["timestamp"] <= int(cutoff.timestamp())).height
    with pytest.raises(ValueError, match="keeps no ratings: they span 1997-09-20 to 1998-04-22"):
        ratings_as_of(ratings, datetime(1990, 1, 1, tzinfo=UTC))
    assert PipelineConfig(as_of="1997-12-31").split == "temporal"
    assert PipelineConfig(as_of="1997-12-31").as_of.tzinfo is not None
    assert PipelineConfig(as_of="1997-12-31", split="stratified").split == "stratified"
    assert PipelineConfig().split == "stratified"


def test_replay_dates():
    cutoffs = replay_dates(date(1997, 10, 1), date(1997, 11, 1), parse_every("14d"))
    assert [c.date() for c in cutoffs] == [date(1997, 10, 1), date(1997, 10, 15), date(1997, 10, 29)]
    assert cutoffs[0].hour == 23 and cutoffs[0].tzinfo == UTC
    assert parse_every("2w") == timedelta(days=14)
    for bad in ("14", "0d", "3h", "two weeks"):
        with pytest.raises(ValueError, match="expected a positive number of days or weeks"):
            parse_every(bad)
    with pytest.raises(ValueError, match="before --start"):
        replay_dates(date(1998, 1, 1), date(1997, 1, 1), timedelta(days=1))


def test_source_check_fires_once_per_new_archive(ml100k_zip, tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ml100k_zip, site / "ratings.zip")
    server = serve(site)
    config = PipelineConfig(source=f"{server.url}/ratings.zip", data_dir=tmp_path / "D")

    first = check_source(config)
    assert first.changed and first.previous_sha256 is None
    remember_announced(config.data_dir, first)
    second = check_source(config)
    assert not second.changed
    assert [status for _, status in server.requests] == [200, 304]  # the second check downloaded nothing

    modified = (site / "ratings.zip").stat().st_mtime
    write_zip(site / "ratings.zip", {"ml-100k/u.data": "1\t1\t5\t881250949\n"})
    os.utime(site / "ratings.zip", (modified + 2, modified + 2))  # a later Last-Modified, as a real update has
    third = check_source(config)
    assert third.changed and third.previous_sha256 == first.sha256


def config_of(deployment) -> PipelineConfig:
    return PipelineConfig(**deployment.parameters["config"])


def test_prefect_yaml_declares_the_schedules_trigger_and_limits():
    import yaml

    from flows.serve import FLOWS, served_deployments

    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    assert {d["entrypoint"] for d in spec["deployments"]} <= set(FLOWS)
    nightly, fold_in, tune, refresh = served_deployments()  # in the file's order
    for deployment in (nightly, refresh):
        PipelineConfig(**deployment.parameters["config"])  # the file's parameters are a valid config
    cron = nightly.schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 3 * * *", "UTC")
    assert nightly.concurrency_limit == 1 and refresh.concurrency_limit == 1
    (trigger,) = nightly.triggers
    assert trigger.expect == {"recs.ratings.updated"}
    assert trigger.parameters == {"source": "{{ event.payload.source }}"}
    (interactions,) = served_deployments(names=("interactions",))
    config = PipelineConfig(**interactions.parameters["config"])  # a team's log: read settings, ranking models only
    assert (config.feedback, config.models, config.user_column) == ("implicit", ["ials", "popularity"], "customer_id")
    assert not interactions.schedules  # on demand until the export exists
    tuning = PipelineConfig(**tune.parameters["config"])  # weekly, on the nightly's data and models
    assert (tune.schedules[0].schedule.cron, tuning.models, tuning.warehouse) == (
        "0 5 * * 0",
        config_of(nightly).models,
        config_of(nightly).warehouse,
    )
    assert tuning.tune.budget_seconds == 600 and tune.concurrency_limit == 1
    folding = config_of(fold_in)  # every quarter hour and on the nightly's event, into the nightly's warehouse
    assert (fold_in.schedules[0].schedule.cron, folding.warehouse) == ("*/15 * * * *", config_of(nightly).warehouse)
    assert [t.expect for t in fold_in.triggers] == [{"recs.ratings.updated"}]
    assert fold_in.concurrency_limit == 1 and fold_in.concurrency_options.collision_strategy.value == "CANCEL_NEW"
