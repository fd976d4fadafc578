-- Snapshot vs bundle: per source table, the memories and edges the mapping says it must produce (its
-- expected_counts view, computed from the snapshot) against what the bundle holds. Edges count with orphans:
-- a reference whose parent is missing is kept as an orphan, not lost. Loss must be zero.
WITH actual AS (SELECT * FROM bundle_counts)
SELECT coalesce(e.source_name, a.source_name) AS source_name,
       coalesce(e.kind, a.kind) AS kind,
       coalesce(e.name, a.name) AS name,
       coalesce(e.expected, 0) AS expected,
       coalesce(a.actual, 0) AS actual
FROM expected_counts e
FULL OUTER JOIN actual a ON e.source_name = a.source_name AND e.kind = a.kind AND e.name = a.name
WHERE coalesce(e.expected, 0) <> coalesce(a.actual, 0)
ORDER BY 1, 2, 3;
