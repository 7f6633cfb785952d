"""The pipeline's one configuration model: every parameter of a nightly run lives here.

It is the nightly flow's only parameter (so the Prefect UI shows it as a form), the source of every
`recs run --option` (flags are generated from these fields and their descriptions), and it is stored
as JSON with each run in `runs.config` and in the run's checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model, field_serializer, field_validator, model_validator

from tasks.models import MODELS, ModelParams
from tasks.naming import flag, setting
from tasks.sources import ML_100K_URL, local_path, local_source_problem, redact, source_scheme
from tasks.trend import DEFAULT_TREND_RUNS
from warehouse.reader import DEFAULT_WAREHOUSE

__all__ = [  # the helpers other modules import from here, beside the config itself
    "ML_100K_URL",
    "flag",
    "local_path",
    "local_source_problem",
    "redact",
    "setting",
    "source_scheme",
]

log = logging.getLogger(__name__)

# 8 GiB: ml-32m's ratings.csv, the largest MovieLens file, is 0.9 GB.
MAX_EXTRACTED_BYTES = 8 << 30

SplitMethod = Literal["stratified", "random", "temporal"]
Device = Literal["auto", "cuda", "mps", "cpu"]
BadRowPolicy = Literal["fail", "drop"]
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)  # every registered model (tasks/models)

# Test share each split method uses when `test_fraction` is not set: the Microsoft Recommenders
# MovieLens protocol for the per-user splits, the seeds' global 80/20 for `random`.
DEFAULT_TEST_FRACTION: dict[str, float] = {"stratified": 0.25, "random": 0.2, "temporal": 0.25}


def _deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Top-level fields of the config that moved into a group: the first six were `dot_bias`'s (`y_margin` `mlp`'s
# too) before each model owned its settings. Accepted for one more release, with a warning naming the new field.
LEGACY_FIELDS: dict[str, tuple[str, ...]] = {
    "factors": ("dot_bias.factors",),
    "epochs": ("dot_bias.epochs",),
    "batch_size": ("dot_bias.batch_size",),
    "learning_rate": ("dot_bias.learning_rate",),
    "regularization": ("dot_bias.regularization",),
    "y_margin": ("dot_bias.y_margin", "mlp.y_margin"),
    # Before the settings were grouped by what they are for.
    "download_timeout_seconds": ("download.timeout_seconds",),
    "download_retries": ("download.retries",),
    "download_retry_delay_seconds": ("download.retry_delay_seconds",),
    "gate_tolerance": ("gate.tolerance",),
    "gate_drift_tolerance": ("gate.drift_tolerance",),
    "gate_confidence": ("gate.confidence",),
    "gate_resamples": ("gate.resamples",),
    "gate_max_churn": ("gate.max_churn",),
    "shard_users": ("cluster.shard_users",),
    "cluster_timeout_seconds": ("cluster.timeout_seconds",),
}
# `cluster` was the address itself before it became a group: a string there is moved to `cluster.address`.
CLUSTER_ADDRESS = "cluster.address"


def _move_legacy_fields(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the legacy top-level fields moved into their model groups (a group's own value wins)."""
    values = dict(values)
    for name, targets in LEGACY_FIELDS.items():
        if name not in values:
            continue
        value = values.pop(name)
        for target in targets:
            group, _, field = target.partition(".")
            current = values.get(group)
            current = current.model_dump(exclude_unset=True) if isinstance(current, BaseModel) else dict(current or {})
            values[group] = {field: value, **current}
        if value is not None:
            unchanged = all(flag(target) == flag(name) for target in targets)
            said = f"the setting {name}" if unchanged else setting(name)
            warnings.warn(
                f"{said} is deprecated and will be removed in the next release; use "
                + " and ".join(target if unchanged else setting(target) for target in targets)
                + (f" (the option {flag(name)} is unchanged)" if unchanged else ""),
                FutureWarning,
                stacklevel=2,
            )
    return values


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"\s*-?\d+\s*", text))


