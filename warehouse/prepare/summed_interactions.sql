-- A team's implicit interactions (tasks/ingest/interactions.py): one row per (user, item) of the checked rows, its
-- rows' weights added and its latest time, in the order of each pair's first row; pairs whose weight adds up to 0
-- are no interaction and are left out. The rating, log(1 + weight), is computed by polars from this (DuckDB has no
-- log1p). Parameters: $checked (the file), $milliseconds (its timestamps are milliseconds since 1970).
SELECT user_id, item_id, weight, CASE WHEN $milliseconds THEN timestamp // 1000 ELSE timestamp END AS timestamp
FROM (
    SELECT user_id, item_id, sum(weight) AS weight, max(timestamp) AS timestamp, min(line) AS first_line
    FROM read_parquet($checked)
    WHERE ok
    GROUP BY user_id, item_id
)
WHERE weight > 0
ORDER BY first_line
