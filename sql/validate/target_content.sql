-- Memories the live target holds with content other than the bundle's, compared as JSON by its sink (objects
-- by key, numbers by value: PostgreSQL's jsonb reorders keys and prints numbers its own way). Empty for a target
-- whose content cannot be read back as stored (Engram).
SELECT t.space, t.id
FROM target_memories AS t
JOIN bundle_memories AS b ON b.space = t.space AND b.id = t.id
WHERE t.content_matches = false
ORDER BY t.space, t.id;
