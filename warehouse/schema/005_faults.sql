-- What ingest left out of a run's ratings (tasks/ingest/movielens.py).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS n_bad_rows BIGINT;           -- malformed rows dropped (on_bad_rows = 'drop')
ALTER TABLE runs ADD COLUMN IF NOT EXISTS n_duplicate_ratings BIGINT;  -- repeated (user, item) rows dropped, the latest kept

-- runs.status 'failed' also covers a run whose process died without recording an outcome (killed, machine
-- lost): the next run on the warehouse finds it still 'running' while it holds the run lock itself, and
-- marks it failed with error 'abandoned: ...'. Until then such a row reads 'running' with no live run.
