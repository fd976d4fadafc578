//! What a source holds, as the tool describes it: tables, columns with their type mapping, keys, foreign keys,
//! partitions. A leaf module: sources produce these, the snapshot format records them, the mappings read them.

use serde::{Deserialize, Serialize};

/// One column as the source declares it and as it is staged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// The type as the source declares it (e.g. `VARCHAR(80)`, `DATETIME`, empty when undeclared).
    pub source_type: String,
    /// The Arrow type it is staged as, in Arrow's display form.
    pub arrow_type: String,
    /// The source's own name for the rule used (e.g. `timestamp`, `text`), so a later read stages it the same way.
    pub mapped_as: String,
    /// `exact`, `widened: ...` or `text fallback: ...`; see the type mapping docs of each source.
    pub fidelity: String,
    /// True for a column the tool added (a SQLite rowid for a table without primary key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub parent_table: String,
    /// Referenced columns; the parent's primary key when the source leaves them implicit.
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// Key columns (may name the synthetic rowid column). Never empty.
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
    /// Row count known before reading (exact for SQLite), for `plan` and progress.
    pub row_estimate: Option<u64>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Tables in dependency order (parents before children) plus the foreign-key cycles found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: Vec<TableInfo>,
    /// Each cycle as the list of tables on it; their edges are still made.
    pub cycles: Vec<Vec<String>>,
    /// Objects that exist in the source but are not read, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Catalog {
    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// One independent slice of a table (a key range or a page range), read and committed on its own, so an
/// interrupted snapshot resumes with the slices not yet done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Partition {
    /// SQL condition selecting the slice (`TRUE` for the whole table).
    pub filter: String,
    pub row_estimate: u64,
}
