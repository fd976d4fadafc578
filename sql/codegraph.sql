-- =============================================================================
-- engram-migrate mapping: Codex Aura style code graph (SQLite) -> Engram
-- =============================================================================
--
-- Source: a code-graph database with two tables (see fixtures/codegraph.sql):
--   nodes(id, type, name, path, line_start, line_end, docstring, signature,
--         language, size_bytes, complexity, is_test, sha1, modified_at,
--         first_seen, metadata)        type: 'File' | 'Class' | 'Function'
--   edges(id, source, target, type, line, weight)
--         type: CONTAINS | IMPORTS | EXTENDS | CALLS | HAS_METHOD
--
-- This file is an example to copy and edit for your own database: run
--   engram-migrate ... --sql FILE
-- with your edited copy. It is plain DataFusion SQL, a sequence of
-- CREATE VIEW statements (each ended by a semicolon), run against the
-- Parquet snapshot of the source database. Comments here avoid semicolons
-- and unbalanced quotes, so even a naive statement splitter copes.
--
-- What the tool provides before this file runs
--   * Every source table, registered as `source.<table>` (here source.nodes
--     and source.edges). Always use the `source.` prefix: the output view
--     `edges` has the same name as the source table `edges`. Quote
--     identifiers with double quotes where case matters ("MyTable").
--   * Column types as snapshotted from SQLite declared types:
--       INTEGER -> Int64, REAL/NUMERIC -> Float64, BOOLEAN -> Boolean,
--       TEXT/VARCHAR -> Utf8, BLOB -> Binary,
--       DATETIME -> Timestamp(Microsecond, "UTC"), DATE -> Date32,
--       JSON -> Utf8 (the JSON text as it is stored).
--   * A scalar function to_json(named_struct('key', value, ...)) that returns
--     the struct as one JSON object text: keys in the given order, NULL values
--     written as JSON null.
--
-- What this file must define (names, column order and types are the contract)
--   memories(space, id, content, text, confidence, activation, decay_rate,
--            created_at, memory_type, source_kind, source_name, source_key)
--       One Engram memory per source row that should become a memory.
--       space:   Engram space id, 3-64 chars of [a-z0-9_-].
--       id:      the memory id: unique and stable across runs, since edges
--                refer to it and re-runs update rather than duplicate.
--       content: the whole source row as JSON (to_json(named_struct(...))).
--       text:    what gets embedded. concat_ws skips NULL arguments, and
--                'label: ' || NULL is NULL, so missing parts vanish cleanly.
--       created_at: a timestamp column, the tool casts it to UTC.
--       source_name / source_key: the source table and the key of the row as JSON,
--                for provenance and for resuming.
--   edges(space, source_id, target_id, edge_type, weight, properties,
--         source_name, source_key)
--       Edges between memory ids, only where BOTH endpoint rows exist.
--   orphans(same columns as edges)
--       Source edge rows whose source or target row is missing. They are not
--       loaded, the tool reports them.
--   expected_counts(source_name, kind, name, expected)
--       What the loaded bundle must contain, counted from the source tables.
--       Validation checks: memories = expected ('memories' rows), and for
--       each ('edges', name = edge type): edges + orphans of that type =
--       expected. Keep this in step when you add filters above.
--
-- How the code graph maps
--   * Each node becomes one memory in a space per node type:
--       File -> code_files, Class -> code_classes, Function -> code_functions
--     (anything else -> code_other, so no node is silently dropped and the
--     memories count always equals the nodes count).
--   * Memory id = 'code_' || node id (node ids are already unique paths like
--     'src/pkg/mod_3.py::Klass2.method_1').
--   * created_at = modified_at of the node.
--   * Each edge row becomes one Engram edge in the space of its source node,
--     with the source weight, or when it is NULL a default per edge type
--     (CONTAINS/HAS_METHOD 1.0, EXTENDS 0.9, IMPORTS 0.8, CALLS 0.7).
--   * Edges pointing at nodes that are not in the graph (e.g. imports of
--     external modules such as 'ext/numpy.py') land in `orphans`.
--   * The joins are on nodes.id, the primary key, so each edge row matches at
--     most one node per side. If you join on a non-unique column, edges
--     multiply and the expected counts no longer match.
--
-- Types: write float columns as CAST(... AS FLOAT), which is Float32 in
-- DataFusion (DOUBLE would be Float64). Prefer plain string expressions to
-- CAST(... AS VARCHAR): in DataFusion 50 that cast yields Utf8View, not Utf8.
-- =============================================================================


