-- A fold-in's row in `fold_ins`. Frame: `fold_in` (the table's columns).
INSERT INTO fold_ins BY NAME SELECT * FROM fold_in;
