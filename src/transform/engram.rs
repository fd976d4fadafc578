//! The mapping of an Engram source (`source::engram`): every space's memories back into a space of the same id,
//! with the same ids, their content as text to embed, their confidence and time, and their vectors kept as they
//! are (when the run's embedding has Engram's 768 dimensions; otherwise they are embedded again from the text).
//! No edges: Engram stores none. Generated, because there is one table per space; `<work>/mapping.sql` holds
//! the result for a user to copy and edit.

use super::generic::{ident, lit};
use crate::sink::engram::ENGRAM_DIM;
use crate::snapshot::Manifest;

pub fn generate(manifest: &Manifest, embedding_dim: usize) -> String {
    let embedding = if embedding_dim == ENGRAM_DIM {
        "CAST(c.embedding AS REAL[])".to_string()
    } else {
        "CAST(NULL AS REAL[])".to_string()
    };
    let mut memories = vec![];
    let mut expected = vec![];
    for t in &manifest.tables {
        let space = lit(&t.info.name);
        let table = format!("source.{}", ident(&t.info.name));
        memories.push(format!(
            "-- space {name}\n\
             SELECT {space} AS space,\n       c.id AS id,\n       \
             to_json(named_struct('id', c.id, 'content', c.content, 'confidence', c.confidence, 'timestamp', \
             c.\"timestamp\")) AS content,\n       \
             c.content AS text,\n       \
             CAST(coalesce(c.confidence, 0.7) AS REAL) AS confidence, CAST(0.5 AS REAL) AS activation, \
             CAST(0.01 AS REAL) AS decay_rate,\n       \
             TRY_CAST(c.\"timestamp\" AS TIMESTAMP) AS created_at,\n       \
             {embedding} AS embedding,\n       \
             'semantic' AS memory_type, 'engram' AS source_kind, {space} AS source_name,\n       \
             to_json(named_struct('id', c.id)) AS source_key\nFROM {table} c",
            name = t.info.name,
        ));
        expected.push(format!(
            "SELECT {space} AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected FROM {table}"
        ));
    }
    let note = if embedding_dim == ENGRAM_DIM {
        "-- Vectors are kept as the server holds them (--reembed embeds the text instead)."
            .to_string()
    } else {
        format!(
            "-- The run embeds {embedding_dim} dimensions, not Engram's {ENGRAM_DIM}: every memory is embedded \
             again from its text."
        )
    };
    let empty_edges = "SELECT CAST(NULL AS VARCHAR) AS space, CAST(NULL AS VARCHAR) AS source_id, \
         CAST(NULL AS VARCHAR) AS target_id, CAST(NULL AS VARCHAR) AS edge_type, CAST(NULL AS REAL) AS weight, \
         CAST(NULL AS VARCHAR) AS properties, CAST(NULL AS VARCHAR) AS source_name, \
         CAST(NULL AS VARCHAR) AS source_key WHERE false";
    let memories = if memories.is_empty() {
        // A server without spaces: an empty view of the right shape.
        "SELECT CAST(NULL AS VARCHAR) AS space, CAST(NULL AS VARCHAR) AS id WHERE false".to_string()
    } else {
        memories.join("\nUNION ALL\n")
    };
    let expected = if expected.is_empty() {
        "SELECT CAST(NULL AS VARCHAR) AS source_name, 'memories' AS kind, '' AS name, CAST(0 AS BIGINT) AS expected \
         WHERE false"
            .to_string()
    } else {
        expected.join("\nUNION ALL\n")
    };
    format!(
        "-- engram-migrate mapping: Engram (read back over HTTP) -> Engram bundle, generated from the snapshot.\n\
         -- Each space's table holds id, content, confidence, timestamp and embedding (768 floats).\n\
         {note}\n\
         -- Engram stores no edges, so none come back.\n\n\
         CREATE VIEW memories AS\n{memories};\n\n\
         CREATE VIEW edges AS\n{empty_edges};\n\n\
         CREATE VIEW orphans AS\nSELECT * FROM edges WHERE false;\n\n\
         CREATE VIEW expected_counts AS\n{expected};\n"
    )
}
