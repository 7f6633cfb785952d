"""The tuning search (tasks/tune) on real ML-100k users, without Prefect: it never reads the test split, a killed
search resumes without repeating its finished trials, a budget too small is refused, the settings given are kept
unless beaten beyond noise, and a nightly's config takes tuned settings only where none is given."""

from __future__ import annotations

import json
import math

import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from tasks.config import PipelineConfig
from tasks.ingest.parse import Dataset
from tasks.models import MODELS
from tasks.split import split_ratings
from tasks.tune.data import sample_users, tuning_data
from tasks.tune.search import TuningBudgetError, _step_up, carried, journal, search, study_name
from tasks.tune.stage import training_split
from tasks.tune.tuned import dataset_key, with_tuned


def _config(**tune) -> PipelineConfig:
    settings = {"max_trials": 3, "sample_users": 200, **tune}
    # one thread: the products' low bits then do not depend on how many cores other work leaves idle
    return PipelineConfig(
        device="cpu", cpu_threads=1, models=["ials"], tune=settings, ials={"epochs": 4, "factors": 16}
    )


def _dataset(ratings: pl.DataFrame, folder) -> Dataset:
    folder.mkdir(parents=True, exist_ok=True)
    ratings.write_parquet(folder / "ratings.parquet")
    pl.DataFrame({"item_id": [1]}).write_parquet(folder / "items.parquet")
    return Dataset(folder / "ratings.parquet", folder / "items.parquet", "x" * 64, "ml-100k", ratings.height)


def _values(searches) -> list:
    return [(s.model, s.trials["value"].to_list(), s.chosen) for s in searches]


def test_the_search_never_reads_the_test_split(ml100k_dataset, tmp_path):
    """Two datasets that differ only in the test split's ratings and times give the same trials: what
    the test split holds reaches no trial (dot_bias fits the ratings' values, ials weighs them with confidence 1)."""
    ratings = ml100k_dataset.ratings().filter(pl.col("user_id") <= 150)
    config = _config().with_overrides({"models": ["dot_bias", "ials"], "ials": {"confidence": 1.0}})
    config = config.with_overrides({"dot_bias": {"epochs": 3}})
    train, n_items = training_split(_dataset(ratings, tmp_path / "a"), config)
    in_train = train.select("user_idx", "item_idx").with_columns(pl.lit(True).alias("train"))
    from tasks.reindex import reindex

    indexed, maps = reindex(ratings)
    flagged = indexed.join(in_train, on=["user_idx", "item_idx"], how="left")
    test_rows = flagged["train"].is_null()
    assert 0 < test_rows.sum() < ratings.height
    rewritten = ratings.sort("user_id", "item_id").with_columns(
        rating=pl.when(test_rows).then(6 - pl.col("rating")).otherwise(pl.col("rating")),
        timestamp=pl.when(test_rows).then(pl.col("timestamp") + 10**6).otherwise(pl.col("timestamp")),
    )
    results = []
    for name, data in (("a", ratings), ("b", rewritten)):
        split, _ = training_split(_dataset(data, tmp_path / name), config)
        assert split.height == train.height
        found = search(
            tuning_data(split, n_items, config), config, journal(tmp_path / f"{name}.journal"), "k", "s" * 12
        )
        results.append(_values(found))
    # equal but for the last bits of sums polars adds in parallel, in no fixed order
    for (model, values, chosen), (model_b, values_b, chosen_b) in zip(*results, strict=True):
        assert (model, chosen) == (model_b, chosen_b) and len(values) == 3
        assert values == pytest.approx(values_b, rel=1e-12)


def test_a_killed_search_resumes_without_repeating_its_finished_trials(ml100k_ratings, tmp_path):
    train, _ = split_ratings(ml100k_ratings, "stratified", 0.25, 42)
    config = _config()
    data = tuning_data(train, 1682, config)
    storage = journal(tmp_path / "journal")
    first = search(data, config, storage, "key", "sha" * 4)[0]
    assert first.trials.height == 3 and not first.trials["resumed"].any()
    # a tune killed mid-trial leaves that trial running in the journal
    name = study_name("key", "sha" * 4, "ials", config)
    optuna.load_study(study_name=name, storage=storage).ask()
    resumed = search(data, config.with_overrides({"tune": {"max_trials": 5}}), storage, "key", "sha" * 4)[0]
    trials = resumed.trials
    assert trials.filter(pl.col("state") != "fail").height == 5  # 3 kept, 2 new: none repeated
    assert trials.filter(pl.col("resumed"))["trial"].to_list() == [0, 1, 2]
    assert trials.filter(pl.col("state") == "fail")["trial"].to_list() == [3]  # the interrupted one
    assert trials.filter(pl.col("resumed"))["value"].to_list() == first.trials["value"].to_list()
    states = {t.state for t in optuna.load_study(study_name=name, storage=storage).trials}
    assert TrialState.RUNNING not in states


