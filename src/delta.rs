//! What changed since the last run, for `run --incremental` and for every re-run's schema check:
//!
//! - **schema drift**: the tables and columns of this snapshot against the record of the last completed run
//!   (`<work>/schema.json`); a new, removed or retyped column, or a new or removed table, stops the run unless
//!   `--allow-schema-drift`;
//! - **row delta**: each table of this snapshot against the last run's (`<work>/snapshot.prev`), by key and a
//!   per-row content hash (Arrow's row format, XXH3-128, as the checksums); a table without a key of its own is
//!   compared as a multiset of whole-row hashes, so a changed row there is a delete plus an add;
//! - **memory delta**: the memories of the new bundle against the hashes of those the target last received
//!   (`<work>/delta/previous-memories.parquet`): what a live target must be sent and what it must delete.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, FixedSizeBinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::bundle::BundleManifest;
use crate::checksum::Hasher;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::snapshot::format::{table_files, Manifest, TableEntry};

// ---------------------------------------------------------------------------------------------------------
// Schema drift

/// A column as the drift check compares it: the declared source type decides; the Arrow type is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnShape {
    pub name: String,
    pub source_type: String,
    pub arrow_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableShape {
    pub name: String,
    pub columns: Vec<ColumnShape>,
}

/// The schema a completed run migrated (`<work>/schema.json`), and the table filters it ran with: a table a
/// filter left out is not "removed" when the filter changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub run_id: String,
    /// The source's description (kind, location): a work directory reused for another source with `--fresh`
    /// has no drift, it has another source.
    #[serde(default)]
    pub source: serde_json::Value,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub tables: Vec<TableShape>,
    /// Each table's snapshot checksum: an incremental run checks that the snapshot it diffs against is this
    /// run's, not one a later, unfinished run left.
    #[serde(default)]
    pub checksums: std::collections::BTreeMap<String, String>,
    /// Whether the run validated its bundle (and passed: a run that fails validation records nothing). An
    /// incremental run re-reads only its own layer when the layers below it were validated.
    #[serde(default)]
    pub validated: bool,
}

impl SchemaRecord {
    pub fn of(manifest: &Manifest, run_id: &str, include: &[String], exclude: &[String]) -> Self {
        SchemaRecord {
            run_id: run_id.to_string(),
            source: manifest.source.clone(),
            include: include.to_vec(),
            exclude: exclude.to_vec(),
            tables: manifest
                .tables
                .iter()
                .map(|t| TableShape {
                    name: t.info.name.clone(),
                    columns: t
                        .info
                        .columns
                        .iter()
                        .map(|c| ColumnShape {
                            name: c.name.clone(),
                            source_type: c.source_type.clone(),
                            arrow_type: c.arrow_type.clone(),
                        })
                        .collect(),
                })
                .collect(),
            checksums: manifest
                .tables
                .iter()
                .map(|t| (t.info.name.clone(), t.checksum.clone()))
                .collect(),
            validated: false,
        }
    }

    /// Whether both records are of one source (same kind and location).
    pub fn same_source(&self, other: &SchemaRecord) -> bool {
        self.source.get("kind") == other.source.get("kind")
            && self.source.get("path") == other.source.get("path")
    }

    /// Whether `manifest` is the snapshot this run migrated.
    pub fn is_snapshot_of(&self, manifest: &Manifest) -> bool {
        self.checksums.len() == manifest.tables.len()
            && manifest
                .tables
                .iter()
                .all(|t| self.checksums.get(&t.info.name) == Some(&t.checksum))
    }

    pub fn load(path: &Path) -> Result<Option<SchemaRecord>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::usage(format!(
                "{}: not a schema record ({e}); remove it to skip the schema-drift check once",
                path.display()
            ))
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        parquet_io::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// One difference between the last run's schema and this snapshot's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub table: String,
    /// None for a whole table added or removed.
    pub column: Option<String>,
    /// `table added`, `table removed`, `column added`, `column removed`, `column retyped`.
    pub change: String,
    /// The types involved, for people.
    pub detail: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(
                f,
                "table {}: {} {c} ({})",
                self.table, self.change, self.detail
            ),
            None => write!(f, "table {}: {} ({})", self.table, self.change, self.detail),
        }
    }
}

fn shape_of(c: &ColumnShape) -> String {
    if c.source_type.is_empty() {
        c.arrow_type.clone()
    } else {
        format!("{} as {}", c.source_type, c.arrow_type)
    }
}

