//! The persistent embedding cache: content hash -> vector, kept as Parquet in the run's work directory, so re-runs
//! and resumed runs do not embed a text again.
//!
//! Layout: `<work>/embed-cache/<provider key>/part-NNNNN.parquet` with columns `key` (FixedSizeBinary(16): the
//! XXH3-128 content hash of the text, little-endian) and `vector` (FixedSizeList<Float32, native dimension>),
//! plus `provider.json` naming the provider. The provider key is XXH3-64 of the provider's name; the name of a
//! model-based provider carries a fingerprint of the model (model2vec) or the endpoint and model name (HTTP), so
//! vectors of different models never mix. Entries never go stale (same text, same model, same vector), which is
//! why `--fresh` keeps the cache: delete `<work>/embed-cache` to drop it.
//!
//! On open, every part is read into memory (a slab of fixed-size chunks); new vectors are added in
//! memory and written as one new part per [`DiskCache::flush`] (the load stage flushes after each committed
//! bundle part, so a killed run keeps what it had embedded for them). Parts are written under a hidden name and
//! renamed, so a part that exists is complete; more than [`COMPACT_PARTS`] parts are merged into one on open.
//!
//! Memory: entries × (native dimension × 4 + ~40) bytes, e.g. ~1.1 KB per text for a 256-dimension model. The
//! `max_bytes` bound (`--embedding-cache-mb`) stops loading and adding once reached; texts beyond it are still
//! embedded (and served by the stage's bounded FIFO cache), just not persisted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use xxhash_rust::xxh3::xxh3_64;

use super::key::KeyMap;
use crate::error::{Error, Result};
use crate::parquet_io::{self, PartLimits, RollingWriter};

/// Folder of the persistent cache inside the work directory.
pub const CACHE_DIR: &str = "embed-cache";

/// More parts than this are merged into one when the cache is opened.
pub const COMPACT_PARTS: usize = 16;

/// Vectors per slab chunk, and per batch written by `flush`.
const CHUNK: usize = 4096;

/// Bytes of index and key per entry, on top of the vector (for the `max_bytes` bound).
const ENTRY_OVERHEAD: usize = 40;

fn schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::FixedSizeBinary(16), false),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// Counters of a [`DiskCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskCacheStats {
    /// Entries read from earlier runs when the cache was opened.
    pub loaded: u64,
    /// Entries added by this run.
    pub added: u64,
    /// Lookups answered by an entry of an earlier run.
    pub hits_from_earlier_runs: u64,
    /// Vectors not kept because the cache reached its size bound.
    pub not_kept: u64,
}

