-- The last run that published lists for today rather than for a replayed date (as_of NULL), if any: a replay
-- (`recs backfill`) refuses to publish into a warehouse that holds one.
SELECT run_id
FROM runs
WHERE status = 'succeeded' AND as_of IS NULL
ORDER BY finished_at DESC
LIMIT 1;
