-- The quality gate's baseline: the lists published last on the same dataset (the archive's SHA-256, however
-- its source was spelled) and protocol, whichever model made them. Its metrics: nDCG and the rest from the
-- published model, RMSE and MAE from the run's rating model (the stars beside the lists).
-- Parameters: $dataset (source_sha256), $protocol, $run_id (the candidate run, left out).
WITH baseline AS (
    SELECT run_id, model, rating_model
    FROM runs
    WHERE status = 'succeeded' AND source_sha256 = $dataset AND protocol = $protocol AND run_id <> $run_id
    ORDER BY finished_at DESC
    LIMIT 1
)
SELECT m.run_id, m.model, m.metric, m.k, m.value
FROM run_metrics AS m
JOIN baseline AS b ON m.run_id = b.run_id
WHERE (m.model = b.model AND m.metric NOT IN ('rmse', 'mae'))
   OR (m.model = b.rating_model AND m.metric IN ('rmse', 'mae'));
