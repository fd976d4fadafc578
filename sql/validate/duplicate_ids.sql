-- Memory ids that occur more than once where the target needs them unique (per space in Engram, across spaces in a graph target).
-- bundle_id_candidates is bundle_memories (space, id), or, after an incremental run whose earlier layers were
-- validated, the memories whose ids occur in the layers this run wrote (only those can have a second copy now).
-- target_rules has one row: ids_unique_across_spaces is false for Engram (the bundle and a live server), where an
-- id is unique within its space, and true for a target that keys every node by id alone (a graph database).
SELECT
  CASE WHEN r.ids_unique_across_spaces THEN '(all spaces)' ELSE m.space END AS scope,
  m.id,
  count(*) AS copies,
  min(m.space) AS first_space,
  max(m.space) AS last_space
FROM bundle_id_candidates AS m
CROSS JOIN target_rules AS r
GROUP BY CASE WHEN r.ids_unique_across_spaces THEN '(all spaces)' ELSE m.space END, m.id
HAVING count(*) > 1
ORDER BY scope, m.id;
