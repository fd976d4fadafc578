//! The embedding stage: a `StringArray` of texts in, a `FixedSizeList<Float32, dim>` column out, `dim` the provider's own.
//!
//! Around a provider it keeps a bounded cache keyed by content hash (XXH3-128 of the text's UTF-8 bytes), shared
//! by all the batches one `Embedder` sees, and deduplicates texts within a batch, so each distinct text is embedded
//! at most once while it stays in the cache. All misses of a batch go to the provider in one call (one slice), so
//! a parallel or remote provider gets the whole batch at once.
//!
//! Cache: vectors live in one flat `Vec<f32>` slab (native dimension per entry) indexed by a
//! `HashMap<u128, slot>`; when `capacity` entries are held, the oldest entry is overwritten (FIFO, a ring over the
//! slots). Memory when full is about `capacity × native_dim × 4` bytes plus the index: ~100 MB for the default
//! [`DEFAULT_CACHE_CAPACITY`] (32 768) entries of 768 floats. The slab grows only as entries are added.
//! Capacity 0 disables the cache (texts are still deduplicated within a batch). A 128-bit content-hash collision
//! would return another text's vector; at 2^-128 per pair this is ignored.
//!
//! With a persistent cache ([`DiskCache`], `<work>/embed-cache`) attached, it is looked up after the FIFO cache,
//! and every new vector goes there (the FIFO only keeps what the persistent cache has no room for), so a re-run
//! over the same input embeds nothing.
//!
//! Every vector a provider returns is checked before it is used or cached (see [`check_vectors`]): finite, not
//! zero, unit norm within 1e-3. A provider that breaks this (an HTTP server sending garbage, a broken model) stops
//! the run with an error naming it, instead of writing vectors that Engram would mis-rank.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use arrow::array::{Array, FixedSizeListArray, Float32Array, StringArray};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::DataType;
use xxhash_rust::xxh3::xxh3_128;

use super::cache::DiskCache;
use super::key::KeyMap;
use super::EmbeddingProvider;
use crate::error::{Error, Result};
use crate::schema::embedding_type;

/// Default number of cached vectors.
pub const DEFAULT_CACHE_CAPACITY: usize = 32_768;

/// Counters of an `Embedder` since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EmbedStats {
    /// Rows seen (NULLs included).
    pub texts: u64,
    /// Rows served without calling the provider: found in the cache, or a duplicate of an earlier row of the same
    /// batch.
    pub cache_hits: u64,
    /// Distinct texts sent to the provider.
    pub embedded: u64,
    /// Of the cache hits, those answered by the persistent cache with a vector of an earlier run.
    pub hits_from_earlier_runs: u64,
    /// Rows that already had a vector (from the source, e.g. pgvector) and were not embedded; not in `texts`.
    pub existing_vectors: u64,
}

impl EmbedStats {
    /// `cache_hits / texts`, 0 when no text was seen.
    pub fn hit_rate(&self) -> f64 {
        if self.texts == 0 {
            0.0
        } else {
            self.cache_hits as f64 / self.texts as f64
        }
    }
}

/// Where a row's vector comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A cache slot.
    Cached(usize),
    /// A slot of the persistent cache.
    Disk(usize),
    /// An index into this batch's distinct misses.
    Miss(usize),
}

/// Bounded FIFO cache of vectors of `dim` floats.
struct VectorCache {
    capacity: usize,
    dim: usize,
    /// Content hash -> slot.
    index: KeyMap<usize>,
    /// Slot -> content hash (to unindex an evicted slot).
    keys: Vec<u128>,
    /// Slot `s` is `slab[s * dim..(s + 1) * dim]`.
    slab: Vec<f32>,
    /// Next slot to overwrite once full (the oldest).
    oldest: usize,
}

