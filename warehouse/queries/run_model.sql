-- The model a run published (or, rejected, would have): what `recs trend` follows. Parameters: $run_id.
SELECT model FROM runs WHERE run_id = $run_id;
