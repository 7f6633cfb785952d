"""The nightly flow: ingest -> reindex -> rules -> split -> for each model: train, evaluate, inspect, record ->
pick the model to publish (and the rating model behind its stars) -> gate -> (refit) -> recommend (the lists,
their reasons, the fallback list and the lists' metrics) -> publish (README, the pipeline diagram).

It wires stages together and does nothing else: each stage is a task in tasks/, each write to the
warehouse goes through warehouse/runs.py, and the run's bookkeeping (lock, run log) sits beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
import warehouse
from flows.cluster import TRAINS_BY_SHARDS, ClusterSession, evaluate_on_cluster, recommend_on_cluster, train_on_cluster
from flows.deadline import run_deadline
from flows.lock import run_lock
from flows.runlog import RunLog, start_run_task
from flows.train import Phase, checkpoint_path, train_on_deployment
from tasks.config import PipelineConfig, describe_overrides
from tasks.evaluate import comparison_table, evaluate_task, published_model, rating_model, with_fit_seconds
from tasks.gate import (
    OnThisSplit,
    PublishedRun,
    candidate_metrics,
    candidate_user_metrics,
    gate_task,
    on_this_split,
    published_run_task,
)
from tasks.ingest import fetch_with_retries, load_dataset_task
from tasks.inspect import inspect_task
from tasks.list_metrics import list_metrics_task
from tasks.publish import publish_task, record_model_task, reject_task
from tasks.publish_check import check_published_model_task, list_coverage_task
from tasks.recommend import recommend_task
from tasks.reindex import IdMaps, reindex_task
from tasks.report import report_task
from tasks.rules import ListRules, fallback_task, list_rules_task
from tasks.split import split_task
from tasks.train import TrainedModel, save_checkpoint_task, train_task
from tasks.warm import WARM_STARTS, starts_warm, warm_start_task
from warehouse.runs import ListExtras, list_counts


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
    config = config.with_overrides(overrides).with_source(source)
    config = config.model_copy(update={"warehouse": warehouse.resolved(config.warehouse)})  # a link, followed once
    if overrides:
        print(describe_overrides(overrides))
    warehouse.no_world_access()
    with (
        run_deadline(config.run_timeout_seconds),
        run_lock(config.warehouse, owner=flow_run.name or "nightly", timeout_seconds=config.lock_timeout_seconds),
    ):
        return _nightly_run(config)


def _nightly_run(config: PipelineConfig) -> RunResult | State:
    run = start_run_task(config, str(flow_run.id) if flow_run.id else None)
    cluster = ClusterSession(config) if config.cluster else None  # started when the first stage needs it
    try:
        run.note(protocol=config.protocol, as_of=config.as_of)
        with run.stage("ingest"):
            archive = fetch_with_retries(config)
            dataset = load_dataset_task(archive, config)
        run.note(
            source=archive.source,
            source_sha256=archive.sha256,
            dataset_layout=dataset.layout,
            n_bad_rows=dataset.n_bad_rows,
            n_duplicate_ratings=dataset.n_duplicate_ratings,
        )
        with run.stage("reindex"):
            ratings, maps = reindex_task(dataset, run.directory, config.as_of)
        with run.stage("rules"):  # a rule that cannot apply fails here, before any training
            rules = list_rules_task(config, dataset.items(), ratings, maps, run.directory)
        with run.stage("split"):
            train, test = split_task(ratings, config, run.directory)
        run.note(
            n_ratings=ratings.height,
            n_users=maps.n_users,
            n_items=maps.n_items,
            n_train=train.height,
            n_test=test.height,
        )

        models, devices, metrics, per_user = {}, {}, {}, {}
        for name in config.models:
            trained = _train_evaluate_record(run, name, train, test, maps, rules, config, cluster)
            models[name], devices[name], metrics[name], per_user[name] = trained

        chosen, why = published_model(metrics, config)
        stars = rating_model(metrics)  # the model whose predicted ratings go beside the lists
        model, rater, refit_histories = models[chosen], models.get(stars), {}
        run.note(
            model=chosen,
            rating_model=stars,
            device=devices[chosen],
            train_seconds=model.seconds,
            train_ratings_per_second=model.ratings_per_second,
        )
        print(f"publishing model {chosen}: {why}")
        with run.stage("gate"):
            candidate = candidate_metrics(metrics, chosen, stars)
            candidate_users = candidate_user_metrics(per_user, chosen, stars, maps)
            published = published_run_task(config.warehouse, run.run_id, archive.sha256, config.protocol)
            here = _published_configuration_here(
                published, (chosen, stars), metrics, per_user, train, test, maps, rules, config, run.directory, cluster
            )
            verdict = gate_task(config.warehouse, published, candidate, candidate_users, here, config)
        run.note(gate_baseline_run_id=verdict.baseline_run_id, gate_reason=verdict.reason)

        extras = None  # what goes beside the lists, once there are lists
        if verdict.publishes:
            if config.refit_on_all:
                with run.stage("refit"):
                    model, rater, refit_histories = _refit(ratings, maps, config, run.directory, chosen, stars, cluster)
            with run.stage("recommend"):
                reasons = None  # on a cluster, in the shards' files beside the lists
                if cluster is not None:  # the shards read the model from model.pt, which it saves first
                    recommendations, report = recommend_on_cluster(
                        model, rater, ratings, maps, config, run.directory, cluster
                    )
                    run.note(cluster=config.cluster, cluster_workers=report.workers)
                else:
                    recommendations, reasons = recommend_task(model, ratings, maps, config, rater, rules)
                    save_checkpoint_task(model, maps, config, run.directory / "model.pt")
                check_published_model_task(
                    models[chosen],
                    model,
                    recommendations,
                    metrics[chosen],
                    train["item_idx"].n_unique(),
                    config,
                    rules.n_allowed,
                )
                fallback = fallback_task(ratings, maps, rules, config.top_n)
                verdict = list_coverage_task(config.warehouse, recommendations, verdict, config, rules.n_allowed)
                list_metrics, verdict = list_metrics_task(
                    config.warehouse, recommendations, ratings, maps, dataset.items(), verdict, config
                )
                extras = ListExtras(reasons, fallback, list_metrics, chosen, maps.users.select("user_id"))
            run.note(gate_reason=verdict.reason)
        if verdict.publishes:
            with run.stage("publish"):
                publish_task(
                    config.warehouse,
                    run.run_id,
                    recommendations,
                    dataset,
                    run.final_facts,
                    refit_histories,
                    config.keep_runs,
                    candidate_users,
                    extras,
                )
            status, n_published = "succeeded", list_counts(recommendations)[0]
        else:
            reject_task(config.warehouse, run.run_id, run.final_facts(), config.keep_runs, extras)
            status, n_published = "rejected", 0
    except BaseException as error:
        run.fail(error)
        raise
    finally:
        if cluster is not None:
            cluster.close()

    comparison = comparison_table(metrics)
    history = pl.concat([models[chosen].history, *([refit_histories[chosen]] if chosen in refit_histories else [])])
    summary = report_task(
        run.run_id,
        status,
        verdict.reason,
        chosen,
        run.final_facts(),
        history,
        run.directory,
        config.warehouse,
        config.trend_runs,
        comparison,
    )
    result = RunResult(
        run.run_id, status, verdict.reason, chosen, metrics[chosen], comparison, n_published, run.final_facts(), summary
    )
    if status == "rejected":
        # The flow run ends Completed but named "Rejected", with the reason: visible in the UI and to automations.
        return Completed(
            name="Rejected", message=f"quality gate rejected run {run.run_id}: {verdict.reason}", data=result
        )
    return result


def _train_evaluate_record(
    run: RunLog,
    name: str,
    train: pl.DataFrame,
    test: pl.DataFrame,
    maps: IdMaps,
    rules: ListRules,
    config: PipelineConfig,
    cluster: ClusterSession | None,
) -> tuple[TrainedModel, str, pl.DataFrame, pl.DataFrame]:
    """One model's part of the run: train, evaluate, inspect, then one write of its results; returns the model,
    its device, its metrics and the per-user values behind them."""
    with run.stage("train"):
        model, device = _train(train, maps, config, run.directory, "train", name, cluster)
    with run.stage("evaluate"):
        metrics, per_user = _evaluate(model, "train", train, test, maps, rules, config, run.directory, cluster)
    with run.stage("inspect"):
        record = inspect_task(model, metrics, train, maps, config)
        record_model_task(config.warehouse, run.run_id, name, record)
    return model, device, metrics, per_user


def _published_configuration_here(
    published: PublishedRun | None,
    candidate: tuple[str, str | None],
    metrics: dict[str, pl.DataFrame],
    per_user: dict[str, pl.DataFrame],
    train: pl.DataFrame,
    test: pl.DataFrame,
    maps: IdMaps,
    rules: ListRules,
    config: PipelineConfig,
    run_dir: Path,
    cluster: ClusterSession | None,
) -> OnThisSplit | None:
    """The published configuration scored on this run's split, for the gate: the run's own fit of each published
    model it trained with the same settings, the others trained here with the published run's settings. None when
    nothing is published, or its settings cannot be read back."""
    if published is None or published.config is None:
        return None
    retrain = published.to_train_here(config, metrics)
    settings = published.settings(config) if retrain else config
    fitted, fitted_users = dict(metrics), dict(per_user)
    for name in retrain:
        print(f"quality gate: training the published {name} with run {published.run_id}'s settings on this split")
        model, _ = _train(train, maps, settings, run_dir, "gate", name, cluster)
        fitted[name], fitted_users[name] = _evaluate(
            model, "gate", train, test, maps, rules, settings, run_dir, cluster
        )
    return on_this_split(published, fitted, fitted_users, maps, retrain, candidate)


def _evaluate(
    model: TrainedModel,
    phase: Phase,
    train: pl.DataFrame,
    test: pl.DataFrame,
    maps: IdMaps,
    rules: ListRules,
    config: PipelineConfig,
    run_dir: Path,
    cluster: ClusterSession | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The model's metrics (with its fit seconds) and per-user values: in process, or by user shards on the
    config's cluster (which read the model from its `phase` checkpoint, and the rules from the run's folder); the
    top-k follows the business rules with `filter_evaluation`."""
    if cluster is None:
        return evaluate_task(model, train, test, maps.n_items, config, rules.for_evaluation(config))
    model_file = checkpoint_path(run_dir, phase, model.name).name
    metrics, per_user, _ = evaluate_on_cluster(model, model_file, train, maps, config, run_dir, cluster)
    return with_fit_seconds(metrics, model.seconds), per_user