def _is_file_name(text: str) -> bool:
    """A value of `exclude_items` that names a file: a path with a folder, or a name with a suffix of letters
    (`blocked.txt`); anything else is an item id (`tt0114709`, `B00004SB92`)."""
    return "/" in text or "\\" in text or bool(re.search(r"\.[A-Za-z]{1,5}$", text.strip()))


def describe_overrides(overrides: dict[str, Any]) -> str:
    """What a run's `overrides` changed, for its log, with any credentials in a source removed."""
    shown = {**overrides, **({"source": redact(overrides["source"])} if "source" in overrides else {})}
    return f"config fields overridden for this run: {json.dumps(shown, default=str)}"


class DownloadSettings(BaseModel):
    """How the archive is downloaded: timeouts and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float = Field(60.0, gt=0, description="Connect/read timeout of the download.")
    retries: int = Field(3, ge=0, le=10, description="Download retries on network faults and HTTP 5xx.")
    retry_delay_seconds: float = Field(
        2.0,
        ge=0,
        description="Wait before the first download retry; it doubles with each retry (randomised to 0.6-1.5x, same average).",
    )


class OutOfCoreSettings(BaseModel):
    """How ingest, reindex and the split run over the ratings' files without holding them in memory (DuckDB,
    warehouse/engine.py): what DuckDB may hold, and the batches the split's random numbers are drawn in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 1 GB: at 20M ratings DuckDB's sorts and window functions then keep everything in memory; at 100M and more they
    # spill to the run's folder and the process stays under it.
    memory_mb: int = Field(
        1024,
        ge=64,
        description="Memory DuckDB may hold for ingest (a MovieLens archive's ratings), reindex and the split; beyond "
        "it, it spills to disk (a folder in the run's or the parse's folder, removed after).",
    )
    batch_rows: int = Field(
        1_000_000, ge=1_000, description="Ratings read at a time where rows pass through Python (the split's keys)."
    )


class GateSettings(BaseModel):
    """The quality gate (tasks/gate.py): how much worse than the published lists a run may be, and how sure it must
    be that it is worse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 0.10 on the same split: the published configuration and the candidate are scored on the same test ratings,
    # and the paired bootstrap (confidence) keeps a smaller change that is noise from rejecting.
    tolerance: float = Field(
        0.10,
        ge=0,
        description="Reject the run if its nDCG@k fell, or its rating model's RMSE rose, by more than this fraction "
        "of what the published configuration (the published run's models and settings) scores on this run's split, "
        "beyond noise.",
    )
    # 0.5 across test sets: replaying ML-100k every 14 days (`recs backfill`, temporal split), an unchanged
    # dot_bias's nDCG@10 moved by up to 42% between neighbouring nights (0.0459 -> 0.0269), its RMSE by up to 4%;
    # the broken model of benchmarks/gate_replay.py is caught on the same split whatever this is.
    drift_tolerance: float = Field(
        0.5,
        ge=0,
        description="Reject the run if its nDCG@k fell, or its rating model's RMSE rose, by more than this fraction "
        "of the published run's recorded values (measured on its own test set), beyond noise: a collapse every "
        "configuration shares, such as broken data.",
    )
    confidence: float = Field(
        0.95,
        ge=0,
        lt=1,
        description="A worsening beyond a tolerance rejects only when this interval of a paired bootstrap over the "
        "users judged on both sides excludes no change; 0 rejects on the tolerances alone.",
    )
    resamples: int = Field(1000, ge=10, le=100_000, description="Bootstrap resamples of the users.")
    max_churn: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Reject the run when more than this share of the users who have a published list would see it "
        "change (churn, tasks/list_metrics.py); unset, churn is recorded but not bounded.",
    )


class ClusterSettings(BaseModel):
    """Where ials's training, evaluation and the recommend stage run by shards (flows/cluster.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None,
        description="Unset, in this process; local:N, a Dask LocalCluster of N worker processes on this host; "
        "tcp://host:8786, a running Dask scheduler whose workers share data_dir.",
    )
    shard_users: int = Field(
        50_000,
        ge=1,
        description="Users per shard of evaluation and the lists (each shard one Prefect task run a stage); in "
        "process too, the lists are made a shard at a time, from only that shard's ratings.",
    )
    timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long to try to reach the Dask scheduler, or to wait for a worker when it has none while "
        "shards wait, before the run fails.",
    )

    @field_validator("address")
    @classmethod
    def _cluster_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"local:[1-9]\d{0,2}|(tcp|tls)://[^\s/:]+:\d+", value):
            raise ValueError(
                f"{value!r} is not a cluster: expected local:N (N Dask worker processes on this host, "
                "1 to 999) or a Dask scheduler's address such as tcp://host:8786"
            )
        return value


