"""The nightly flow: ingest -> reindex -> split -> train -> evaluate -> (refit) -> recommend -> publish."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from prefect import flow
from prefect.runtime import flow_run

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate_task
from tasks.ingest import fetch_archive_task, load_dataset_task
from tasks.publish import publish_task, record_facts_task, record_history_task, record_metrics_task
from tasks.recommend import recommend_task
from tasks.reindex import reindex_task
from tasks.report import report_task
from tasks.runlog import start_run_task
from tasks.split import split_task
from tasks.train import save_checkpoint_task, train_task


@dataclass(frozen=True)
class RunResult:
    """What a finished nightly run returns (and `recs run` prints)."""

    run_id: str
    model: str
    metrics: pl.DataFrame
    n_recommendations: int
    facts: dict
    summary: str


@flow(name="nightly", log_prints=True)
def nightly(config: PipelineConfig = PipelineConfig()) -> RunResult:
    """Train on the source's ratings, evaluate, and publish every user's top-n to DuckDB."""
    run = start_run_task(config, str(flow_run.id) if flow_run.id else None)
    try:
        with run.stage("ingest"):
            archive = fetch_archive_task.with_options(retries=config.download_retries)(config)
            dataset = load_dataset_task(archive, config)
        run.note(source=archive.source, source_sha256=archive.sha256, dataset_layout=dataset.layout)
        with run.stage("reindex"):
            ratings, maps = reindex_task(dataset, run.directory)
        with run.stage("split"):
            train, test = split_task(ratings, config, run.directory)
        run.note(n_ratings=ratings.height, n_users=maps.n_users, n_items=maps.n_items, n_train=train.height, n_test=test.height)
        with run.stage("train"):
            model = train_task(train, maps, config)
        run.note(model=config.model, device=str(model.device), train_seconds=model.seconds,
                 train_ratings_per_second=model.ratings_per_second)  # fmt: skip
        with run.stage("evaluate"):
            metrics = evaluate_task(model, train, test, maps.n_items, config)
            record_metrics_task(config.warehouse, run.run_id, config.model, metrics)
            record_history_task(config.warehouse, run.run_id, model.history)
        if config.refit_on_all:
            with run.stage("refit"):
                model = train_task(ratings, maps, config, phase="refit")
                record_history_task(config.warehouse, run.run_id, model.history)
        with run.stage("recommend"):
            recommendations = recommend_task(model, ratings, maps, config)
            save_checkpoint_task(model, maps, config, run.directory / "model.pt")
        with run.stage("publish"):
            publish_task(config.warehouse, run.run_id, recommendations, dataset, run.final_facts())
    except BaseException as error:
        run.fail(error)
        raise
    record_facts_task(config.warehouse, run.run_id, {"stage_seconds": run.stage_seconds})  # publish's own time
    summary = report_task(run.run_id, config.model, metrics, run.final_facts())
    return RunResult(run.run_id, config.model, metrics, recommendations.height, run.final_facts(), summary)
