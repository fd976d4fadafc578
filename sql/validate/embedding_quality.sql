-- Every memory has an embedding of the bundle's dimension (target_rules.embedding_dim), not the zero vector, of unit norm within 1e-3.
-- bundle_vectors holds the figures (missing, dimension, norm) of the memories that may fail this check, computed
-- while the checksums read the parts (every other memory's vector is present, of the bundle's dimension, unit norm).
SELECT v.space, v.id, v.dimension, v.norm
FROM bundle_vectors AS v
CROSS JOIN target_rules AS r
WHERE v.missing OR v.dimension <> r.embedding_dim OR v.norm = 0 OR abs(v.norm - 1.0) > 1e-3
ORDER BY v.space, v.id;
