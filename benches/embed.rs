//! Embedding throughput: the hashing provider alone, and the stage (dedup + cache + Arrow output) around it.
//!
//! `cargo bench --bench embed` (add `-- --quick` for a short run).

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use arrow::array::StringArray;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engram_migrate::embed::stage::DEFAULT_CACHE_CAPACITY;
use engram_migrate::embed::{Embedder, EmbeddingProvider, HashingProvider};

const BATCH: usize = 8192;
const DIM: usize = 768;

const WORDS: &str = "the user order config file parse memory graph edge node customer invoice payment shipped \
    pending database table record migrate search vector quick brown fox jumps over lazy dog report quarterly \
    revenue growth team meeting notes deadline project release version bug fixed issue review merge request \
    server latency error timeout retry cache index query planner city paris tokyo berlin";

/// Minimal LCG (Knuth's MMIX constants): deterministic across runs and platforms.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The sentence number `id`: 8 to 15 words, a pure function of `id`.
fn sentence(words: &[&str], id: u64) -> String {
    let mut rng = Lcg(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF);
    rng.next();
    let len = 8 + rng.below(8);
    let mut s = String::new();
    for i in 0..len {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(words[rng.below(words.len())]);
    }
    s
}

/// `n` distinct sentences.
fn distinct_sentences(words: &[&str], n: usize) -> Vec<String> {
    let mut seen = HashSet::with_capacity(n);
    (0u64..)
        .map(|id| sentence(words, id))
        .filter(|s| seen.insert(s.clone()))
        .take(n)
        .collect()
}

fn bench_hashing(c: &mut Criterion) {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let texts = distinct_sentences(&words, BATCH);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let provider = HashingProvider::new();
    let mut out = vec![0.0f32; BATCH * DIM];

    let mut group = c.benchmark_group("hashing");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("embed_batch_8192", |b| {
        b.iter(|| {
            provider.embed(black_box(&refs), &mut out).unwrap();
            black_box(&out);
        })
    });
    group.finish();
}

/// Steady state of the pipeline: one long-lived `Embedder` (default cache capacity) sees batches of 8192 rows in
/// which half the rows repeat texts of the previous batch (cache hits) and half are new (embedded), in a shuffled
/// order. Each iteration's batch is built outside the timing; the timing covers hashing the rows, cache lookups,
/// embedding the 4096 misses, filling the cache and building the Arrow column.
fn bench_embedder(c: &mut Criterion) {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let provider: Arc<dyn EmbeddingProvider> = Arc::new(HashingProvider::new());
    let mut embedder = Embedder::new(provider, DEFAULT_CACHE_CAPACITY).unwrap();

    let half = BATCH / 2;
    let mut next_id = 0u64;
    let mut previous: Vec<String> = (0..half).map(|_| fresh(&words, &mut next_id)).collect();
    embedder
        .embed_column(&StringArray::from_iter_values(&previous))
        .unwrap();
    let mut shuffle = Lcg(99);

    let mut group = c.benchmark_group("embedder");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("cached_50pct_dupes", |b| {
        b.iter_batched(
            || {
                let new: Vec<String> = (0..half).map(|_| fresh(&words, &mut next_id)).collect();
                let mut rows: Vec<&str> = previous
                    .iter()
                    .chain(new.iter())
                    .map(String::as_str)
                    .collect();
                for i in (1..rows.len()).rev() {
                    rows.swap(i, shuffle.below(i + 1));
                }
                let column = StringArray::from(rows);
                previous = new;
                column
            },
            |column| embedder.embed_column(black_box(&column)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let s = embedder.stats();
    eprintln!(
        "embedder stats: {} texts, {} hits ({:.1}%), {} embedded, {} cached",
        s.texts,
        s.cache_hits,
        100.0 * s.hit_rate(),
        s.embedded,
        embedder.cache_len()
    );
}

/// A new text, distinct from all earlier ones: a sentence plus its serial number.
fn fresh(words: &[&str], next_id: &mut u64) -> String {
    let id = *next_id;
    *next_id += 1;
    format!("{} {id}", sentence(words, id))
}

criterion_group!(benches, bench_hashing, bench_embedder);
criterion_main!(benches);
