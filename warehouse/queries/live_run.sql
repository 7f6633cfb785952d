-- The run whose lists are live: the last that published (a fold-in checks it is still the one it folded into).
SELECT run_id FROM runs WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1;
