//! Snapshot writing: a SQLite table of mixed types staged into Parquet parts (read, convert, encode, checksum,
//! commit). `cargo bench --bench snapshot` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engram_migrate::parquet_io::PartLimits;
use engram_migrate::snapshot::{self, SnapshotOptions};
use engram_migrate::source::sqlite::SqliteSource;

const ROWS: u64 = 100_000;

fn make_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount REAL, active BOOLEAN, created_at DATETIME, profile JSON, note TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO t SELECT i, 'customer ' || (i % 997), i * 0.25, i % 2,
            printf('2024-%02d-%02d %02d:%02d:00', 1 + i % 12, 1 + i % 28, i % 24, i % 60),
            '{{\"tier\": ' || (i % 5) || '}}', CASE WHEN i % 3 = 0 THEN NULL ELSE 'note number ' || i END FROM n;"
    ))
    .unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.sqlite");
    make_db(&db);
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("sqlite_100k_mixed_rows", |b| {
        b.iter(|| {
            let out = dir.path().join("snap");
            let _ = std::fs::remove_dir_all(&out);
            let mut src = SqliteSource::open(&db).unwrap();
            let m = snapshot::take(
                &mut src,
                &out,
                &SnapshotOptions {
                    batch_size: 8192,
                    limits: PartLimits::default(),
                    workers: 2,
                    include: vec![],
                    exclude: vec![],
                    reuse_stale: false,
                },
            )
            .unwrap()
            .manifest;
            black_box(m.total_rows())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
