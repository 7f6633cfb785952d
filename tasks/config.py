"""The pipeline's one configuration model: every parameter of a nightly run lives here.

It is the nightly flow's only parameter (so the Prefect UI shows it as a form), the source of every
`recs run --option` (flags are generated from these fields and their descriptions), and it is stored
as JSON with each run in `runs.config` and in the run's checkpoint.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
import typing
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
SOURCE_SCHEMES = ("http", "https", "file")
# 8 GiB: ml-32m's ratings.csv, the largest MovieLens file, is 0.9 GB.
MAX_EXTRACTED_BYTES = 8 << 30

SplitMethod = Literal["stratified", "random", "temporal"]
Device = Literal["auto", "cuda", "mps", "cpu"]
BadRowPolicy = Literal["fail", "drop"]
ModelName = Literal["dot_bias", "dot", "mlp", "user_knn", "item_knn", "bpr", "ease", "bias", "popularity"]
MODEL_NAMES: tuple[str, ...] = typing.get_args(ModelName)

# Test share each split method uses when `test_fraction` is not set: the Microsoft Recommenders
# MovieLens protocol for the per-user splits, the seeds' global 80/20 for `random`.
DEFAULT_TEST_FRACTION: dict[str, float] = {"stratified": 0.25, "random": 0.2, "temporal": 0.25}


def redact(source: str) -> str:
    """The source with any user:password in its URL replaced, safe to log and store."""
    parts = urlsplit(source)
    if parts.username is None and parts.password is None:
        return source
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def source_scheme(source: str) -> str:
    """The source's URL scheme, lower case: http, https or file; "" for a plain path.

    Raises:
        ValueError: any other scheme (ftp, s3, ...), naming it and the ones supported.
    """
    scheme = urlsplit(source).scheme.lower()
    if scheme not in ("", *SOURCE_SCHEMES):
        raise ValueError(f"source {redact(source)!r}: scheme {scheme!r} is not supported (use http, https, file or a path)")
    return scheme


def local_path(source: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s).

    Raises:
        ValueError: an unsupported scheme (see `source_scheme`).
    """
    scheme = source_scheme(source)
    if scheme in ("http", "https"):
        return None
    return Path(unquote(urlsplit(source).path)) if scheme == "file" else Path(source)


def local_source_problem(source: str) -> str | None:
    """Why a local source cannot be read (no such file, a directory), or None; URLs are checked when fetched.

    Raises:
        ValueError: an unsupported scheme (see `source_scheme`).
    """
    path = local_path(source)
    if path is None:
        return None
    if path.is_dir():
        return f"{str(path)!r} is a directory; expected a MovieLens .zip archive"
    if not path.exists():
        return f"no such file {str(path)!r}"
    return None


def flag(setting: str) -> str:
    """The `recs run` option of a config field: `top_n` -> `--top-n`, `mlp.epochs` -> `--mlp-epochs`."""
    return "--" + setting.replace(".", "-").replace("_", "-")


def setting(name: str) -> str:
    """A config field as messages name it, with its option: `lock_timeout_seconds (--lock-timeout-seconds)`.

    Messages reach people who set the field in a deployment's parameters and people who pass the flag."""
    return f"{name} ({flag(name)})"


def _deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Hyperparameters of the models other than `dot_bias` (whose own are the top-level factors, epochs, ...).
# Each searched default was chosen by `benchmarks/tune.py`: a grid per model on ML-100k, scored on a
# validation split carved from the stratified training split (per user 75/25 of the training ratings, seed
# 43), RMSE for rating models and nDCG@10 for ranking models, the cheapest point within 0.001 of the best;
# the test split was never used. The grids and scores are in benchmarks/README.md.


class DotParams(_Params):
    """`dot`: plain dot product of user and item embeddings, trained on squared error."""

    factors: int = Field(32, ge=1, le=4096, description="Embedding size.")
    epochs: int = Field(20, ge=1, description="Passes over the training ratings.")
    batch_size: int = Field(1024, ge=1, description="Ratings per optimiser step.")
    learning_rate: float = Field(0.01, ge=0, description="Adam learning rate (peak of the one-cycle schedule).")
    regularization: float = Field(0.1, ge=0, description="L2 penalty on the embeddings looked up in each batch.")


