-- One side of a split (train when $train, else test) from the flagged ratings split_per_user.sql or
-- split_random.sql wrote, sorted by user then item. Parameters: $flagged (that file), $train.
SELECT user_idx, item_idx, rating, timestamp FROM read_parquet($flagged) WHERE _train = $train
ORDER BY user_idx, item_idx
