-- Runs whose row says 'running' (`recs runs` checks them against the run lock).
SELECT run_id FROM runs WHERE status = 'running';
