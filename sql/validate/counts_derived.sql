-- What the mapping must produce as the tool counts it from the snapshot itself (one memory per row, one edge
-- per reference or link row, per Redis member or stream entry), never from the mapping's own views, against the
-- mapping's expected_counts and against the bundle. A mapping edited to drop rows that also lowers its own
-- expected counts fails here. A mapping of the user's own (option sql) has no derived counts: counts_bundle is
-- then the measure.
WITH actual AS (SELECT * FROM bundle_counts),
derived AS (SELECT * FROM derived_counts WHERE derived > 0),
known AS (SELECT DISTINCT source_name FROM derived_counts),
got AS (SELECT * FROM actual WHERE source_name IN (SELECT source_name FROM known)),
wanted AS (SELECT * FROM expected_counts WHERE source_name IN (SELECT source_name FROM known) AND expected > 0)
SELECT k.source_name, k.kind, k.name,
       coalesce(d.derived, 0) AS derived,
       coalesce(w.expected, 0) AS mapping_expects,
       coalesce(g.actual, 0) AS in_bundle
FROM (SELECT source_name, kind, name FROM derived
      UNION SELECT source_name, kind, name FROM got
      UNION SELECT source_name, kind, name FROM wanted) k
LEFT JOIN derived d ON d.source_name = k.source_name AND d.kind = k.kind AND d.name = k.name
LEFT JOIN wanted w ON w.source_name = k.source_name AND w.kind = k.kind AND w.name = k.name
LEFT JOIN got g ON g.source_name = k.source_name AND g.kind = k.kind AND g.name = k.name
WHERE coalesce(d.derived, 0) <> coalesce(g.actual, 0) OR coalesce(d.derived, 0) <> coalesce(w.expected, 0)
ORDER BY 1, 2, 3;
