-- Tunes a killed process left `running` (found by the next tune, which holds the tune lock).
-- Parameters: $finished_at, $reason.
UPDATE tuning_runs SET status = 'failed', reason = $reason, finished_at = $finished_at
WHERE status = 'running';