/// How this snapshot's schema differs from the last run's. Tables outside either run's `--include`/`--exclude`
/// are not compared. A column is retyped when its declared source type changed; an Arrow type that changed
/// under the same declaration (a SQLite value that no longer fits, staged widened) is the data's doing, not the
/// schema's, and is not drift.
pub fn schema_drift(
    last: &SchemaRecord,
    now: &SchemaRecord,
    included: impl Fn(&str, &[String], &[String]) -> bool,
) -> Vec<Drift> {
    let in_both = |t: &str| {
        included(t, &last.include, &last.exclude) && included(t, &now.include, &now.exclude)
    };
    let mut out = vec![];
    let names = |cols: &[ColumnShape]| {
        cols.iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for old in last.tables.iter().filter(|t| in_both(&t.name)) {
        let Some(new) = now.tables.iter().find(|t| t.name == old.name) else {
            out.push(Drift {
                table: old.name.clone(),
                column: None,
                change: "table removed".into(),
                detail: format!("it had columns {}", names(&old.columns)),
            });
            continue;
        };
        for c in &old.columns {
            match new.columns.iter().find(|n| n.name == c.name) {
                None => out.push(Drift {
                    table: old.name.clone(),
                    column: Some(c.name.clone()),
                    change: "column removed".into(),
                    detail: format!("was {}", shape_of(c)),
                }),
                Some(n) if n.source_type != c.source_type => out.push(Drift {
                    table: old.name.clone(),
                    column: Some(c.name.clone()),
                    change: "column retyped".into(),
                    detail: format!("{} -> {}", shape_of(c), shape_of(n)),
                }),
                Some(_) => {}
            }
        }
        for n in new
            .columns
            .iter()
            .filter(|n| !old.columns.iter().any(|c| c.name == n.name))
        {
            out.push(Drift {
                table: old.name.clone(),
                column: Some(n.name.clone()),
                change: "column added".into(),
                detail: shape_of(n),
            });
        }
    }
    for new in now.tables.iter().filter(|t| in_both(&t.name)) {
        if !last.tables.iter().any(|t| t.name == new.name) {
            out.push(Drift {
                table: new.name.clone(),
                column: None,
                change: "table added".into(),
                detail: format!("columns {}", names(&new.columns)),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Row delta

/// How one table changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableDelta {
    pub table: String,
    /// The key rows were matched by; empty when the table has none of its own (compared by whole-row content).
    pub key: Vec<String>,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Key hashes of the rows added or changed (in the new snapshot), for a table with a key of its own.
    #[serde(skip)]
    pub upserted: HashSet<u128>,
    /// Key hashes of the rows deleted or changed (in the old snapshot), for a table with a key of its own.
    #[serde(skip)]
    pub gone: HashSet<u128>,
}

impl TableDelta {
    pub fn is_unchanged(&self) -> bool {
        self.added == 0 && self.changed == 0 && self.deleted == 0
    }
}

/// The delta of a whole run: rows of the source, and memories of the bundle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub tables: Vec<TableDelta>,
    /// The bundle's memories against those the target last received; set once the bundle is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memories: Option<MemoryDeltaCounts>,
}

impl Delta {
    pub fn of_tables(tables: Vec<TableDelta>) -> Delta {
        let mut d = Delta {
            tables,
            ..Default::default()
        };
        for t in &d.tables {
            d.added += t.added;
            d.changed += t.changed;
            d.deleted += t.deleted;
            d.unchanged += t.unchanged;
        }
        d
    }
}

/// The columns a row is keyed by: the table's primary key, unless the tool made it up (a SQLite rowid), which
/// says nothing about the row's identity across runs.
pub fn own_key(entry: &TableEntry) -> Vec<String> {
    let synthetic = |k: &String| entry.info.column(k).is_some_and(|c| c.synthetic);
    if entry.info.primary_key.is_empty() || entry.info.primary_key.iter().any(synthetic) {
        return vec![];
    }
    entry.info.primary_key.clone()
}

/// Every batch of a table's staged files, with the file it came from (for errors).
fn each_staged_batch(
    dir: &Path,
    entry: &TableEntry,
    batch_rows: usize,
    mut f: impl FnMut(&Path, RecordBatch) -> Result<()>,
) -> Result<()> {
    for file in table_files(dir, entry) {
        for batch in parquet_io::open_reader(&file, batch_rows)? {
            let batch =
                batch.map_err(|e| Error::source_err(file.display().to_string(), e.to_string()))?;
            f(&file, batch)?;
        }
    }
    Ok(())
}

/// The positions of `names` in a staged schema of `entry`; a missing one names the table, column and file.
fn indices(
    schema: &Schema,
    names: &[String],
    file: &Path,
    entry: &TableEntry,
) -> Result<Vec<usize>> {
    names
        .iter()
        .map(|n| {
            schema.index_of(n).map_err(|_| {
                Error::source_err(
                    file.display().to_string(),
                    format!(
                        "table {}: the staged file has no column {n:?}",
                        entry.info.name
                    ),
                )
            })
        })
        .collect()
}

/// `batch` with only `columns`, when given.
fn projected(
    batch: RecordBatch,
    columns: Option<&[String]>,
    file: &Path,
    entry: &TableEntry,
) -> Result<RecordBatch> {
    match columns {
        Some(cols) => Ok(batch.project(&indices(&batch.schema(), cols, file, entry)?)?),
        None => Ok(batch),
    }
}

/// A hasher of the `names` columns of a staged batch, and their positions.
fn hasher_of(
    batch: &RecordBatch,
    names: &[String],
    file: &Path,
    entry: &TableEntry,
) -> Result<(Vec<usize>, Hasher)> {
    let idx = indices(&batch.schema(), names, file, entry)?;
    let h = Hasher::new(&Arc::new(batch.schema().project(&idx)?))?;
    Ok((idx, h))
}

/// The columns a row's content hash covers: all but the synthetic ones, which number rows, they are not their
/// content.
fn content_columns(entry: &TableEntry) -> Vec<String> {
    entry
        .info
        .columns
        .iter()
        .filter(|c| !c.synthetic)
        .map(|c| c.name.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Row records: the row delta's input, recorded by the snapshot writer while it writes

/// Records the (key hash, content hash) of every row of a staged part, in the part's row order, while the
/// snapshot writer writes it: `<snapshot>/row-hashes/<folder>/<part checksum>.parquet` (see
/// `Manifest::row_hash_dir`). The next incremental run's row delta reads these (32 bytes a row) instead of
/// decoding both snapshots and hashing every row again (a second of a 1.1M-row re-run's seven). The content hash
/// is most often the checksum's row hash the writer computed anyway (`RollingWriter::write_hashed`); only the key
/// is hashed on its own. A record is a cache: one that is missing or does not match its part is recomputed from
/// the part.
pub struct RowRecorder {
    dir: std::path::PathBuf,
    key: Option<(Vec<usize>, Hasher)>,
    /// None: the content is every column, so the content hash is the checksum's row hash.
    content: Option<(Vec<usize>, Hasher)>,
    /// Names the temporary file, so the workers of a partitioned read record side by side.
    tag: String,
    open: Option<(
        std::path::PathBuf,
        parquet::arrow::ArrowWriter<std::fs::File>,
    )>,
}

impl Drop for RowRecorder {
    fn drop(&mut self) {
        // An abandoned record (error, widened column) is never renamed into place.
        if let Some((tmp, _)) = self.open.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn row_record_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::FixedSizeBinary(16), false),
        Field::new("content", DataType::FixedSizeBinary(16), false),
    ]))
}

fn hash_array(hashes: &[u128]) -> Result<FixedSizeBinaryArray> {
    let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    FixedSizeBinaryArray::try_new(16, arrow::buffer::Buffer::from(bytes), None)
        .map_err(|e| Error::Internal(format!("row hashes: {e}")))
}

impl RowRecorder {
    /// A recorder for the parts of `entry` written with `schema` (the staged schema); `tag` tells apart the
    /// recorders writing one table at once (a partitioned read's workers).
    pub fn new(
        snapshot_dir: &Path,
        entry: &TableEntry,
        schema: &arrow::datatypes::SchemaRef,
        tag: &str,
    ) -> Result<RowRecorder> {
        let table_dir = Manifest::table_dir(snapshot_dir, entry);
        let position = |names: &[String]| -> Result<(Vec<usize>, Hasher)> {
            let idx = indices(schema, names, &table_dir, entry)?;
            let h = Hasher::new(&Arc::new(schema.project(&idx)?))?;
            Ok((idx, h))
        };
        let key = own_key(entry);
        let content = content_columns(entry);
        let whole_row = content.len() == schema.fields().len()
            && content
                .iter()
                .zip(schema.fields())
                .all(|(c, f)| c == f.name());
        Ok(RowRecorder {
            dir: crate::snapshot::format::Manifest::row_hash_dir(snapshot_dir, entry),
            key: if key.is_empty() {
                None
            } else {
                Some(position(&key)?)
            },
            content: if whole_row {
                None
            } else {
                Some(position(&content)?)
            },
            tag: tag.to_string(),
            open: None,
        })
    }

    /// Records the rows of `batch`, whose checksum row hashes are `row_hashes`, in the part being written.
    pub fn add(&mut self, batch: &RecordBatch, row_hashes: &[u128]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let content = match &self.content {
            None => row_hashes.to_vec(),
            Some((idx, h)) => h.row_hashes(&batch.project(idx)?)?,
        };
        let key = match &self.key {
            None => content.clone(),
            Some((idx, h)) => h.row_hashes(&batch.project(idx)?)?,
        };
        let out = RecordBatch::try_new(
            row_record_schema(),
            vec![Arc::new(hash_array(&key)?), Arc::new(hash_array(&content)?)],
        )?;
        if self.open.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(Error::io("create directory", &self.dir))?;
            let tmp = self.dir.join(format!(".open{}.tmp", self.tag));
            let file = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
            // Hashes do not compress and never repeat: plain, without statistics.
            let props = parquet::file::properties::WriterProperties::builder()
                .set_dictionary_enabled(false)
                .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
                .set_max_row_group_size(65_536)
                .build();
            let w = parquet::arrow::ArrowWriter::try_new(file, row_record_schema(), Some(props))?;
            self.open = Some((tmp, w));
        }
        let (_, w) = self.open.as_mut().expect("just opened");
        w.write(&out)?;
        Ok(())
    }

    /// The part whose rows were recorded since the last commit was committed as `part`: its record takes the
    /// part's checksum as its name. Called after the part's rename and before the manifest lists it, so a listed
    /// part has its record (a crash in between leaves a record no part names, which nothing reads).
    pub fn commit(&mut self, part: &crate::parquet_io::PartFile) -> Result<()> {
        let Some((tmp, w)) = self.open.take() else {
            return Ok(());
        };
        w.close()?;
        let path = self.dir.join(format!("{}.parquet", part.checksum));
        std::fs::rename(&tmp, &path).map_err(Error::io("rename into place", &path))?;
        Ok(())
    }
}

/// Removes the row records no listed part of `entry` names (those of parts a restarted table wrote before).
pub fn remove_unlisted_records(snapshot_dir: &Path, entry: &TableEntry) -> Result<()> {
    let rdir = Manifest::row_hash_dir(snapshot_dir, entry);
    let Ok(list) = std::fs::read_dir(&rdir) else {
        return Ok(());
    };
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !entry
            .files
            .iter()
            .any(|f| name == format!("{}.parquet", f.checksum))
        {
            std::fs::remove_file(e.path()).map_err(Error::io("remove", e.path()))?;
        }
    }
    Ok(())
}

/// Whether the snapshot writer recorded every part of a staged table (see [`RowRecorder`]): each record there,
/// of its part's row count (read from its footer), under this binary's checksum scheme. When not, the caller
/// hashes the parts themselves.
fn has_records(dir: &Path, manifest: &Manifest, entry: &TableEntry) -> bool {
    manifest.checksum_scheme == crate::checksum::SCHEME
        && entry.files.iter().all(|f| {
            f.rows == 0
                || parquet_io::row_count(&record_path(dir, entry, f)).is_ok_and(|n| n == f.rows)
        })
}

fn record_path(
    dir: &Path,
    entry: &TableEntry,
    f: &crate::parquet_io::PartFile,
) -> std::path::PathBuf {
    Manifest::row_hash_dir(dir, entry).join(format!("{}.parquet", f.checksum))
}

/// Calls `each(key hash, content hash)` for the rows of one part's record, in the part's row order, a batch at a
/// time (a table's records are 32 bytes a row: not held whole).
fn each_recorded(
    dir: &Path,
    entry: &TableEntry,
    f: &crate::parquet_io::PartFile,
    mut each: impl FnMut(u128, u128),
) -> Result<()> {
    if f.rows == 0 {
        return Ok(());
    }
    let path = record_path(dir, entry, f);
    let bad = |what: String| Error::source_err(path.display().to_string(), what);
    for batch in parquet_io::open_reader(&path, 65_536)? {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .filter(|a| a.value_length() == 16)
                .map(|a| a.value_data())
                .ok_or_else(|| {
                    bad("not a row record; remove the snapshot's row-hashes folder".into())
                })
        };
        let (kv, cv) = (column(0)?, column(1)?);
        let at = |v: &[u8], r: usize| {
            u128::from_le_bytes(v[r * 16..r * 16 + 16].try_into().expect("16"))
        };
        for r in 0..batch.num_rows() {
            each(at(kv, r), at(cv, r));
        }
    }
    Ok(())
}

