-- Memory ids that edges in the bundle point to (as source or target) but that no memory in the bundle has.
-- Written as one aggregation rather than a join so that it spills to disk instead of holding every id in memory.
WITH refs AS (
  SELECT id, 1 AS is_memory, 0 AS as_source, 0 AS as_target FROM bundle_memories
  UNION ALL SELECT source_id AS id, 0 AS is_memory, 1 AS as_source, 0 AS as_target FROM bundle_edges
  UNION ALL SELECT target_id AS id, 0 AS is_memory, 0 AS as_source, 1 AS as_target FROM bundle_edges
)
SELECT id AS missing_memory_id, sum(as_source) AS edges_from_it, sum(as_target) AS edges_to_it
FROM refs
GROUP BY id
HAVING sum(is_memory) = 0
ORDER BY id;
