-- The items most similar to those whose title matches a pattern, by a model's embeddings, in the newest
-- run that stored them. Parameters: $model (e.g. 'dot_bias'), $title (an ILIKE pattern, e.g. '%Star Wars%').
WITH newest AS (
    SELECT run_id FROM similar_items WHERE model = $model ORDER BY run_id DESC LIMIT 1
)
SELECT i.title, s.rank, s.similar_item_id, o.title AS similar_title, round(s.score, 3) AS score
FROM similar_items AS s
JOIN newest USING (run_id)
JOIN items AS i ON i.item_id = s.item_id
LEFT JOIN items AS o ON o.item_id = s.similar_item_id
WHERE s.model = $model AND i.title ILIKE $title
ORDER BY i.title, s.rank