/// A staged table: its snapshot's folder, manifest and entry.
type Staged<'a> = (&'a Path, &'a Manifest, &'a TableEntry);

/// Reads a table's staged rows as (key hash, row hash) pairs; the key hash is the row hash when there is no key.
/// Synthetic columns are left out of the row hash: they number rows, they are not their content. From the
/// snapshot writer's records when it kept them (and the key is the one they were recorded with).
fn row_hashes(
    (dir, manifest, entry): Staged<'_>,
    key: &[String],
    batch_rows: usize,
    mut each: impl FnMut(u128, u128),
) -> Result<()> {
    if key == own_key(entry).as_slice() && has_records(dir, manifest, entry) {
        for f in &entry.files {
            each_recorded(dir, entry, f, &mut each)?;
        }
        return Ok(());
    }
    let content = content_columns(entry);
    // The key's and the content's hashers, from the first batch's schema.
    type Hashers = ((Vec<usize>, Hasher), (Vec<usize>, Hasher));
    let mut hashers: Option<Hashers> = None;
    each_staged_batch(dir, entry, batch_rows, |file, batch| {
        let ((ki, kh), (ci, ch)) = match &hashers {
            Some(h) => h,
            None => hashers.insert((
                hasher_of(&batch, key, file, entry)?,
                hasher_of(&batch, &content, file, entry)?,
            )),
        };
        let content_hashes = ch.row_hashes(&batch.project(ci)?)?;
        if key.is_empty() {
            for h in content_hashes {
                each(h, h);
            }
        } else {
            let key_hashes = kh.row_hashes(&batch.project(ki)?)?;
            for (k, h) in key_hashes.into_iter().zip(content_hashes) {
                each(k, h);
            }
        }
        Ok(())
    })
}

