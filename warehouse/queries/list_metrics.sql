-- Beyond-accuracy metrics of a run's lists (tasks/list_metrics.py), in an in-memory DuckDB over:
-- `new_lists` (user_id, item_id, rank), `previous_lists` (the live lists: user_id, item_id, rank),
-- `item_popularity` (item_id, n_ratings: every item with a rating), `catalogue` (item_id, genres).
--   popularity_percentile: mean over the listed items of percent_rank() by number of ratings (0 = the least
--                          rated item, 1 = the most rated): high means the lists favour what is popular.
--   genre_diversity:       mean over users of the distinct genres in their list.
--   churn:                 of the users with a list before and now, the share whose list holds other items (an
--                          item came in or left; a new order of the same items is not churn).
--   jaccard:               their mean |before ∩ now| / |before ∪ now| over the lists' item sets.
-- churn and jaccard are NULL when no user had a list before.
WITH percentile AS (
    SELECT item_id, percent_rank() OVER (ORDER BY n_ratings) AS p FROM item_popularity
), genres AS (
    SELECT l.user_id, count(DISTINCT g.genre) AS n_genres
    FROM new_lists AS l
    LEFT JOIN (SELECT item_id, unnest(genres) AS genre FROM catalogue) AS g USING (item_id)
    GROUP BY l.user_id
), common AS (
    SELECT user_id FROM new_lists INTERSECT SELECT user_id FROM previous_lists
), now AS (
    SELECT user_id, item_id FROM new_lists WHERE user_id IN (SELECT user_id FROM common)
), before AS (
    SELECT user_id, item_id FROM previous_lists WHERE user_id IN (SELECT user_id FROM common)
), overlap AS (
    SELECT coalesce(n.user_id, b.user_id) AS user_id,
           count(*) FILTER (WHERE n.item_id IS NOT NULL AND b.item_id IS NOT NULL) / count(*) AS jaccard
    FROM now AS n FULL JOIN before AS b ON n.user_id = b.user_id AND n.item_id = b.item_id
    GROUP BY ALL
)
SELECT 'popularity_percentile' AS metric, (SELECT avg(p) FROM new_lists JOIN percentile USING (item_id)) AS value
UNION ALL SELECT 'genre_diversity', (SELECT avg(n_genres) FROM genres)
UNION ALL SELECT 'churn', (SELECT avg((jaccard < 1)::INTEGER) FROM overlap)
UNION ALL SELECT 'jaccard', (SELECT avg(jaccard) FROM overlap);