class TuneSettings(BaseModel):
    """The tuning search (`recs tune`, flows/tune.py): its budget and the data it searches on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 10 minutes: ML-100k's search ends at the trial cap in about a minute on two cores (benchmarks/tuning.py).
    budget_seconds: float = Field(
        600.0,
        gt=0,
        description="The search stops at this many seconds (the trial in progress is cut at its next epoch) and keeps "
        "the best settings so far; a budget that cannot fit one trial is refused with the time the trial took.",
    )
    max_trials: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Trials per model at most (the settings given are the first); a resumed search counts the trials "
        "it finished before.",
    )
    # On ML-100k, whose defaults were chosen on this validation split, the best of 100 trials beat them by 0.006
    # validation nDCG@10 (2.6 standard errors: the winner of many noisy tries is flattered by the split it won on)
    # and lost 0.01 on the test split; confirmed on another split, it is not taken.
    confidence: float = Field(
        0.95,
        ge=0,
        lt=1,
        description="Keep the settings given unless the search's best beats them with this confidence (one-sided) "
        "on another validation split of the same users, paired per user; 0 takes the best whatever the margin.",
    )

    @property
    def min_gain_z(self) -> float:
        """The standard errors of the paired per-user difference by which the best must beat the settings given."""
        return NormalDist().inv_cdf(self.confidence) if self.confidence > 0 else -math.inf

    sample_users: int | None = Field(
        20_000,
        ge=100,
        description="Search on at most this many users (a seeded sample, each with all their interactions); the "
        "chosen settings are carried to the full data (docs/models.md). Unset: all users.",
    )
    validation_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Share of each user's training interactions held out to score the trials (the test split is "
        "never read).",
    )


class FoldInSettings(BaseModel):
    """Folding new and changed users into the published model between nightly runs (`recs fold-in`, flows/fold_in.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_rows: str | None = Field(
        None,
        description="A file or URL holding only the interactions since the published run, in the source's columns "
        "(an hour's events, today's ratings); unset: the source is read whole and compared with the published run's "
        "data.",
    )
    # A fold-in leaves every other vector as the night fitted it: when the history those were fitted on was rewritten
    # (ratings changed or removed in bulk: a replaced or truncated export), only a refit (the nightly) is right.
    # New users and new rows are what a fold-in is for, however many.
    max_changed_rows: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Refuse, leaving the lists to the nightly, when more than this share of the published run's rows "
        "now hold another rating.",
    )
    max_removed_rows: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Refuse, leaving the lists to the nightly, when the source lost more than this share of the "
        "published run's rows (a truncated or replaced export).",
    )
    lock_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="How long the fold-in waits for a nightly run holding the warehouse before publishing nothing "
        "(the nightly's lists replace everyone's anyway).",
    )


