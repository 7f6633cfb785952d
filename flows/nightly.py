"""The nightly flow: ingest -> reindex -> rules -> split -> for each model: train, evaluate, inspect, record ->
pick the model to publish (and the rating model behind its stars) -> gate -> (refit) -> recommend (the lists,
their reasons, the fallback list and the lists' metrics) -> publish (README, the pipeline diagram).

It wires stages together and does nothing else: each stage is a task in tasks/, each write to the
warehouse goes through warehouse/runs.py, and the run's bookkeeping (lock, run log) sits beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

import flows.logs  # noqa: F401  (routes tasks.* logs to the Prefect run)
import warehouse
from flows.deadline import run_deadline
from flows.lock import run_lock
from flows.placement import Placement
from flows.runlog import RunLog, start_run_task
from tasks.config import PipelineConfig, describe_overrides
from tasks.gate import GateVerdict, OnThisSplit, PublishedRun, Side, gate_task, on_this_split, published_run_task
from tasks.ingest import config_for_data_task, fetch_with_retries, load_dataset_task, with_default_source
from tasks.inspect import inspect_task
from tasks.list_metrics import list_metrics_task
from tasks.publish import publish_task, record_model_task, reject_task
from tasks.publish_check import check_published_model_task, list_coverage_task
from tasks.reindex import reindex_task
from tasks.report import published_history, report_task
from tasks.rules import fallback_task, list_rules_task
from tasks.run_inputs import Candidates, Choice, Lists, RunInputs
from tasks.split import split_task
from tasks.train import TrainedModel
from tasks.tune.stage import tuned_config_task
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
        source: replaces `config.source`; event triggers set this one. When neither names a source, the run
            reads the environment variable RECS_SOURCE, else the Prefect Variable recs_source (docs/operations.md).
        overrides: config fields to change, the others kept as `config` has them, e.g. `{"top_n": 20}` or
            `{"mlp": {"epochs": 8}}`; the result is validated as a whole.
    """
    config = with_default_source(config.with_overrides(overrides).with_source(source))
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
    where = Placement(config)
    try:
        inputs = _prepare(run, config)
        candidates = _train_every_model(run, inputs, where)
        choice = _choose(run, candidates, inputs.config)
        verdict, judged = _gate(run, inputs, candidates, choice, where)
        lists = _make_lists(run, inputs, candidates, choice, verdict, where) if verdict.publishes else None
        status = _publish_or_reject(run, inputs, judged.users, lists)
    except BaseException as error:
        run.fail(error)
        raise
    finally:
        where.close()
    return _finish(run, status, lists.verdict if lists else verdict, candidates, choice, lists)


def _prepare(run: RunLog, config: PipelineConfig) -> RunInputs:
    """Ingest, reindex, the business rules and the split: the run's inputs, saved in its folder."""
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
    config = config_for_data_task(config, dataset)  # implicit feedback: no rating model; no time column: no as_of
    config, tuning_run_id, taken = tuned_config_task(config, dataset)  # what `recs tune` chose for this data
    run.settings_chosen(config, tuning_run_id, taken)
    # Reindex and the split run out of core, from the parsed parquet to the run folder's files (warehouse/engine.py):
    # the stages after them read those files when they need the ratings, and this process never holds them all.
    with run.stage("reindex"):
        maps = reindex_task(dataset, run.directory, config.as_of, config.out_of_core)
    with run.stage("rules"):  # a rule that cannot apply fails here, before any training
        rules = list_rules_task(config, dataset.items(), pl.scan_parquet(run.folder.ratings), maps, run.directory)
    with run.stage("split"):
        n_train, n_test = split_task(config, run.directory)
    run.note(n_ratings=n_train + n_test, n_users=maps.n_users, n_items=maps.n_items, n_train=n_train, n_test=n_test)
    return RunInputs(config, run.folder, dataset, maps, rules)


def _train_every_model(run: RunLog, inputs: RunInputs, where: Placement) -> Candidates:
    """Each configured model trained, evaluated, inspected and recorded, one write each."""
    candidates = Candidates()
    for number, name in enumerate(inputs.config.models, start=1):
        with run.stage("train", f"{name} ({number} of {len(inputs.config.models)}), then its evaluation"):
            model, device = where.train(inputs, "train", name)
        with run.stage("evaluate", announce=False):
            metrics, per_user = where.evaluate(model, "train", inputs)
        with run.stage("inspect", announce=False):
            record = inspect_task(model, metrics, inputs.scan_train(), inputs.maps, inputs.config)
            record_model_task(inputs.config.warehouse, run.run_id, name, record)
        candidates.add(model, device, metrics, per_user)
    return candidates


def _choose(run: RunLog, candidates: Candidates, config: PipelineConfig) -> Choice:
    choice = candidates.choose(config)
    model = candidates.models[choice.model]
    run.note(
        model=choice.model,
        rating_model=choice.stars,
        device=candidates.devices[choice.model],
        train_seconds=model.seconds,
        train_ratings_per_second=model.ratings_per_second,
    )
    print(f"publishing model {choice.model}: {choice.why}")
    return choice


def _gate(
    run: RunLog, inputs: RunInputs, candidates: Candidates, choice: Choice, where: Placement
) -> tuple[GateVerdict, Side]:
    """The quality gate's verdict on the chosen models against the published configuration, and what it judged
    (their metrics and per-user values, which are stored with the lists)."""
    config = inputs.config
    with run.stage("gate"):
        judged = candidates.judged(choice, inputs.maps)
        published = published_run_task(config.warehouse, run.run_id, inputs.dataset.sha256, config.protocol)
        here = _published_configuration_here(published, choice, candidates, inputs, where)
        verdict = gate_task(config.warehouse, published, judged, here, config)
    run.note(gate_baseline_run_id=verdict.baseline_run_id, gate_reason=verdict.reason)
    return verdict, judged


