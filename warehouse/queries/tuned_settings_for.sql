-- The settings the newest successful tune chose for a dataset, one row per model: what a nightly run on that
-- data applies (tasks/tune/tuned.py). Parameters: $dataset_key.
SELECT s.tuning_run_id, s.model, CAST(s.settings AS VARCHAR) AS settings, s.objective, s.validation_value,
       s.chosen_at
FROM tuned_settings AS s
WHERE s.dataset_key = $dataset_key
  AND s.tuning_run_id = (
      SELECT tuning_run_id FROM tuned_settings WHERE dataset_key = $dataset_key
      ORDER BY chosen_at DESC, tuning_run_id DESC LIMIT 1
  )
ORDER BY s.model;
