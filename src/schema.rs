//! The two Arrow schemas every mapping, sink and validation uses: one for a memory, one for an edge.
//! They are defined here and nowhere else.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names of a memory, in schema order.
pub mod memory {
    pub const SPACE: &str = "space";
    pub const ID: &str = "id";
    pub const CONTENT: &str = "content";
    pub const TEXT: &str = "text";
    pub const EMBEDDING: &str = "embedding";
    pub const CONFIDENCE: &str = "confidence";
    pub const ACTIVATION: &str = "activation";
    pub const DECAY_RATE: &str = "decay_rate";
    pub const CREATED_AT: &str = "created_at";
    pub const MEMORY_TYPE: &str = "memory_type";
    pub const SOURCE_KIND: &str = "source_kind";
    pub const SOURCE_NAME: &str = "source_name";
    pub const SOURCE_KEY: &str = "source_key";
}

/// Column names of an edge, in schema order.
pub mod edge {
    pub const SPACE: &str = "space";
    pub const SOURCE_ID: &str = "source_id";
    pub const TARGET_ID: &str = "target_id";
    pub const EDGE_TYPE: &str = "edge_type";
    pub const WEIGHT: &str = "weight";
    pub const PROPERTIES: &str = "properties";
    pub const SOURCE_NAME: &str = "source_name";
    pub const SOURCE_KEY: &str = "source_key";
}

/// An embedding of `dim` floats: the provider's own dimension. A target decides what it takes (the Engram sink
/// zero-pads to Engram's 768; a vector database stores `vector(dim)`).
pub fn embedding_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim as i32,
    )
}

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A memory as stored in the bundle.
///
/// - `content`: the whole source record as JSON text (nothing lost).
/// - `text`: what was embedded (NULL means: the content was embedded instead).
/// - `source_kind`/`source_name`/`source_key`: provenance: `sqlite`/`postgres`/`neo4j`/`redis`, the table, label or key
///   pattern, and the primary key as a JSON object.
/// - `embedding`: `dim` floats, the run's embedding dimension (recorded in the bundle's manifest).
pub fn memory_schema(dim: usize) -> SchemaRef {
    use memory::*;
    Arc::new(Schema::new(vec![
        Field::new(SPACE, DataType::Utf8, false),
        Field::new(ID, DataType::Utf8, false),
        Field::new(CONTENT, DataType::Utf8, false),
        Field::new(TEXT, DataType::Utf8, true),
        Field::new(EMBEDDING, embedding_type(dim), true),
        Field::new(CONFIDENCE, DataType::Float32, false),
        Field::new(ACTIVATION, DataType::Float32, false),
        Field::new(DECAY_RATE, DataType::Float32, false),
        Field::new(CREATED_AT, timestamp_type(), true),
        Field::new(MEMORY_TYPE, DataType::Utf8, false),
        Field::new(SOURCE_KIND, DataType::Utf8, false),
        Field::new(SOURCE_NAME, DataType::Utf8, false),
        Field::new(SOURCE_KEY, DataType::Utf8, false),
    ]))
}

/// An edge between two memories. Engram has no API that stores edges, so the bundle is where they live.
/// `source_name`/`source_key` say which source row (table + key, relationship id) produced the edge.
pub static EDGE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use edge::*;
    Arc::new(Schema::new(vec![
        Field::new(SPACE, DataType::Utf8, false),
        Field::new(SOURCE_ID, DataType::Utf8, false),
        Field::new(TARGET_ID, DataType::Utf8, false),
        Field::new(EDGE_TYPE, DataType::Utf8, false),
        Field::new(WEIGHT, DataType::Float32, false),
        Field::new(PROPERTIES, DataType::Utf8, true),
        Field::new(SOURCE_NAME, DataType::Utf8, false),
        Field::new(SOURCE_KEY, DataType::Utf8, false),
    ]))
});

