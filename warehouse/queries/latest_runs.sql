-- The latest runs, newest first, with their outcome and headline metrics.
-- reason: the error of a failed run, or the quality gate's verdict.
SELECT
    r.run_id,
    r.status,
    r.started_at,
    r.as_of::DATE AS as_of,
    round(epoch(r.finished_at - r.started_at), 1) AS seconds,
    r.n_ratings,
    r.model,
    r.device,
    max(m.value) FILTER (WHERE m.metric = 'rmse') AS rmse,
    max(m.value) FILTER (WHERE m.metric = 'ndcg') AS ndcg,
    coalesce(r.error, r.gate_reason) AS reason
FROM runs AS r
LEFT JOIN run_metrics AS m ON m.run_id = r.run_id AND m.model = r.model
GROUP BY ALL
ORDER BY r.started_at DESC
LIMIT 20;
