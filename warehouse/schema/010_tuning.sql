-- Tuning (`recs tune`, flows/tune.py): each tune, its trials, and the settings it chose for its dataset.
-- `dataset_key` names the data a tune searched on (its source, layout and read settings: tasks/tune/tuned.py);
-- a nightly run on the same data takes the newest chosen settings (runs.tuning_run_id says which).
CREATE TABLE IF NOT EXISTS tuning_runs (
    tuning_run_id   VARCHAR PRIMARY KEY,
    flow_run_id     VARCHAR,
    dataset_key     VARCHAR NOT NULL,
    source          VARCHAR,             -- credentials removed
    source_sha256   VARCHAR,
    dataset_layout  VARCHAR,
    status          VARCHAR NOT NULL,    -- running | succeeded | failed | cancelled
    reason          VARCHAR,             -- why it failed, or what stopped the search
    started_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP,
    seconds         DOUBLE,
    budget_seconds  DOUBLE,
    max_trials      INTEGER,
    sample_users    INTEGER,             -- the setting; n_users is what was searched on
    n_users         BIGINT,
    n_users_full    BIGINT,
    n_items         BIGINT,
    n_fit           BIGINT,
    n_validation    BIGINT,
    models          VARCHAR[],
    n_trials        INTEGER,             -- finished trials of its studies, resumed ones included
    n_pruned        INTEGER,
    n_resumed       INTEGER,             -- finished by an earlier, interrupted tune
    config          JSON
);

CREATE TABLE IF NOT EXISTS tuning_trials (
    tuning_run_id   VARCHAR NOT NULL,
    model           VARCHAR NOT NULL,
    trial           INTEGER NOT NULL,    -- the study's trial number; 0 is the config's own settings
    state           VARCHAR NOT NULL,    -- complete | pruned | fail
    settings        JSON,                -- as searched (before the carry to the full data)
    objective       VARCHAR,             -- ndcg (higher is better) or rmse (lower), on the validation split
    value           DOUBLE,              -- the objective; a pruned trial's last reported value
    ndcg            DOUBLE,
    rmse            DOUBLE,
    epochs          INTEGER,             -- trained (a pruned trial's epoch when it was stopped)
    seconds         DOUBLE,
    resumed         BOOLEAN,             -- finished by an earlier tune of the same study
    note            VARCHAR
);

CREATE TABLE IF NOT EXISTS tuned_settings (
    dataset_key       VARCHAR NOT NULL,
    tuning_run_id     VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    settings          JSON NOT NULL,     -- carried to the full data: what a nightly applies
    objective         VARCHAR,
    validation_value  DOUBLE,            -- the chosen trial's
    first_value       DOUBLE,            -- the config's own settings' (trial 0)
    chosen_at         TIMESTAMP NOT NULL
);

ALTER TABLE runs ADD COLUMN IF NOT EXISTS tuning_run_id VARCHAR;  -- the tune whose settings the run took
ALTER TABLE runs ADD COLUMN IF NOT EXISTS tuned_settings JSON;     -- by model, the settings it took from that tune
