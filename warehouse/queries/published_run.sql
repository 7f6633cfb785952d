-- The run whose lists are published now (the last run that published, whichever dataset, protocol and model):
-- what the quality gate holds a candidate to. Its archive's SHA-256 and protocol say whether its recorded metrics
-- measure what the candidate's do (tasks/gate.py). Parameters: $run_id (the candidate run, left out).
SELECT run_id, model, rating_model, CAST(config AS VARCHAR) AS config, source_sha256, protocol
FROM runs
WHERE status = 'succeeded' AND run_id <> $run_id
ORDER BY finished_at DESC
LIMIT 1;
