-- The list a user without one of their own is served (recommendations_for's fallback rows): the most-rated items
-- under the run's business rules. No rows for a user who has a list, or who rated every item the rules allow.
-- Parameter: $user_id (the dataset's own user id).
SELECT rank, item_id, title, score
FROM recommendations_for($user_id)
WHERE source = 'fallback'
ORDER BY rank;
