-- The run whose lists are published now on a dataset (the archive's SHA-256, however its source was spelled)
-- and protocol, whichever model made them: what the quality gate holds a candidate to.
-- Parameters: $dataset (source_sha256), $protocol, $run_id (the candidate run, left out).
SELECT run_id, model, rating_model, CAST(config AS VARCHAR) AS config
FROM runs
WHERE status = 'succeeded' AND source_sha256 = $dataset AND protocol = $protocol AND run_id <> $run_id
ORDER BY finished_at DESC
LIMIT 1;
