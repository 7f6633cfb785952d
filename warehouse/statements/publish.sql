-- A publishing run swaps in its catalogue and keeps the loss of the refit that scored its lists, in the same
-- write as the lists themselves (publish_lists.sql, or publish_lists_from_files.sql on a cluster).
-- Frames: `new_items` (item_id, title, genres, year), `new_history` (run_id, model, epoch, split, loss;
-- split 'refit', empty when the run did not refit), `new_user_metrics` (run_id, model, user_id, metric, value:
-- the per-user values behind the metrics the gate judged, for the next run's comparison), `new_fallback`
-- (item_id, rank, score, run_id, generated_at: the list for unknown users), `new_list_metrics` (run_id, model,
-- metric, k, value: the lists' beyond-accuracy metrics, tasks/list_metrics.py), `new_known_users` (user_id,
-- run_id: every user with ratings in the run; those without a list go to users_without_lists).
DELETE FROM training_history USING (SELECT DISTINCT run_id, model, split FROM new_history) AS h
WHERE training_history.run_id = h.run_id AND training_history.model = h.model AND training_history.split = h.split;
INSERT INTO training_history (run_id, model, epoch, split, loss) SELECT run_id, model, epoch, split, loss FROM new_history;

DELETE FROM items;
INSERT INTO items SELECT item_id, title, genres, year FROM new_items;

INSERT INTO user_metrics SELECT run_id, model, user_id, metric, value FROM new_user_metrics;

DELETE FROM fallback_recommendations;
INSERT INTO fallback_recommendations (item_id, rank, score, run_id, generated_at)
SELECT item_id, rank, score, run_id, generated_at FROM new_fallback;

INSERT INTO run_metrics (run_id, model, metric, k, value) SELECT run_id, model, metric, k, value FROM new_list_metrics;

DELETE FROM users_without_lists;
INSERT INTO users_without_lists (user_id, run_id)
SELECT k.user_id, k.run_id FROM new_known_users AS k
WHERE NOT EXISTS (SELECT 1 FROM recommendations AS r WHERE r.user_id = k.user_id);