pub struct DiskCache {
    dir: PathBuf,
    dim: usize,
    max_entries: usize,
    index: KeyMap<usize>,
    keys: Vec<u128>,
    /// The vectors, `CHUNK` per allocation: one growing Vec doubled its capacity (copying gigabytes) as a
    /// million-vector cache filled, and held old and new copies at once.
    slab: Vec<Vec<f32>>,
    /// Entries below this slot came from disk; the others are this run's.
    loaded: usize,
    /// Entries from this slot on are not yet written.
    unflushed: usize,
    next_part: usize,
    stats: DiskCacheStats,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("entries", &self.keys.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl DiskCache {
    /// Opens (or creates) the cache of `provider` with vectors of `dim` floats under `work`.
    pub fn open(work: &Path, provider: &str, dim: usize, max_bytes: usize) -> Result<DiskCache> {
        let dir = work
            .join(CACHE_DIR)
            .join(format!("{:016x}", xxh3_64(provider.as_bytes())));
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        let meta = dir.join("provider.json");
        if !meta.is_file() {
            parquet_io::write_atomic(
                &meta,
                &serde_json::to_vec_pretty(
                    &serde_json::json!({"provider": provider, "dimension": dim}),
                )?,
            )?;
        }
        let max_entries = max_bytes / (dim * 4 + ENTRY_OVERHEAD);
        let mut cache = DiskCache {
            dir,
            dim,
            max_entries,
            index: KeyMap::default(),
            keys: Vec::new(),
            slab: Vec::new(),
            loaded: 0,
            unflushed: 0,
            next_part: 0,
            stats: DiskCacheStats::default(),
        };
        let parts = parquet_io::list_parts(&cache.dir)?;
        for p in &parts {
            cache.load_part(p)?;
        }
        cache.loaded = cache.keys.len();
        cache.unflushed = cache.keys.len();
        cache.stats.loaded = cache.loaded as u64;
        cache.next_part = parts
            .last()
            .and_then(|p| {
                p.file_stem()?
                    .to_str()?
                    .strip_prefix("part-")?
                    .parse::<usize>()
                    .ok()
            })
            .map_or(0, |i| i + 1);
        if parts.len() > COMPACT_PARTS {
            // Rewrite everything as one part, then drop the old ones: a kill in between leaves duplicates,
            // which loading skips.
            cache.unflushed = 0;
            cache.flush()?;
            for p in &parts {
                std::fs::remove_file(p).map_err(Error::io("remove", p))?;
            }
        }
        Ok(cache)
    }

    fn load_part(&mut self, path: &Path) -> Result<()> {
        let bad = |what: &str| {
            Error::target_err(
                path.display().to_string(),
                format!(
                    "embedding cache part {what}; delete {} to rebuild the cache",
                    path.display()
                ),
            )
        };
        let want = schema(self.dim);
        for batch in parquet_io::open_reader(path, 8192)? {
            let batch = batch.map_err(|e| bad(&format!("is unreadable ({e})")))?;
            if batch.schema().fields() != want.fields() {
                return Err(bad("has another schema or dimension"));
            }
            let keys = batch.column(0).as_fixed_size_binary();
            let vectors = batch.column(1).as_fixed_size_list();
            let values = vectors.values().as_primitive::<Float32Type>().values();
            for i in 0..batch.num_rows() {
                if self.keys.len() >= self.max_entries {
                    return Ok(());
                }
                let key = u128::from_le_bytes(
                    keys.value(i)
                        .try_into()
                        .map_err(|_| bad("has a key that is not 16 bytes"))?,
                );
                if self.index.contains_key(&key) {
                    continue;
                }
                let start = i * self.dim; // values of a FixedSizeListArray are sliced with it
                self.push(key, &values[start..start + self.dim]);
            }
        }
        Ok(())
    }

    fn push(&mut self, key: u128, vector: &[f32]) {
        if self.keys.len() % CHUNK == 0 {
            self.slab.push(Vec::with_capacity(CHUNK * self.dim));
        }
        self.index.insert(key, self.keys.len());
        self.keys.push(key);
        self.slab
            .last_mut()
            .expect("a chunk was pushed above")
            .extend_from_slice(vector);
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The slot of `key`, counting a hit on an earlier run's entry.
    pub fn slot(&mut self, key: u128) -> Option<usize> {
        let slot = self.index.get(&key).copied()?;
        if slot < self.loaded {
            self.stats.hits_from_earlier_runs += 1;
        }
        Some(slot)
    }

    pub fn vector(&self, slot: usize) -> &[f32] {
        let at = (slot % CHUNK) * self.dim;
        &self.slab[slot / CHUNK][at..at + self.dim]
    }

    /// Adds a vector for a key not present; false (nothing kept) when the cache is full.
    pub fn add(&mut self, key: u128, vector: &[f32]) -> bool {
        debug_assert_eq!(vector.len(), self.dim);
        if self.keys.len() >= self.max_entries {
            self.stats.not_kept += 1;
            return false;
        }
        if self.index.contains_key(&key) {
            return true;
        }
        self.push(key, vector);
        self.stats.added += 1;
        true
    }

    /// Writes the entries added since the last flush as one new part, `CHUNK` vectors per batch and row group (a
    /// copy of everything unflushed at once, and a writer buffering 65,536 vectors per row group, took gigabytes).
    pub fn flush(&mut self) -> Result<()> {
        let n = self.keys.len() - self.unflushed;
        if n == 0 {
            return Ok(());
        }
        let schema = schema(self.dim);
        let limits = PartLimits {
            max_file_bytes: u64::MAX,
            max_file_rows: u64::MAX,
            row_group_rows: CHUNK,
        };
        let mut w = RollingWriter::new(&self.dir, schema.clone(), limits, self.next_part)?;
        let mut from = self.unflushed;
        while from < self.keys.len() {
            let to = (from + CHUNK).min(self.keys.len());
            let keys = FixedSizeBinaryArray::try_from_iter(
                self.keys[from..to].iter().map(|k| k.to_le_bytes()),
            )?;
            let mut flat = Vec::with_capacity((to - from) * self.dim);
            for slot in from..to {
                flat.extend_from_slice(self.vector(slot));
            }
            let vectors = FixedSizeListArray::try_new(
                Arc::new(Field::new("item", DataType::Float32, false)),
                self.dim as i32,
                Arc::new(Float32Array::new(ScalarBuffer::from(flat), None)),
                None,
            )?;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(keys) as ArrayRef, Arc::new(vectors)],
            )?;
            w.write(&batch)?;
            from = to;
        }
        w.finish(false)?;
        self.next_part += 1;
        self.unflushed = self.keys.len();
        Ok(())
    }

    pub fn stats(&self) -> DiskCacheStats {
        self.stats
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(dim: usize, x: f32) -> Vec<f32> {
        (0..dim).map(|i| x + i as f32).collect()
    }

    #[test]
    fn survives_reopen_and_counts_earlier_hits() {
        let work = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(work.path(), "p1", 4, 1 << 20).unwrap();
        assert!(c.is_empty());
        assert!(c.add(1, &v(4, 1.0)));
        assert!(c.add(u128::MAX, &v(4, 2.0)));
        c.flush().unwrap();
        assert!(c.add(3, &v(4, 3.0)));
        c.flush().unwrap();
        c.flush().unwrap(); // nothing new: no empty part
        assert_eq!(parquet_io::list_parts(c.dir()).unwrap().len(), 2);
        // This run's own entries are not "from earlier runs".
        assert!(c.slot(1).is_some());
        assert_eq!(c.stats().hits_from_earlier_runs, 0);

        let mut c = DiskCache::open(work.path(), "p1", 4, 1 << 20).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats().loaded, 3);
        let s = c.slot(u128::MAX).unwrap();
        assert_eq!(c.vector(s), &v(4, 2.0)[..]);
        let s = c.slot(3).unwrap();
        assert_eq!(c.vector(s), &v(4, 3.0)[..]);
        assert!(c.slot(4).is_none());
        assert_eq!(c.stats().hits_from_earlier_runs, 2);
        // Another provider has its own, empty cache.
        let other = DiskCache::open(work.path(), "p2", 4, 1 << 20).unwrap();
        assert!(other.is_empty());
        // Same provider with another dimension is refused with a clear message.
        let e = DiskCache::open(work.path(), "p1", 5, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("another schema"), "{e}");
    }

    #[test]
    fn bounded_and_compacted() {
        let work = tempfile::tempdir().unwrap();
        // Room for 3 entries of 4 floats.
        let max = 3 * (4 * 4 + ENTRY_OVERHEAD);
        let mut c = DiskCache::open(work.path(), "p", 4, max).unwrap();
        for k in 0..5u128 {
            c.add(k, &v(4, k as f32));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats().not_kept, 2);
        c.flush().unwrap();

        let mut c = DiskCache::open(work.path(), "p", 4, 1 << 20).unwrap();
        for k in 10..10 + COMPACT_PARTS as u128 + 2 {
            c.add(k, &v(4, k as f32));
            c.flush().unwrap();
        }
        let dir = c.dir().to_path_buf();
        assert!(parquet_io::list_parts(&dir).unwrap().len() > COMPACT_PARTS);
        let mut c = DiskCache::open(work.path(), "p", 4, 1 << 20).unwrap();
        assert_eq!(parquet_io::list_parts(&dir).unwrap().len(), 1);
        assert_eq!(c.len(), 3 + COMPACT_PARTS + 2);
        let s = c.slot(12).unwrap();
        assert_eq!(c.vector(s), &v(4, 12.0)[..]);
        let c = DiskCache::open(work.path(), "p", 4, 1 << 20).unwrap();
        assert_eq!(c.len(), 3 + COMPACT_PARTS + 2);
    }
}
