-- The user id map of reindex (tasks/reindex.py): the distinct user ids in id order (bytewise for text, as
-- polars sorts), numbered from 0. Parameters: $ratings (the parsed dataset's ratings.parquet), $as_of (Unix
-- seconds, or NULL for every rating).
SELECT (row_number() OVER (ORDER BY user_id) - 1)::INTEGER AS user_idx, user_id
FROM (
    SELECT DISTINCT user_id FROM read_parquet($ratings)
    WHERE $as_of IS NULL OR timestamp <= $as_of
)
ORDER BY user_idx
