-- The run's row, 'running' until it records an outcome. Frames: `new_run` (run_id, flow_run_id, started_at, config).
INSERT INTO runs (run_id, flow_run_id, started_at, status, config)
SELECT run_id, flow_run_id, started_at, 'running', CAST(config AS JSON) FROM new_run;
