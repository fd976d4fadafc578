//! The live Engram sink: client-side cost per memory (request body for HTTP, request message + protobuf encoding
//! for gRPC), then a load of ENGRAM_BENCH_MEMORIES (default 100,000) memories into the in-process stand-in over
//! both protocols, printing memories/s side by side.
//!
//! `cargo bench --bench engram_sink` (release), or `scripts/bench-engram.sh` (see there for the dev profile).
//! The stand-in checks every write against every memory of its space (Engram's duplicate filter, exact): its
//! cost grows with the space size, so the load spreads over spaces of ENGRAM_BENCH_PER_SPACE (default 100).

#[path = "../tests/it/engram_standin.rs"]
mod engram_standin;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field};
use criterion::{criterion_group, Criterion, Throughput};
use engram_migrate::bundle::{BundleManifest, EmbeddingInfo, PartSet, SpaceEntry};
use engram_migrate::parquet_io::{PartLimits, RollingWriter};
use engram_migrate::sink::engram::{self, EngramSink, EngramTarget, LiveOptions, Memory};
use engram_migrate::sink::{load, DeliverLimits, Sink};
use engram_migrate::workdir::RunKey;
use prost::Message;

fn unit_vector(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..768)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn sample_memory(i: u64) -> Memory {
    Memory {
        id: format!("bench_{i}"),
        content: format!(
            "{{\"id\":{i},\"path\":\"src/module_{i}.rs\",\"name\":\"function_{i}\",\"kind\":\"fn\",\"lines\":42}}"
        ),
        embedding: unit_vector(i),
        confidence: 0.7,
        created_at: Some(1_700_000_000_000_000),
        memory_type: "semantic".into(),
    }
}

fn per_memory(c: &mut Criterion) {
    let m = sample_memory(7);
    let mut g = c.benchmark_group("engram_client_per_memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("http_json_body", |b| {
        b.iter(|| black_box(engram::http::remember_body(black_box(&m)).unwrap()))
    });
    g.bench_function("grpc_request_encode", |b| {
        b.iter(|| {
            black_box(engram::grpc::remember_request("space_a", black_box(&m)).encode_to_vec())
        })
    });
    g.finish();
}

/// A bundle of `n` random-vector memories in spaces of `per_space`.
fn write_bundle(dir: &Path, n: u64, per_space: u64) -> PathBuf {
    let schema = engram_migrate::schema::memory_schema(768);
    let mut entries = vec![];
    let spaces = n.div_ceil(per_space);
    for s in 0..spaces {
        let space = format!("bench_{s:05}");
        let ids: Vec<u64> = (s * per_space..((s + 1) * per_space).min(n)).collect();
        let k = ids.len();
        let mems: Vec<Memory> = ids.iter().map(|&i| sample_memory(i)).collect();
        let strs = |f: &dyn Fn(&Memory) -> String| -> ArrayRef {
            Arc::new(StringArray::from(mems.iter().map(f).collect::<Vec<_>>()))
        };
        let values: Vec<f32> = mems.iter().flat_map(|m| m.embedding.clone()).collect();
        let emb = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            768,
            Arc::new(Float32Array::from(values)),
            None,
        )
        .unwrap();
        let f32s = |v: f32| -> ArrayRef { Arc::new(Float32Array::from(vec![v; k])) };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                strs(&|_| space.clone()),
                strs(&|m| m.id.clone()),
                strs(&|m| m.content.clone()),
                Arc::new(StringArray::from(vec![None::<&str>; k])),
                Arc::new(emb),
                f32s(0.7),
                f32s(0.5),
                f32s(0.01),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000i64); k])
                        .with_timezone("UTC"),
                ),
                strs(&|_| "semantic".into()),
                strs(&|_| "bench".into()),
                strs(&|_| "bench".into()),
                strs(&|m| m.id.clone()),
            ],
        )
        .unwrap();
        let limits = PartLimits {
            max_file_bytes: u64::MAX,
            max_file_rows: u64::MAX,
            row_group_rows: 8192,
        };
        let mut w = RollingWriter::new(
            &dir.join("spaces").join(&space).join("memories"),
            schema.clone(),
            limits,
            0,
        )
        .unwrap();
        w.write(&batch).unwrap();
        entries.push(SpaceEntry {
            label: None,
            space,
            memories: PartSet::from_files(vec![w.finish(true).unwrap().unwrap()]).unwrap(),
            edges: PartSet::from_files(vec![]).unwrap(),
        });
    }
    let mut totals = BTreeMap::new();
    totals.insert("memories".to_string(), n);
    let m = BundleManifest {
        format: "engram-bundle/2".into(),
        run_id: "bench".into(),
        created_at: "2026-11-22T00:00:00Z".into(),
        source: serde_json::json!({"kind": "bench"}),
        mapping: "bench".into(),
        transform_key: "bench".into(),
        embedding: EmbeddingInfo {
            provider: "bench".into(),
            dimension: 768,
            native_dimension: 768,
            zero_padding: 0,
            model: None,
            existing_vectors: 0,
        },
        spaces: entries,
        orphans: PartSet::from_files(vec![]).unwrap(),
        totals,
        checksum_scheme: engram_migrate::checksum::SCHEME,
        removed: vec![],
    };
    std::fs::write(dir.join("bundle.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    dir.to_path_buf()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Loads the bundle into a fresh stand-in over each protocol; prints memories/s and the ratio.
fn full_load() {
    let n = env_u64("ENGRAM_BENCH_MEMORIES", 100_000);
    let per_space = env_u64("ENGRAM_BENCH_PER_SPACE", 100).max(1);
    let parallel = env_u64("ENGRAM_BENCH_PARALLEL", 16) as usize;
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let bundle = write_bundle(&tmp.path().join("bench.bundle"), n, per_space);
    eprintln!(
        "bundle: {n} memories in spaces of {per_space}, written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rates = vec![];
    for grpc in [false, true] {
        let standin = engram_standin::Standin::start(engram_standin::Config::default());
        let spec = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        // The sink through the tool's one loader, as `load --bundle` drives it.
        let sink =
            EngramSink::new(EngramTarget::parse(&spec).unwrap(), LiveOptions::default()).unwrap();
        let manifest = BundleManifest::load(&bundle).unwrap();
        let limits = DeliverLimits {
            batch_rows: 1000,
            parallel,
        };
        let ckpt = tmp.path().join(format!("ckpt-{grpc}.json"));
        let key = RunKey::of(&[("bench", &spec)]);
        let started = Instant::now();
        let out = rt
            .block_on(load::run(
                &bundle,
                &manifest,
                &sink,
                &limits,
                &ckpt,
                &key,
                Default::default(),
            ))
            .unwrap();
        let rb = rt
            .block_on(sink.read_back(&bundle, &manifest, &out.rejected))
            .unwrap();
        assert_eq!(rb.held.len() as u64, n, "every memory kept");
        assert_eq!(standin.state.total() as u64, n);
        println!(
            "engram_sink/load_{n}/{}: {:.0} memories/s (send {:.1} s; with read-back verification {:.1} s; {parallel} in flight)",
            if grpc { "grpc" } else { "http" },
            out.rows_per_second,
            out.seconds,
            started.elapsed().as_secs_f64()
        );
        rates.push(out.rows_per_second);
    }
    println!(
        "engram_sink/load_{n}: gRPC / HTTP = {:.2}x",
        rates[1] / rates[0]
    );
}

criterion_group!(benches, per_memory);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::var("ENGRAM_BENCH_SKIP_LOAD").is_err() {
        full_load();
    }
}