/// What a mapping must produce for memories: the memory schema without the embedding, which the embedding
/// stage adds. A mapping may still produce an `embedding` column (vectors that already exist in the source).
pub static MAPPED_MEMORY_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<_> = memory_schema(1)
        .fields()
        .iter()
        .filter(|f| f.name() != memory::EMBEDDING)
        .cloned()
        .collect();
    Arc::new(Schema::new(fields))
});

/// Engram space ids are 3 to 64 characters of `[a-z0-9_-]` (shared/ENGRAM.md). Turn any table or label name
/// into one, deterministically.
pub fn space_id(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.len() < 3 {
        s.push('_');
    }
    s.truncate(64);
    s
}

pub fn is_valid_space_id(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_ids_follow_engram_rules() {
        assert_eq!(space_id("File"), "file");
        assert_eq!(space_id("ab"), "ab_");
        assert_eq!(space_id("Order Items"), "order_items");
        assert_eq!(space_id("Ünïcode"), "_n_code");
        assert!(is_valid_space_id(&space_id(&"x".repeat(100))));
        assert!(!is_valid_space_id("UPPER"));
        assert!(!is_valid_space_id("ab"));
    }

    #[test]
    fn embedding_has_the_runs_dimension() {
        for dim in [256, 768, 1536] {
            let f = memory_schema(dim)
                .field_with_name(memory::EMBEDDING)
                .unwrap()
                .clone();
            assert_eq!(f.data_type(), &embedding_type(dim));
        }
        assert!(MAPPED_MEMORY_SCHEMA
            .field_with_name(memory::EMBEDDING)
            .is_err());
        assert_eq!(
            MAPPED_MEMORY_SCHEMA.fields().len() + 1,
            memory_schema(768).fields().len()
        );
    }
}

/// A data type's short, stable name for manifests, plans and reports: `Int32`, `Timestamp(µs, "UTC")`,
/// `List(Utf8)`, `FixedSizeList(768 x Float32)`, `Decimal128(12, 2)`. Arrow's own `Display` of nested types
/// prints whole `Field` structs, which is unreadable and changes between Arrow versions.
pub fn type_name(dt: &DataType) -> String {
    fn unit(u: &TimeUnit) -> &'static str {
        match u {
            TimeUnit::Second => "s",
            TimeUnit::Millisecond => "ms",
            TimeUnit::Microsecond => "µs",
            TimeUnit::Nanosecond => "ns",
        }
    }
    match dt {
        DataType::Timestamp(u, None) => format!("Timestamp({})", unit(u)),
        DataType::Timestamp(u, Some(tz)) => format!("Timestamp({}, {tz:?})", unit(u)),
        DataType::Time32(u) => format!("Time32({})", unit(u)),
        DataType::Time64(u) => format!("Time64({})", unit(u)),
        DataType::Duration(u) => format!("Duration({})", unit(u)),
        DataType::List(f) => format!("List({})", type_name(f.data_type())),
        DataType::LargeList(f) => format!("LargeList({})", type_name(f.data_type())),
        DataType::FixedSizeList(f, n) => {
            format!("FixedSizeList({n} x {})", type_name(f.data_type()))
        }
        DataType::Struct(fields) => format!(
            "Struct({})",
            fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::Map(f, _) => format!("Map({})", type_name(f.data_type())),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod type_name_tests {
    use super::*;

    #[test]
    fn short_names_of_nested_and_temporal_types() {
        let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
        let cases = [
            (DataType::Int32, "Int32"),
            (DataType::Decimal128(12, 2), "Decimal128(12, 2)"),
            (DataType::Time64(TimeUnit::Microsecond), "Time64(µs)"),
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "Timestamp(µs)",
            ),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "Timestamp(µs, \"UTC\")",
            ),
            (DataType::List(item(DataType::Utf8)), "List(Utf8)"),
            (
                DataType::FixedSizeList(item(DataType::Float32), 768),
                "FixedSizeList(768 x Float32)",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(type_name(&t), want);
        }
    }
}