def test_a_budget_that_cannot_fit_one_trial_is_refused_with_the_time_it_took(ml100k_ratings, tmp_path):
    train, _ = split_ratings(ml100k_ratings, "stratified", 0.25, 42)
    config = _config(budget_seconds=0.01)
    with pytest.raises(
        TuningBudgetError,
        match=r"\(--tune-budget-seconds\) 0.01 cannot fit one trial: ials's first "
        r"trial took \d+\.\ds",
    ):
        search(tuning_data(train, 1682, config), config, journal(tmp_path / "journal"), "key", "s" * 12)


def test_the_budget_stops_the_search_and_keeps_the_best_so_far(ml100k_ratings, tmp_path):
    train, _ = split_ratings(ml100k_ratings, "stratified", 0.25, 42)
    config = _config(budget_seconds=3.0, max_trials=10_000)
    found = search(tuning_data(train, 1682, config), config, journal(tmp_path / "journal"), "key", "s" * 12)[0]
    assert found.stopped_by == "budget"
    assert 1 < found.trials.height < 10_000 and found.chosen and found.best_value is not None


def test_the_settings_given_are_searched_from_and_fixed_when_given(ml100k_ratings, tmp_path):
    train, _ = split_ratings(ml100k_ratings, "stratified", 0.25, 42)
    config = _config()  # ials epochs and factors given: fixed, the rest searched from the defaults
    data = tuning_data(train, 1682, config)
    found = search(data, config, journal(tmp_path / "journal"), "key", "s" * 12)[0]
    searched = [json.loads(text) for text in found.trials["settings"]]
    assert all({"epochs", "factors"}.isdisjoint(point) for point in searched)
    first = searched[0]  # trial 0: the defaults, carried back to the search's data (a row's penalty as the nightly's)
    assert first == pytest.approx({"regularization": 0.02 * data.per_user_growth, "unobserved_weight_ratio": 1.0})
    if found.chosen_trial == 0:  # kept: within noise of the settings given, which stay as given
        assert found.best_value == found.first_value or found.gain_z < config.tune.min_gain_z  # type: ignore[operator]
        assert found.chosen == {"regularization": 0.02, "unobserved_weight_ratio": 1.0}
    else:
        assert found.chosen == carried("ials", json.loads(found.trials["settings"][found.chosen_trial]), data)


def test_the_search_tries_its_best_trial_one_size_up_once():
    """`_step_up` on a real Optuna study: the best trial's settings at the next factors choice are queued, once, and
    a best trial at the largest size queues nothing."""
    space = MODELS["ials"].search
    distributions = {
        "factors": optuna.distributions.CategoricalDistribution(space["factors"].choices),
        "regularization": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
    }
    study = optuna.create_study(direction="maximize")
    for factors, regularization, value in ((64, 0.01, 0.30), (128, 0.02, 0.31), (256, 0.1, 0.20)):
        point = {"factors": factors, "regularization": regularization}
        study.add_trial(optuna.trial.create_trial(params=point, distributions=distributions, value=value))
    _step_up(study, space)
    _step_up(study, space)
    waiting = [t.system_attrs["fixed_params"] for t in study.trials if t.state == TrialState.WAITING]
    assert waiting == [{"factors": 256, "regularization": 0.02}]
    trial = study.ask()  # the queued point is the next trial asked
    assert trial.suggest_categorical("factors", space["factors"].choices) == 256
    study.tell(trial, 0.4)  # the best is now at the largest size
    _step_up(study, space)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