impl VectorCache {
    fn new(capacity: usize, dim: usize) -> Self {
        VectorCache {
            capacity,
            dim,
            index: KeyMap::default(),
            keys: Vec::new(),
            slab: Vec::new(),
            oldest: 0,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, key: u128) -> Option<usize> {
        self.index.get(&key).copied()
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.slab[slot * self.dim..(slot + 1) * self.dim]
    }

    /// Insert a key that is not present, evicting the oldest entry if full.
    fn insert(&mut self, key: u128, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        debug_assert!(!self.index.contains_key(&key));
        if self.capacity == 0 {
            return;
        }
        let slot = if self.keys.len() < self.capacity {
            self.keys.push(key);
            self.slab.extend_from_slice(vector);
            self.keys.len() - 1
        } else {
            let slot = self.oldest;
            self.oldest = (slot + 1) % self.capacity;
            self.index.remove(&self.keys[slot]);
            self.keys[slot] = key;
            self.slab[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(vector);
            slot
        };
        self.index.insert(key, slot);
    }
}

/// Embeds text columns through a provider, with deduplication and a bounded cache. See the module docs.
pub struct Embedder {
    provider: Arc<dyn EmbeddingProvider>,
    dim: usize,
    cache: VectorCache,
    stats: EmbedStats,
    /// Provider output of the misses, kept across calls so steady-state batches do not fault in fresh pages.
    scratch: Vec<f32>,
    disk: Option<DiskCache>,
    /// Check the provider's vectors (off only in tests of raw pass-through).
    check: bool,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("provider", &self.provider.name())
            .field("native_dimension", &self.dim)
            .field("cache_capacity", &self.cache.capacity)
            .field("cached", &self.cache.len())
            .field("stats", &self.stats)
            .field("disk", &self.disk)
            .finish()
    }
}

impl Embedder {
    /// `cache_capacity` is a number of vectors (see [`DEFAULT_CACHE_CAPACITY`]); 0 disables the cache.
    /// Fails if the provider's dimension is 0. What dimension a target takes is the target's rule (the Engram
    /// sink pads to 768 and refuses more), checked before a load.
    pub fn new(provider: Arc<dyn EmbeddingProvider>, cache_capacity: usize) -> Result<Self> {
        let dim = provider.dimension();
        if dim == 0 {
            return Err(Error::usage(format!(
                "embedding provider {} has dimension 0",
                provider.name()
            )));
        }
        Ok(Embedder {
            provider,
            dim,
            cache: VectorCache::new(cache_capacity, dim),
            stats: EmbedStats::default(),
            scratch: Vec::new(),
            disk: None,
            check: true,
        })
    }

    /// Attach a persistent cache; its dimension must be the provider's.
    pub fn with_disk_cache(mut self, disk: DiskCache) -> Result<Self> {
        if disk.dimension() != self.dim {
            return Err(Error::Internal(format!(
                "persistent cache of dimension {} for provider {} of dimension {}",
                disk.dimension(),
                self.provider.name(),
                self.dim
            )));
        }
        self.disk = Some(disk);
        Ok(self)
    }

    /// Write the persistent cache's new entries (if there is one). Called after each committed bundle part.
    pub fn flush(&mut self) -> Result<()> {
        match &mut self.disk {
            Some(d) => d.flush(),
            None => Ok(()),
        }
    }

