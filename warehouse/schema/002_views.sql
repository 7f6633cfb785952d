-- Views for people and applications.

-- The published lists with each item's title, genres and year.
CREATE OR REPLACE VIEW recommendations_with_titles AS
SELECT r.user_id, r.rank, r.item_id, i.title, i.genres, i.year, r.score, r.run_id, r.generated_at
FROM recommendations AS r
LEFT JOIN items AS i USING (item_id);
