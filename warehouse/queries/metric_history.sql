-- One metric over the succeeded runs, oldest first. Parameter: $metric (e.g. 'ndcg', 'rmse').
SELECT r.started_at, r.run_id, m.model, m.k, m.value
FROM run_metrics AS m
JOIN runs AS r USING (run_id)
WHERE r.status = 'succeeded' AND m.metric = $metric
ORDER BY r.started_at;
