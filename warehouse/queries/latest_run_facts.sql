-- The newest run's size, device, speed and stage timings, with the number of published rows
-- (benchmarks/scale.py reads one row per size).
SELECT n_ratings, n_users, n_items, model, device, train_ratings_per_second, stage_seconds,
       (SELECT count(*) FROM recommendations) AS n_recommendations
FROM runs
ORDER BY started_at DESC
LIMIT 1;
