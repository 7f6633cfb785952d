-- The publishing run's lists replace the live ones, read straight from the parquet files its shards wrote on a
-- cluster (flows/cluster.py), in one statement: they are never gathered in the flow's process. Parameters:
-- $files (the shards' paths), $reason_files (their reasons' paths), $run_id, $generated_at. Files: user_id,
-- item_id, rank, score, predicted_rating; reasons: user_id, item_id, reason_rank, reason_item_id, contribution.
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, item_id, rank, score, run_id, generated_at, predicted_rating)
SELECT user_id, item_id, rank, score, $run_id, $generated_at, predicted_rating FROM read_parquet($files);

DELETE FROM recommendation_reasons;
INSERT INTO recommendation_reasons (user_id, item_id, reason_rank, reason_item_id, contribution, run_id)
SELECT user_id, item_id, reason_rank, reason_item_id, contribution, $run_id FROM read_parquet($reason_files);
