-- Memories the live target holds with an embedding other than the bundle's (as its sink compares them: Engram's within 1e-5, zero-padded).
SELECT t.space, t.id
FROM target_memories AS t
JOIN bundle_memories AS b ON b.space = t.space AND b.id = t.id
WHERE t.embedding_matches = false
ORDER BY t.space, t.id;
