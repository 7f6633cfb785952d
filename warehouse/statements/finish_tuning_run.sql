-- A tune ends: its row, its trials and (when it succeeded) the settings it chose, in one write.
-- Frames: `tuning_update` (one row), `trials` (tuning_trials' columns), `chosen` (tuned_settings' columns).
UPDATE tuning_runs SET
    status       = u.status,
    reason       = u.reason,
    finished_at  = u.finished_at,
    seconds      = u.seconds,
    n_users      = coalesce(u.n_users, tuning_runs.n_users),
    n_users_full = coalesce(u.n_users_full, tuning_runs.n_users_full),
    n_items      = coalesce(u.n_items, tuning_runs.n_items),
    n_fit        = coalesce(u.n_fit, tuning_runs.n_fit),
    n_validation = coalesce(u.n_validation, tuning_runs.n_validation),
    models       = coalesce(u.models, tuning_runs.models),
    n_trials     = coalesce(u.n_trials, tuning_runs.n_trials),
    n_pruned     = coalesce(u.n_pruned, tuning_runs.n_pruned),
    n_resumed    = coalesce(u.n_resumed, tuning_runs.n_resumed)
FROM tuning_update AS u
WHERE tuning_runs.tuning_run_id = u.tuning_run_id;

INSERT INTO tuning_trials
SELECT tuning_run_id, model, trial, state, CAST(settings AS JSON), objective, value, ndcg, rmse, epochs, seconds,
       resumed, note
FROM trials;

INSERT INTO tuned_settings
SELECT dataset_key, tuning_run_id, model, CAST(settings AS JSON), objective, validation_value, first_value, chosen_at
FROM chosen;
