//! A finished snapshot directory as a source: reproduces any run from the staged Parquet files, with the catalog
//! (keys, foreign keys, type mapping) recorded in its manifest.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde_json::{json, Map, Value};

use super::{Catalog, Emit, Fingerprint, ReadEnd, Source, TableInfo};
use crate::error::{Error, Result};
use crate::parquet_io;
pub use crate::snapshot::format::MANIFEST;
use crate::snapshot::format::{self as snapshot, Manifest};

pub struct SnapshotSource {
    dir: PathBuf,
    manifest: Manifest,
}

impl SnapshotSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if !manifest.complete {
            return Err(Error::source_err(
                dir.display().to_string(),
                "snapshot is incomplete (interrupted); finish it with `engram-migrate snapshot` using the same --source and --work-dir",
            ));
        }
        Ok(SnapshotSource {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn entry(&self, table: &TableInfo) -> Result<&snapshot::TableEntry> {
        self.manifest.table(&table.name).ok_or_else(|| {
            Error::source_err(
                self.dir.display().to_string(),
                format!("no table {} in the snapshot", table.name),
            )
        })
    }
}

impl Source for SnapshotSource {
    fn kind(&self) -> &'static str {
        "snapshot"
    }

    fn describe(&self) -> Value {
        json!({ "kind": "snapshot", "path": self.dir.display().to_string(), "of": self.manifest.source })
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        Ok(self
            .manifest
            .tables
            .iter()
            .fold(Fingerprint::default(), |fp, t| {
                fp.table(&t.info.name, "checksum", &t.checksum)
                    .table(&t.info.name, "rows", t.rows)
            }))
    }

    fn catalog(&mut self) -> Result<Catalog> {
        Ok(Catalog {
            tables: self
                .manifest
                .tables
                .iter()
                .map(|t| t.info.clone())
                .collect(),
            cycles: self.manifest.cycles.clone(),
            skipped: self.manifest.skipped.clone(),
        })
    }

    fn schema(&self, table: &TableInfo) -> Result<SchemaRef> {
        let entry = self.entry(table)?;
        let files = snapshot::table_files(&self.dir, entry);
        let first = files
            .first()
            .ok_or_else(|| Error::Internal(format!("snapshot table {} has no file", table.name)))?;
        parquet_io::read_schema(first)
    }

    fn not_staged(&self, table: &TableInfo) -> Vec<crate::catalog::NotStaged> {
        self.entry(table)
            .map(|e| e.not_staged.clone())
            .unwrap_or_default()
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        Ok(self.entry(table)?.rows)
    }

    fn read_table(
        &mut self,
        table: &TableInfo,
        after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        // Positions here are file indexes: resume continues with the file after the last one recorded.
        let entry = self.entry(table)?.clone();
        let files = snapshot::table_files(&self.dir, &entry);
        let start = after.map(|a| a as usize + 1).unwrap_or(0);
        let mut rows = 0;
        for (i, f) in files.iter().enumerate().skip(start) {
            let reader = parquet_io::open_reader(f, batch_size)?;
            let mut batches = reader.peekable();
            while let Some(b) = batches.next() {
                let b = b.map_err(|e| Error::source_err(f.display().to_string(), e.to_string()))?;
                rows += b.num_rows() as u64;
                let pos = if batches.peek().is_none() {
                    Some(i as i64)
                } else {
                    None
                };
                emit(b, pos)?;
            }
        }
        Ok(ReadEnd::Done {
            rows,
            read_up_to: json!({ "rows": rows, "files": files.len() }),
        })
    }

    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        let wanted: HashSet<String> = keys
            .iter()
            .map(|k| Value::Object(k.clone()).to_string())
            .collect();
        let mut found: std::collections::HashMap<String, Map<String, Value>> = Default::default();
        let entry = self.entry(table)?.clone();
        for f in snapshot::table_files(&self.dir, &entry) {
            for b in parquet_io::read_all(&f)? {
                for row in 0..b.num_rows() {
                    let obj = crate::json::row_object(&b, row)?;
                    let key: Map<String, Value> = table
                        .primary_key
                        .iter()
                        .map(|k| (k.clone(), obj.get(k).cloned().unwrap_or(Value::Null)))
                        .collect();
                    let key = Value::Object(key).to_string();
                    if wanted.contains(&key) {
                        found.insert(key, obj);
                    }
                }
            }
        }
        Ok(keys
            .iter()
            .map(|k| found.get(&Value::Object(k.clone()).to_string()).cloned())
            .collect())
    }
}
