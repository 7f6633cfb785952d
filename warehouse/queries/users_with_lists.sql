-- How many users have a published list (`recs recommend` says it when a user has none).
SELECT count(DISTINCT user_id) AS n_users FROM recommendations;