def _published_configuration_here(
    published: PublishedRun | None, choice: Choice, candidates: Candidates, inputs: RunInputs, where: Placement
) -> OnThisSplit | None:
    """The published configuration scored on this run's split, for the gate: the run's own fit of each published
    model it trained with the same settings, the others trained here with the published run's settings. None when
    nothing is published, or its settings cannot be read back."""
    if published is None or published.config is None:
        return None
    retrain = published.to_train_here(inputs.config, candidates.metrics)
    theirs = inputs.with_settings(published.settings(inputs.config)) if retrain else inputs
    metrics, per_user = dict(candidates.metrics), dict(candidates.per_user)
    for name in retrain:
        print(f"quality gate: training the published {name} with run {published.run_id}'s settings on this split")
        model, _ = where.train(theirs, "gate", name)
        metrics[name], per_user[name] = where.evaluate(model, "gate", theirs)
    return on_this_split(published, metrics, per_user, inputs.maps, retrain, choice.models)


def _make_lists(
    run: RunLog, inputs: RunInputs, candidates: Candidates, choice: Choice, verdict: GateVerdict, where: Placement
) -> Lists:
    """The published model (refitted on every rating with `refit_on_all`), its lists and what goes beside them,
    checked; the verdict comes back updated by the lists' checks (coverage, churn)."""
    config = inputs.config
    model, rater = candidates.models[choice.model], candidates.models.get(choice.stars or "")
    refits: dict[str, pl.DataFrame] = {}
    if config.refit_on_all:
        with run.stage("refit"):
            model, rater, refits = _refit(inputs, candidates, choice, where)
    with run.stage("recommend"):
        lists = where.recommend(model, rater, inputs, run)  # the shards' files, their reasons beside them
        split_fit, allowed = candidates.models[choice.model], inputs.rules.n_allowed
        metrics = candidates.metrics[choice.model]
        check_published_model_task(split_fit, model, lists, metrics, inputs.catalogue, config, allowed)
        fallback = fallback_task(inputs.scan_ratings(), inputs.maps, inputs.rules, config.top_n)
        verdict = list_coverage_task(config.warehouse, lists, verdict, config, allowed)
        items = inputs.dataset.items()
        metrics, verdict = list_metrics_task(
            config.warehouse, lists, inputs.scan_ratings(), inputs.maps, items, verdict, config
        )
        extras = ListExtras(None, fallback, metrics, choice.model, inputs.maps.users.select("user_id"))
    run.note(gate_reason=verdict.reason)
    return Lists(lists, extras, refits, verdict)


def _refit(
    inputs: RunInputs, candidates: Candidates, choice: Choice, where: Placement
) -> tuple[TrainedModel, TrainedModel | None, dict]:
    """The published model and the one behind the stars (once when they are the same), refitted on all ratings
    (from their split fits where their settings say so), with their loss histories."""
    model, _ = where.train(inputs, "refit", choice.model, candidates.models[choice.model])
    if choice.stars is None or choice.stars == choice.model:
        return model, model if choice.stars else None, {choice.model: model.history}
    rater, _ = where.train(inputs, "refit", choice.stars, candidates.models[choice.stars])
    return model, rater, {choice.model: model.history, choice.stars: rater.history}


def _publish_or_reject(run: RunLog, inputs: RunInputs, judged_users: pl.DataFrame | None, lists: Lists | None) -> str:
    """Publish the lists in one write, with the per-user values the gate judged, when the verdict (after the lists'
    checks) lets them through, else record the run as rejected; returns its status."""
    config = inputs.config
    if lists is not None and lists.verdict.publishes:
        with run.stage("publish"):
            publish_task(
                config.warehouse,
                run.run_id,
                lists.recommendations,
                inputs.dataset,
                run.final_facts,
                lists.refit_histories,
                config.keep_runs,
                judged_users,
                lists.extras,
            )
        return "succeeded"
    extras = lists.extras if lists is not None else None
    reject_task(config.warehouse, run.run_id, run.final_facts(), config.keep_runs, extras)
    return "rejected"


def _finish(
    run: RunLog, status: str, verdict: GateVerdict, candidates: Candidates, choice: Choice, lists: Lists | None
) -> RunResult | State:
    """The run's report and result; a rejected run ends Completed but named "Rejected", with the reason."""
    config, comparison = run.config, candidates.comparison()
    history = published_history(candidates.models[choice.model], lists.refit_histories if lists else {})
    facts = run.final_facts()
    summary = report_task(
        run.run_id,
        status,
        verdict.reason,
        choice.model,
        facts,
        history,
        run.directory,
        config.warehouse,
        config.trend_runs,
        comparison,
    )
    published = list_counts(lists.recommendations)[0] if status == "succeeded" and lists else 0
    result = RunResult(
        run.run_id,
        status,
        verdict.reason,
        choice.model,
        candidates.metrics[choice.model],
        comparison,
        published,
        facts,
        summary,
    )
    if status == "rejected":  # visible in the UI and to automations
        return Completed(
            name="Rejected", message=f"quality gate rejected run {run.run_id}: {verdict.reason}", data=result
        )
    return result
