-- Set what a run has learnt about itself. Frames: `run_update`, one row: run_id and every settable column
-- of `runs` (warehouse/runs.py, RUN_FIELDS), NULL where this write leaves the stored value as it is.
UPDATE runs SET
    status                   = coalesce(u.status, runs.status),
    error                    = coalesce(u.error, runs.error),
    finished_at              = coalesce(u.finished_at, runs.finished_at),
    source                   = coalesce(u.source, runs.source),
    source_sha256            = coalesce(u.source_sha256, runs.source_sha256),
    dataset_layout           = coalesce(u.dataset_layout, runs.dataset_layout),
    n_ratings                = coalesce(u.n_ratings, runs.n_ratings),
    n_users                  = coalesce(u.n_users, runs.n_users),
    n_items                  = coalesce(u.n_items, runs.n_items),
    n_train                  = coalesce(u.n_train, runs.n_train),
    n_test                   = coalesce(u.n_test, runs.n_test),
    model                    = coalesce(u.model, runs.model),
    device                   = coalesce(u.device, runs.device),
    train_seconds            = coalesce(u.train_seconds, runs.train_seconds),
    train_ratings_per_second = coalesce(u.train_ratings_per_second, runs.train_ratings_per_second),
    stage_seconds            = coalesce(CAST(u.stage_seconds AS JSON), runs.stage_seconds),
    as_of                    = coalesce(u.as_of, runs.as_of),
    protocol                 = coalesce(u.protocol, runs.protocol),
    gate_baseline_run_id     = coalesce(u.gate_baseline_run_id, runs.gate_baseline_run_id),
    gate_reason              = coalesce(u.gate_reason, runs.gate_reason),
    n_bad_rows               = coalesce(u.n_bad_rows, runs.n_bad_rows),
    n_duplicate_ratings      = coalesce(u.n_duplicate_ratings, runs.n_duplicate_ratings),
    rating_model             = coalesce(u.rating_model, runs.rating_model),
    cluster                  = coalesce(u.cluster, runs.cluster),
    cluster_workers          = coalesce(u.cluster_workers, runs.cluster_workers),
    tuning_run_id            = coalesce(u.tuning_run_id, runs.tuning_run_id),
    tuned_settings           = coalesce(CAST(u.tuned_settings AS JSON), runs.tuned_settings),
    config                   = coalesce(CAST(u.config AS JSON), runs.config)
FROM run_update AS u
WHERE runs.run_id = u.run_id;
