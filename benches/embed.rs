//! Embedding throughput: the hashing provider alone, and the stage (dedup + cache + Arrow output) around it.
//!
//! `cargo bench --bench embed` (add `-- --quick` for a short run).

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use arrow::array::StringArray;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engram_migrate::embed::{Embedder, EmbeddingProvider, HashingProvider};

const BATCH: usize = 8192;
const DIM: usize = 768;

const WORDS: &[&str] = &[
    "the", "user", "order", "config", "file", "parse", "memory", "graph", "edge", "node", "customer", "invoice",
    "payment", "shipped", "pending", "database", "table", "record", "migrate", "search", "vector", "quick", "brown",
    "fox", "jumps", "over", "lazy", "dog", "report", "quarterly", "revenue", "growth", "team", "meeting", "notes",
    "deadline", "project", "release", "version", "bug", "fixed", "issue", "review", "merge", "request", "server",
    "latency", "error", "timeout", "retry", "cache", "index", "query", "planner", "city", "paris", "tokyo", "berlin",
];

/// Minimal LCG (Knuth's MMIX constants): deterministic across runs and platforms.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` distinct sentences of 8 to 15 words.
fn sentences(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Lcg(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = 8 + rng.below(8);
        let mut s = String::new();
        for i in 0..len {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[rng.below(WORDS.len())]);
        }
        if seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

fn bench_hashing(c: &mut Criterion) {
    let texts = sentences(BATCH, 42);
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

fn bench_embedder(c: &mut Criterion) {
    // 4096 distinct texts, each twice, in a shuffled order: half of the rows are duplicates within the batch.
    let distinct = sentences(BATCH / 2, 7);
    let mut rows: Vec<&str> = distinct.iter().chain(distinct.iter()).map(String::as_str).collect();
    let mut rng = Lcg(99);
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i + 1));
    }
    let column = StringArray::from(rows);
    let provider: Arc<dyn EmbeddingProvider> = Arc::new(HashingProvider::new());

    let mut group = c.benchmark_group("embedder");
    group.throughput(Throughput::Elements(BATCH as u64));
    // A fresh Embedder (empty cache) per iteration, so every iteration embeds the 4096 distinct texts once and
    // serves the other 4096 rows from the within-batch dedup, then builds the Arrow column.
    group.bench_function("cached_50pct_dupes", |b| {
        b.iter_batched(
            || Embedder::new(provider.clone(), 100_000).unwrap(),
            |mut embedder| {
                let out = embedder.embed_column(black_box(&column)).unwrap();
                debug_assert_eq!(embedder.stats().cache_hits, (BATCH / 2) as u64);
                (out, embedder)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_hashing, bench_embedder);
criterion_main!(benches);
