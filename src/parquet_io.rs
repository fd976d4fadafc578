//! Parquet part files: written by size-bounded roll-over, each committed by an atomic rename, read back as batches.
//! Snapshot tables, transform output and bundle spaces are all folders of such parts.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::checksum::{Checksum, Hasher};
use crate::error::{Error, Result};

/// When a part file is closed and a new one started.
#[derive(Debug, Clone, Copy)]
pub struct PartLimits {
    /// Roll over once a file holds this many bytes (encoded, approximate).
    pub max_file_bytes: u64,
    /// Roll over once a file holds this many rows.
    pub max_file_rows: u64,
    /// Rows per Parquet row group; the writer buffers one row group in memory.
    pub row_group_rows: usize,
}

impl Default for PartLimits {
    fn default() -> Self {
        PartLimits {
            max_file_bytes: 128 << 20,
            max_file_rows: u64::MAX,
            row_group_rows: 65_536,
        }
    }
}

/// A committed part file, as recorded in manifests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartFile {
    /// File name relative to its folder.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// Order-independent content checksum of the file's rows (see `checksum`).
    pub checksum: String,
    /// A bundle memory part's layer: 0 for a full run's, N for the part the N-th incremental run added on top
    /// (see `bundle::format::Removed`). Absent (0) everywhere else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layer: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PartFile {
    pub fn checksum(&self) -> Result<Checksum> {
        Checksum::from_hex(self.rows, &self.checksum).ok_or_else(|| {
            Error::Internal(format!(
                "bad checksum {:?} in manifest for {}",
                self.checksum, self.file
            ))
        })
    }
}

pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

struct OpenPart {
    index: usize,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    hasher: Hasher,
    rows: u64,
}

/// The top-level columns of `batch` whose non-NULL values are mostly (over half) distinct, judged on at least
/// 1,000 values: a dictionary would not pay for them.
fn mostly_distinct(batch: &RecordBatch) -> Vec<String> {
    use arrow::row::{RowConverter, SortField};
    let mut out = vec![];
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let values = col.len() - col.null_count();
        if values < 1000 || matches!(f.data_type(), arrow::datatypes::DataType::Boolean) {
            continue;
        }
        let Ok(conv) = RowConverter::new(vec![SortField::new(f.data_type().clone())]) else {
            continue;
        };
        let Ok(rows) = conv.convert_columns(std::slice::from_ref(col)) else {
            continue;
        };
        let mut seen = std::collections::HashSet::with_capacity(values);
        for (i, r) in rows.iter().enumerate() {
            if col.is_valid(i) {
                seen.insert(xxhash_rust::xxh3::xxh3_64(r.as_ref()));
            }
        }
        if seen.len() * 2 > values {
            out.push(f.name().clone());
        }
    }
    out
}

/// Writes batches into `dir/part-NNNNN.parquet`, rolling over by size or rows. A part is written to a hidden
/// temporary name, fsynced and renamed, so a part file that exists is complete.
pub struct RollingWriter {
    dir: PathBuf,
    schema: SchemaRef,
    limits: PartLimits,
    next_index: usize,
    open: Option<OpenPart>,
    wrote_any: bool,
    /// Put before the index in file names, so several writers can share a folder.
    prefix: String,
}

impl RollingWriter {
    pub fn new(
        dir: &Path,
        schema: SchemaRef,
        limits: PartLimits,
        first_index: usize,
    ) -> Result<Self> {
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        Ok(RollingWriter {
            dir: dir.to_path_buf(),
            schema,
            limits,
            next_index: first_index,
            open: None,
            wrote_any: false,
            prefix: String::new(),
        })
    }

    pub fn with_prefix(mut self, prefix: String) -> Self {
        self.prefix = prefix;
        self
    }

