-- Retention: the per-run detail tables (similar_items, item_biases, training_history) keep the runs started
-- since the oldest of the last $keep_runs published runs; older runs' detail rows are deleted. `runs` and
-- `run_metrics` are kept whole: they are the trend. $keep_runs = 0 keeps everything, and so does a warehouse
-- with fewer published runs than that. Run in the write that ends a run.
CREATE OR REPLACE TEMP TABLE expired_runs AS
WITH published AS (
    SELECT started_at, row_number() OVER (ORDER BY started_at DESC) AS n FROM runs WHERE status = 'succeeded'
)
SELECT run_id
FROM runs
WHERE $keep_runs > 0
  AND (SELECT count(*) FROM published) >= $keep_runs
  AND started_at < (SELECT min(started_at) FROM published WHERE n <= $keep_runs);
DELETE FROM similar_items WHERE run_id IN (SELECT run_id FROM expired_runs);
DELETE FROM item_biases WHERE run_id IN (SELECT run_id FROM expired_runs);
DELETE FROM training_history WHERE run_id IN (SELECT run_id FROM expired_runs);
DROP TABLE expired_runs;
-- user_metrics: only the last published run of each dataset and protocol, the one a next run is judged against.
DELETE FROM user_metrics WHERE run_id NOT IN (
    SELECT arg_max(run_id, finished_at) FROM runs WHERE status = 'succeeded' GROUP BY source_sha256, protocol
);
