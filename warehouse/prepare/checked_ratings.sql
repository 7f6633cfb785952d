-- The valid rows of a checked MovieLens ratings file, in file order, as the parsed dataset's ratings.parquet
-- holds them (tasks/ingest/parse.py), timestamps in seconds. Parameters: $checked (the file), $milliseconds (its
-- timestamps are milliseconds since 1970).
SELECT user_id, item_id, rating,
    CASE WHEN $milliseconds THEN timestamp // 1000 ELSE timestamp END AS timestamp
FROM read_parquet($checked)
WHERE ok
