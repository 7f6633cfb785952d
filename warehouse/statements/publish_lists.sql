-- The publishing run's lists replace the live ones (inside the publish write, warehouse/runs.py: `publish`).
-- Frames: `new_recommendations` (user_id, item_id, rank, score, run_id, generated_at, predicted_rating),
-- `new_reasons` (user_id, item_id, reason_rank, reason_item_id, contribution, run_id).
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, item_id, rank, score, run_id, generated_at, predicted_rating)
SELECT user_id, item_id, rank, score, run_id, generated_at, predicted_rating FROM new_recommendations;

DELETE FROM recommendation_reasons;
INSERT INTO recommendation_reasons (user_id, item_id, reason_rank, reason_item_id, contribution, run_id)
SELECT user_id, item_id, reason_rank, reason_item_id, contribution, run_id FROM new_reasons;
