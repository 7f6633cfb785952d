-- A run's lists' beyond-accuracy metrics (tasks/list_metrics.py) when it does not publish them (rejected): kept
-- in run_metrics like its other metrics, so the trend shows what the held-back lists would have been.
-- Frame: `new_list_metrics` (run_id, model, metric, k, value).
INSERT INTO run_metrics (run_id, model, metric, k, value) SELECT run_id, model, metric, k, value FROM new_list_metrics;
