-- Redis sorted-set neighbour edges (NEXT_BY_SCORE) as the members' own content says they must be: each joins
-- two members of the same sorted set (same database and key), the score never decreases along an edge, and no
-- member has two successors or two predecessors, so each set is one chain in score order (their number is
-- held by counts_derived). Returns the edges that break this; other sources have no such edges, and a bundle
-- without any does not run the check (its "only if" line).
-- only if: SELECT 1 FROM bundle_edges WHERE edge_type = 'NEXT_BY_SCORE' LIMIT 1
WITH e AS (
  SELECT space, source_id, target_id FROM bundle_edges WHERE edge_type = 'NEXT_BY_SCORE'
),
m AS (
  SELECT space, id,
         json_get(content, 'db') AS db, json_get(content, 'key') AS k,
         CAST(json_get(content, 'score') AS DOUBLE) AS score
  FROM bundle_memories
  WHERE id IN (SELECT source_id FROM e UNION SELECT target_id FROM e)
),
n AS (
  SELECT e.source_id, e.target_id, s.db AS s_db, s.k AS s_key, t.db AS t_db, t.k AS t_key,
         s.score AS s_score, t.score AS t_score
  FROM e
  LEFT JOIN m AS s ON s.space = e.space AND s.id = e.source_id
  LEFT JOIN m AS t ON t.space = e.space AND t.id = e.target_id
)
SELECT source_id, target_id, 'joins two different sorted sets or a member that is not there' AS problem
FROM n WHERE s_key IS NULL OR t_key IS NULL OR s_key <> t_key OR s_db <> t_db
UNION ALL
SELECT source_id, target_id, 'the score decreases along the edge' AS problem
FROM n WHERE t_score < s_score
UNION ALL
SELECT source_id, min(target_id) AS target_id, 'a member with two successors' AS problem
FROM n GROUP BY source_id HAVING count(*) > 1
UNION ALL
SELECT min(source_id) AS source_id, target_id, 'a member with two predecessors' AS problem
FROM n GROUP BY target_id HAVING count(*) > 1;
