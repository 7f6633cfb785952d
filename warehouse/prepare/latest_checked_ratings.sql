-- checked_ratings.sql for a file with repeated (user, item) ratings: each pair's latest by timestamp, the later
-- line on a tie (an export that appends re-ratings). Parameters: $checked (the file), $milliseconds (its timestamps
-- are milliseconds since 1970).
SELECT user_id, item_id, rating,
    CASE WHEN $milliseconds THEN timestamp // 1000 ELSE timestamp END AS timestamp
FROM read_parquet($checked)
WHERE ok
QUALIFY row_number() OVER (PARTITION BY user_id, item_id ORDER BY timestamp DESC NULLS LAST, line DESC) = 1
