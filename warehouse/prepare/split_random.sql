-- The random split (tasks/split.py): the $n_test lowest-keyed ratings go to test, after each user's lowest-keyed
-- rating is moved past all of them (its key plus 1), so that no user loses every training rating. `keyed` is the
-- indexed ratings with their random `_key`; user and item break ties as polars' ordinal rank does (by position).
SELECT user_idx, item_idx, rating, timestamp,
    row_number() OVER (ORDER BY _order, user_idx, item_idx) > $n_test AS _train
FROM (
    SELECT *, _key + (row_number() OVER (PARTITION BY user_idx ORDER BY _key, item_idx) = 1)::DOUBLE AS _order
    FROM keyed
)
