-- A tune starts. Frames: `tuning_run`, one row of the columns below.
INSERT INTO tuning_runs (tuning_run_id, flow_run_id, dataset_key, source, source_sha256, dataset_layout, status,
                         started_at, budget_seconds, max_trials, sample_users, config)
SELECT tuning_run_id, flow_run_id, dataset_key, source, source_sha256, dataset_layout, 'running',
       started_at, budget_seconds, max_trials, sample_users, CAST(config AS JSON)
FROM tuning_run;
