-- Every memory has an embedding of the bundle's dimension (target_rules.embedding_dim), not the zero vector, of unit norm within 1e-3.
SELECT m.space, m.id, m.dimension, m.norm
FROM (
  SELECT space, id, embedding IS NULL AS missing, vector_dim(embedding) AS dimension, vector_norm(embedding) AS norm
  FROM bundle_memories
) m
CROSS JOIN target_rules AS r
WHERE m.missing OR m.dimension <> r.embedding_dim OR m.norm = 0 OR abs(m.norm - 1.0) > 1e-3
ORDER BY m.space, m.id;
