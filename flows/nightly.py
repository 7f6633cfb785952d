"""The nightly flow: ingest -> reindex -> split -> train and evaluate each model -> inspect -> pick the model to
publish -> gate -> (refit) -> recommend -> publish."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
from flows.train import Phase, train_on_deployment
from tasks.config import PipelineConfig, redact
from tasks.evaluate import evaluate_task, published_model, with_fit_seconds
from tasks.gate import gate_task
from tasks.ingest import fetch_with_retries, load_dataset_task
from tasks.inspect import inspect_task
from tasks.lock import run_lock
from tasks.publish import publish_task, record_facts_task, record_history_task, record_metrics_task, reject_task
from tasks.recommend import recommend_task
from tasks.reindex import IdMaps, reindex_task
from tasks.report import report_task
from tasks.runlog import start_run_task
from tasks.split import split_task
from tasks.train import TrainedModel, save_checkpoint_task, train_task


@dataclass(frozen=True)
class RunResult:
    """What a finished nightly run returns (and `recs run` prints)."""

    run_id: str
    status: str  # "succeeded" (published) or "rejected" (held back by the quality gate)
    gate: str  # the quality gate's verdict, in words
    model: str  # the published (or, when rejected, the candidate) model
    metrics: pl.DataFrame  # that model's metrics
    comparison: pl.DataFrame  # every trained model's metrics: `model`, `metric`, `k`, `value`
    n_recommendations: int  # published; 0 when rejected
    facts: dict
    summary: str


def _train(ratings: pl.DataFrame, maps: IdMaps, config: PipelineConfig, run_dir: Path, phase: Phase,
           name: str) -> tuple[TrainedModel, str]:  # fmt: skip
    """Train here, or on the training deployment when the config names one; returns the model and its device."""
    if config.train_deployment:
        return train_on_deployment(ratings, config, run_dir, phase, name)
    model = train_task(ratings, maps, config, name, phase=phase)
    return model, str(model.device)


@flow(name="nightly", log_prints=True)
def nightly(
    config: PipelineConfig = PipelineConfig(), source: str | None = None, overrides: dict[str, Any] | None = None
) -> RunResult | State:
    """Train the configured models, evaluate them, and publish the chosen model's top-n if the gate passes.

    Prefect merges a run's parameters into the deployment's at the top level only: a run that passes
    `config` replaces the deployment's whole config. `source` and `overrides` change part of it instead.

    Args:
        config: every parameter of the run (in a deployment: the deployment's config).
        source: replaces `config.source`; event triggers set this one.
        overrides: config fields to change, the others kept as `config` has them, e.g. `{"top_n": 20}` or
            `{"mlp": {"epochs": 8}}`; the result is validated as a whole.
    """
    config = config.with_overrides({**(overrides or {}), **({"source": source} if source else {})})
    if overrides:
        shown = {**overrides, **({"source": redact(overrides["source"])} if "source" in overrides else {})}
        print(f"config fields overridden for this run: {json.dumps(shown, default=str)}")
    with run_lock(config.warehouse, owner=flow_run.name or "nightly", timeout_seconds=config.lock_timeout_seconds):
        return _nightly_run(config)


def _nightly_run(config: PipelineConfig) -> RunResult | State:
    run = start_run_task(config, str(flow_run.id) if flow_run.id else None)
    try:
        run.note(protocol=config.protocol, as_of=config.as_of)
        with run.stage("ingest"):
            archive = fetch_with_retries(config)
            dataset = load_dataset_task(archive, config)
        run.note(source=archive.source, source_sha256=archive.sha256, dataset_layout=dataset.layout,
                 n_bad_rows=dataset.n_bad_rows, n_duplicate_ratings=dataset.n_duplicate_ratings)
        with run.stage("reindex"):
            ratings, maps = reindex_task(dataset, run.directory, config.as_of)
        with run.stage("split"):
            train, test = split_task(ratings, config, run.directory)
        run.note(n_ratings=ratings.height, n_users=maps.n_users, n_items=maps.n_items, n_train=train.height, n_test=test.height)
        models, devices, metrics = {}, {}, {}
        for name in config.models:
            with run.stage("train"):
                models[name], devices[name] = _train(train, maps, config, run.directory, "train", name)
            with run.stage("evaluate"):
                metrics[name] = with_fit_seconds(evaluate_task(models[name], train, test, maps.n_items, config), models[name].seconds)
                record_metrics_task(config.warehouse, run.run_id, name, metrics[name])
                record_history_task(config.warehouse, run.run_id, name, models[name].history)
        with run.stage("inspect"):
            for name, model in models.items():
                inspect_task(config.warehouse, run.run_id, model, train, maps, config)
        chosen, why = published_model(metrics, config)
        model = models[chosen]
        history = [model.history]
        run.note(model=chosen, device=devices[chosen], train_seconds=model.seconds,
                 train_ratings_per_second=model.ratings_per_second)  # fmt: skip
        print(f"publishing model {chosen}: {why}")
        with run.stage("gate"):
            verdict = gate_task(config.warehouse, run.run_id, archive.source, chosen, metrics[chosen], config)
        gate = verdict.reason if verdict.passed or not config.force else f"overridden by force: {verdict.reason}"
        run.note(gate_baseline_run_id=verdict.baseline_run_id, gate_reason=gate)
        if verdict.passed or config.force:
            if config.refit_on_all:
                with run.stage("refit"):
                    model, _ = _train(ratings, maps, config, run.directory, "refit", chosen)
                    record_history_task(config.warehouse, run.run_id, chosen, model.history)
                    history.append(model.history)
            with run.stage("recommend"):
                recommendations = recommend_task(model, ratings, maps, config)
                save_checkpoint_task(model, maps, config, run.directory / "model.pt")
            with run.stage("publish"):
                publish_task(config.warehouse, run.run_id, recommendations, dataset, run.final_facts())
            status, n_published = "succeeded", recommendations.height
        else:
            reject_task(config.warehouse, run.run_id, run.final_facts())
            status, n_published = "rejected", 0
    except BaseException as error:
        run.fail(error)
        raise
    record_facts_task(config.warehouse, run.run_id, {"stage_seconds": run.stage_seconds})  # publish's own time
    comparison = pl.concat([frame.select(pl.lit(name).alias("model"), pl.all()) for name, frame in metrics.items()])
    summary = report_task(run.run_id, status, gate, chosen, run.final_facts(), pl.concat(history),
                          run.directory, config.warehouse, config.trend_runs, comparison)  # fmt: skip
    result = RunResult(run.run_id, status, gate, chosen, metrics[chosen], comparison, n_published, run.final_facts(), summary)
    if status == "rejected":
        # The flow run ends Completed but named "Rejected", with the reason: visible in the UI and to automations.
        return Completed(name="Rejected", message=f"quality gate rejected run {run.run_id}: {gate}", data=result)
    return result
