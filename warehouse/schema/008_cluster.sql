-- Where a run's recommend stage ran: NULL in the flow's own process; else the `cluster` setting (local:N or
-- the Dask scheduler's address) and how many Dask workers ran its user shards (flows/cluster.py).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cluster VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cluster_workers INTEGER;
