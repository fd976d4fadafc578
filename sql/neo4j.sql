-- =============================================================================
-- engram-migrate mapping: a Neo4j (Bolt) graph -> Engram  (the Engram team's plan)
-- =============================================================================
--
-- This is the TEMPLATE the tool fills in from its flags (src/transform/neo4j.rs);
-- the filled-in file of a run is <work-dir>/mapping.sql. Copy that one, edit
-- it and run it with --sql FILE. Placeholders are written {{NAME}}.
--
-- Source tables (see docs/sources/neo4j.md):
--   source.nodes(id BIGINT, element_id, labels LIST<VARCHAR> sorted, properties)
--   source.relationships(id, element_id, type, start_id, end_id,
--                        start_element_id, end_element_id, properties)
--   properties is the property map as typed JSON text: plain JSON for
--   integers, floats, strings, booleans and lists, tagged objects
--   ({"$type": "datetime", "value": ...}) for the other Bolt types.
--
-- JSON functions: json_get(obj, key) text of a property (a tagged value's
-- "value"), json_get_float(obj, key), json_get_timestamp(obj, key),
-- json_insert(obj, key, json) nests a JSON text as an object.
--
-- How the graph maps
--   * node -> memory with the id of its key (--id-property, see node_keys),
--     content = {id, element_id, labels, properties}, in the space of its
--     primary label:
--       the first label of --label-to-space (in the order given) the node
--       has, else --memory-space-prefix || its alphabetically first label
--       (lower case, other characters '_'), else prefix || 'unlabelled'.
--     --memory-space puts every node in one space.
--   * text to embed: "key: value | key: value" over the text properties
--     (name, title, description, content, then --text-properties), missing
--     ones skipped. NULL text means the content is embedded.
--   * created_at: the first of the creation-time properties present
--     (--timestamp-column, else created_at, createdAt, created).
--   * activation {{ACTIVATION}}, confidence {{CONFIDENCE}} (Engram's MEDIUM is 0.5).
--   * relationship -> edge source -> target in the space of its start node,
--     type kept, properties as JSON; weight 0.7 or from --weight-property
--     normalised to [0,1]. --bidirectional adds the reverse edge (in the
--     space of the end node). A relationship whose end node is not in the
--     snapshot lands in orphans.
--   * an edge's source_id and target_id are the memory ids of its end nodes
--     (joined on id); an end node missing from the snapshot gets the
--     element-id form 'neo4j_node_' || element id, whatever the key.
--   * mapping_errors: the transform stops, naming them, when it has rows
--     (a node without its key property).
-- =============================================================================


-- The key of each node. Here: {{KEY_KIND}}.
-- key_label is the label whose property keys the node (NULL when the key is
-- not per label), key_value its value (NULL when the node lacks it:
-- mapping_errors reports it).
CREATE VIEW node_keys AS
SELECT
  n.id, n.element_id, n.labels, n.properties,
  {{KEY_LABEL}} AS key_label,
  {{KEY_VALUE}} AS key_value
FROM source.nodes AS n;


-- What the transform refuses to map, one message per kind of problem: a
-- node without its key would have no id (a default would merge or drop
-- nodes), so the transform stops and prints these (src/transform/mod.rs).
CREATE VIEW mapping_errors AS
SELECT concat(count(*), ' node(s) ', p.problem, ' (e.g. element id ',
              min(p.element_id), ')') AS message
FROM (
  SELECT n.element_id, {{KEY_PROBLEM}} AS problem
  FROM node_keys AS n
  WHERE n.key_value IS NULL
) AS p
GROUP BY p.problem;


CREATE VIEW node_rows AS
SELECT
  n.id, n.element_id, n.labels, n.properties,
  {{MEMORY_ID}} AS memory_id,
  {{SPACE}} AS space
FROM node_keys AS n;


CREATE VIEW memories AS
SELECT
  n.space                                                   AS space,
  n.memory_id                                               AS id,
  json_insert(
    to_json(named_struct('id', n.id, 'element_id', n.element_id, 'labels', n.labels)),
    'properties', n.properties)                             AS content,
  {{TEXT}}                                                  AS text,
  CAST({{CONFIDENCE}} AS FLOAT)                             AS confidence,
  CAST({{ACTIVATION}} AS FLOAT)                             AS activation,
  CAST(0.01 AS FLOAT)                                       AS decay_rate,
  {{CREATED_AT}}                                            AS created_at,
  'semantic'                                                AS memory_type,
  'neo4j'                                                   AS source_kind,
  'nodes'                                                   AS source_name,
  to_json(named_struct('id', n.id))                         AS source_key
FROM node_rows AS n;


-- The range of the weight property, for min-max normalisation.
CREATE VIEW weight_range AS
SELECT min({{WEIGHT_VALUE}}) AS lo, max({{WEIGHT_VALUE}}) AS hi
FROM source.relationships AS r;


-- Each relationship with its endpoints looked up once (LEFT JOINs on the nodes' id), shared by edges and
-- orphans so the two can never disagree; each end's memory id comes from its node, the same key as the node's
-- memory.
CREATE VIEW rel_rows AS
SELECT
  r.id, r.element_id, r."type", r.start_id, r.end_id, r.properties,
  CASE WHEN s.id IS NULL THEN 'neo4j_node_' || r.start_element_id ELSE s.memory_id END AS start_memory_id,
  CASE WHEN t.id IS NULL THEN 'neo4j_node_' || r.end_element_id ELSE t.memory_id END AS end_memory_id,
  s.space AS start_space, t.space AS end_space,
  s.id IS NOT NULL AND t.id IS NOT NULL AS both_exist,
  CAST({{WEIGHT}} AS FLOAT) AS weight
FROM source.relationships AS r
CROSS JOIN weight_range AS w
LEFT JOIN node_rows AS s ON s.id = r.start_id
LEFT JOIN node_rows AS t ON t.id = r.end_id
WHERE {{EDGES_ON}};


CREATE VIEW edge_rows AS
SELECT
  coalesce(start_space, '{{ORPHAN_SPACE}}')                 AS space,
  start_memory_id                                           AS source_id,
  end_memory_id                                             AS target_id,
  "type"                                                    AS edge_type,
  weight,
  json_insert(to_json(named_struct('id', id, 'element_id', element_id, 'direction', 'forward')),
    'properties', properties)                               AS properties,
  'relationships'                                           AS source_name,
  to_json(named_struct('id', id))                           AS source_key,
  both_exist
FROM rel_rows
UNION ALL
SELECT
  coalesce(end_space, '{{ORPHAN_SPACE}}')                   AS space,
  end_memory_id                                             AS source_id,
  start_memory_id                                           AS target_id,
  "type"                                                    AS edge_type,
  weight,
  json_insert(to_json(named_struct('id', id, 'element_id', element_id, 'direction', 'reverse')),
    'properties', properties)                               AS properties,
  'relationships'                                           AS source_name,
  to_json(named_struct('id', id))                           AS source_key,
  both_exist
FROM rel_rows
WHERE {{BIDIRECTIONAL}};


CREATE VIEW edges AS
SELECT space, source_id, target_id, edge_type, weight, properties, source_name, source_key
FROM edge_rows WHERE both_exist;


CREATE VIEW orphans AS
SELECT space, source_id, target_id, edge_type, weight, properties, source_name, source_key
FROM edge_rows WHERE NOT both_exist;


-- What the bundle must hold: every node as a memory, and per relationship type every relationship (twice
-- with --bidirectional; none with --skip-edges) as an edge or an orphan.
CREATE VIEW expected_counts AS
SELECT 'nodes' AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected
FROM source.nodes
UNION ALL
SELECT 'relationships' AS source_name, 'edges' AS kind, r."type" AS name,
       count(*) * (CASE WHEN {{BIDIRECTIONAL}} THEN 2 ELSE 1 END) AS expected
FROM source.relationships AS r
WHERE {{EDGES_ON}}
GROUP BY r."type";