/// The rows of a staged table whose key hashes (as `table_delta` computes them) are in `wanted`, with only
/// `columns` when given: an incremental run's changed rows, and the keys of those gone.
pub fn rows_with_keys(
    dir: &Path,
    manifest: &Manifest,
    entry: &TableEntry,
    wanted: &HashSet<u128>,
    columns: Option<&[String]>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let key = own_key(entry);
    let mut out = vec![];
    if wanted.is_empty() || key.is_empty() {
        return Ok(out);
    }
    if has_records(dir, manifest, entry) {
        return rows_by_record(dir, entry, wanted, columns, batch_rows);
    }
    let mut hasher: Option<(Vec<usize>, Hasher)> = None;
    each_staged_batch(dir, entry, batch_rows, |file, batch| {
        let (ki, h) = match &hasher {
            Some(h) => h,
            None => hasher.insert(hasher_of(&batch, &key, file, entry)?),
        };
        let keep: arrow::array::BooleanArray = h
            .row_hashes(&batch.project(ki)?)?
            .iter()
            .map(|k| Some(wanted.contains(k)))
            .collect();
        if keep.true_count() > 0 {
            let batch = projected(batch, columns, file, entry)?;
            out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// `rows_with_keys` by the snapshot writer's records (the caller checked `has_records`): the rows' positions
/// come from the recorded key hashes, and each part is read with a row selection of those positions (a 1% delta
/// materializes 1% of the rows and hashes no key).
fn rows_by_record(
    dir: &Path,
    entry: &TableEntry,
    wanted: &HashSet<u128>,
    columns: Option<&[String]>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
    let mut out = vec![];
    let files = table_files(dir, entry);
    for (file, part) in files.iter().zip(&entry.files) {
        let mut rows = vec![];
        let mut r = 0usize;
        each_recorded(dir, entry, part, |k, _| {
            if wanted.contains(&k) {
                rows.push(r);
            }
            r += 1;
        })?;
        if rows.is_empty() {
            continue;
        }
        let err = |e: String| Error::source_err(file.display().to_string(), e);
        let selection = RowSelection::from_consecutive_ranges(
            rows.iter().map(|&r| r..r + 1),
            part.rows as usize,
        );
        let handle = std::fs::File::open(file).map_err(Error::io("open", file))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(handle)
            .map_err(|e| err(e.to_string()))?
            .with_batch_size(batch_rows)
            .with_row_selection(selection)
            .build()
            .map_err(|e| err(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| err(e.to_string()))?;
            out.push(projected(batch, columns, file, entry)?);
        }
    }
    Ok(out)
}

/// Every row of a staged table, with only `columns` when given.
pub fn all_rows(
    dir: &Path,
    entry: &TableEntry,
    columns: Option<&[String]>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    each_staged_batch(dir, entry, batch_rows, |file, batch| {
        out.push(projected(batch, columns, file, entry)?);
        Ok(())
    })?;
    Ok(out)
}

/// A hasher for keys that are XXH3 hashes already: their low 64 bits index the map (SipHash over them again was
/// most of a million-row delta's map work).
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type ByHash<V> = HashMap<u128, V, std::hash::BuildHasherDefault<Prehashed>>;

/// How `new` differs from `old` (None: the table is new). A table only in the old snapshot is all deleted: see
/// `removed_table`.
pub fn table_delta(
    old: Option<Staged<'_>>,
    new: Staged<'_>,
    batch_rows: usize,
) -> Result<TableDelta> {
    let (_, _, new_entry) = new;
    let key = own_key(new_entry);
    let mut d = TableDelta {
        table: new_entry.info.name.clone(),
        key: key.clone(),
        ..Default::default()
    };
    let Some(old @ (_, _, old_entry)) = old else {
        d.added = new_entry.rows;
        return Ok(d);
    };
    // A key the old table did not have (or not as its key) matches nothing: compare by content instead.
    let key = if own_key(old_entry) == key {
        key
    } else {
        vec![]
    };
    d.key = key.clone();
    if key.is_empty() {
        // A multiset of whole-row hashes: a row is unchanged when an equal row was there before.
        let mut before: ByHash<u64> = ByHash::default();
        row_hashes(old, &key, batch_rows, |_, r| {
            *before.entry(r).or_default() += 1
        })?;
        row_hashes(new, &key, batch_rows, |_, r| match before.get_mut(&r) {
            Some(n) if *n > 0 => {
                *n -= 1;
                d.unchanged += 1;
            }
            _ => d.added += 1,
        })?;
        d.deleted = before.values().sum();
        return Ok(d);
    }
    let mut before: ByHash<u128> =
        ByHash::with_capacity_and_hasher(old_entry.rows as usize, Default::default());
    row_hashes(old, &key, batch_rows, |k, r| {
        before.insert(k, r);
    })?;
    row_hashes(new, &key, batch_rows, |k, r| match before.remove(&k) {
        None => {
            d.added += 1;
            d.upserted.insert(k);
        }
        Some(was) if was == r => d.unchanged += 1,
        Some(_) => {
            d.changed += 1;
            d.upserted.insert(k);
            d.gone.insert(k);
        }
    })?;
    d.deleted = before.len() as u64;
    d.gone.extend(before.into_keys());
    Ok(d)
}

/// A table of the old snapshot that this one no longer has: every row deleted.
pub fn removed_table(entry: &TableEntry) -> TableDelta {
    TableDelta {
        table: entry.info.name.clone(),
        key: own_key(entry),
        deleted: entry.rows,
        ..Default::default()
    }
}

/// The row delta of every table between the last run's snapshot and this one.
pub fn snapshot_delta(
    old_dir: &Path,
    old: &Manifest,
    new_dir: &Path,
    new: &Manifest,
    batch_rows: usize,
) -> Result<Delta> {
    let mut tables = vec![];
    for t in &new.tables {
        let before = old.table(&t.info.name).map(|o| (old_dir, old, o));
        tables.push(table_delta(before, (new_dir, new, t), batch_rows)?);
    }
    for o in old
        .tables
        .iter()
        .filter(|o| new.table(&o.info.name).is_none())
    {
        tables.push(removed_table(o));
    }
    Ok(Delta::of_tables(tables))
}

// ---------------------------------------------------------------------------------------------------------
// Memory delta

/// Content hash of every memory of a bundle, by (space, id): every column, the embedding included, so a new
/// vector (another provider, a re-embedded text) is a change too. The same row hash the bundle's checksums sum
/// (`checksum::Hasher::row_hashes`). A part whose hashes the bundle writer recorded in `recorded` (under its
/// space, named by the part's checksum) is not read again. Also returns how many parts had to be read.
pub fn memory_hashes(
    bundle: &Path,
    batch_rows: usize,
    recorded: Option<&Path>,
) -> Result<(HashMap<(String, String), u128>, usize)> {
    let manifest = BundleManifest::load(bundle)?;
    // Only live rows: a part's record also holds the memories later layers removed.
    let removed = crate::bundle::Removed::load(bundle, &manifest)?;
    let mut out = HashMap::new();
    let mut read = 0;
    for part in manifest.memory_parts(bundle) {
        let (space, f) = (&part.space, &part.file);
        if let Some(r) = recorded {
            let saved = r.join(space).join(format!("{}.parquet", f.checksum));
            if saved.is_file() {
                let hashes = load_hashes(&saved)?;
                if hashes.len() as u64 == f.rows {
                    out.extend(
                        hashes
                            .into_iter()
                            .filter(|((s, id), _)| removed.is_live(s, id, f.layer)),
                    );
                    continue;
                }
            }
        }
        read += 1;
        let path = &part.path;
        let mut hasher: Option<crate::checksum::Hasher> = None;
        for batch in crate::bundle::read_live(&part, &removed, batch_rows)? {
            let batch = batch?;
            let h = match &mut hasher {
                Some(h) => h,
                None => hasher.insert(crate::checksum::Hasher::new(&batch.schema())?),
            };
            let ids = id_column(&batch, path)?;
            for (i, hash) in h.row_hashes(&batch)?.into_iter().enumerate() {
                out.insert((space.clone(), ids.value(i).to_string()), hash);
            }
        }
    }
    Ok((out, read))
}

/// The row hashes of the live memories `wanted` (space -> ids) of a bundle: what its checksums sum for them. Read
/// from the records its writer kept, scanned without holding them (a million entries are seconds as a map); a
/// part without a record is read and hashed.
pub fn hashes_of(
    bundle: &Path,
    manifest: &BundleManifest,
    recorded: &Path,
    wanted: &HashMap<String, HashSet<String>>,
    batch_rows: usize,
) -> Result<std::collections::BTreeMap<(String, String), u128>> {
    let removed = crate::bundle::Removed::load(bundle, manifest)?;
    let mut out = std::collections::BTreeMap::new();
    for part in manifest.memory_parts(bundle) {
        let (space, f) = (&part.space, &part.file);
        let Some(ids) = wanted.get(space) else {
            continue;
        };
        let mut take = |id: &str, hash: u128| {
            if ids.contains(id) && removed.is_live(space, id, f.layer) {
                out.insert((space.clone(), id.to_string()), hash);
            }
        };
        let saved = recorded.join(space).join(format!("{}.parquet", f.checksum));
        if saved.is_file() && parquet_io::read_schema(&saved)?.fields().len() == 3 {
            let mut rows = 0u64;
            for batch in parquet_io::open_reader(&saved, 65_536)? {
                let batch = batch
                    .map_err(|e| Error::source_err(saved.display().to_string(), e.to_string()))?;
                let i = batch.column(1).as_any().downcast_ref::<StringArray>();
                let h = batch
                    .column(2)
                    .as_any()
                    .downcast_ref::<FixedSizeBinaryArray>();
                let (Some(i), Some(h)) = (i, h) else {
                    return Err(Error::source_err(
                        saved.display().to_string(),
                        "not a memory hash file; remove it",
                    ));
                };
                for r in 0..batch.num_rows() {
                    let bytes: [u8; 16] = h.value(r).try_into().expect("16 bytes");
                    take(i.value(r), u128::from_le_bytes(bytes));
                }
                rows += batch.num_rows() as u64;
            }
            if rows == f.rows {
                continue;
            }
        }
        // No record (or not this part's): hash the part itself.
        let mut hasher: Option<Hasher> = None;
        let reader = parquet_io::open_reader(&part.path, batch_rows)?;
        for batch in reader {
            let batch = batch
                .map_err(|e| Error::source_err(part.path.display().to_string(), e.to_string()))?;
            let h = match &mut hasher {
                Some(h) => h,
                None => hasher.insert(Hasher::new(&batch.schema())?),
            };
            let ids = id_column(&batch, &part.path)?;
            for (r, hash) in h.row_hashes(&batch)?.into_iter().enumerate() {
                take(ids.value(r), hash);
            }
        }
    }
    Ok(out)
}

fn id_column<'a>(batch: &'a RecordBatch, path: &Path) -> Result<&'a StringArray> {
    batch
        .column_by_name("id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| {
            Error::source_err(
                path.display().to_string(),
                "a bundle memory part without a text id column",
            )
        })
}

fn hash_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("space", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("hash", DataType::FixedSizeBinary(16), false),
    ]))
}

