-- Every model of the newest finished run, best nDCG first, with the one whose lists were published marked.
SELECT model, published, round(rmse, 4) AS rmse, round(mae, 4) AS mae, round("precision", 4) AS "precision",
       round(recall, 4) AS recall, round(ndcg, 4) AS ndcg, round("map", 4) AS "map",
       round(coverage, 4) AS coverage, round(fit_seconds, 2) AS fit_seconds
FROM model_comparison
WHERE run_id = (SELECT run_id FROM runs WHERE status <> 'running' ORDER BY started_at DESC LIMIT 1)
ORDER BY ndcg DESC
