-- How many of the warehouse's id columns are still whole numbers (BIGINT): 0 once text ids were written.
SELECT count(*) FROM information_schema.columns AS c
JOIN information_schema.tables AS t USING (table_schema, table_name)
WHERE t.table_type = 'BASE TABLE' AND c.data_type = 'BIGINT'
  AND c.column_name IN ('user_id', 'item_id', 'similar_item_id', 'reason_item_id');
