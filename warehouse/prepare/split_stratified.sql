-- The stratified split (tasks/split.py): within each user, the first round(n * $train_share) ratings (at least
-- one) by a random `_key` per rating go to train, rounding half to even as polars' round does. `keyed` is the indexed ratings
-- with their random `_key`; item_idx breaks ties as polars' ordinal rank does (by position).
SELECT user_idx, item_idx, rating, timestamp,
    row_number() OVER (PARTITION BY user_idx ORDER BY _key, item_idx)
        <= greatest(round_even(count(*) OVER (PARTITION BY user_idx) * $train_share, 0), 1) AS _train
FROM keyed
