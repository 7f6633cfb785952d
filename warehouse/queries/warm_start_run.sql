-- The run a warm start reads its checkpoints from (tasks/warm.py): the last run that published, on any dataset
-- (a nightly's archive grows, so its SHA-256 changes every night). Parameters: $run_id (tonight's, left out).
SELECT run_id
FROM runs
WHERE status = 'succeeded' AND run_id <> $run_id
ORDER BY finished_at DESC
LIMIT 1;
