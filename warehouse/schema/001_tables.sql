-- The warehouse's tables. Applied by every run; each statement is idempotent.
-- Names and columns here are a contract that users' SQL relies on: add columns, never rename or drop.

-- The currently published lists: each user's top-n, rank 1 = best, in the dataset's own ids.
-- Replaced whole by a publishing run, which swaps in a new warehouse file: readers see the old lists or the new.
CREATE TABLE IF NOT EXISTS recommendations (
    user_id      BIGINT      NOT NULL,
    item_id      BIGINT      NOT NULL,
    rank         SMALLINT    NOT NULL,  -- 1 = best
    score        REAL        NOT NULL,  -- the published model's score (see 004_models.sql); higher is better
    run_id       VARCHAR     NOT NULL,  -- the run that published this list (runs.run_id)
    generated_at TIMESTAMPTZ NOT NULL
);

-- The catalogue of the dataset behind the published lists; replaced together with `recommendations`.
CREATE TABLE IF NOT EXISTS items (
    item_id BIGINT NOT NULL,
    title   VARCHAR,
    genres  VARCHAR[],
    year    INTEGER  -- from the "(1995)" at the end of the title; NULL when it has none
);

-- One row per run, inserted as 'running' when the run starts and updated when it ends.
-- status: 'running' | 'succeeded' | 'failed' (see `error`) | 'rejected' (see gate_reason, 003_operations.sql)
-- | 'cancelled' (ended by a signal or run_timeout_seconds; the reason in `error`).
CREATE TABLE IF NOT EXISTS runs (
    run_id                   VARCHAR PRIMARY KEY,
    flow_run_id              VARCHAR,
    started_at               TIMESTAMPTZ NOT NULL,
    finished_at              TIMESTAMPTZ,
    status                   VARCHAR NOT NULL,
    error                    VARCHAR,
    source                   VARCHAR,  -- as given, any credentials removed
    source_sha256            VARCHAR,
    dataset_layout           VARCHAR,  -- ml-100k | ml-1m/10m | csv
    n_ratings                BIGINT,
    n_users                  INTEGER,
    n_items                  INTEGER,
    n_train                  BIGINT,
    n_test                   BIGINT,
    model                    VARCHAR,
    device                   VARCHAR,
    train_seconds            DOUBLE,
    train_ratings_per_second DOUBLE,
    stage_seconds            JSON,     -- {"ingest": 1.2, "reindex": 0.1, ...}
    config                   JSON      -- the full PipelineConfig of the run
);

-- Every run's metrics in long form: rmse and mae with k NULL; precision, recall, ndcg, map, hit_rate,
-- coverage at k. `model` names the model evaluated.
CREATE TABLE IF NOT EXISTS run_metrics (
    run_id VARCHAR NOT NULL,
    model  VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    k      INTEGER,
    value  DOUBLE  NOT NULL
);

-- Loss (MSE) per epoch: split 'train' and 'validation' for the evaluated model, 'refit' for the model
-- refitted on all ratings that scored the published lists.
CREATE TABLE IF NOT EXISTS training_history (
    run_id VARCHAR NOT NULL,
    epoch  INTEGER NOT NULL,
    split  VARCHAR NOT NULL,
    loss   DOUBLE  NOT NULL
);
