-- Redis sorted-set neighbour edges (NEXT_BY_SCORE) as the members' own content says they must be: each joins
-- two members of the same sorted set (same database and key), the score never decreases along an edge, and no
-- member has two successors or two predecessors, so each set is one chain in score order (their number is
-- held by counts_derived). Returns the edges that break this; other sources have no such edges.
WITH n AS (
  SELECT e.source_id, e.target_id,
         json_get(s.content, 'db') AS s_db, json_get(s.content, 'key') AS s_key,
         json_get(t.content, 'db') AS t_db, json_get(t.content, 'key') AS t_key,
         CAST(json_get(s.content, 'score') AS DOUBLE) AS s_score,
         CAST(json_get(t.content, 'score') AS DOUBLE) AS t_score
  FROM bundle_edges e
  LEFT JOIN bundle_memories s ON s.space = e.space AND s.id = e.source_id
  LEFT JOIN bundle_memories t ON t.space = e.space AND t.id = e.target_id
  WHERE e.edge_type = 'NEXT_BY_SCORE'
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
