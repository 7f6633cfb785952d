-- The model a run published (or, rejected, would have) and the rating model behind its predicted stars (NULL when it
-- trained none): what `recs trend` follows, nDCG from the first, RMSE from the second. Parameters: $run_id.
SELECT model, rating_model FROM runs WHERE run_id = $run_id;
