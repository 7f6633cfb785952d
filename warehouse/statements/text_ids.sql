-- A warehouse's id columns become text (VARCHAR) the first time a source with text ids (SKUs, UUIDs,
-- `tt0114709`) writes to it: whole-number ids already there become their digits, so one warehouse can move from a
-- MovieLens archive to a team's catalogue. Never the other way: whole numbers are written into text columns as
-- their digits. Run by warehouse/runs.py only while some id column is still BIGINT (queries/integer_id_columns.sql).
ALTER TABLE recommendations ALTER COLUMN user_id TYPE VARCHAR;
ALTER TABLE recommendations ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE items ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE item_biases ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE similar_items ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE similar_items ALTER COLUMN similar_item_id TYPE VARCHAR;
ALTER TABLE user_metrics ALTER COLUMN user_id TYPE VARCHAR;
ALTER TABLE fallback_recommendations ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE recommendation_reasons ALTER COLUMN user_id TYPE VARCHAR;
ALTER TABLE recommendation_reasons ALTER COLUMN item_id TYPE VARCHAR;
ALTER TABLE recommendation_reasons ALTER COLUMN reason_item_id TYPE VARCHAR;
ALTER TABLE users_without_lists ALTER COLUMN user_id TYPE VARCHAR;