-- Optional: the graph label of each space's nodes, for graph targets (Neo4j: every node also gets the label
-- Node). Codex Aura's own labels.
CREATE VIEW space_labels AS
SELECT * FROM (VALUES ('code_files', 'File'), ('code_classes', 'Class'), ('code_functions', 'Function'),
                      ('code_other', 'CodeNode')) AS t(space, label);


CREATE VIEW memories AS
SELECT
  CASE n."type"
    WHEN 'File'     THEN 'code_files'
    WHEN 'Class'    THEN 'code_classes'
    WHEN 'Function' THEN 'code_functions'
    ELSE 'code_other'
  END                                         AS space,
  'code_' || n.id                             AS id,
  to_json(named_struct(
    'id',          n.id,
    'type',        n."type",
    'name',        n.name,
    'path',        n.path,
    'line_start',  n.line_start,
    'line_end',    n.line_end,
    'docstring',   n.docstring,
    'signature',   n.signature,
    'language',    n.language,
    'size_bytes',  n.size_bytes,
    'complexity',  n.complexity,
    'is_test',     n.is_test,
    'sha1',        n.sha1,
    'modified_at', n.modified_at,
    'first_seen',  n.first_seen,
    'metadata',    n.metadata
  ))                                          AS content,
  concat_ws(' | ',
    'name: '      || n.name,
    'docstring: ' || n.docstring,
    'signature: ' || n.signature
  )                                           AS text,
  CAST(0.8  AS FLOAT)                         AS confidence,
  CAST(0.5  AS FLOAT)                         AS activation,
  CAST(0.01 AS FLOAT)                         AS decay_rate,
  n.modified_at                               AS created_at,
  'semantic'                                  AS memory_type,
  'sqlite'                                    AS source_kind,
  'nodes'                                     AS source_name,
  to_json(named_struct('id', n.id))           AS source_key
FROM source.nodes AS n;


-- Every edge row with its endpoints looked up once (LEFT JOINs on the nodes'
-- primary key), shared by `edges` and `orphans` so the two can never
-- disagree on space or weight. An edge lives in the space of its source
-- node, or 'code_orphans' when that node is missing.
CREATE VIEW edge_rows AS
SELECT
  CASE
    WHEN s.id IS NULL          THEN 'code_orphans'
    WHEN s."type" = 'File'     THEN 'code_files'
    WHEN s."type" = 'Class'    THEN 'code_classes'
    WHEN s."type" = 'Function' THEN 'code_functions'
    ELSE 'code_other'
  END                                         AS space,
  'code_' || e."source"                       AS source_id,
  'code_' || e."target"                       AS target_id,
  e."type"                                    AS edge_type,
  CAST(COALESCE(e.weight,
    CASE e."type"
      WHEN 'CONTAINS'   THEN 1.0
      WHEN 'HAS_METHOD' THEN 1.0
      WHEN 'EXTENDS'    THEN 0.9
      WHEN 'IMPORTS'    THEN 0.8
      WHEN 'CALLS'      THEN 0.7
      ELSE 0.5
    END) AS FLOAT)                            AS weight,
  to_json(named_struct('line', e.line, 'id', e.id)) AS properties,
  'edges'                                     AS source_name,
  to_json(named_struct('id', e.id))           AS source_key,
  s.id IS NOT NULL AND t.id IS NOT NULL       AS both_exist
FROM source.edges AS e
LEFT JOIN source.nodes AS s ON s.id = e."source"
LEFT JOIN source.nodes AS t ON t.id = e."target";


-- Edges whose two endpoints exist.
CREATE VIEW edges AS
SELECT space, source_id, target_id, edge_type, weight, properties, source_name, source_key
FROM edge_rows WHERE both_exist;


-- Edge rows with a missing source or target node: reported and kept in the
-- bundle, not loaded as edges.
CREATE VIEW orphans AS
SELECT space, source_id, target_id, edge_type, weight, properties, source_name, source_key
FROM edge_rows WHERE NOT both_exist;


-- What the bundle must hold: every node as a memory, and per edge type all
-- edge rows (loaded edges + reported orphans).
CREATE VIEW expected_counts AS
SELECT 'nodes' AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected
FROM source.nodes
UNION ALL
SELECT 'edges' AS source_name, 'edges' AS kind, e."type" AS name, count(*) AS expected
FROM source.edges AS e
GROUP BY e."type";
