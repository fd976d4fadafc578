-- Memory ids that occur more than once (Engram would keep one of them).
SELECT id, count(*) AS copies, min(space) AS first_space, max(space) AS last_space
FROM bundle_memories
GROUP BY id
HAVING count(*) > 1
ORDER BY id;