class MlpParams(_Params):
    """`mlp`: fastai's EmbeddingNN, the concatenated embeddings through an MLP, sigmoid range out."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and of items (not searched).")
    hidden: list[int] = Field([128], min_length=1, description="Sizes of the hidden layers ([256, 64] was no better).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout after each hidden layer (not searched).")
    epochs: int = Field(5, ge=1, description="Passes over the training ratings.")
    batch_size: int = Field(1024, ge=1, description="Ratings per optimiser step.")
    learning_rate: float = Field(0.003, ge=0, description="AdamW learning rate (peak of the one-cycle schedule).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")


class KnnParams(_Params):
    """`user_knn` / `item_knn`: mean-centred cosine similarity, k nearest neighbours, weighted average."""

    neighbours: int = Field(320, ge=1, description="Neighbours kept per user (user_knn) or item (item_knn).")
    shrinkage: float = Field(25.0, ge=0, description="Similarity shrunk by n / (n + shrinkage), n = co-ratings.")
    chunk: int = Field(1024, ge=1, description="Rows whose similarities are computed at once.")


class BprParams(_Params):
    """`bpr`: Bayesian personalised ranking on implicit feedback (every rating is a positive)."""

    factors: int = Field(64, ge=1, le=4096, description="Embedding size.")
    epochs: int = Field(30, ge=1, description="Passes over the training interactions.")
    batch_size: int = Field(1024, ge=1, description="Positives per optimiser step (one sampled negative each).")
    learning_rate: float = Field(0.003, ge=0, description="Adam learning rate (peak of the one-cycle schedule).")
    regularization: float = Field(0.01, ge=0, description="L2 penalty on the vectors and biases in each batch.")


class EaseParams(_Params):
    """`ease`: Steck's EASE, a closed-form item-item model on implicit feedback."""

    l2: float = Field(100.0, gt=0, description="Ridge penalty added to the Gram matrix's diagonal.")
    dropout: float = Field(
        0.67,
        ge=0,
        lt=1,
        description="Emphasised-denoising penalty (Steck 2020, EDLAE): each item's diagonal also gets "
        "dropout / (1 - dropout) times its own count, so popular items are penalised more; 0 is plain EASE.",
    )


class BiasParams(_Params):
    """`bias`: global mean plus damped user and item biases (no personalisation beyond the user's offset)."""

    item_damping: float = Field(5.0, ge=0, description="Item bias = sum of residuals / (count + this).")
    user_damping: float = Field(0.0, ge=0, description="User bias = sum of residuals / (count + this).")


