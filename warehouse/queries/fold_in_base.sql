-- What a fold-in folds into: the run whose lists are live (the last that published), with the source it read, and
-- the source the last fold-in into it published from (NULL when none has). Parameters: none.
SELECT r.run_id, r.model, r.rating_model, CAST(r.config AS VARCHAR) AS config, r.source_sha256, r.n_users,
       (SELECT f.source_sha256 FROM fold_ins AS f
        WHERE f.run_id = r.run_id AND f.status = 'published'
        ORDER BY f.finished_at DESC LIMIT 1) AS folded_sha256
FROM runs AS r
WHERE r.status = 'succeeded'
ORDER BY r.finished_at DESC
LIMIT 1;
