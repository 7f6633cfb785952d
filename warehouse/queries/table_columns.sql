-- Every column of the warehouse's own tables, for the check at a run's start that no column the pipeline writes
-- was dropped (warehouse/runs.py: `start_run`).
SELECT table_name, column_name
FROM duckdb_columns()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal;
