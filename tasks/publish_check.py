"""The last check before publishing: the refitted model, which is what gets published, is sane.

Evaluation and the gate judge the model fitted on the training split. With `refit_on_all` the lists come
from a second fit on all ratings, which nothing else checks. It must have finite parameters, a last training
loss in line with the split fit's (`refit_loss_tolerance`), and lists that are not degenerate: at least half
as many distinct items as the split fit's evaluated top-k showed (its coverage@k, scaled to top_n).
Otherwise the run fails, and the published lists stay as they were.
"""

from __future__ import annotations

import logging

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig, setting
from tasks.evaluate import metric_value
from tasks.train import TrainedModel

log = logging.getLogger(__name__)


class PublishCheckError(RuntimeError):
    """The model about to be published failed its sanity check; nothing was published."""


def last_loss(model: TrainedModel) -> float | None:
    """The last epoch's training loss (None for closed-form models, which record none)."""
    training = model.history.filter(pl.col("split") != "validation")
    return float(training["loss"][-1]) if training.height else None


def check_published_model(split_fit: TrainedModel, published: TrainedModel, lists: pl.DataFrame,
                          split_metrics: pl.DataFrame, n_catalogue: int, config: PipelineConfig) -> str:  # fmt: skip
    """Raise `PublishCheckError` unless `published` (the refit of `split_fit`) and its `lists` are sane; returns
    what was checked, in words.

    Args:
        split_fit: the model fitted on the training split, which evaluation and the gate judged.
        published: the model whose lists are about to be published.
        lists: its recommendations (`item_id` per row).
        split_metrics: the split fit's metrics (its coverage@k).
        n_catalogue: items in the training split (what coverage is a share of).
        config: `k` and `refit_loss_tolerance`.
    """
    problems = []
    broken = [name for name, tensor in (*published.module.named_parameters(), *published.module.named_buffers())
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]  # fmt: skip
    if broken:
        problems.append(f"non-finite values in {', '.join(broken)}")
    before, after = last_loss(split_fit), last_loss(published)
    if before is not None and after is not None:
        if not after <= before * (1 + config.refit_loss_tolerance):  # also catches a NaN loss
            problems.append(f"its last training loss {after:.4f} is more than {config.refit_loss_tolerance:.0%} above "
                            f"the split fit's {before:.4f} ({setting('refit_loss_tolerance')})")  # fmt: skip
    coverage = metric_value(split_metrics, "coverage", config.k)
    # what the split fit's top-k showed, scaled to lists of top_n (a rough bound: a list of 5 shows at least
    # about half the distinct items a list of 10 does)
    expected = (coverage or 0.0) * n_catalogue * min(1.0, config.top_n / config.k)
    shown = lists["item_id"].n_unique()
    if lists.height == 0 or shown < 0.5 * expected:
        problems.append(f"its lists show {shown} distinct items, against {expected:.0f} expected from the split "
                        f"fit's top-{config.k} (its coverage@{config.k})")  # fmt: skip
    if problems:
        raise PublishCheckError(f"the refitted {published.name} was not published: {'; '.join(problems)}")
    loss = f"last loss {after:.4f} (split fit {before:.4f}), " if before is not None and after is not None else ""
    return f"refitted {published.name}: finite, {loss}{shown} distinct items in its lists"


@task(name="publish-check", cache_policy=NO_CACHE)
def check_published_model_task(split_fit: TrainedModel, published: TrainedModel, lists: pl.DataFrame,
                               split_metrics: pl.DataFrame, n_catalogue: int, config: PipelineConfig) -> None:  # fmt: skip
    """Prefect wrapper of `check_published_model`; logs what it checked."""
    checked = check_published_model(split_fit, published, lists, split_metrics, n_catalogue, config)
    log.info("publish check passed: %s", checked)