    /// The persistent cache, if one is attached.
    pub fn disk_cache(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// Count rows whose existing vector was used instead of embedding them.
    pub fn count_existing(&mut self, rows: u64) {
        self.stats.existing_vectors += rows;
    }

    #[cfg(test)]
    fn unchecked(mut self) -> Self {
        self.check = false;
        self
    }

    /// Embed every row of `texts`. The result has exactly `texts.len()` rows, none NULL, of type
    /// [`embedding_type`] of the provider's dimension. A NULL text is embedded as the empty string: callers that
    /// want a fallback (e.g. the record's JSON content) substitute it before calling.
    ///
    /// On a provider error nothing is cached and the stats are unchanged.
    pub fn embed_column(&mut self, texts: &StringArray) -> Result<FixedSizeListArray> {
        let n = texts.len();
        let dim = self.dim;

        // 1. Resolve every row to a cache slot or a distinct miss. Nothing is copied yet and the cache is not
        //    modified before step 3, so the slots stay valid.
        let mut sources: Vec<Source> = Vec::with_capacity(n);
        let mut batch: KeyMap<usize> = KeyMap::default();
        let mut miss_texts: Vec<&str> = Vec::new();
        let mut miss_keys: Vec<u128> = Vec::new();
        let mut hits = 0u64;
        for text in texts.iter() {
            let text = text.unwrap_or("");
            let key = xxh3_128(text.as_bytes());
            if let Some(slot) = self.cache.slot(key) {
                hits += 1;
                sources.push(Source::Cached(slot));
                continue;
            }
            if let Some(slot) = self.disk.as_mut().and_then(|d| d.slot(key)) {
                hits += 1;
                sources.push(Source::Disk(slot));
                continue;
            }
            match batch.entry(key) {
                Entry::Occupied(e) => {
                    hits += 1;
                    sources.push(Source::Miss(*e.get()));
                }
                Entry::Vacant(e) => {
                    let j = miss_texts.len();
                    e.insert(j);
                    sources.push(Source::Miss(j));
                    miss_texts.push(text);
                    miss_keys.push(key);
                }
            }
        }

        // 2. One provider call for all distinct misses.
        let vectors = &mut self.scratch;
        vectors.clear();
        if !miss_texts.is_empty() {
            vectors.resize(miss_texts.len() * dim, 0.0);
            self.provider.embed(&miss_texts, vectors)?;
            if self.check {
                check_vectors(&self.provider.name(), dim, &miss_texts, vectors)?;
            }
        }

        // 3. Assemble the output sequentially (no zero-fill of the whole buffer first), then cache the misses.
        let mut values: Vec<f32> = Vec::with_capacity(n * dim);
        for source in &sources {
            let v = match *source {
                Source::Cached(slot) => self.cache.vector(slot),
                Source::Disk(slot) => {
                    self.disk.as_ref().map(|d| d.vector(slot)).ok_or_else(|| {
                        Error::Internal("persistent cache slot without a cache".into())
                    })?
                }
                Source::Miss(j) => &vectors[j * dim..(j + 1) * dim],
            };
            values.extend_from_slice(v);
        }
        debug_assert_eq!(values.len(), n * dim);
        // New vectors go to the persistent cache; the FIFO keeps only those it has no room for. Entries that the
        // same batch would evict from the FIFO again are not inserted at all.
        let mut overflow: Vec<usize> = Vec::new();
        for (j, &key) in miss_keys.iter().enumerate() {
            let kept = match &mut self.disk {
                Some(d) => d.add(key, &vectors[j * dim..(j + 1) * dim]),
                None => false,
            };
            if !kept {
                overflow.push(j);
            }
        }
        let skip = overflow.len().saturating_sub(self.cache.capacity);
        for &j in overflow.iter().skip(skip) {
            self.cache
                .insert(miss_keys[j], &vectors[j * dim..(j + 1) * dim]);
        }

        self.stats.texts += n as u64;
        self.stats.cache_hits += hits;
        self.stats.embedded += miss_texts.len() as u64;
        self.stats.hits_from_earlier_runs = self
            .disk
            .as_ref()
            .map_or(0, |d| d.stats().hits_from_earlier_runs);

        let DataType::FixedSizeList(field, size) = embedding_type(dim) else {
            return Err(Error::Internal(
                "schema::embedding_type() is not a FixedSizeList".into(),
            ));
        };
        let values = Float32Array::new(ScalarBuffer::from(values), None);
        Ok(FixedSizeListArray::try_new(
            field,
            size,
            Arc::new(values),
            None,
        )?)
    }

    pub fn stats(&self) -> EmbedStats {
        self.stats
    }

    pub fn provider_model(&self) -> Option<String> {
        self.provider.model()
    }

    pub fn provider_name(&self) -> String {
        self.provider.name()
    }

    /// The provider's own dimension, before zero-padding to 768.
    /// The provider's preferred batch size (see `EmbeddingProvider::preferred_batch_rows`).
    pub fn preferred_batch_rows(&self) -> Option<usize> {
        self.provider.preferred_batch_rows()
    }

    pub fn native_dimension(&self) -> usize {
        self.dim
    }

    /// Number of vectors currently cached (at most `cache_capacity`).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity
    }
}

/// Greatest distance of a vector's norm from 1 that is accepted (as the bundle's `embedding_quality` check).
pub const NORM_TOLERANCE: f32 = 1e-3;

/// Checks a provider's output: `texts.len()` vectors of `dim` floats, each finite, not zero, of unit norm within
/// [`NORM_TOLERANCE`]. The error names the provider, the row and the start of its text.
pub fn check_vectors(provider: &str, dim: usize, texts: &[&str], vectors: &[f32]) -> Result<()> {
    if vectors.len() != texts.len() * dim {
        return Err(Error::Internal(format!(
            "embedding provider {provider} returned {} floats for {} texts of dimension {dim}",
            vectors.len(),
            texts.len()
        )));
    }
    for (i, (v, text)) in vectors.chunks_exact(dim).zip(texts).enumerate() {
        let sq: f32 = v.iter().map(|x| x * x).sum();
        let problem = if v.iter().any(|x| !x.is_finite()) {
            Some("a non-finite value".to_string())
        } else if sq == 0.0 {
            Some("the zero vector".to_string())
        } else if (sq.sqrt() - 1.0).abs() > NORM_TOLERANCE {
            Some(format!("norm {} instead of 1", sq.sqrt()))
        } else {
            None
        };
        if let Some(p) = problem {
            let head: String = text.chars().take(40).collect();
            return Err(Error::Internal(format!(
                "embedding provider {provider} returned {p} for text {i} of its batch ({head:?}); \
                 the provider is broken or misconfigured"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float32Type;

    use super::*;
    use crate::embed::HashingProvider;

    /// Dimension-4 provider: vector = [len, 1, 2, 3] (not normalised, on purpose, to check values pass through).
    /// Records every call's texts.
    #[derive(Default)]
    struct Tiny {
        calls: Mutex<Vec<Vec<String>>>,
        embedded: AtomicUsize,
    }

    impl EmbeddingProvider for Tiny {
        fn name(&self) -> String {
            "tiny".into()
        }
        fn dimension(&self) -> usize {
            4
        }
        fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
            assert_eq!(out.len(), texts.len() * 4);
            self.calls
                .lock()
                .unwrap()
                .push(texts.iter().map(|s| s.to_string()).collect());
            self.embedded.fetch_add(texts.len(), Ordering::SeqCst);
            for (t, row) in texts.iter().zip(out.chunks_exact_mut(4)) {
                row.copy_from_slice(&[t.len() as f32, 1.0, 2.0, 3.0]);
            }
            Ok(())
        }
    }

    struct Failing;
    impl EmbeddingProvider for Failing {
        fn name(&self) -> String {
            "failing".into()
        }
        fn dimension(&self) -> usize {
            8
        }
        fn embed(&self, _: &[&str], _: &mut [f32]) -> Result<()> {
            Err(Error::Internal("down".into()))
        }
    }

    struct Dim(usize);
    impl EmbeddingProvider for Dim {
        fn name(&self) -> String {
            format!("dim{}", self.0)
        }
        fn dimension(&self) -> usize {
            self.0
        }
        fn embed(&self, _: &[&str], _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
    }

    fn rows(a: &FixedSizeListArray) -> Vec<Vec<f32>> {
        let values = a.values().as_primitive::<Float32Type>().values();
        values
            .chunks_exact(a.value_length() as usize)
            .map(|r| r.to_vec())
            .collect()
    }

    fn column(texts: &[Option<&str>]) -> StringArray {
        StringArray::from(texts.to_vec())
    }

    fn hashing(capacity: usize) -> Embedder {
        Embedder::new(Arc::new(HashingProvider::new()), capacity).unwrap()
    }

    #[test]
    fn output_shape_and_type() {
        let mut e = hashing(DEFAULT_CACHE_CAPACITY);
        assert_eq!(e.provider_name(), "hashing-v1");
        assert_eq!(e.native_dimension(), 768);
        let out = e
            .embed_column(&column(&[
                Some("a b"),
                None,
                Some(""),
                Some("Ünïcödé 日本語"),
            ]))
            .unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out.null_count(), 0);
        assert_eq!(out.data_type(), &embedding_type(768));
        assert_eq!(out.value_length(), 768);
        let r = rows(&out);
        // NULL is embedded as "".
        assert_eq!(r[1], r[2]);
        for v in &r {
            let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let empty = e.embed_column(&column(&[])).unwrap();
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.data_type(), &embedding_type(768));
    }

    #[test]
    fn matches_provider_and_is_independent_of_batching() {
        let texts: Vec<String> = (0..300)
            .map(|i| format!("text number {} about {}", i % 120, i % 7))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut direct = vec![0.0; refs.len() * 768];
        HashingProvider::new().embed(&refs, &mut direct).unwrap();

        let whole = rows(
            &hashing(1000)
                .embed_column(&StringArray::from(refs.clone()))
                .unwrap(),
        );
        let mut small = hashing(50);
        let mut pieces = Vec::new();
        for chunk in refs.chunks(37) {
            pieces.extend(rows(
                &small
                    .embed_column(&StringArray::from(chunk.to_vec()))
                    .unwrap(),
            ));
        }
        for (i, d) in direct.chunks_exact(768).enumerate() {
            assert_eq!(whole[i], d, "row {i}");
            assert_eq!(pieces[i], d, "row {i}");
        }
    }

    #[test]
    fn cache_hits_and_dedup() {
        let tiny = Arc::new(Tiny::default());
        let mut e = Embedder::new(tiny.clone(), 100).unwrap().unchecked();
        let batch = column(&[
            Some("a"),
            Some("b"),
            Some("a"),
            None,
            Some(""),
            Some("b"),
            Some("c"),
        ]);
        e.embed_column(&batch).unwrap();
        let s = e.stats();
        assert_eq!(
            s,
            EmbedStats {
                texts: 7,
                cache_hits: 3,
                embedded: 4,
                ..Default::default()
            }
        );
        // One provider call with the distinct texts, in first-seen order.
        assert_eq!(*tiny.calls.lock().unwrap(), vec![vec!["a", "b", "", "c"]]);

        let again = e.embed_column(&batch).unwrap();
        let s = e.stats();
        assert_eq!(
            s,
            EmbedStats {
                texts: 14,
                cache_hits: 10,
                embedded: 4,
                ..Default::default()
            }
        );
        assert_eq!(
            tiny.calls.lock().unwrap().len(),
            1,
            "all hits: no provider call"
        );
        assert_eq!(tiny.embedded.load(Ordering::SeqCst), 4);
        assert!((s.hit_rate() - 10.0 / 14.0).abs() < 1e-12);
        assert_eq!(rows(&again)[0][0], 1.0);
        assert_eq!(rows(&again)[6][0], 1.0);
        assert_eq!(EmbedStats::default().hit_rate(), 0.0);
    }

    #[test]
    fn a_small_dimension_is_kept_as_it_is() {
        let mut e = Embedder::new(Arc::new(Tiny::default()), 10)
            .unwrap()
            .unchecked();
        assert_eq!(e.native_dimension(), 4);
        let out = e
            .embed_column(&column(&[Some("hello"), Some("hi"), Some("hello")]))
            .unwrap();
        // The provider's own dimension: no padding in the stage (a target pads if it needs to).
        assert_eq!(out.value_length(), 4);
        let r = rows(&out);
        assert_eq!(r[0], [5.0, 1.0, 2.0, 3.0]);
        assert_eq!(r[1], [2.0, 1.0, 2.0, 3.0]);
        assert_eq!(r[2], r[0]);
        let r = rows(&e.embed_column(&column(&[Some("hi")])).unwrap());
        assert_eq!(r[0], [2.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn eviction_keeps_cache_bounded_fifo() {
        let tiny = Arc::new(Tiny::default());
        let mut e = Embedder::new(tiny.clone(), 3).unwrap().unchecked();
        for t in ["t1", "t2", "t3", "t4", "t5"] {
            e.embed_column(&column(&[Some(t)])).unwrap();
            assert!(e.cache_len() <= 3);
        }
        assert_eq!(e.cache_len(), 3);
        assert_eq!(e.stats().embedded, 5);
        // t3..t5 are cached, t1 and t2 were evicted (oldest first).
        e.embed_column(&column(&[Some("t3"), Some("t4"), Some("t5")]))
            .unwrap();
        assert_eq!(e.stats().embedded, 5);
        e.embed_column(&column(&[Some("t1")])).unwrap();
        assert_eq!(e.stats().embedded, 6);
        assert_eq!(e.cache_len(), 3);

        // A batch larger than the cache: still correct output, cache bounded.
        let many: Vec<String> = (0..50).map(|i| "x".repeat(i + 1)).collect();
        let out = e
            .embed_column(&StringArray::from_iter_values(&many))
            .unwrap();
        assert_eq!(out.len(), 50);
        for (i, r) in rows(&out).iter().enumerate() {
            assert_eq!(r[0], (i + 1) as f32);
        }
        assert_eq!(e.cache_len(), 3);
        let before = e.stats().embedded;
        e.embed_column(&StringArray::from_iter_values(&many[47..]))
            .unwrap();
        assert_eq!(
            e.stats().embedded,
            before,
            "the last entries of the batch are the ones kept"
        );

        // Capacity 0: no cache, but dedup within a batch still applies.
        let mut none = Embedder::new(Arc::new(Tiny::default()), 0)
            .unwrap()
            .unchecked();
        none.embed_column(&column(&[Some("a"), Some("a")])).unwrap();
        none.embed_column(&column(&[Some("a")])).unwrap();
        assert_eq!(
            none.stats(),
            EmbedStats {
                texts: 3,
                cache_hits: 1,
                embedded: 2,
                ..Default::default()
            }
        );
        assert_eq!(none.cache_len(), 0);
    }

    #[test]
    fn rejects_bad_dimensions_and_propagates_errors() {
        assert!(Embedder::new(Arc::new(Dim(0)), 10).is_err());
        // Any positive dimension: 1536 is a vector database's business, Engram's limit is its sink's.
        assert!(Embedder::new(Arc::new(Dim(1536)), 10).is_ok());
        assert!(Embedder::new(Arc::new(Dim(768)), 10).is_ok());

        let mut e = Embedder::new(Arc::new(Failing), 10).unwrap();
        assert!(e.embed_column(&column(&[Some("x")])).is_err());
        assert_eq!(e.stats(), EmbedStats::default());
        assert_eq!(e.cache_len(), 0);
    }

    #[test]
    fn persistent_cache_serves_a_second_run() {
        let work = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..200).map(|i| format!("text {}", i % 150)).collect();
        let col = StringArray::from_iter_values(&texts);
        let open = |tiny: Arc<Tiny>| {
            let disk = DiskCache::open(work.path(), "tiny", 4, 1 << 20).unwrap();
            Embedder::new(tiny, 8)
                .unwrap()
                .unchecked()
                .with_disk_cache(disk)
                .unwrap()
        };
        let first = Arc::new(Tiny::default());
        let mut e = open(first.clone());
        let a = rows(&e.embed_column(&col.slice(0, 120)).unwrap());
        let b = rows(&e.embed_column(&col.slice(120, 80)).unwrap());
        e.flush().unwrap();
        assert_eq!(first.embedded.load(Ordering::SeqCst), 150);
        // All 150 distinct vectors went to the persistent cache, none to the FIFO.
        assert_eq!(e.disk_cache().unwrap().len(), 150);
        assert_eq!(e.cache_len(), 0);
        assert_eq!(e.stats().hits_from_earlier_runs, 0);

        let second = Arc::new(Tiny::default());
        let mut e = open(second.clone());
        let a2 = rows(&e.embed_column(&col.slice(0, 120)).unwrap());
        let b2 = rows(&e.embed_column(&col.slice(120, 80)).unwrap());
        assert_eq!((a, b), (a2, b2));
        assert_eq!(
            second.embedded.load(Ordering::SeqCst),
            0,
            "nothing embedded again"
        );
        let s = e.stats();
        assert_eq!((s.texts, s.cache_hits, s.embedded), (200, 200, 0));
        assert_eq!(s.hits_from_earlier_runs, 200);
        assert_eq!(s.hit_rate(), 1.0);
        // A cache of another dimension is refused.
        let other = DiskCache::open(work.path(), "other", 5, 1 << 20).unwrap();
        assert!(Embedder::new(Arc::new(Tiny::default()), 8)
            .unwrap()
            .with_disk_cache(other)
            .is_err());
    }

    #[test]
    fn provider_output_is_checked() {
        // Tiny's vectors are not unit norm: with the check on (the default) they are refused, naming the provider.
        let mut e = Embedder::new(Arc::new(Tiny::default()), 10).unwrap();
        let err = e.embed_column(&column(&[Some("abc")])).unwrap_err();
        assert!(
            err.to_string().contains("tiny") && err.to_string().contains("norm"),
            "{err}"
        );
        assert_eq!(e.stats(), EmbedStats::default());
        let ok = [0.6f32, 0.8, 0.0];
        check_vectors("p", 3, &["a"], &ok).unwrap();
        for bad in [[0.0f32, 0.0, 0.0], [f32::NAN, 0.0, 1.0], [0.6, 0.8, 0.1]] {
            assert!(check_vectors("p", 3, &["a"], &bad).is_err(), "{bad:?}");
        }
        assert!(check_vectors("p", 3, &["a", "b"], &ok).is_err());
    }

    #[test]
    fn sliced_input() {
        let mut e = hashing(10);
        let full = column(&[Some("zero"), Some("one"), Some("two"), Some("three")]);
        let sliced = full.slice(1, 2);
        let a = rows(&e.embed_column(&sliced).unwrap());
        let b = rows(
            &hashing(10)
                .embed_column(&column(&[Some("one"), Some("two")]))
                .unwrap(),
        );
        assert_eq!(a, b);
    }
}