class _SourceAndSplit(BaseModel):
    """The config's first fields: where the ratings come from, where the results go, and the split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Source and storage
    source: str = Field(
        ML_100K_URL,
        description="Where the interactions come from: a MovieLens archive, a delimited text or Parquet file, a zip "
        "or folder of them, or a DuckDB file (with source_table or source_query); an http(s) URL, a file:// URL or a "
        "local path (docs/data.md).",
    )
    source_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Expected sha256 of the archive; a mismatch refuses the archive before parsing.",
    )
    data_dir: Path = Field(
        Path("data"),
        description="Where downloads, parsed parquet and each run's checkpoint, id maps and splits are kept.",
    )
    warehouse: Path = Field(DEFAULT_WAREHOUSE, description="DuckDB file the run publishes to.")
    download: DownloadSettings = Field(DownloadSettings(), description=DownloadSettings.__doc__)
    out_of_core: OutOfCoreSettings = Field(OutOfCoreSettings(), description=OutOfCoreSettings.__doc__)
    max_extracted_bytes: int = Field(
        MAX_EXTRACTED_BYTES,
        gt=0,
        description="Refuse an archive whose ratings and items files expand past this many bytes (zip bombs), or a "
        "team's file or folder of interactions larger than this; the free disk space is checked too.",
    )
    on_bad_rows: BadRowPolicy = Field(
        "fail",
        description="A ratings row with the wrong number of fields, a non-numeric field or a rating that is NaN or "
        "off the 0.5-5 scale: fail names its file, line and field; drop skips such rows and records their count "
        "in runs.n_bad_rows.",
    )

    # A team's own interactions (docs/data.md): how to read a source that is not a MovieLens archive
    source_table: str | None = Field(
        None, description="A DuckDB file as the source: the table (or view) of interactions to read."
    )
    source_query: str | None = Field(
        None,
        description="A DuckDB file as the source: one SELECT whose result is the interactions (the file is opened "
        "read-only; anything but a SELECT is refused).",
    )
    source_member: str | None = Field(
        None,
        description="A zip archive or folder as the source: its file of interactions (a path inside it, or a file "
        "name), when it holds more than one.",
    )
    user_column: str | int | None = Field(
        None,
        description="The interactions' user column: a header name, or a 1-based position in a file without a "
        "header; unset, a column named user, user_id, userId, customer, visitorid, ... (first in a header-less file).",
    )
    item_column: str | int | None = Field(
        None,
        description="The item column (name or 1-based position); unset, item, item_id, movieId, artistID, product, "
        "sku, ... or the id column left once the user's is known (second in a header-less file).",
    )
    rating_column: str | int | None = Field(
        None,
        description="The rating column (name or 1-based position); unset, rating, score, stars or feedback (third in "
        "a header-less file). A rating column makes the feedback explicit.",
    )
    weight_column: str | int | None = Field(
        None,
        description="Implicit feedback's weight column (name or 1-based position): plays, counts, hours, "
        "quantities; unset, weight, count, plays, hours or quantity. Without one, each row weighs 1.",
    )
    timestamp_column: str | int | None = Field(
        None,
        description="The time column (name or 1-based position): Unix seconds or milliseconds, or ISO dates and "
        "times; unset, timestamp, time, date or ts (fourth in a header-less file). Without one, the temporal split, "
        "as_of and backfill are refused.",
    )
    feedback: Literal["explicit", "implicit"] | None = Field(
        None,
        description="explicit: ratings, a rating model predicts the stars and RMSE is measured; implicit: each row "
        "an interaction, a pair's weights added, no rating model. Unset: explicit when the source has a rating column.",
    )
    rating_scale: list[float] | None = Field(
        None,
        description="Explicit feedback's scale MIN,MAX (e.g. 1,10): rows off it are bad rows, and predicted ratings "
        "are kept within it; unset, the lowest and highest rating in the data.",
    )
    items: Path | None = Field(
        None,
        description="A file of items (id, title, genres) for the titles view and the reasons; unset, the items file "
        "in the source's zip or folder, or none.",
    )
    item_id_column: str | None = Field(
        None, description="The items file's id column; unset, id, item_id, movieId, anime_ids, ... by name."
    )
    item_title_column: str | None = Field(None, description="The items file's title column; unset, title or name.")

    # Split
    split: SplitMethod = Field(
        "stratified",
        description="stratified: per user, random 75/25; random: global 80/20; temporal: per user, latest 25% to test.",
    )
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of ratings held out for testing; default depends on the split method."
    )
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of the training ratings held out to report a validation loss per epoch."
    )
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for the split, the initialisation and the batch order (0 to 2**32-1)."
    )
    as_of: datetime | None = Field(
        None,
        description="Replay history: keep only ratings at or before this time (UTC unless a zone is given); "
        "the split then defaults to temporal, each user's latest ratings before the cutoff being the test set.",
    )


def _model_fields() -> dict[str, Any]:
    """The config's model fields, composed from the registry (tasks/models): `models`, `model`, and one parameter
    group per registered model, named after it."""
    name: Any = Literal[tuple(MODELS)]  # the registry's names, known at import
    fields: dict[str, Any] = {
        "models": (
            list[name],
            Field(
                ["dot_bias", "ials"],
                min_length=1,
                description="Models to train and evaluate in the run (comma-separated on the command line); each "
                "one's metrics go to run_metrics. Naming only `model` trains that one alone. The default, the seeds' "
                "dot_bias and the ials ranker, scales to 20M ratings on two cores: ials ranks (it is published), "
                "dot_bias predicts the stars beside each item; ease and the kNNs grow with items x items "
                "(docs/scale.md).",
            ),
        ),
        "model": (
            name | None,
            Field(None, description="Model whose lists are published; unset publishes the best of `models` by nDCG@k."),
        ),
    }
    for model, spec in MODELS.items():  # each model's own settings: the group of the same name as the model
        fields[model] = (spec.params, Field(spec.params(), description=spec.params.__doc__))
    return fields


if TYPE_CHECKING:  # the type checker sees the fields every config has; the groups are read with `params_for`

    class _WithModels(_SourceAndSplit):
        models: list[str] = ["dot_bias", "ials"]
        model: str | None = None

else:
    _WithModels = create_model("_WithModels", __base__=_SourceAndSplit, **_model_fields())


class PipelineConfig(_WithModels):
    """Parameters of one nightly run, from source archive to published recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tuning
    tune: TuneSettings = Field(TuneSettings(), description=TuneSettings.__doc__)
    fold_in: FoldInSettings = Field(FoldInSettings(), description=FoldInSettings.__doc__)
    tuned: Literal["on", "off"] = Field(
        "on",
        description="on: the models take the settings the newest `recs tune` chose for this dataset, for every "
        "setting not given explicitly (flags and a deployment's config win); off: the defaults.",
    )

    # Training
    warm_start: bool = Field(
        False,
        description="Start ials's and dot_bias's fits from the last published run's vectors, matched by user and item "
        "id (new ones start fresh), for their warm_epochs; the split fit only on the temporal split (tasks/warm.py).",
    )
    device: Device = Field("auto", description="Training and scoring device; auto picks cuda, then mps, then cpu.")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Threads torch trains with on CPU; unset: the cores this process may use that other work leaves "
        "idle when a fit starts (tasks/cpu_threads.py), or OMP_NUM_THREADS when set (Dask's workers set 1).",
    )
    train_deployment: str | None = Field(
        None,
        description="Train through this Prefect deployment (e.g. 'train/gpu' on a GPU work pool) instead of in the "
        "nightly flow's process; data_dir must be storage both workers share.",
    )

    # Evaluation and output
    k: int = Field(10, ge=1, le=1000, description="Cut-off of the ranking metrics (precision@k, nDCG@k, ...).")
    top_n: int = Field(10, ge=1, le=1000, description="Length of each user's published list.")
    refit_on_all: bool = Field(
        True, description="After evaluation, refit on all ratings before scoring the published lists."
    )
    score_chunk_users: int = Field(
        2048, ge=1, description="Users scored per chunk (a chunk x items score matrix is held at once)."
    )
    cluster: ClusterSettings = Field(ClusterSettings(), description=ClusterSettings.__doc__)

    # Business rules on the published lists (tasks/rules.py): applied before top-n, so every user still gets
    # `top_n` items where enough remain; the evaluation follows them only with `filter_evaluation`.
    exclude_items: list[int | str] | Path | None = Field(
        None,
        description="Item ids never to recommend, as the source writes them: a list (comma-separated on the command "
        "line) or a file of ids, one a line ('#' starts a comment; a value with a / or a .txt-like suffix is a file).",
    )
    min_item_ratings: int = Field(
        0, ge=0, description="Items with fewer ratings than this in the data are never recommended (0: no limit)."
    )
    include_genres: list[str] | None = Field(
        None,
        description="Recommend only items with at least one of these genres (as the items file spells them, any case).",
    )
    exclude_genres: list[str] | None = Field(None, description="Never recommend items with any of these genres.")
    min_year: int | None = Field(
        None, description="Never recommend items released before this year (items without a year are left out too)."
    )
    max_year: int | None = Field(
        None, description="Never recommend items released after this year (items without a year are left out too)."
    )
    filter_evaluation: bool = Field(
        False,
        description="Apply the business rules to the evaluation's top-k too; off, the metrics stay on the "
        "unfiltered protocol, comparable with runs without rules and with the peers.",
    )
    reasons: int = Field(
        3,
        ge=0,
        le=10,
        description="Per published item, this many of the user's rated items that contributed most to it go to "
        "recommendation_reasons (tasks/reasons.py); 0 publishes none.",
    )

    # Operations
    gate: GateSettings = Field(GateSettings(), description=GateSettings.__doc__)
    refit_loss_tolerance: float = Field(
        0.5,
        ge=0,
        description="The refitted model (what is published) fails the run when its last training loss exceeds the "
        "split fit's by more than this fraction.",
    )
    min_list_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Refuse to publish lists that cover fewer than this share of the users, or of the distinct "
        "items, of the lists published now (a collapsed night, such as an archive cut to a few users); the run is "
        "rejected with the counts. 0 turns the check off.",
    )
    force: bool = Field(False, description="Publish even when the quality gate rejects the run or the lists collapsed.")
    trend_runs: int = Field(
        DEFAULT_TREND_RUNS,
        ge=1,
        description="Trend deltas compare each run with the median of this many earlier published runs.",
    )
    lock_timeout_seconds: float = Field(
        0.0,
        ge=0,
        description="How long a run waits for another run on the same warehouse to finish; 0 refuses at once.",
    )
    # 6 hours: the default night takes 7.5 minutes at 20M ratings on two cores (docs/scale.md); a run still going
    # after this holds the run lock against the next nights, so it is ended and recorded as cancelled.
    run_timeout_seconds: float | None = Field(
        21_600.0,
        gt=0,
        description="End the run, recorded as cancelled with this reason, when it has taken longer than this (its "
        "wait for the run lock included); the published lists stay. Unset (null) never ends it.",
    )

    keep_runs: int = Field(
        30,
        ge=0,
        description="Retention: the per-run detail tables (similar_items, item_biases, training_history) keep the "
        "runs since the last N published runs; runs and run_metrics are kept whole. 0 keeps everything.",
    )
    similar_items: int = Field(
        10, ge=1, description="Inspection: most similar items (embedding cosine) stored per item and model."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, values: Any) -> Any:
        if isinstance(values, dict) and (
            isinstance(values.get("cluster"), str) or "cluster" in values and values["cluster"] is None
        ):
            address = values["cluster"]
            if address is not None:
                warnings.warn(
                    f"the setting cluster as an address is deprecated and will be removed in the next release; use "
                    f"{setting(CLUSTER_ADDRESS)}",
                    FutureWarning,
                    stacklevel=2,
                )
            values = {**values, "cluster": {"address": address}}
        if isinstance(values, dict) and any(name in values for name in LEGACY_FIELDS):
            return _move_legacy_fields(values)
        return values

    @model_validator(mode="before")
    @classmethod
    def _only_the_named_model(cls, values: Any) -> Any:
        # `model: ease` alone means "train and publish ease", not "train the default models and publish ease".
        if isinstance(values, dict) and values.get("model") is not None and values.get("models") is None:
            return {**values, "models": [values["model"]]}
        return values

    @model_validator(mode="after")
    def _published_model_is_trained(self) -> PipelineConfig:
        if self.model is not None and self.model not in self.models:
            raise ValueError(
                f"{setting('model')} is {self.model!r}, to be published, but it is not among the models trained, "
                f"{setting('models')} {','.join(self.models)}"
            )
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"{setting('models')} names a model twice: {','.join(self.models)}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _temporal_split_when_replaying(cls, values: Any) -> Any:
        # A replay at `as_of` evaluates on each user's latest ratings before the cutoff unless told otherwise.
        if isinstance(values, dict) and values.get("as_of") is not None and values.get("split") is None:
            return {**values, "split": "temporal"}
        return values

    @field_validator("exclude_items", mode="before")
    @classmethod
    def _ids_or_file(cls, value: Any) -> Any:
        # `--exclude-items blocked.txt` arrives as ["blocked.txt"], `--exclude-items 1,2` as ["1", "2"], and
        # `--exclude-items tt0114709` as ["tt0114709"]: an id, since it names no file
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and _is_file_name(value[0]):
            return Path(value[0])
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            return Path(value) if len(parts) == 1 and _is_file_name(parts[0]) else parts
        if isinstance(value, list):  # ids as whole numbers where they are, else as written
            return [
                int(v) if isinstance(v, str) and _is_int(v) else v.strip() if isinstance(v, str) else v for v in value
            ]
        return value

    @model_validator(mode="after")
    def _year_range(self) -> PipelineConfig:
        if self.min_year is not None and self.max_year is not None and self.min_year > self.max_year:
            raise ValueError(
                f"{setting('min_year')} {self.min_year} is after {setting('max_year')} {self.max_year}: "
                "no item could be recommended"
            )
        return self

    @field_validator("rating_scale")
    @classmethod
    def _low_high(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError(f"{value} is not a scale: expected MIN,MAX with MIN below MAX, such as 1,10")
        return value

    @model_validator(mode="after")
    def _one_way_to_read_a_database(self) -> PipelineConfig:
        if self.source_table is not None and self.source_query is not None:
            raise ValueError(
                f"{setting('source_table')} and {setting('source_query')} are both set; give one: the table to read, "
                "or the SELECT whose result to read"
            )
        if self.feedback == "implicit" and "models" in self.model_fields_set:
            self.refuse_rating_models()
        return self

    def rating_models(self) -> list[str]:
        """The configured models that predict ratings (they need explicit feedback)."""
        return [name for name in self.models if MODELS[name].module.predicts_ratings]

    def refuse_rating_models(self) -> None:
        if rating := self.rating_models():
            raise ValueError(
                f"{', '.join(rating)} predict{'s' if len(rating) == 1 else ''} ratings, and implicit feedback has none: "
                f"{setting('models')} may name ials, ease, bpr, popularity (models that rank)"
            )

    def for_data(self, feedback: str, has_timestamps: bool, n_items: int | None = None) -> PipelineConfig:
        """This config as it applies to the data read: the default models gain ease when the catalogue of `n_items`
        is small enough for it (`ease.max_matrix_bytes`), and on implicit feedback lose those that predict ratings
        (models named explicitly that do are refused); data without a time column refuses what needs one.

        Raises:
            ValueError: the setting that cannot apply, and why.
        """
        config = self._for_feedback(feedback, has_timestamps)
        if n_items is None:
            return config
        if not cast(Any, self.params_for("ease")).fits(n_items):
            return config._without_ease(n_items)
        if "models" not in self.model_fields_set and "ease" not in config.models:
            return config.with_overrides({"models": [*config.models, "ease"]})
        return config

    def _without_ease(self, n_items: int) -> PipelineConfig:
        """ease left out of the models above its memory bound; refused when it is the only model, or the one to
        publish."""
        if "ease" not in self.models:
            return self
        bound = cast(Any, self.params_for("ease")).max_matrix_bytes
        why = (
            f"ease's items x items matrix for {n_items:,} items takes {4 * n_items * n_items / 1e9:.2f} GB, over "
            f"{setting('ease.max_matrix_bytes')} {bound / 1e9:.2f} GB"
        )
        if self.models == ["ease"] or self.model == "ease":
            raise ValueError(f"{why}: raise it to train ease on this catalogue, or train another model")
        log.warning("%s: ease is left out of this run's models", why)
        return self.with_overrides({"models": [m for m in self.models if m != "ease"]})

    def _for_feedback(self, feedback: str, has_timestamps: bool) -> PipelineConfig:
        if not has_timestamps and (self.as_of is not None or self.split == "temporal"):
            what = setting("as_of") if self.as_of is not None else f"{setting('split')} temporal"
            raise ValueError(
                f"the data has no time column: {what} needs one (timestamp_column, --timestamp-column); use "
                "--split stratified"
            )
        if feedback != "implicit" or not self.rating_models():
            return self
        if "models" in self.model_fields_set:
            self.refuse_rating_models()
        kept = [name for name in self.models if name not in self.rating_models()]
        return self.with_overrides({"models": kept or ["ials"]})

    @field_validator("source")
    @classmethod
    def _supported_scheme(cls, value: str) -> str:
        source_scheme(value)
        return value

    @field_serializer("source", when_used="json")
    def _source_without_credentials(self, value: str) -> str:
        # The config's JSON is what Prefect stores as a flow run's parameters, what a training deployment is sent and
        # what runs.config keeps: a signed URL's credentials never reach it (the run itself holds the config object).
        return redact(value)

    def with_overrides(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """This config with some fields changed and the rest kept, validated as a whole.

        The fields this config was given explicitly are the base (so `as_of` alone still defaults the split
        to temporal), `overrides` are merged over them (a model group such as `{"mlp": {"epochs": 8}}`
        changes that field of the group only), and the result is validated like any config.

        Raises:
            pydantic.ValidationError: an unknown field or a bad value, named by its path.
        """
        if not overrides:
            return self
        return PipelineConfig.model_validate(_deep_merge(self.model_dump(exclude_unset=True), overrides))

    def with_source(self, source: str | None) -> PipelineConfig:
        """This config with `source` (a run's or an event's), or unchanged when `source` is unset or is this config's
        own source with its credentials removed: the refresh flow announces a source that way, and the run then
        downloads from the configured URL, credentials and all."""
        if not source or (source == redact(self.source) and source != self.source):
            return self
        return self.with_overrides({"source": source})

    def params_for(self, model: str) -> ModelParams:
        """The parameter group of `model` (a name of tasks.models.MODELS)."""
        return getattr(self, model)

    @classmethod
    def from_stored(cls, stored: str | dict[str, Any]) -> PipelineConfig:
        """A config as a run stored it (runs.config, a checkpoint, a run folder's config.json), from any release:
        legacy fields are moved to their groups without a warning, since no one can change a stored config."""
        data = json.loads(stored) if isinstance(stored, str) else stored
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return cls.model_validate(data)

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def effective_test_fraction(self) -> float:
        """The test share actually used: `test_fraction`, or the split method's default."""
        return self.test_fraction if self.test_fraction is not None else DEFAULT_TEST_FRACTION[self.split]

    @property
    def protocol(self) -> str:
        """What makes two runs' metrics comparable: split, test share, seed and k (the gate and trends key on it)."""
        return f"{self.split} test={self.effective_test_fraction:g} seed={self.seed} k={self.k}"
