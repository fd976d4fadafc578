//! The snapshot's format: `manifest.json` and what it records per table. Depends on the catalog types only, so
//! a snapshot can be read (as a source, by the transform, by validation) without the writer or the sources.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{Fingerprint, Partition, TableInfo};
use crate::error::{Error, Result};
use crate::parquet_io::{self, PartFile};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "engram-migrate-snapshot/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldEntry {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    #[serde(flatten)]
    pub info: TableInfo,
    /// Folder under `tables/`.
    pub folder: String,
    /// The Arrow schema of the staged files.
    pub schema: Vec<FieldEntry>,
    pub files: Vec<PartFile>,
    /// Source position after the last recorded file (e.g. a rowid), where a resumed read continues.
    pub resume_after: Option<i64>,
    pub rows: u64,
    /// Order-independent checksum of all rows (sum of the files' checksums).
    pub checksum: String,
    /// Where the source was read up to, as the source reports it.
    pub read_up_to: Value,
    pub complete: bool,
    /// For a source read in partitions: each partition and whether it is committed (its files are in `files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionState>,
    /// Records of the table that are not staged rows (expired, skipped), as the source counted them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_staged: Vec<crate::catalog::NotStaged>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionState {
    #[serde(flatten)]
    pub partition: Partition,
    pub done: bool,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The source, secrets removed.
    pub source: Value,
    /// Changes when the source's data may have changed; a resume requires it unchanged.
    pub source_fingerprint: Fingerprint,
    pub started_at: String,
    pub completed_at: Option<String>,
    /// Where the source as a whole was read up to (e.g. PostgreSQL's exported snapshot and WAL position).
    #[serde(default)]
    pub read_up_to: Value,
    pub complete: bool,
    /// How the tables' checksums were computed ([`crate::checksum::SCHEME`]); 0: not recorded (older snapshots).
    #[serde(default)]
    pub checksum_scheme: u32,
    pub cycles: Vec<Vec<String>>,
    pub skipped: Vec<(String, String)>,
    pub tables: Vec<TableEntry>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let bytes = fs::read(&path).map_err(Error::io("read", &path))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::source_err(
                path.display().to_string(),
                format!("not a snapshot manifest: {e}"),
            )
        })?;
        if m.format != FORMAT {
            return Err(Error::source_err(
                path.display().to_string(),
                format!("snapshot format {:?}, this tool reads {FORMAT:?}", m.format),
            ));
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        parquet_io::write_atomic(&dir.join(MANIFEST), &serde_json::to_vec_pretty(self)?)
    }

    pub fn table(&self, name: &str) -> Option<&TableEntry> {
        self.tables.iter().find(|t| t.info.name == name)
    }

    pub fn table_dir(dir: &Path, entry: &TableEntry) -> PathBuf {
        dir.join("tables").join(&entry.folder)
    }

    /// Where the snapshot writer records each part's row hashes for the next run's row delta
    /// (`delta::RowRecorder`): beside the tables, so no reader of a table's folder sees them.
    pub fn row_hash_dir(dir: &Path, entry: &TableEntry) -> PathBuf {
        dir.join("row-hashes").join(&entry.folder)
    }

    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Part file paths of a table, in order.
pub fn table_files(dir: &Path, entry: &TableEntry) -> Vec<PathBuf> {
    let tdir = Manifest::table_dir(dir, entry);
    entry.files.iter().map(|f| tdir.join(&f.file)).collect()
}