def test_a_user_sample_keeps_each_users_interactions_and_carries_growing_settings(ml100k_ratings):
    sample = sample_users(ml100k_ratings, 100, seed=42)
    assert sample["user_idx"].n_unique() == 100 and sample["user_idx"].max() == 99
    counts = sample.group_by("user_idx").len()["len"].sort().to_list()
    full = ml100k_ratings.group_by("user_idx").len()["len"]
    assert set(counts) <= set(full.to_list())  # whole users
    data = tuning_data(ml100k_ratings, 1682, _config(sample_users=100))
    assert data.sampled and math.isclose(data.users_growth, 943 / 100)
    per_user = sample.height / data.fit.height  # the sample's fit part holds out a quarter of each user's
    assert math.isclose(data.per_user_growth, per_user) and 1.25 < per_user < 1.4
    assert carried("ease", {"l2": 10.0, "dropout": 0.5}, data) == {"l2": 10.0 * data.users_growth, "dropout": 0.5}
    ials = {"factors": 64, "regularization": 0.02, "unobserved_weight_ratio": 2.0, "epochs": 12}
    assert carried("ials", ials, data) == ials | {"regularization": 0.02 / per_user}
    assert carried("ials", carried("ials", ials, data), data, back=True) == pytest.approx(ials)
    assert isinstance(carried("ials", ials, data)["factors"], int)


def test_ease_joins_the_default_models_below_its_memory_bound_only():
    assert PipelineConfig().for_data("explicit", True, 1682).models == ["dot_bias", "ials", "ease"]
    assert PipelineConfig().for_data("implicit", True, 1682).models == ["ials", "ease"]
    assert PipelineConfig().for_data("explicit", True, 23_715).models == ["dot_bias", "ials"]  # 2.25 GB
    assert PipelineConfig(ease={"max_matrix_bytes": 0}).for_data("explicit", True, 10).models == ["dot_bias", "ials"]
    assert PipelineConfig(models=["ials"]).for_data("explicit", True, 10).models == ["ials"]  # named: as named
    named = PipelineConfig(models=["ials", "ease", "popularity"])
    assert named.for_data("explicit", True, 23_715).models == ["ials", "popularity"]  # named, but over the bound
    with pytest.raises(ValueError, match=r"23,715 items takes 2.25 GB, over ease.max_matrix_bytes"):
        PipelineConfig(model="ease").for_data("explicit", True, 23_715)


def test_a_nightly_takes_tuned_settings_except_those_given():
    tuned = {"ials": {"factors": 128, "regularization": 0.05}, "ease": {"l2": 300.0}, "bpr": {"epochs": 3}}
    config = PipelineConfig(models=["ials", "ease"], ials={"factors": 32})
    applied, taken = with_tuned(config, tuned)
    assert taken == {"ials": {"regularization": 0.05}, "ease": {"l2": 300.0}}  # bpr is not trained
    assert applied.params_for("ials").factors == 32  # given: wins
    assert applied.params_for("ials").regularization == 0.05 and applied.params_for("ease").l2 == 300.0


def test_each_dataset_has_its_own_key(tmp_path):
    one, other = tmp_path / "a.zip", tmp_path / "b.zip"
    keys = {
        dataset_key(PipelineConfig(source=str(one)), "ml-100k"),
        dataset_key(PipelineConfig(source=str(other)), "ml-100k"),
        dataset_key(PipelineConfig(source=str(one)), "interactions"),
        dataset_key(PipelineConfig(source=str(one), feedback="implicit"), "interactions"),
    }
    assert len(keys) == 4
    assert dataset_key(PipelineConfig(source=str(one)), "ml-100k") == dataset_key(
        PipelineConfig(source=f"file://{one}"), "ml-100k"
    )


def test_two_tunes_wait_for_each_other_and_never_for_a_nightly(tmp_path):
    from flows.lock import TUNE_LOCK, RunLockedError, run_lock

    warehouse = tmp_path / "W.duckdb"
    with run_lock(warehouse, "tune-1", suffix=TUNE_LOCK):
        with pytest.raises(
            RunLockedError, match=r"another tune holds .*W.duckdb.tune.lock: run tune-1 .*gave up after"
        ):
            with run_lock(warehouse, "tune-2", timeout_seconds=0.2, poll_seconds=0.05, suffix=TUNE_LOCK):
                pass
        with run_lock(warehouse, "nightly"):  # a nightly run goes on while a tune searches
            pass
