-- One user's published list, best first, with titles. Parameter: $user_id (the dataset's own user id).
SELECT rank, item_id, title, year, genres, score
FROM recommendations_with_titles
WHERE user_id = $user_id
ORDER BY rank;
