-- The item id map of reindex (tasks/reindex.py): the distinct item ids in id order (bytewise for text, as
-- polars sorts), numbered from 0. Parameters: $ratings (the parsed dataset's ratings.parquet), $as_of (Unix
-- seconds, or NULL for every rating).
SELECT (row_number() OVER (ORDER BY item_id) - 1)::INTEGER AS item_idx, item_id
FROM (
    SELECT DISTINCT item_id FROM read_parquet($ratings)
    WHERE $as_of IS NULL OR timestamp <= $as_of
)
ORDER BY item_idx
