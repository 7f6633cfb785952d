"""Where a run's stages run: a fit on the training deployment when the config names one, the models that train by
shards and the evaluation and lists on the cluster when it names one, everything else in this process.

The stages are the same functions wherever they run (tasks/); this only picks the way to call them.
"""

from __future__ import annotations

import polars as pl

from flows.cluster import ClusterSession, evaluate_on_cluster, recommend_on_cluster, train_on_cluster
from flows.runlog import RunLog
from flows.train import train_on_deployment
from tasks.checkpoint import save_checkpoint_task
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate_task
from tasks.models import MODELS
from tasks.run_inputs import RunInputs
from tasks.shards import ListModels, recommend_in_process, save_list_inputs
from tasks.train import TrainedModel, train_task
from tasks.warm import keeps_checkpoint, split_fit_start, warm_start
from warehouse.runs import ListFiles


class Placement:
    """The run's way of running each stage; `close` ends its cluster, when it started one."""

    def __init__(self, config: PipelineConfig) -> None:
        self.cluster = ClusterSession(config) if config.cluster.address else None  # started when a stage first needs it

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()

    def train(
        self, inputs: RunInputs, phase: str, name: str, split_fit: TrainedModel | None = None
    ) -> tuple[TrainedModel, str]:
        """`name`'s fit of `phase` (the refit on every rating, the others on the training split) and its device. A
        refit starts from the last published run's refit (`warm_start`), else from `split_fit`, tonight's fit on the
        training split, for the model's `refit_epochs` when it has them, else from scratch."""
        config = fit_config = inputs.config
        if config.train_deployment:  # the training flow finds its warm start and keeps its checkpoint itself
            return train_on_deployment(config, inputs.folder, phase, name)
        init = warm_start(config, inputs.folder.run_id, name, phase, inputs.maps)
        if init is None and (from_split_fit := split_fit_start(config, name, phase, split_fit)):
            init, fit_config = from_split_fit
        if self.cluster is not None and MODELS[name].trains_by_shards:
            model, _ = train_on_cluster(inputs.with_settings(fit_config), phase, name, self.cluster, init)
        else:
            model = train_task(inputs.folder, inputs.maps, fit_config, name, phase=phase, init=init)
        if keeps_checkpoint(config, name, phase):  # for the next night's warm start
            save_checkpoint_task(model, inputs.maps, config, inputs.folder.checkpoint(phase, name))
        return model, str(model.device)

    def evaluate(self, model: TrainedModel, phase: str, inputs: RunInputs) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The model's metrics (with its fit seconds) and per-user values; the top-k follows the business rules
        with `filter_evaluation`."""
        if self.cluster is not None:
            metrics, per_user, _ = evaluate_on_cluster(model, phase, inputs, self.cluster)
            return metrics, per_user
        allowed = inputs.rules.for_evaluation(inputs.config)
        return evaluate_task(model, inputs.train, inputs.test, inputs.maps.n_items, inputs.config, allowed)

    def recommend(self, model: TrainedModel, rater: TrainedModel | None, inputs: RunInputs, run: RunLog) -> ListFiles:
        """The lists, by user shards on the cluster or in this process, in the run folder's shard files with their
        reasons beside them; the published model is saved as the run folder's `published_model`, and the rating
        model behind the stars, when it is another, as its `rater` (what a fold-in folds users into, tasks/fold_in,
        and what a cluster's shards load)."""
        if self.cluster is not None:
            files, report = recommend_on_cluster(model, rater, inputs, self.cluster)
            run.note(cluster=inputs.config.cluster.address, cluster_workers=report.workers)
            return files
        save_list_inputs(model, rater, inputs)
        return recommend_in_process(ListModels(model, rater), inputs)
