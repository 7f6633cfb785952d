-- Operations: replayed history, the quality gate, and trend monitoring.

-- runs.status also takes 'rejected': the quality gate held the run back (see gate_reason) and the
-- previously published lists stayed in place.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS as_of TIMESTAMPTZ;             -- replay cutoff; NULL = all ratings
ALTER TABLE runs ADD COLUMN IF NOT EXISTS protocol VARCHAR;              -- 'stratified test=0.25 seed=42 k=10'
ALTER TABLE runs ADD COLUMN IF NOT EXISTS gate_baseline_run_id VARCHAR;  -- the published run the gate compared with
ALTER TABLE runs ADD COLUMN IF NOT EXISTS gate_reason VARCHAR;           -- the gate's verdict, in words

-- Each metric per run with its delta from the run before it and from the median of the last `n_runs`
-- published ('succeeded') runs before it. A series is one source, protocol, model, metric and k, in start
-- order; every finished run with metrics is in it, published or not. `published`: the run published this
-- model's lists (runs.model); a run that trains several models has a row per model. Example: FROM metric_trend(10).
CREATE OR REPLACE MACRO metric_trend(n_runs) AS TABLE
WITH scored AS (
    SELECT r.run_id, r.started_at, r.as_of, r.status, r.source, r.protocol, m.model, m.model = r.model AS published,
           m.metric, m.k, m.value
    FROM run_metrics AS m
    JOIN runs AS r ON r.run_id = m.run_id
    WHERE r.status <> 'running'
), windowed AS (
    SELECT
        *,
        lag(value) OVER series AS previous_value,
        list(value) FILTER (WHERE status = 'succeeded')
            OVER (series ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS published_before
    FROM scored
    WINDOW series AS (PARTITION BY source, protocol, model, metric, k ORDER BY started_at, run_id)
)
SELECT
    run_id, started_at, as_of, status, source, protocol, model, published, metric, k, value,
    value - previous_value AS delta_previous,
    list_median(list_slice(published_before, -n_runs, -1)) AS median_published,
    value - median_published AS delta_median
FROM windowed;

-- The same over the last 5 published runs, for dashboards that want a plain view.
CREATE OR REPLACE VIEW metric_trends AS FROM metric_trend(5);
