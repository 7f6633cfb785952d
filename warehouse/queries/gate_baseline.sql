-- A published run's metrics as the quality gate judges them: nDCG and the rest from its published model, RMSE
-- and MAE from its rating model (the stars beside the lists).
-- Parameters: $run_id (the published run, queries/published_run.sql).
SELECT m.run_id, m.model, m.metric, m.k, m.value
FROM run_metrics AS m
JOIN runs AS r ON m.run_id = r.run_id
WHERE m.run_id = $run_id
  AND ((m.model = r.model AND m.metric NOT IN ('rmse', 'mae'))
    OR (m.model = r.rating_model AND m.metric IN ('rmse', 'mae')));
