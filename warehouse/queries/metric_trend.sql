-- Every metric per run with its delta from the previous run and from the median of the last $n_runs
-- published runs (see the metric_trend macro in schema/003_operations.sql). Parameter: $n_runs.
SELECT run_id, started_at, as_of, status, source, protocol, model, metric, k, value,
       delta_previous, median_published, delta_median
FROM metric_trend($n_runs)
ORDER BY started_at, run_id, model, k NULLS FIRST, metric;
