-- How many valid rows a checked MovieLens ratings file holds (tasks/ingest/movielens.py), and how many distinct
-- (user, item) pairs among them: fewer pairs than rows means repeated ratings. Parameters: $checked (the file).
SELECT
    (SELECT count(*) FROM read_parquet($checked) WHERE ok) AS n_rows,
    (SELECT count(*) FROM (SELECT DISTINCT user_id, item_id FROM read_parquet($checked) WHERE ok)) AS n_pairs
