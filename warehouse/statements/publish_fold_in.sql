-- A fold-in's lists replace those of its users and nobody else's (inside one write, warehouse/fold_ins.py).
-- Frames: `folded_users` (user_id), `new_recommendations` (user_id, item_id, rank, score, run_id, generated_at,
-- predicted_rating, fold_in_id), `new_reasons` (user_id, item_id, reason_rank, reason_item_id, contribution, run_id).
DELETE FROM recommendations WHERE user_id IN (SELECT user_id FROM folded_users);
INSERT INTO recommendations (user_id, item_id, rank, score, run_id, generated_at, predicted_rating, fold_in_id)
SELECT user_id, item_id, rank, score, run_id, generated_at, predicted_rating, fold_in_id FROM new_recommendations;

DELETE FROM recommendation_reasons WHERE user_id IN (SELECT user_id FROM folded_users);
INSERT INTO recommendation_reasons (user_id, item_id, reason_rank, reason_item_id, contribution, run_id)
SELECT user_id, item_id, reason_rank, reason_item_id, contribution, run_id FROM new_reasons;

-- A folded user with no list rated every item the rules allow (as users_without_lists says of the nightly's).
DELETE FROM users_without_lists WHERE user_id IN (SELECT user_id FROM folded_users);
INSERT INTO users_without_lists (user_id, run_id)
SELECT u.user_id, $run_id FROM folded_users AS u
WHERE NOT EXISTS (SELECT 1 FROM new_recommendations AS r WHERE r.user_id = u.user_id);
