-- The publishing run's lists replace the live ones (inside the publish write, warehouse/runs.py: `publish`).
-- Frame: `new_recommendations` (user_id, item_id, rank, score, run_id, generated_at, predicted_rating).
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, item_id, rank, score, run_id, generated_at, predicted_rating)
SELECT user_id, item_id, rank, score, run_id, generated_at, predicted_rating FROM new_recommendations;
