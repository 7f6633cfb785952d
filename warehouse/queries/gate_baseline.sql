-- The quality gate's baseline: the metrics of the last published run on the same source and protocol.
-- Parameters: $source, $protocol, $model, $run_id (the candidate run, left out).
WITH baseline AS (
    SELECT run_id
    FROM runs
    WHERE status = 'succeeded' AND source = $source AND protocol = $protocol AND run_id <> $run_id
    ORDER BY finished_at DESC
    LIMIT 1
)
SELECT m.run_id, m.metric, m.k, m.value
FROM run_metrics AS m
JOIN baseline USING (run_id)
WHERE m.model = $model;
