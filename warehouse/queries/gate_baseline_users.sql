-- The per-user values stored with the published lists (user_metrics), for the gate's paired bootstrap.
-- Parameters: $run_id (the baseline run).
SELECT user_id, metric, value FROM user_metrics WHERE run_id = $run_id;
