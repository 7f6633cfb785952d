-- A run starts: runs still 'running' belong to processes that died (the caller holds the run lock, so no
-- other run is alive) and are marked failed; the new run is inserted as 'running'. Frames: `new_run`
-- (run_id, flow_run_id, started_at, config). Returns the abandoned runs' ids.
UPDATE runs
SET status = 'failed',
    finished_at = n.started_at,
    error = 'abandoned: its process ended without recording an outcome (found by run ' || n.run_id || ')'
FROM new_run AS n
WHERE runs.status = 'running'
RETURNING runs.run_id;
