-- =============================================================================
-- engram-migrate mapping: Redis (a live server or an RDB dump) -> Engram
-- =============================================================================
--
-- This is the default mapping of a Redis source, run as it is unless --sql
-- names another file. Copy and edit it freely. It is plain DataFusion SQL, a
-- sequence of CREATE VIEW statements. Comments avoid semicolons and quotes.
--
-- What the tool provides (see docs/sources/redis.md)
--   source."keys"   one row per key: db, key, key_base64, type, encoding,
--                   length, value (typed JSON, nested as JSON in the
--                   content), expire_at_ms, ttl_ms
--                   (ttl_ms = expire_at_ms minus the snapshot's as-of time,
--                   recorded in the snapshot manifest, so a re-run from the
--                   snapshot gives the same decay rates)
--   source.members  one row per element of a collection, in canonical order:
--                   db, key, key_base64, type, idx, member, member_base64,
--                   score (zset), field_value, field_value_base64,
--                   field_expire_at_ms (hash), entry_fields (stream entry:
--                   its fields as typed JSON, member = the entry id)
--
-- The Engram team's plan
--   * key -> memory redis_<key> (redis_b64_<base64> for a key that is not
--     UTF-8), content = the key's row as JSON (its value JSON inside).
--     When the snapshot holds keys of more than one database, the database
--     number is in every id, redis_db<N>_<key>: real servers reuse key names
--     across databases, and an id must be unique within its space (and across
--     spaces for a graph target, and --memory-space puts all in one space)
--   * TTL -> decay_rate = 1.0 / (ttl_seconds / 3600), no TTL -> 0.01; a key
--     already expired at the snapshot's as-of time (staged only with
--     --expired keep) -> 3600, as for a TTL of one second
--   * sorted set -> one memory per member (redis_<key>#<member>) with the score
--     normalised to [0,1] within its set as activation, an edge NEXT_BY_SCORE
--     between consecutive members and an edge MEMBER_OF to the set's memory
--   * hash -> one memory, or also one memory per field (FIELD_OF edges)
--   * stream -> one memory for the stream (length, last id, consumer groups
--     with their last delivered ids and pending counts) and one memory per
--     entry (redis_<key>#<entry id>, created_at from the id's milliseconds)
--     with an edge ENTRY_OF to the stream and NEXT_ENTRY between consecutive
--     entries
--   * module value -> one memory holding the module name and the value as
--     the module serialised it (base64): kept, not decoded
--
-- The settings below are set by the tool from flags when it runs this file
-- (--memory-space, --ttl-as-decay, --hash-field-memories, --confidence, --skip-edges):
-- it rewrites the literal at the start of each line marked with @flag.
-- =============================================================================


CREATE VIEW redis_settings AS
SELECT
  ''     AS memory_space,         -- @memory-space (empty: space redis_db<N> per database)
  true   AS ttl_as_decay,         -- @ttl-as-decay
  false  AS hash_field_memories,  -- @hash-field-memories
  0.7    AS confidence,           -- @confidence
  false  AS skip_edges            -- @skip-edges (no edges at all)
;


-- How many databases the snapshot holds keys of (more than one puts the
-- database number in every id, see above).
CREATE VIEW redis_databases AS
SELECT count(DISTINCT db) AS n FROM source."keys";


-- Each key with its space, memory id and decay rate.
CREATE VIEW redis_keys AS
SELECT
  k.db, k."key", k.key_base64, k."type", k.encoding, k.length, k."value", k.expire_at_ms, k.ttl_ms,
  CASE WHEN s.memory_space <> '' THEN s.memory_space ELSE concat('redis_db', k.db) END AS space,
  concat(
    CASE WHEN d.n > 1 THEN concat('redis_db', k.db, '_') ELSE 'redis_' END,
    CASE WHEN k.key_base64 THEN concat('b64_', k."key") ELSE k."key" END
  ) AS id,
  CASE
    WHEN s.ttl_as_decay AND k.ttl_ms > 0 THEN 1.0 / ((k.ttl_ms / 1000.0) / 3600.0)
    WHEN s.ttl_as_decay AND k.ttl_ms <= 0 THEN 3600.0
    ELSE 0.01
  END AS decay_rate
FROM source."keys" AS k
CROSS JOIN redis_settings AS s
CROSS JOIN redis_databases AS d;


-- Finite score range per sorted set (infinite scores map to 0 or 1).
CREATE VIEW redis_zset_range AS
SELECT db, "key", key_base64, min(score) AS lo, max(score) AS hi
FROM source.members
WHERE "type" = 'zset' AND score > -1.7976931348623157e308 AND score < 1.7976931348623157e308
GROUP BY db, "key", key_base64;


-- Members that become memories: every sorted-set member and stream entry, and
-- hash fields when hash_field_memories is on.
CREATE VIEW redis_member_memories AS
SELECT
  m.db, m."key", m.key_base64, m."type", m.idx, m."member", m.member_base64, m.score,
  m.field_value, m.field_value_base64, m.field_expire_at_ms, m.entry_fields,
  k.space, k.id AS key_id, k.decay_rate,
  CASE WHEN m.member_base64 THEN concat(k.id, '#b64_', m."member") ELSE concat(k.id, '#', m."member") END AS id,
  CASE
    WHEN m."type" <> 'zset' THEN 0.5
    WHEN r.hi IS NULL THEN CASE WHEN m.score > 0 THEN 1.0 ELSE 0.0 END
    WHEN m.score >= r.hi THEN 1.0
    WHEN m.score <= r.lo THEN 0.0
    ELSE (m.score - r.lo) / (r.hi - r.lo)
  END AS activation
FROM source.members AS m
JOIN redis_keys AS k ON k.db = m.db AND k."key" = m."key" AND k.key_base64 = m.key_base64
CROSS JOIN redis_settings AS s
LEFT JOIN redis_zset_range AS r ON r.db = m.db AND r."key" = m."key" AND r.key_base64 = m.key_base64
WHERE m."type" IN ('zset', 'stream') OR (m."type" = 'hash' AND s.hash_field_memories);


CREATE VIEW memories AS
SELECT
  space,
  id,
  to_json(named_struct(
    'db', db, 'key', "key", 'key_base64', key_base64, 'type', "type", 'encoding', encoding,
    'length', length, 'value', "value", 'expire_at_ms', expire_at_ms
  ), 'value')                                             AS content,
  concat_ws(' | ', 'key: ' || "key", 'type: ' || "type", 'value: ' || substr("value", 1, 2000)) AS text,
  CAST(s.confidence AS FLOAT)                             AS confidence,
  CAST(0.5 AS FLOAT)                                      AS activation,
  CAST(decay_rate AS FLOAT)                               AS decay_rate,
  CAST(NULL AS TIMESTAMP)                                 AS created_at,
  'semantic'                                              AS memory_type,
  'redis'                                                 AS source_kind,
  'keys'                                                  AS source_name,
  to_json(named_struct('db', db, 'key', "key", 'key_base64', key_base64)) AS source_key
FROM redis_keys CROSS JOIN redis_settings AS s
UNION ALL
SELECT
  space,
  id,
  to_json(named_struct(
    'db', db, 'key', "key", 'key_base64', key_base64, 'type', "type", 'idx', idx,
    'member', "member", 'member_base64', member_base64, 'score', score,
    'field_value', field_value, 'field_value_base64', field_value_base64,
    'field_expire_at_ms', field_expire_at_ms, 'entry_fields', entry_fields
  ), 'entry_fields')                                      AS content,
  concat_ws(' | ', 'key: ' || "key", 'member: ' || "member",
    'value: ' || substr(coalesce(field_value, entry_fields), 1, 2000)) AS text,
  CAST(s.confidence AS FLOAT)                             AS confidence,
  CAST(activation AS FLOAT)                               AS activation,
  CAST(decay_rate AS FLOAT)                               AS decay_rate,
  CASE WHEN "type" = 'stream'
    THEN CAST(to_timestamp_millis(CAST(split_part("member", '-', 1) AS BIGINT)) AS TIMESTAMP)
  END                                                     AS created_at,
  'semantic'                                              AS memory_type,
  'redis'                                                 AS source_kind,
  'members'                                               AS source_name,
  to_json(named_struct('db', db, 'key', "key", 'key_base64', key_base64, 'idx', idx)) AS source_key
FROM redis_member_memories CROSS JOIN redis_settings AS s;


CREATE VIEW redis_edges AS
SELECT a.space, a.id AS source_id, b.id AS target_id, 'NEXT_BY_SCORE' AS edge_type,
  CAST(0.7 AS FLOAT) AS weight,
  to_json(named_struct('from_score', a.score, 'to_score', b.score)) AS properties,
  'members' AS source_name,
  to_json(named_struct('db', a.db, 'key', a."key", 'key_base64', a.key_base64, 'idx', a.idx)) AS source_key
FROM redis_member_memories AS a
JOIN redis_member_memories AS b
  ON b.db = a.db AND b."key" = a."key" AND b.key_base64 = a.key_base64 AND b.idx = a.idx + 1
WHERE a."type" = 'zset'
UNION ALL
SELECT a.space, a.id AS source_id, b.id AS target_id, 'NEXT_ENTRY' AS edge_type,
  CAST(0.7 AS FLOAT) AS weight,
  to_json(named_struct('from_id', a."member", 'to_id', b."member")) AS properties,
  'members' AS source_name,
  to_json(named_struct('db', a.db, 'key', a."key", 'key_base64', a.key_base64, 'idx', a.idx)) AS source_key
FROM redis_member_memories AS a
JOIN redis_member_memories AS b
  ON b.db = a.db AND b."key" = a."key" AND b.key_base64 = a.key_base64 AND b.idx = a.idx + 1
WHERE a."type" = 'stream'
UNION ALL
SELECT space, id AS source_id, key_id AS target_id,
  CASE "type" WHEN 'zset' THEN 'MEMBER_OF' WHEN 'stream' THEN 'ENTRY_OF' ELSE 'FIELD_OF' END AS edge_type,
  CAST(1.0 AS FLOAT) AS weight,
  to_json(named_struct('idx', idx)) AS properties,
  'members' AS source_name,
  to_json(named_struct('db', db, 'key', "key", 'key_base64', key_base64, 'idx', idx)) AS source_key
FROM redis_member_memories;


-- --skip-edges leaves every edge out.
CREATE VIEW edges AS
SELECT e.* FROM redis_edges AS e CROSS JOIN redis_settings AS s WHERE NOT s.skip_edges;


-- Every edge joins two memories of the same snapshot: there are no orphans.
CREATE VIEW orphans AS
SELECT * FROM edges WHERE false;


-- What the bundle must hold, counted from the staged tables without the joins above.
CREATE VIEW expected_counts AS
SELECT 'keys' AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected
FROM source."keys"
UNION ALL
SELECT 'members' AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected
FROM source.members AS m CROSS JOIN redis_settings AS s
WHERE m."type" IN ('zset', 'stream') OR (m."type" = 'hash' AND s.hash_field_memories)

UNION ALL
SELECT 'members' AS source_name, 'edges' AS kind, 'MEMBER_OF' AS name, count(*) AS expected
FROM source.members CROSS JOIN redis_settings AS s WHERE "type" = 'zset' AND NOT s.skip_edges

UNION ALL
SELECT 'members' AS source_name, 'edges' AS kind, 'NEXT_BY_SCORE' AS name, count(*) - count(DISTINCT concat(db, ':', key_base64, ':', "key")) AS expected
FROM source.members CROSS JOIN redis_settings AS s WHERE "type" = 'zset' AND NOT s.skip_edges

UNION ALL
SELECT 'members' AS source_name, 'edges' AS kind, 'ENTRY_OF' AS name, count(*) AS expected
FROM source.members CROSS JOIN redis_settings AS s WHERE "type" = 'stream' AND NOT s.skip_edges

UNION ALL
SELECT 'members' AS source_name, 'edges' AS kind, 'NEXT_ENTRY' AS name, count(*) - count(DISTINCT concat(db, ':', key_base64, ':', "key")) AS expected
FROM source.members CROSS JOIN redis_settings AS s WHERE "type" = 'stream' AND NOT s.skip_edges

UNION ALL
SELECT 'members' AS source_name, 'edges' AS kind, 'FIELD_OF' AS name, count(*) AS expected
FROM source.members AS m CROSS JOIN redis_settings AS s
WHERE m."type" = 'hash' AND s.hash_field_memories AND NOT s.skip_edges
;