/// Saves memory hashes (atomically): the state a target was last sent.
pub fn save_hashes(path: &Path, hashes: &HashMap<(String, String), u128>) -> Result<()> {
    let mut keys: Vec<_> = hashes.iter().collect();
    keys.sort();
    let space = StringArray::from_iter_values(keys.iter().map(|((s, _), _)| s.as_str()));
    let id = StringArray::from_iter_values(keys.iter().map(|((_, i), _)| i.as_str()));
    // Built from one buffer (not `try_from_iter`, which refuses an empty set: a part may hold no memories).
    let bytes: Vec<u8> = keys.iter().flat_map(|(_, h)| h.to_le_bytes()).collect();
    let hash = FixedSizeBinaryArray::try_new(16, arrow::buffer::Buffer::from(bytes), None)
        .map_err(|e| Error::Internal(format!("memory hashes: {e}")))?;
    let batch = RecordBatch::try_new(
        hash_schema(),
        vec![Arc::new(space), Arc::new(id), Arc::new(hash)],
    )?;
    parquet_io::write_batch_atomic(path, &batch)
}

pub fn load_hashes(path: &Path) -> Result<HashMap<(String, String), u128>> {
    let mut out = HashMap::new();
    for batch in parquet_io::read_all(path)? {
        let s = batch.column(0).as_any().downcast_ref::<StringArray>();
        let i = batch.column(1).as_any().downcast_ref::<StringArray>();
        let h = batch
            .column(2)
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>();
        let (Some(s), Some(i), Some(h)) = (s, i, h) else {
            return Err(Error::source_err(
                path.display().to_string(),
                "not a memory hash file; remove it",
            ));
        };
        for r in 0..batch.num_rows() {
            let bytes: [u8; 16] = h.value(r).try_into().expect("16 bytes");
            out.insert(
                (s.value(r).to_string(), i.value(r).to_string()),
                u128::from_le_bytes(bytes),
            );
        }
    }
    Ok(out)
}

