-- All metrics of one run. Parameter: $run_id.
SELECT model, metric, k, value
FROM run_metrics
WHERE run_id = $run_id
ORDER BY model, k NULLS FIRST, metric;