class PipelineConfig(BaseModel):
    """Parameters of one nightly run, from source archive to published recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Source and storage
    source: str = Field(
        ML_100K_URL,
        description="MovieLens archive: an http(s) URL, a file:// URL or a local path to a .zip.",
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
    warehouse: Path = Field(Path("warehouse/recs.duckdb"), description="DuckDB file the run publishes to.")
    download_timeout_seconds: float = Field(60.0, gt=0, description="Connect/read timeout of the download.")
    download_retries: int = Field(3, ge=0, le=10, description="Download retries on network faults and HTTP 5xx.")
    download_retry_delay_seconds: float = Field(
        2.0, ge=0, description="Wait before the first download retry; it doubles with each retry (randomised to 0.6-1.5x, same average)."
    )
    max_extracted_bytes: int = Field(
        MAX_EXTRACTED_BYTES,
        gt=0,
        description="Refuse an archive whose ratings and items files expand past this many bytes (zip bombs); "
        "the free disk space is checked too.",
    )
    on_bad_rows: BadRowPolicy = Field(
        "fail",
        description="A ratings row with the wrong number of fields, a non-numeric field or a rating that is NaN or "
        "off the 0.5-5 scale: fail names its file, line and field; drop skips such rows and records their count "
        "in runs.n_bad_rows.",
    )

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
    seed: int = Field(42, description="Seed for the split, the initialisation and the batch order.")
    as_of: datetime | None = Field(
        None,
        description="Replay history: keep only ratings at or before this time (UTC unless a zone is given); "
        "the split then defaults to temporal, each user's latest ratings before the cutoff being the test set.",
    )

    # Model and training
    models: list[ModelName] = Field(
        ["dot_bias"],
        min_length=1,
        description="Models to train and evaluate in the run (comma-separated on the command line); each one's "
        "metrics go to run_metrics. Naming only `model` trains that one alone. The default is the seeds' model, "
        "which scales to 20M ratings on two cores; ease and the kNNs grow with items x items (README, Scale).",
    )
    model: ModelName | None = Field(
        None, description="Model whose lists are published; unset publishes the best of `models` by nDCG@k."
    )
    # dot_bias (per-rating SGD, tasks/models/sgd.py): chosen by benchmarks/tune.py as above over factors 32/64,
    # epochs 10/20, regularization 0.05/0.1/0.15 and learning rate 0.02/0.05/0.1: 64, 20, 0.1, 0.05 is the
    # best, validation RMSE 0.9284 (Adam with a one-cycle schedule, before issue 5: 0.9315).
    factors: int = Field(64, ge=1, le=4096, description="Embedding size of users and items.")
    epochs: int = Field(20, ge=1, description="Passes over the training ratings.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Ratings per vectorised SGD step (their updates are summed); unset: a thousandth of the "
        "training ratings as a power of two, at least 4096 (4096 for ML-100k, 16384 for 20M).",
    )
    learning_rate: float = Field(0.05, ge=0, description="SGD learning rate per rating (start of the cosine decay to 0).")
    regularization: float = Field(
        0.1, ge=0, description="L2 weight decay per rating on the vectors and biases it updates."
    )
    y_margin: float = Field(
        0.5, ge=0, description="The sigmoid spans the rating scale widened by this much on each side (fastai y_range)."
    )
    dot: DotParams = Field(DotParams(), description=DotParams.__doc__)
    mlp: MlpParams = Field(MlpParams(), description=MlpParams.__doc__)
    user_knn: KnnParams = Field(KnnParams(neighbours=400, shrinkage=25.0), description="`user_knn`: " + KnnParams.__doc__)
    item_knn: KnnParams = Field(KnnParams(neighbours=320, shrinkage=25.0), description="`item_knn`: " + KnnParams.__doc__)
    bpr: BprParams = Field(BprParams(), description=BprParams.__doc__)
    ease: EaseParams = Field(EaseParams(), description=EaseParams.__doc__)
    bias: BiasParams = Field(BiasParams(), description=BiasParams.__doc__)
    device: Device = Field("auto", description="Training and scoring device; auto picks cuda, then mps, then cpu.")
    train_deployment: str | None = Field(
        None,
        description="Train through this Prefect deployment (e.g. 'train/gpu' on a GPU work pool) instead of in the "
        "nightly flow's process; data_dir must be storage both workers share.",
    )

    # Evaluation and output
    k: int = Field(10, ge=1, description="Cut-off of the ranking metrics (precision@k, nDCG@k, ...).")
    top_n: int = Field(10, ge=1, description="Length of each user's published list.")
    refit_on_all: bool = Field(
        True, description="After evaluation, refit on all ratings before scoring the published lists."
    )
    score_chunk_users: int = Field(
        2048, ge=1, description="Users scored per chunk (a chunk x items score matrix is held at once)."
    )

    # Operations
    # 0.10: replaying ML-100k every 14 days (`recs backfill`, temporal split), nDCG@10 (about 0.06 there) of an
    # unchanged model moved by up to 15% between neighbouring runs and RMSE by up to 2.5%; a 0.05 tolerance
    # rejected 4 of those 14 runs (nDCG drops of 5-15%), 0.10 rejects only the 15% drop.
    gate_tolerance: float = Field(
        0.10,
        ge=0,
        description="Quality gate: reject the run if its RMSE rose, or its nDCG@k fell, by more than this fraction "
        "of the last published run's value on the same source and protocol.",
    )
    force: bool = Field(False, description="Publish even when the quality gate rejects the run.")
    trend_runs: int = Field(
        5, ge=1, description="Trend deltas compare each run with the median of this many earlier published runs."
    )
    lock_timeout_seconds: float = Field(
        0.0,
        ge=0,
        description="How long a run waits for another run on the same warehouse to finish; 0 refuses at once.",
    )

    similar_items: int = Field(
        10, ge=1, description="Inspection: most similar items (embedding cosine) stored per item and model."
    )

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

    @field_validator("source")
    @classmethod
    def _supported_scheme(cls, value: str) -> str:
        source_scheme(value)
        return value

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

    def redacted(self) -> PipelineConfig:
        """This config with any credentials in `source` removed: what runs.config and the run folder keep."""
        return self.model_copy(update={"source": redact(self.source)})

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value

    @property
    def effective_test_fraction(self) -> float:
        """The test share actually used: `test_fraction`, or the split method's default."""
        return self.test_fraction if self.test_fraction is not None else DEFAULT_TEST_FRACTION[self.split]

    @property
    def protocol(self) -> str:
        """What makes two runs' metrics comparable: split, test share, seed and k (the gate and trends key on it)."""
        return f"{self.split} test={self.effective_test_fraction:g} seed={self.seed} k={self.k}"
