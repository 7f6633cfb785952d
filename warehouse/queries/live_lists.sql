-- The published lists as they are now, for the next run's churn against them (tasks/list_metrics.py).
SELECT user_id, item_id, rank FROM recommendations;
