-- The per-user values behind the published lists' metrics, for the quality gate's paired comparison of a
-- candidate with them (tasks/noise.py): `ndcg` per user of the published model, and `squared_error` (summed
-- over the user's test ratings) and `n_ratings` of the rating model. Only the last published run of each
-- dataset and protocol keeps them (statements/prune_details.sql): they are what the next run is compared with.
CREATE TABLE IF NOT EXISTS user_metrics (
    run_id  VARCHAR NOT NULL,
    model   VARCHAR NOT NULL,
    user_id BIGINT  NOT NULL,
    metric  VARCHAR NOT NULL,
    value   DOUBLE
);
