-- Fold-ins (`recs fold-in`, flows/fold_in.py): users new or changed since the published run, folded into its model
-- between nightly runs, their lists replaced in `recommendations` and nobody else's. The next nightly replaces all.

-- One row per fold-in that did something or was refused; one that found nothing new writes nothing (it says so).
-- status: 'published' | 'refused' (a job for the nightly, or the published run changed meanwhile: see reason)
-- | 'failed' (see reason).
CREATE TABLE IF NOT EXISTS fold_ins (
    fold_in_id        VARCHAR PRIMARY KEY,
    flow_run_id       VARCHAR,
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ NOT NULL,
    status            VARCHAR NOT NULL,
    reason            VARCHAR,
    run_id            VARCHAR,      -- the published run whose model the users were folded into
    model             VARCHAR,      -- its model (the lists) and rating model (the stars)
    rating_model      VARCHAR,
    source            VARCHAR,      -- what was read: the source, or fold_in.new_rows (credentials removed)
    source_sha256     VARCHAR,
    n_new_rows        BIGINT,       -- rows new or changed since the published run's data
    n_changed_rows    BIGINT,       -- of those, pairs its data holds with another rating (re-ratings)
    n_removed_rows    BIGINT,       -- its rows the source no longer has
    n_users_added     INTEGER,      -- users the published run did not know
    n_users_changed   INTEGER,      -- users it knew whose interactions changed
    n_users_on_fallback INTEGER,    -- new users with interactions only with items newer than the model: fallback
    n_new_items       INTEGER,      -- items newer than the model: not recommended until the nightly
    n_recommendations INTEGER,      -- rows published
    seconds           DOUBLE        -- from the flow's start to the publish
);

-- Which rows of `recommendations` a fold-in published (NULL: the nightly run's); generated_at says when.
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS fold_in_id VARCHAR;
