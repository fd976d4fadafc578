-- Every memory has an embedding of exactly 768 floats, not the zero vector, of unit norm within 1e-3.
SELECT space, id, dimension, norm
FROM (
  SELECT space, id, embedding IS NULL AS missing, vector_dim(embedding) AS dimension, vector_norm(embedding) AS norm
  FROM bundle_memories
) m
WHERE missing OR dimension <> 768 OR norm = 0 OR abs(norm - 1.0) > 1e-3
ORDER BY space, id;
