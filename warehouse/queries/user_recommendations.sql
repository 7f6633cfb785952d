-- One user's published list, best first, with titles and the predicted stars. Parameter: $user_id (the
-- dataset's own user id).
SELECT rank, item_id, title, year, genres, score, predicted_rating
FROM recommendations_with_titles
WHERE user_id = $user_id
ORDER BY rank;
