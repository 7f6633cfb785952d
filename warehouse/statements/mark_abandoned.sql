-- Runs still 'running' while the caller holds the run lock belong to processes that died (no other run is
-- alive): they are marked failed. Run when a run starts, and when `recs runs` finds such rows.
-- Parameters: $found_by (who found them, for the error), $now. Returns the abandoned runs' ids.
UPDATE runs
SET status = 'failed',
    finished_at = $now,
    error = 'abandoned: its process ended without recording an outcome (found by ' || $found_by || ')'
WHERE runs.status = 'running'
RETURNING runs.run_id;
