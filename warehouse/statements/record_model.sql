-- One trained model's results for a run, in one write: its metrics, its loss per epoch, and its inspection
-- tables (empty frames for a model without item biases or embeddings). Re-running it for the same run and
-- model replaces what it wrote. Frames: `model_key` (run_id, model), `new_metrics`, `new_history`,
-- `new_item_biases`, `new_similar_items`, each with run_id and model columns.
DELETE FROM run_metrics USING model_key k WHERE run_metrics.run_id = k.run_id AND run_metrics.model = k.model;
INSERT INTO run_metrics SELECT run_id, model, metric, k, value FROM new_metrics;

DELETE FROM training_history USING model_key k
WHERE training_history.run_id = k.run_id AND training_history.model = k.model AND training_history.split <> 'refit';
INSERT INTO training_history (run_id, model, epoch, split, loss) SELECT run_id, model, epoch, split, loss FROM new_history;

DELETE FROM item_biases USING model_key k WHERE item_biases.run_id = k.run_id AND item_biases.model = k.model;
INSERT INTO item_biases SELECT run_id, model, item_id, bias, mean_rating, n_ratings FROM new_item_biases;

DELETE FROM similar_items USING model_key k WHERE similar_items.run_id = k.run_id AND similar_items.model = k.model;
INSERT INTO similar_items SELECT run_id, model, item_id, rank, similar_item_id, score FROM new_similar_items;
