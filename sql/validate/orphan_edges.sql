-- Edges in the bundle whose source or target memory is not in the bundle.
SELECT e.space, e.source_id, e.target_id, e.edge_type,
       CASE WHEN s.id IS NULL THEN 'source memory missing' ELSE 'target memory missing' END AS problem
FROM bundle_edges e
LEFT JOIN (SELECT DISTINCT id FROM bundle_memories) s ON e.source_id = s.id
LEFT JOIN (SELECT DISTINCT id FROM bundle_memories) t ON e.target_id = t.id
WHERE s.id IS NULL OR t.id IS NULL
ORDER BY 1, 2, 3;
