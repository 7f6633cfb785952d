-- What the published lists cover now: the users with a list and the distinct items shown, and the run that
-- published them; a run whose lists cover far fewer is not published (tasks/publish_check.py). No rows when
-- nothing is published.
SELECT any_value(run_id) AS run_id, count(DISTINCT user_id) AS users, count(DISTINCT item_id) AS items
FROM recommendations
HAVING count(*) > 0;