def _refit(
    ratings: pl.DataFrame,
    maps: IdMaps,
    config: PipelineConfig,
    run_dir: Path,
    chosen: str,
    stars: str | None,
    cluster: ClusterSession | None,
) -> tuple[TrainedModel, TrainedModel | None, dict[str, pl.DataFrame]]:
    """The published model and the one behind the stars (once when they are the same), refitted on all ratings,
    with their loss histories."""
    model, _ = _train(ratings, maps, config, run_dir, "refit", chosen, cluster)
    if stars is None or stars == chosen:
        return model, model if stars else None, {chosen: model.history}
    rater, _ = _train(ratings, maps, config, run_dir, "refit", stars, cluster)
    return model, rater, {chosen: model.history, stars: rater.history}


def _train(
    ratings: pl.DataFrame,
    maps: IdMaps,
    config: PipelineConfig,
    run_dir: Path,
    phase: Phase,
    name: str,
    cluster: ClusterSession | None,
) -> tuple[TrainedModel, str]:
    """Train on the training deployment when the config names one, by shards on the cluster for the models that
    train there, else here; returns the model and its device."""
    if config.train_deployment:  # the training flow finds its warm start and keeps its checkpoint itself
        return train_on_deployment(ratings, config, run_dir, phase, name)
    init = warm_start_task(config, run_dir.name, name, phase, maps) if starts_warm(config, name, phase) else None
    if cluster is not None and name in TRAINS_BY_SHARDS:
        model, _ = train_on_cluster(ratings, maps, config, run_dir, phase, name, cluster, init)
    else:
        model = train_task(ratings, maps, config, name, phase=phase, init=init)
    if config.warm_start and phase in ("train", "refit") and name in WARM_STARTS:  # for the next night's warm start
        save_checkpoint_task(model, maps, config, checkpoint_path(run_dir, phase, name))
    return model, str(model.device)
