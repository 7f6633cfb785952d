-- Rows, users and distinct items of lists kept as parquet files (the shards' on a cluster), counted without
-- loading them: what the publish check and the list-collapse rule read. Parameter: $files (a list of paths).
SELECT count(*) AS n_rows, count(DISTINCT user_id) AS n_users, count(DISTINCT item_id) AS n_items
FROM read_parquet($files);
