-- The publishing run's lists replace the live ones, read straight from the parquet files its shards wrote on a
-- cluster (flows/cluster.py), in one statement: they are never gathered in the flow's process. Parameters:
-- $files (the shards' paths), $run_id, $generated_at. Files: user_id, item_id, rank, score, predicted_rating.
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, item_id, rank, score, run_id, generated_at, predicted_rating)
SELECT user_id, item_id, rank, score, $run_id, $generated_at, predicted_rating FROM read_parquet($files);
