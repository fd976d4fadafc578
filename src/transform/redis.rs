//! The default mapping of a Redis source: `sql/redis.sql`, with its settings view set from the flags
//! (`--memory-space`, `--ttl-as-decay`, `--hash-field-memories`). The file marks each setting's line with
//! `@flag`; the literal at the start of that line is replaced, so the file stays plain SQL a user can copy.

use crate::error::{Error, Result};

pub const REDIS_SQL: &str = include_str!("../../sql/redis.sql");

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RedisMapping {
    pub memory_space: Option<String>,
    pub ttl_as_decay: bool,
    pub hash_field_memories: bool,
    /// `--confidence` of every memory (default 0.7).
    pub confidence: f32,
    /// `--skip-edges`: no MEMBER_OF / NEXT_BY_SCORE / ENTRY_OF / NEXT_ENTRY / FIELD_OF edges.
    pub skip_edges: bool,
}

/// Whether a snapshot manifest's source is Redis (directly or through a snapshot directory).
pub fn is_redis(source: &serde_json::Value) -> bool {
    source.get("kind").and_then(|k| k.as_str()) == Some("redis")
        || source.pointer("/of/kind").and_then(|k| k.as_str()) == Some("redis")
}

/// What `sql/redis.sql` must produce with these settings, counted by the tool from the staged tables (never from
/// the mapping's views): validation's `counts_derived` holds the mapping and the bundle to it. Columns:
/// source_name, kind, name, derived.
pub fn derived_counts_sql(m: &RedisMapping) -> String {
    let members = if m.hash_field_memories {
        "('zset', 'stream', 'hash')"
    } else {
        "('zset', 'stream')"
    };
    let chain = |t: &str, name: &str| {
        format!(
            "SELECT 'members' AS source_name, 'edges' AS kind, '{name}' AS name, \
             count(*) - count(DISTINCT concat(db, ':', key_base64, ':', \"key\")) AS derived \
             FROM source.members WHERE \"type\" = '{t}'"
        )
    };
    let per = |t: &str, name: &str| {
        format!(
            "SELECT 'members' AS source_name, 'edges' AS kind, '{name}' AS name, count(*) AS derived \
             FROM source.members WHERE \"type\" = '{t}'"
        )
    };
    let mut parts = vec![
        "SELECT 'keys' AS source_name, 'memories' AS kind, '' AS name, count(*) AS derived FROM source.\"keys\"".to_string(),
        format!("SELECT 'members' AS source_name, 'memories' AS kind, '' AS name, count(*) AS derived FROM source.members WHERE \"type\" IN {members}"),
    ];
    if !m.skip_edges {
        parts.extend([
            per("zset", "MEMBER_OF"),
            chain("zset", "NEXT_BY_SCORE"),
            per("stream", "ENTRY_OF"),
            chain("stream", "NEXT_ENTRY"),
        ]);
    }
    if m.hash_field_memories && !m.skip_edges {
        parts.push(per("hash", "FIELD_OF"));
    }
    parts.join("\nUNION ALL\n")
}

pub fn mapping(m: &RedisMapping) -> Result<String> {
    let space = match &m.memory_space {
        Some(s) if !crate::schema::is_valid_space_id(s) => {
            return Err(Error::usage(format!(
            "--memory-space {s:?}: an Engram space id is 3 to 64 characters of a-z, 0-9, _ and -"
        )))
        }
        Some(s) => format!("'{s}'"),
        None => "''".into(),
    };
    let settings = [
        ("@memory-space", space),
        ("@ttl-as-decay", m.ttl_as_decay.to_string()),
        ("@hash-field-memories", m.hash_field_memories.to_string()),
        ("@confidence", format!("{:?}", m.confidence)),
        ("@skip-edges", m.skip_edges.to_string()),
    ];
    let mut out = String::with_capacity(REDIS_SQL.len());
    let mut found = 0;
    for line in REDIS_SQL.lines() {
        match settings
            .iter()
            .find(|(mark, _)| line.contains(&format!("-- {mark}")))
        {
            Some((_, lit)) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let rest = line.trim_start();
                let Some(as_at) = rest.find(" AS ") else {
                    return Err(Error::Internal(format!(
                        "sql/redis.sql: setting line without AS: {line}"
                    )));
                };
                out.push_str(&format!("{indent}{lit}{}", &rest[as_at..]));
                found += 1;
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if found != settings.len() {
        return Err(Error::Internal(
            "sql/redis.sql lacks one of its @flag setting lines".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_substituted() {
        let sql = mapping(&RedisMapping {
            memory_space: Some("cache_space".into()),
            ttl_as_decay: false,
            hash_field_memories: true,
            confidence: 0.25,
            skip_edges: true,
        })
        .unwrap();
        assert!(sql.contains("  0.25 AS confidence"), "{sql}");
        assert!(sql.contains("  true AS skip_edges"), "{sql}");
        assert!(sql.contains("  'cache_space' AS memory_space"), "{sql}");
        assert!(sql.contains("  false AS ttl_as_decay"));
        assert!(sql.contains("  true AS hash_field_memories"));
        let bad = mapping(&RedisMapping {
            memory_space: Some("No Way".into()),
            ..Default::default()
        });
        assert!(bad.is_err());
    }
}
