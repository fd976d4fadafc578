-- Bundle memories the live target does not hold, with the reason its sink found (target_explained), after a load.
-- target_memories is what the sink read back from the target (space, id, embedding_matches); the same check for every sink.
SELECT b.space, b.id, coalesce(e.reason, 'unknown') AS reason, e.detail
FROM bundle_memories AS b
LEFT JOIN target_memories AS t ON t.space = b.space AND t.id = b.id
LEFT JOIN target_explained AS e ON e.space = b.space AND e.id = b.id
WHERE t.id IS NULL
ORDER BY b.space, b.id;
