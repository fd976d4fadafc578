-- A random sample of memories, their rows re-read from the source by key and compared value by value with
-- the memory's JSON content. A row that is gone from the source shows source_value NULL.
SELECT source_name, source_key, column_name, source_value, bundle_value
FROM sample_values
WHERE source_value IS DISTINCT FROM bundle_value
ORDER BY source_name, source_key, column_name;