    fn name(&self, index: usize) -> String {
        if self.prefix.is_empty() {
            part_name(index)
        } else {
            format!("part-{}{index:05}.parquet", self.prefix)
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Opens the next part; `first` (the batch about to be written) decides which columns get a dictionary.
    fn open_part(&mut self, first: &RecordBatch) -> Result<&mut OpenPart> {
        if self.open.is_none() {
            let index = self.next_index;
            self.next_index += 1;
            let tmp = self.dir.join(format!(".{}.tmp", self.name(index)));
            let file = File::create(&tmp).map_err(Error::io("create", &tmp))?;
            let mut props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .set_max_row_group_size(self.limits.row_group_rows);
            // Floats inside lists (embeddings, vectors) almost never repeat: a dictionary only costs time (it was
            // a fifth of the load stage's profile), so they are written plain. So is a top-level column whose
            // values are mostly distinct in the first batch (keys, texts, JSON, timestamps): the writer would hash
            // every value into a dictionary it then abandons (a seventh of a PostgreSQL snapshot's profile).
            let descr = parquet::arrow::ArrowSchemaConverter::new().convert(&self.schema)?;
            let distinct = mostly_distinct(first);
            for col in descr.columns() {
                let float = matches!(
                    col.physical_type(),
                    parquet::basic::Type::FLOAT | parquet::basic::Type::DOUBLE
                );
                let top = col.path().parts().first().map(String::as_str);
                let unique = col.max_rep_level() == 0
                    && top.is_some_and(|t| distinct.iter().any(|d| d == t));
                if (float && col.max_rep_level() > 0) || unique {
                    props = props.set_column_dictionary_enabled(col.path().clone(), false);
                }
                // Vectors are a bundle's bulk (768 floats a memory): Snappy packs the zeros of sparse ones nearly
                // as well as zstd and costs a fraction of its time both ways (zstd on them was a quarter of a
                // run's profile, writing and reading back).
                if float && col.max_rep_level() > 0 {
                    props = props.set_column_compression(col.path().clone(), Compression::SNAPPY);
                }
            }
            let props = props.build();
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))?;
            let hasher = Hasher::new(&self.schema)?;
            self.open = Some(OpenPart {
                index,
                tmp,
                writer,
                hasher,
                rows: 0,
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// Writes one batch; returns the part that was committed if this batch completed one.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Option<PartFile>> {
        self.write_hashed(batch).map(|(part, _)| part)
    }

    /// `write`, also returning each row's hash (the checksum's, `checksum::Hasher::row_hashes`).
    pub fn write_hashed(&mut self, batch: &RecordBatch) -> Result<(Option<PartFile>, Vec<u128>)> {
        if batch.num_rows() == 0 {
            return Ok((None, vec![]));
        }
        let limits = self.limits;
        let part = self.open_part(batch)?;
        part.writer.write(batch)?;
        let hashes = part.hasher.row_hashes(batch)?;
        part.hasher.add_row_hashes(&hashes);
        part.rows += batch.num_rows() as u64;
        let size = part.writer.bytes_written() as u64 + part.writer.in_progress_size() as u64;
        if part.rows >= limits.max_file_rows || size >= limits.max_file_bytes {
            return Ok((Some(self.commit()?), hashes));
        }
        Ok((None, hashes))
    }

    fn commit(&mut self) -> Result<PartFile> {
        let part = self
            .open
            .take()
            .ok_or_else(|| Error::Internal("commit without an open part".into()))?;
        let file = part.writer.into_inner()?;
        file.sync_all().map_err(Error::io("sync", &part.tmp))?;
        let bytes = file.metadata().map_err(Error::io("stat", &part.tmp))?.len();
        drop(file);
        let name = self.name(part.index);
        let path = self.dir.join(&name);
        fs::rename(&part.tmp, &path).map_err(Error::io("rename into place", &path))?;
        sync_dir(&self.dir)?;
        self.wrote_any = true;
        let checksum = part.hasher.finish();
        Ok(PartFile {
            file: name,
            rows: part.rows,
            bytes,
            checksum: checksum.to_hex(),
            layer: 0,
        })
    }

    /// Commits the open part, if any. With `ensure_one`, a folder that got no rows at all still gets one empty
    /// part, so the schema of an empty table survives (readers need it).
    pub fn finish(mut self, ensure_one: bool) -> Result<Option<PartFile>> {
        if self.open.is_none() && ensure_one && !self.wrote_any {
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.open_part(&empty)?;
        }
        if self.open.is_some() {
            return self.commit().map(Some);
        }
        Ok(None)
    }
}

impl Drop for RollingWriter {
    fn drop(&mut self) {
        // An abandoned part (error or interrupt) is never renamed into place; remove its temporary file.
        if let Some(part) = self.open.take() {
            let _ = fs::remove_file(&part.tmp);
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync directory", dir))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        use std::io::Write;
        let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(bytes).map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("sync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(Error::io("rename into place", path))?;
    sync_dir(dir)
}

/// Writes one batch as a whole Parquet file, atomically (for small side files such as hash lists).
pub fn write_batch_atomic(path: &Path, batch: &RecordBatch) -> Result<()> {
    let mut bytes = vec![];
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props))
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    w.write(batch)
        .and_then(|_| w.close().map(|_| ()))
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// The committed part files of a folder, in name order.
pub fn list_parts(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut parts: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(Error::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(".")
                    .starts_with('.')
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// Opens a Parquet file as a batch reader.
pub fn open_reader(
    path: &Path,
    batch_size: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
    Ok(reader)
}

/// Reads every batch of a Parquet file (for small files and tests).
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>> {
    open_reader(path, 8192)?
        .map(|b| b.map_err(|e| Error::Internal(format!("reading {}: {e}", path.display()))))
        .collect()
}

/// Rows of a Parquet file, from its footer.
pub fn row_count(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let meta = parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
    Ok(meta.metadata().file_metadata().num_rows() as u64)
}

/// Schema of a Parquet file without reading its data.
pub fn read_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
    Ok(b.schema().clone())
}

/// Recomputes the checksum and row count of part files (in parallel across files: validation reads everything).
pub fn checksum_parts(paths: &[PathBuf]) -> Result<Checksum> {
    checksum_parts_with(paths, crate::checksum::SCHEME)
}

/// [`checksum_parts`] under a given checksum scheme (see [`crate::checksum::SCHEME`]).
pub fn checksum_parts_with(paths: &[PathBuf], scheme: u32) -> Result<Checksum> {
    use rayon::prelude::*;
    let sums: Vec<Checksum> = paths
        .par_iter()
        .map(|p| checksum_file(p, scheme))
        .collect::<Result<_>>()?;
    let mut total = Checksum::default();
    for s in sums {
        total.combine(s);
    }
    Ok(total)
}

/// A file's checksum, its row groups in parallel: a snapshot table is often one file (a million rows of
/// SQLite compress to tens of MB), which one thread would read alone.
fn checksum_file(p: &Path, scheme: u32) -> Result<Checksum> {
    use rayon::prelude::*;
    let file = File::open(p).map_err(Error::io("open", p))?;
    let groups = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", p.display())))?
        .metadata()
        .num_row_groups();
    let sums: Vec<Checksum> = (0..groups)
        .into_par_iter()
        .map(|g| checksum_row_group(p, g, scheme))
        .collect::<Result<_>>()?;
    let mut total = Checksum::default();
    for s in sums {
        total.combine(s);
    }
    Ok(total)
}

fn checksum_row_group(p: &Path, group: usize, scheme: u32) -> Result<Checksum> {
    let bad = |e: String| Error::Internal(format!("reading {}: {e}", p.display()));
    let file = File::open(p).map_err(Error::io("open", p))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .with_batch_size(8192)
        .with_row_groups(vec![group])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut hasher: Option<Hasher> = None;
    for b in reader {
        let b = b.map_err(|e| Error::Internal(format!("reading {}: {e}", p.display())))?;
        let h = match &mut hasher {
            Some(h) => h,
            None => hasher.insert(Hasher::with_scheme(&b.schema(), scheme)?),
        };
        h.update(&b)?;
    }
    Ok(hasher.map(|h| h.finish()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn rolls_over_and_commits_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        // Row groups of 64 rows: the recomputed checksum reads each file's row groups in parallel.
        let limits = PartLimits {
            max_file_rows: 250,
            row_group_rows: 64,
            ..Default::default()
        };
        let mut w = RollingWriter::new(dir.path(), schema.clone(), limits, 0).unwrap();
        let mut parts = vec![];
        for i in 0..10 {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(
                    i * 100..(i + 1) * 100,
                ))],
            )
            .unwrap();
            parts.extend(w.write(&b).unwrap());
        }
        parts.extend(w.finish(true).unwrap());
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 1000);
        assert_eq!(parts.len(), 4, "300+300+300+100 rows");
        let files = list_parts(dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        let total = checksum_parts(&files).unwrap();
        let mut recorded = Checksum::default();
        for p in &parts {
            recorded.combine(p.checksum().unwrap());
        }
        assert_eq!(total, recorded);
    }

    #[test]
    fn empty_folder_gets_one_schema_part_and_abandoned_parts_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let w = RollingWriter::new(dir.path(), schema.clone(), PartLimits::default(), 0).unwrap();
        let p = w.finish(true).unwrap().unwrap();
        assert_eq!(p.rows, 0);
        assert_eq!(
            read_schema(&dir.path().join(&p.file))
                .unwrap()
                .fields()
                .len(),
            1
        );

        let dir2 = tempfile::tempdir().unwrap();
        let mut w =
            RollingWriter::new(dir2.path(), schema.clone(), PartLimits::default(), 0).unwrap();
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        w.write(&b).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir2.path()).unwrap().count(), 0);
    }
}
