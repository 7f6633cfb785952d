-- What a publishing run adds beside the lists: the list for unknown users, the reasons behind each
-- recommended item, and a way to serve any user id. Replaced whole with `recommendations`, in the same write.

-- The top-n for a user with no published list (no history when the run published): the items with the most
-- ratings that the run's business rules allow (runs.config: exclude_items, min_item_ratings, genres, years).
CREATE TABLE IF NOT EXISTS fallback_recommendations (
    item_id      BIGINT      NOT NULL,
    rank         SMALLINT    NOT NULL,  -- 1 = best
    score        REAL        NOT NULL,  -- the item's number of ratings
    run_id       VARCHAR     NOT NULL,
    generated_at TIMESTAMPTZ NOT NULL
);

-- For each published (user, item): up to `reasons` of the user's rated items that speak for it most, rank 1 the
-- strongest. contribution: the cosine of the two items in the published model's item space (factor models), or
-- the weight the rated item adds to the recommended one's score (ease). The kNN, bias and popularity models
-- publish none (tasks/reasons.py).
CREATE TABLE IF NOT EXISTS recommendation_reasons (
    user_id        BIGINT   NOT NULL,
    item_id        BIGINT   NOT NULL,
    reason_rank    SMALLINT NOT NULL,
    reason_item_id BIGINT   NOT NULL,  -- an item the user rated
    contribution   REAL     NOT NULL,
    run_id         VARCHAR  NOT NULL
);

-- The published lists with titles and, per item, "because you rated ..." (the reasons' titles, strongest first).
CREATE OR REPLACE VIEW recommendations_with_reasons AS
SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.predicted_rating,
       list(ri.title ORDER BY x.reason_rank) FILTER (WHERE x.reason_item_id IS NOT NULL) AS because_you_rated,
       CASE WHEN count(x.reason_item_id) > 0
            THEN 'because you rated ' || string_agg(ri.title, ', ' ORDER BY x.reason_rank) END AS reason,
       r.run_id
FROM recommendations AS r
LEFT JOIN items AS i USING (item_id)
LEFT JOIN recommendation_reasons AS x ON x.user_id = r.user_id AND x.item_id = r.item_id
LEFT JOIN items AS ri ON ri.item_id = x.reason_item_id
GROUP BY r.user_id, r.rank, r.item_id, i.title, r.score, r.predicted_rating, r.run_id;

-- Users the publishing run knew (they have ratings) who got no list: they rated every item the business rules
-- allow, so nothing is left to recommend to them. They get no fallback either: its items are ones they rated.
CREATE TABLE IF NOT EXISTS users_without_lists (
    user_id BIGINT  NOT NULL,
    run_id  VARCHAR NOT NULL
);

-- Any user id's list: their published one, else the fallback (for a user the run did not know), with `source`
-- saying which; no rows for a user in users_without_lists. FROM recommendations_for(42).
CREATE OR REPLACE MACRO recommendations_for(uid) AS TABLE
SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.predicted_rating, 'personal' AS source
FROM recommendations AS r LEFT JOIN items AS i USING (item_id)
WHERE r.user_id = uid
UNION ALL
SELECT uid AS user_id, f.rank, f.item_id, i.title, f.score, NULL AS predicted_rating, 'fallback' AS source
FROM fallback_recommendations AS f LEFT JOIN items AS i USING (item_id)
WHERE NOT EXISTS (SELECT 1 FROM recommendations WHERE user_id = uid)
  AND NOT EXISTS (SELECT 1 FROM users_without_lists WHERE user_id = uid);
