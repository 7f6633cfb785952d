-- Several models per run, and the inspection tables (what a model learnt about the items).

-- A run trains every model in its config's `models` and evaluates each on the same split: run_metrics has
-- one set of rows per model (plus fit_seconds, k NULL). runs.model is the model whose lists were published
-- (the config's `model`, or the best by nDCG@k), and recommendations.score is that model's score: a
-- predicted rating for the rating models, a ranking score (higher is better) for bpr, ease and popularity.
ALTER TABLE training_history ADD COLUMN IF NOT EXISTS model VARCHAR;  -- NULL in rows of older runs

-- Per run and model with item biases (dot_bias, bpr, bias): each item's learnt bias beside its mean rating
-- and number of ratings in the training split. A high bias with a middling mean: an item people rate
-- above what they usually give. See queries/item_bias_extremes.sql.
CREATE TABLE IF NOT EXISTS item_biases (
    run_id      VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    item_id     BIGINT  NOT NULL,
    bias        DOUBLE  NOT NULL,
    mean_rating DOUBLE,            -- NULL for an item with no training rating
    n_ratings   BIGINT  NOT NULL
);

-- Per run and model with item embeddings (dot_bias, dot, mlp, bpr): each item's most similar items by the
-- cosine of their embeddings, rank 1 = most similar. See queries/similar_items.sql.
CREATE TABLE IF NOT EXISTS similar_items (
    run_id          VARCHAR  NOT NULL,
    model           VARCHAR  NOT NULL,
    item_id         BIGINT   NOT NULL,
    rank            SMALLINT NOT NULL,
    similar_item_id BIGINT   NOT NULL,
    score           REAL     NOT NULL  -- cosine similarity of the two items' embeddings
);

-- Every model of every finished run side by side: one row per run and model, the headline metrics as columns.
CREATE OR REPLACE VIEW model_comparison AS
SELECT
    m.run_id, r.started_at, r.status, r.protocol, m.model, m.model = r.model AS published,
    max(m.value) FILTER (WHERE m.metric = 'rmse')      AS rmse,
    max(m.value) FILTER (WHERE m.metric = 'mae')       AS mae,
    max(m.value) FILTER (WHERE m.metric = 'precision') AS "precision",
    max(m.value) FILTER (WHERE m.metric = 'recall')    AS recall,
    max(m.value) FILTER (WHERE m.metric = 'ndcg')      AS ndcg,
    max(m.value) FILTER (WHERE m.metric = 'map')       AS "map",
    max(m.value) FILTER (WHERE m.metric = 'coverage')  AS coverage,
    max(m.value) FILTER (WHERE m.metric = 'fit_seconds') AS fit_seconds,
    max(m.k) AS k
FROM run_metrics AS m
JOIN runs AS r USING (run_id)
WHERE r.status <> 'running'
GROUP BY ALL;