/// Memory ids by space.
pub type IdsBySpace = HashMap<String, std::collections::HashSet<String>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryDeltaCounts {
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// Which memories a target must be sent (added or changed) and which it must delete, by space.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryDelta {
    /// Space -> ids of the memories to send: looked up by `&str` per row, no key built for each.
    pub send: IdsBySpace,
    pub delete: Vec<(String, String)>,
    pub counts: MemoryDeltaCounts,
}

impl MemoryDelta {
    /// How many memories are to be sent.
    pub fn to_send(&self) -> usize {
        self.send.values().map(|ids| ids.len()).sum()
    }
}

pub fn memory_delta(
    before: &HashMap<(String, String), u128>,
    now: &HashMap<(String, String), u128>,
) -> MemoryDelta {
    let mut d = MemoryDelta::default();
    for (k, h) in now {
        match before.get(k) {
            None => {
                d.counts.added += 1;
                d.send.entry(k.0.clone()).or_default().insert(k.1.clone());
            }
            Some(b) if b == h => d.counts.unchanged += 1,
            Some(_) => {
                d.counts.changed += 1;
                d.send.entry(k.0.clone()).or_default().insert(k.1.clone());
            }
        }
    }
    let gone: BTreeSet<_> = before
        .keys()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    d.counts.deleted = gone.len() as u64;
    d.delete = gone.into_iter().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};

    fn shape(tables: &[(&str, &[(&str, &str)])]) -> SchemaRecord {
        SchemaRecord {
            run_id: "r".into(),
            source: serde_json::Value::Null,
            include: vec![],
            exclude: vec![],
            checksums: Default::default(),
            validated: false,
            tables: tables
                .iter()
                .map(|(t, cols)| TableShape {
                    name: t.to_string(),
                    columns: cols
                        .iter()
                        .map(|(c, ty)| ColumnShape {
                            name: c.to_string(),
                            source_type: ty.to_string(),
                            arrow_type: "Utf8".into(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn all(_: &str, _: &[String], _: &[String]) -> bool {
        true
    }

    #[test]
    fn schema_drift_names_each_table_and_column() {
        let last = shape(&[
            ("a", &[("id", "INTEGER"), ("x", "TEXT"), ("y", "TEXT")]),
            ("gone", &[("id", "INTEGER")]),
        ]);
        let now = shape(&[
            ("a", &[("id", "INTEGER"), ("x", "REAL"), ("z", "TEXT")]),
            ("new", &[("k", "TEXT")]),
        ]);
        let d: Vec<String> = schema_drift(&last, &now, all)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            d,
            vec![
                "table a: column retyped x (TEXT as Utf8 -> REAL as Utf8)",
                "table a: column removed y (was TEXT as Utf8)",
                "table a: column added z (TEXT as Utf8)",
                "table gone: table removed (it had columns id)",
                "table new: table added (columns k)",
            ]
        );
        assert!(schema_drift(&last, &last, all).is_empty());
    }

    #[test]
    fn a_widened_arrow_type_under_the_same_declaration_is_not_drift() {
        let last = shape(&[("a", &[("n", "INTEGER")])]);
        let mut now = last.clone();
        now.tables[0].columns[0].arrow_type = "Utf8 (widened)".into();
        assert!(schema_drift(&last, &now, all).is_empty());
    }

    #[test]
    fn tables_a_filter_leaves_out_are_not_drift() {
        let mut last = shape(&[("a", &[("id", "INTEGER")])]);
        last.include = vec!["a".into()];
        let now = shape(&[("a", &[("id", "INTEGER")]), ("b", &[("id", "INTEGER")])]);
        let included =
            |t: &str, inc: &[String], _: &[String]| inc.is_empty() || inc.iter().any(|i| i == t);
        assert!(schema_drift(&last, &now, included).is_empty());
    }

    /// A table of (id, value) rows written as one part, with its manifest entry, and with the row records of
    /// the snapshot writer when `recorded`.
    fn table(
        dir: &Path,
        rows: &[(i64, f64)],
        keyed: bool,
        recorded: bool,
    ) -> (Manifest, TableEntry) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let entry: TableEntry = serde_json::from_value(serde_json::json!({
            "name": "t",
            "columns": [
                {"name": "id", "source_type": "INTEGER", "arrow_type": "Int64", "mapped_as": "integer",
                 "fidelity": "exact", "synthetic": !keyed},
                {"name": "v", "source_type": "REAL", "arrow_type": "Float64", "mapped_as": "real", "fidelity": "exact"}
            ],
            "primary_key": ["id"], "foreign_keys": [], "row_estimate": null,
            "folder": "000-t", "schema": [],
            "files": [{"file": "part-00000.parquet", "rows": rows.len(), "bytes": 0, "checksum": "0"}],
            "resume_after": null, "rows": rows.len(), "checksum": "0", "read_up_to": null, "complete": true
        }))
        .unwrap();
        let mut entry = entry;
        let tdir = Manifest::table_dir(dir, &entry);
        let mut w = parquet_io::RollingWriter::new(
            &tdir,
            batch.schema(),
            parquet_io::PartLimits::default(),
            0,
        )
        .unwrap();
        let mut rec = RowRecorder::new(dir, &entry, &batch.schema(), "").unwrap();
        // Two batches, so a record spans batches as the writer's do.
        for b in [batch.slice(0, 1), batch.slice(1, batch.num_rows() - 1)] {
            let (_, hashes) = w.write_hashed(&b).unwrap();
            rec.add(&b, &hashes).unwrap();
        }
        let part = w.finish(true).unwrap().unwrap();
        if recorded {
            rec.commit(&part).unwrap();
        }
        entry.checksum = part.checksum.clone();
        entry.files = vec![part];
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format": "t", "source": {}, "source_fingerprint": {}, "started_at": "t", "completed_at": "t",
            "complete": true, "checksum_scheme": crate::checksum::SCHEME, "cycles": [], "skipped": [],
            "tables": [entry],
        }))
        .unwrap();
        (manifest, entry)
    }

    /// The delta of two tables, computed from the snapshot writer's row records and from the parts themselves:
    /// both must agree.
    fn delta_of(old: &[(i64, f64)], new: &[(i64, f64)], keyed: bool) -> TableDelta {
        let mut seen: Vec<TableDelta> = vec![];
        for recorded in [false, true] {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (om, o) = table(a.path(), old, keyed, recorded);
            let (nm, n) = table(b.path(), new, keyed, recorded);
            assert_eq!(has_records(b.path(), &nm, &n), recorded);
            seen.push(table_delta(Some((a.path(), &om, &o)), (b.path(), &nm, &n), 2).unwrap());
        }
        assert_eq!(
            seen[0], seen[1],
            "recorded and recomputed row hashes differ"
        );
        assert_eq!(seen[0].upserted, seen[1].upserted);
        assert_eq!(seen[0].gone, seen[1].gone);
        seen.pop().unwrap()
    }

    #[test]
    fn keyed_rows_are_added_changed_deleted_or_unchanged() {
        // 17 significant digits: a change of one unit in the last place is a change.
        let x: f64 = 0.1 + 0.2;
        let next = f64::from_bits(x.to_bits() + 1);
        let old = [(1, 0.1), (2, x), (3, 3.0), (4, f64::NAN)];
        let d = delta_of(&old, &[(1, 0.1), (2, next), (4, f64::NAN), (5, 5.0)], true);
        assert_eq!(
            (d.added, d.changed, d.deleted, d.unchanged),
            (1, 1, 1, 2),
            "{d:?}"
        );
        assert_eq!(d.key, vec!["id".to_string()]);
        let same = delta_of(&old, &old, true);
        assert_eq!(
            (same.added, same.changed, same.deleted, same.unchanged),
            (0, 0, 0, 4)
        );
    }

    #[test]
    fn changed_rows_are_found_again_by_record_and_by_reading() {
        let rows: Vec<(i64, f64)> = (0..1000).map(|i| (i, i as f64 / 3.0)).collect();
        let key_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let wanted_ids = [0i64, 499, 500, 999];
        let keys = RecordBatch::try_new(
            key_schema.clone(),
            vec![Arc::new(Int64Array::from(wanted_ids.to_vec()))],
        )
        .unwrap();
        let wanted: HashSet<u128> = Hasher::new(&key_schema)
            .unwrap()
            .row_hashes(&keys)
            .unwrap()
            .into_iter()
            .collect();
        for recorded in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (m, t) = table(dir.path(), &rows, true, recorded);
            assert_eq!(has_records(dir.path(), &m, &t), recorded);
            let got = rows_with_keys(dir.path(), &m, &t, &wanted, None, 7).unwrap();
            let mut ids: Vec<i64> = got
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            ids.sort();
            assert_eq!(ids, wanted_ids, "recorded: {recorded}");
            let v: usize = got.iter().map(|b| b.num_columns()).max().unwrap();
            assert_eq!(v, 2, "every column");
        }
    }

    #[test]
    fn rows_without_a_key_of_their_own_compare_by_content_as_a_multiset() {
        // The synthetic rowid renumbers: it must not count; a duplicate row is two rows.
        let d = delta_of(
            &[(1, 1.0), (2, 1.0), (3, 2.0)],
            &[(7, 1.0), (8, 2.5), (9, 2.0)],
            false,
        );
        assert!(d.key.is_empty());
        assert_eq!(
            (d.added, d.changed, d.deleted, d.unchanged),
            (1, 0, 1, 2),
            "{d:?}"
        );
    }

    #[test]
    fn memory_delta_and_hash_files_round_trip() {
        let k = |s: &str, i: &str| (s.to_string(), i.to_string());
        let before: HashMap<_, _> =
            [(k("a", "1"), 1u128), (k("a", "2"), 2), (k("b", "1"), 3)].into();
        let now: HashMap<_, _> = [(k("a", "1"), 1u128), (k("a", "2"), 9), (k("b", "2"), 4)].into();
        let d = memory_delta(&before, &now);
        assert_eq!(
            d.counts,
            MemoryDeltaCounts {
                added: 1,
                changed: 1,
                deleted: 1,
                unchanged: 1
            }
        );
        assert_eq!(d.delete, vec![k("b", "1")]);
        assert!(
            d.send["a"].contains("2")
                && d.send["b"].contains("2")
                && d.to_send() == 2
                && d.send.len() == 2
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.parquet");
        save_hashes(&f, &before).unwrap();
        assert_eq!(load_hashes(&f).unwrap(), before);
    }
}
