-- The most and least liked items of the newest run by a model's item bias, next to their mean rating and
-- count, and where bias and mean rating disagree most (rank by bias vs rank by mean rating).
-- Parameters: $model (e.g. 'dot_bias'), $min_ratings (leave out rarely rated items, e.g. 20), $n (rows per list).
WITH newest AS (
    SELECT run_id FROM item_biases WHERE model = $model ORDER BY run_id DESC LIMIT 1
), ranked AS (
    SELECT
        b.item_id, i.title, b.bias, b.mean_rating, b.n_ratings,
        rank() OVER (ORDER BY b.bias DESC)        AS bias_rank,
        rank() OVER (ORDER BY b.mean_rating DESC) AS mean_rank
    FROM item_biases AS b
    JOIN newest USING (run_id)
    LEFT JOIN items AS i USING (item_id)
    WHERE b.model = $model AND b.n_ratings >= $min_ratings
)
(SELECT 'most liked' AS list, * FROM ranked ORDER BY bias DESC LIMIT $n)
UNION ALL
(SELECT 'least liked' AS list, * FROM ranked ORDER BY bias ASC LIMIT $n)
UNION ALL
(SELECT 'bias and mean disagree' AS list, * FROM ranked ORDER BY abs(bias_rank - mean_rank) DESC LIMIT $n)
