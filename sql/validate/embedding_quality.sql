-- Every memory has an embedding of exactly 768 floats, not the zero vector, of unit norm within 1e-3.
SELECT space, id, vector_dim(embedding) AS dimension, vector_norm(embedding) AS norm
FROM bundle_memories
WHERE embedding IS NULL
   OR vector_dim(embedding) <> 768
   OR vector_norm(embedding) = 0
   OR abs(vector_norm(embedding) - 1.0) > 1e-3
ORDER BY space, id;
