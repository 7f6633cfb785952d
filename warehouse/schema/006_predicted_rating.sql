-- The stars beside the ranks: for each published (user, item), the rating that the run's best rating model
-- (by RMSE; runs.rating_model) predicts, clipped to the rating scale. NULL when the run trained no rating
-- model. `score` stays the published ranker's score.
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS predicted_rating REAL;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS rating_model VARCHAR;  -- the model behind predicted_rating

-- The published lists with each item's title, genres and year (replaces 002_views.sql's, adding the stars).
CREATE OR REPLACE VIEW recommendations_with_titles AS
SELECT r.user_id, r.rank, r.item_id, i.title, i.genres, i.year, r.score, r.predicted_rating, r.run_id, r.generated_at
FROM recommendations AS r
LEFT JOIN items AS i USING (item_id);
