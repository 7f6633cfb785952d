"""The last check before publishing: the refitted model, which is what gets published, is sane.

Evaluation and the gate judge the model fitted on the training split. With `refit_on_all` the lists come
from a second fit on all ratings, which nothing else checks. It must have finite parameters, a last training
loss in line with the split fit's (`refit_loss_tolerance`), and lists that are not degenerate: at least half
as many distinct items as the split fit's evaluated top-k showed (its coverage@k, scaled to top_n).
Otherwise the run fails, and the published lists stay as they were.

The lists must also not collapse against the ones published now: a night whose lists cover far fewer users or
distinct items (`min_list_share`) than the live lists, say an archive cut to one user, is rejected with the
counts unless forced.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

import warehouse
from tasks.config import PipelineConfig, setting
from tasks.evaluate import metric_value
from tasks.gate import GateVerdict
from tasks.train import TrainedModel
from warehouse.runs import ListFiles, list_counts

log = logging.getLogger(__name__)


class PublishCheckError(RuntimeError):
    """The model about to be published failed its sanity check; nothing was published."""


def last_loss(model: TrainedModel) -> float | None:
    """The last epoch's training loss (None for closed-form models, which record none)."""
    training = model.history.filter(pl.col("split") != "validation")
    return float(training["loss"][-1]) if training.height else None


def check_published_model(
    split_fit: TrainedModel,
    published: TrainedModel,
    lists: pl.DataFrame | ListFiles,
    split_metrics: pl.DataFrame,
    n_catalogue: int,
    config: PipelineConfig,
    n_allowed: int | None = None,
) -> str:
    """Raise `PublishCheckError` unless `published` (the refit of `split_fit`) and its `lists` are sane; returns
    what was checked, in words.

    Args:
        split_fit: the model fitted on the training split, which evaluation and the gate judged.
        published: the model whose lists are about to be published.
        lists: its recommendations (`user_id`, `item_id` per row), or the files a cluster's shards wrote.
        split_metrics: the split fit's metrics (its coverage@k).
        n_catalogue: items in the training split (what coverage is a share of).
        config: `k` and `refit_loss_tolerance`.
        n_allowed: the items the business rules allow (tasks/rules.py); the lists cannot show more.
    """
    broken = _non_finite_tensors(published)
    problems = [f"non-finite values in {', '.join(broken)}"] if broken else []
    before, after = last_loss(split_fit), last_loss(published)
    if before is not None and after is not None:
        if not after <= before * (1 + config.refit_loss_tolerance):  # also catches a NaN loss
            problems.append(
                f"its last training loss {after:.4f} is more than {config.refit_loss_tolerance:.0%} above "
                f"the split fit's {before:.4f} ({setting('refit_loss_tolerance')})"
            )
    coverage = metric_value(split_metrics, "coverage", config.k)
    # what the split fit's top-k showed, scaled to lists of top_n (a rough bound: a list of 5 shows at least
    # about half the distinct items a list of 10 does)
    expected = (coverage or 0.0) * n_catalogue * min(1.0, config.top_n / config.k)
    if n_allowed is not None:
        expected = min(expected, n_allowed)
    n_rows, _, shown = list_counts(lists)
    if n_rows == 0 or shown < 0.5 * expected:
        problems.append(
            f"its lists show {shown} distinct items, against {expected:.0f} expected from the split "
            f"fit's top-{config.k} (its coverage@{config.k})"
        )
    if problems:
        raise PublishCheckError(f"the refitted {published.name} was not published: {'; '.join(problems)}")
    loss = f"last loss {after:.4f} (split fit {before:.4f}), " if before is not None and after is not None else ""
    return f"refitted {published.name}: finite, {loss}{shown} distinct items in its lists"


def _non_finite_tensors(model: TrainedModel) -> list[str]:
    """The model's parameters and buffers that hold a NaN or an infinity."""
    return [
        name
        for name, tensor in (*model.module.named_parameters(), *model.module.named_buffers())
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]


@task(name="publish-check", cache_policy=NO_CACHE)
def check_published_model_task(
    split_fit: TrainedModel,
    published: TrainedModel,
    lists: pl.DataFrame | ListFiles,
    split_metrics: pl.DataFrame,
    n_catalogue: int,
    config: PipelineConfig,
    n_allowed: int | None = None,
) -> None:
    """Prefect wrapper of `check_published_model`; logs what it checked."""
    checked = check_published_model(split_fit, published, lists, split_metrics, n_catalogue, config, n_allowed)
    log.info("publish check passed: %s", checked)


def list_collapse(
    lists: pl.DataFrame | ListFiles, live: dict | None, min_share: float, n_allowed: int | None = None
) -> str | None:
    """How `lists` collapsed against the `live` lists (`run_id`, `users`, `items` of `live_list_coverage`), in
    words, or None when they cover at least `min_share` of the live users and of the live distinct items (of as
    many of those as the business rules allow, `n_allowed`: tightening a rule is not a collapse)."""
    if live is None or not live["users"]:
        return None
    _, n_users, n_items = list_counts(lists)
    live_items = min(live["items"], n_allowed) if n_allowed is not None else live["items"]
    shrunk = [
        f"{new:,} {what} against the live lists' {old:,}"
        for what, new, old in (("users", n_users, live["users"]), ("distinct items", n_items, live_items))
        if new < min_share * old
    ]
    if not shrunk:
        return None
    return (
        f"its lists cover {' and '.join(shrunk)} (run {live['run_id']}), under the {min_share:.0%} share "
        f"{setting('min_list_share')} allows"
    )


@task(name="list-coverage", cache_policy=NO_CACHE)
def list_coverage_task(
    path: Path,
    lists: pl.DataFrame | ListFiles,
    verdict: GateVerdict,
    config: PipelineConfig,
    n_allowed: int | None = None,
) -> GateVerdict:
    """The gate's `verdict`, turned into a rejection when `lists` collapsed against the live lists (`list_collapse`);
    with `force` the run publishes anyway and the reason says so."""
    with warehouse.open_reader(path) as con:
        live = warehouse.fetch(con, "live_list_coverage", {})
    collapse = list_collapse(lists, live.row(0, named=True) if live.height else None, config.min_list_share, n_allowed)
    if collapse is None:
        return verdict
    if config.force:
        log.warning("the lists collapsed but %s publishes them anyway: %s", setting("force"), collapse)
    else:
        log.warning("the run's lists were not published: %s", collapse)
    return verdict.rejected_by(collapse, config.force)
