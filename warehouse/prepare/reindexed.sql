-- Every rating with the run's indices instead of the dataset's ids, sorted by user then item (tasks/reindex.py).
-- Parameters: $ratings (the parsed dataset's ratings.parquet), $user_map, $item_map (the maps id_map.sql wrote),
-- $as_of (Unix seconds, or NULL for every rating).
SELECT u.user_idx, i.item_idx, r.rating, r.timestamp
FROM read_parquet($ratings) AS r
JOIN read_parquet($user_map) AS u USING (user_id)
JOIN read_parquet($item_map) AS i USING (item_id)
WHERE $as_of IS NULL OR r.timestamp <= $as_of
ORDER BY u.user_idx, i.item_idx
