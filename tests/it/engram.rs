//! The live Engram sink against the in-process stand-in (tests/it/engram_standin.rs), over HTTP and gRPC:
//! the fixture bundle loads and the verification report matches what the stand-in kept, drop for drop; each kind
//! of silent drop is reported with its reason; faults end in clear errors; a killed load resumes without
//! duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field};
use engram_migrate::bundle::{BundleManifest, EmbeddingInfo, PartSet, SpaceEntry};
use engram_migrate::parquet_io::{PartLimits, RollingWriter};
use engram_migrate::schema::memory_schema;

use crate::common::*;
use crate::engram_standin::{Config, Standin};

/// Runs the binary with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).arg("--quiet").env_remove("ENGRAM_API_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run engram-migrate");
    eprintln!(
        "$ engram-migrate {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn load(bundle: &Path, target: &str, extra: &[&str]) -> Output {
    let mut a = vec!["load", "--bundle", p(bundle), "--target", target];
    a.extend_from_slice(extra);
    run_env(&a, &[])
}

/// Deterministic pseudo-random unit vectors (Knuth's MMIX LCG): any two have cosine near 0 in 768 dimensions.
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

/// `base` moved a little (cosine ~0.995 with it).
fn near_copy(base: &[f32], seed: u64) -> Vec<f32> {
    let noise = unit_vector(seed);
    let mut v: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + 0.1 * b).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

#[derive(Clone)]
pub struct TestMemory {
    pub id: String,
    pub content: String,
    pub embedding: Vec<f32>,
    pub confidence: f32,
}

pub fn mem(id: &str, embedding: Vec<f32>, confidence: f32) -> TestMemory {
    TestMemory {
        id: id.into(),
        content: format!("{{\"id\":\"{id}\"}}"),
        embedding,
        confidence,
    }
}

/// Writes a bundle with these memories per space (and `dim`-float embeddings: 768 for a valid bundle).
pub fn write_bundle(dir: &Path, spaces: &[(&str, Vec<TestMemory>)], dim: i32) -> PathBuf {
    let mut entries = vec![];
    let mut total = 0;
    for (space, mems) in spaces {
        let schema = memory_schema(dim as usize);
        let n = mems.len();
        let s = |f: &dyn Fn(&TestMemory) -> String| -> ArrayRef {
            Arc::new(StringArray::from(mems.iter().map(f).collect::<Vec<_>>()))
        };
        let values: Vec<f32> = mems
            .iter()
            .flat_map(|m| {
                let mut e = m.embedding.clone();
                e.resize(dim as usize, 0.0);
                e
            })
            .collect();
        let emb = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            dim,
            Arc::new(Float32Array::from(values)),
            None,
        )
        .unwrap();
        let f32s = |v: f32| -> ArrayRef { Arc::new(Float32Array::from(vec![v; n])) };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                s(&|_| space.to_string()),
                s(&|m| m.id.clone()),
                s(&|m| m.content.clone()),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(emb),
                Arc::new(Float32Array::from(
                    mems.iter().map(|m| m.confidence).collect::<Vec<_>>(),
                )),
                f32s(0.5),
                f32s(0.01),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000i64); n])
                        .with_timezone("UTC"),
                ),
                s(&|_| "semantic".into()),
                s(&|_| "test".into()),
                s(&|_| "t".into()),
                s(&|m| format!("{{\"id\":\"{}\"}}", m.id)),
            ],
        )
        .unwrap();
        let mdir = dir.join("spaces").join(space).join("memories");
        let limits = PartLimits {
            max_file_bytes: u64::MAX,
            max_file_rows: u64::MAX,
            row_group_rows: 8192,
        };
        let mut w = RollingWriter::new(&mdir, schema, limits, 0).unwrap();
        w.write(&batch).unwrap();
        let part = w.finish(true).unwrap().unwrap();
        total += n as u64;
        entries.push(SpaceEntry {
            label: None,
            space: space.to_string(),
            memories: PartSet::from_files(vec![part]).unwrap(),
            edges: PartSet::from_files(vec![]).unwrap(),
        });
    }
    let mut totals = BTreeMap::new();
    totals.insert("memories".to_string(), total);
    totals.insert("edges".to_string(), 0);
    let m = BundleManifest {
        format: "engram-bundle/2".into(),
        run_id: format!("test-{}", dir.display()),
        created_at: "2026-11-22T00:00:00Z".into(),
        source: serde_json::json!({"kind": "test"}),
        mapping: "test".into(),
        transform_key: "test".into(),
        embedding: EmbeddingInfo {
            provider: "test".into(),
            dimension: dim as usize,
            native_dimension: dim as usize,
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
    std::fs::write(
        dir.join("bundle.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// (space, id) -> embedding, from a bundle, read with the library's own reader.
fn bundle_memories(bundle: &Path) -> BTreeMap<(String, String), Vec<f32>> {
    use arrow::array::AsArray;
    let m = BundleManifest::load(bundle).unwrap();
    let mut out = BTreeMap::new();
    for s in &m.spaces {
        for f in &s.memories.files {
            let path = bundle
                .join("spaces")
                .join(&s.space)
                .join("memories")
                .join(&f.file);
            for b in engram_migrate::parquet_io::read_all(&path).unwrap() {
                let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
                let emb = b
                    .column_by_name("embedding")
                    .unwrap()
                    .as_fixed_size_list()
                    .clone();
                for i in 0..b.num_rows() {
                    let e = emb.value(i);
                    let e = e.as_primitive::<arrow::datatypes::Float32Type>();
                    out.insert(
                        (s.space.clone(), ids.value(i).to_string()),
                        e.values().to_vec(),
                    );
                }
            }
        }
    }
    out
}

/// The live load's section of the work directory's report.json.
fn report(bundle: &Path) -> serde_json::Value {
    let r = json(&PathBuf::from(format!("{}.work", bundle.display())).join("report.json"));
    assert!(
        r["delivery"].is_object(),
        "report.json has no delivery section: {r}"
    );
    r["delivery"].clone()
}

/// The report's not-kept list as (space, id) -> reason object.
fn not_kept(r: &serde_json::Value) -> BTreeMap<(String, String), serde_json::Value> {
    r["verification"]["not_kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                (
                    n["space"].as_str().unwrap().to_string(),
                    n["id"].as_str().unwrap().to_string(),
                ),
                n.clone(),
            )
        })
        .collect()
}

/// The report agrees with the stand-in, drop for drop: kept = bundle ids the stand-in holds; not kept = the
/// rest, each near-duplicate naming a memory the stand-in holds with cosine >= 0.95.
fn assert_report_matches_standin(bundle: &Path, standin: &Standin) {
    let r = report(bundle);
    let mems = bundle_memories(bundle);
    let nk = not_kept(&r);
    let mut held: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (space, _) in mems.keys() {
        held.entry(space.clone())
            .or_insert_with(|| standin.state.ids(space).into_iter().collect());
    }
    let mut kept = 0;
    for (key, emb) in &mems {
        let on_server = held[&key.0].contains(&key.1);
        assert_eq!(
            on_server,
            !nk.contains_key(key),
            "{key:?}: on the stand-in = {on_server}, but the report says otherwise"
        );
        if on_server {
            kept += 1;
            continue;
        }
        let n = &nk[key];
        if n["reason"] == "near_duplicate" {
            let of = n["of"].as_str().unwrap();
            assert!(
                held[&key.0].contains(of),
                "{key:?}: duplicate of {of}, which the stand-in does not hold"
            );
            // The stand-in is filled from this bundle only: the memory it kept instead is in the bundle.
            let other = mems
                .get(&(key.0.clone(), of.to_string()))
                .unwrap_or_else(|| {
                    panic!("{key:?}: duplicate of {of}, which is not in the bundle")
                });
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let c = emb
                .iter()
                .zip(other.iter())
                .map(|(a, b)| a * b)
                .sum::<f32>()
                / (norm(emb) * norm(other));
            assert!(c >= 0.95 - 1e-4, "{key:?} vs {of}: cosine {c}");
            let reported = n["cosine"]
                .as_f64()
                .unwrap_or_else(|| panic!("{n}: no cosine")) as f32;
            assert!(
                (reported - c).abs() < 1e-3,
                "{key:?}: reported cosine {reported}, actual {c}"
            );
        }
    }
    assert_eq!(r["verification"]["kept_total"].as_u64().unwrap(), kept);
    // The SQL verdict (sql/validate/target_kept.sql over the read-back) agrees with the sink's own, row for row.
    let target_kept = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "target_kept")
        .unwrap();
    assert_eq!(
        target_kept["offending_rows"].as_u64().unwrap(),
        nk.len() as u64,
        "{target_kept}"
    );
    assert_eq!(r["complete"], nk.is_empty());
    assert_eq!(
        r["verification"]["bundle_total"].as_u64().unwrap(),
        mems.len() as u64
    );
    for s in r["verification"]["spaces"].as_array().unwrap() {
        let space = s["space"].as_str().unwrap();
        assert_eq!(
            s["server_count"].as_u64().unwrap(),
            standin.state.ids(space).len() as u64,
            "{space}: server count"
        );
    }
}

fn fixture_bundle(tmp: &Path) -> PathBuf {
    let b = tmp.join("codegraph.bundle");
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&b)]);
    assert_eq!(code(&out), 0);
    b
}

#[test]
fn fixture_bundle_over_http_and_grpc_report_matches_the_standin() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = fixture_bundle(tmp.path());
    for grpc in [false, true] {
        let standin = Standin::start(Config::default());
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        // Past the default limit on predicted loss: the hashing embeddings of the fixture collapse.
        let out = load(&bundle, &target, &["--max-predicted-loss", "1"]);
        let r = report(&bundle);
        // The fixture's hashing embeddings collapse, so the server keeps fewer than the bundle holds (counted on
        // the stand-in itself, not taken from the report under test): exit 5, and the report names each one.
        let in_bundle = json(&bundle.join("bundle.json"))["totals"]["memories"]
            .as_u64()
            .unwrap();
        let on_server = standin.state.total() as u64;
        assert!(
            on_server < in_bundle,
            "grpc={grpc}: {on_server} of {in_bundle} kept; the fixture must lose some"
        );
        assert_eq!(code(&out), 5, "grpc={grpc}: {}", stderr(&out));
        assert_eq!(
            r["verification"]["not_kept"].as_array().unwrap().len() as u64,
            in_bundle - on_server,
            "grpc={grpc}"
        );
        assert_eq!(r["protocol"], if grpc { "grpc" } else { "http" });
        assert_report_matches_standin(&bundle, &standin);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("kept in the bundle only")
                || stdout.contains("Kept in the bundle only"),
            "{stdout}"
        );
        // Every memory was sent exactly once (no retries were needed).
        let bundle_total = r["verification"]["bundle_total"].as_u64().unwrap();
        assert_eq!(standin.state.requests.load(Ordering::SeqCst), bundle_total);
    }
}

/// One bundle holding each kind of silent drop, with the expected reason per dropped id worked out here.
fn drops_bundle(dir: &Path) -> (PathBuf, BTreeMap<(String, String), &'static str>) {
    let mut expected = BTreeMap::new();
    // Near-duplicates: 5 distinct memories, 3 lower-confidence near copies (skipped, 201), 1 higher-confidence
    // near copy that replaces its original (the original is then the one reported).
    let base: Vec<Vec<f32>> = (0..5).map(|i| unit_vector(100 + i)).collect();
    let mut dups: Vec<TestMemory> = (0..5)
        .map(|i| mem(&format!("d{i}"), base[i].clone(), 0.7))
        .collect();
    for (k, of) in [(0usize, 0usize), (1, 1), (2, 1)] {
        let id = format!("d_copy{k}");
        dups.push(mem(&id, near_copy(&base[of], 900 + k as u64), 0.5));
        expected.insert(("dups".to_string(), id), "near_duplicate");
    }
    dups.push(mem("d_better", near_copy(&base[4], 999), 0.9));
    expected.insert(("dups".to_string(), "d4".to_string()), "near_duplicate");
    // Over the limit (the stand-in is started with space_limit 30): 40 distinct memories, the 10 oldest evicted.
    let full: Vec<TestMemory> = (0..40)
        .map(|i| mem(&format!("f{i:02}"), unit_vector(5000 + i), 0.7))
        .collect();
    for i in 0..10 {
        expected.insert(("full".to_string(), format!("f{i:02}")), "over_space_limit");
    }
    // Rejected: content over 100 KB (400 INVALID_MEMORY_INPUT), next to a good one.
    let mut big = mem("r_big", unit_vector(7000), 0.7);
    big.content = format!("\"{}\"", "x".repeat(101 * 1024));
    let rejects = vec![big, mem("r_ok", unit_vector(7001), 0.7)];
    expected.insert(("rejects".to_string(), "r_big".to_string()), "rejected");
    let b = write_bundle(
        dir,
        &[("dups", dups), ("full", full), ("rejects", rejects)],
        768,
    );
    (b, expected)
}

#[test]
fn each_silent_drop_is_reported_with_its_reason_over_http_and_grpc() {
    for grpc in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let (bundle, expected) = drops_bundle(&tmp.path().join("drops.bundle"));
        let standin = Standin::start(Config {
            space_limit: 30,
            ..Default::default()
        });
        let target = if grpc {
            format!("{}&space_limit=30", standin.grpc_target())
        } else {
            format!("{}?space_limit=30", standin.http_target())
        };
        // One write at a time: which of two near-duplicates is dropped, and which memories are the oldest,
        // depend on the order of arrival (parallel loads are checked against the stand-in in the fixture test).
        let out = load(
            &bundle,
            &target,
            &[
                "--batch-size",
                "7",
                "--parallel-workers",
                "1",
                "--max-predicted-loss",
                "1",
            ],
        );
        assert_eq!(code(&out), 5, "memories were dropped: validation exit code");
        let r = report(&bundle);
        let got: BTreeMap<(String, String), String> = not_kept(&r)
            .into_iter()
            .map(|(k, v)| (k, v["reason"].as_str().unwrap().to_string()))
            .collect();
        let want: BTreeMap<(String, String), String> = expected
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        assert_eq!(got, want, "grpc={grpc}");
        let nk = not_kept(&r);
        // Named duplicates: each copy names its original; the replaced original names its replacement.
        assert_eq!(nk[&("dups".to_string(), "d_copy0".to_string())]["of"], "d0");
        assert_eq!(nk[&("dups".to_string(), "d_copy1".to_string())]["of"], "d1");
        assert_eq!(nk[&("dups".to_string(), "d_copy2".to_string())]["of"], "d1");
        assert_eq!(
            nk[&("dups".to_string(), "d4".to_string())]["of"],
            "d_better"
        );
        let rej = &nk[&("rejects".to_string(), "r_big".to_string())];
        assert!(
            rej["status"]
                .as_str()
                .unwrap()
                .contains("INVALID_MEMORY_INPUT")
                || rej["message"]
                    .as_str()
                    .unwrap()
                    .contains("INVALID_MEMORY_INPUT"),
            "{rej}"
        );
        assert_report_matches_standin(&bundle, &standin);
        // 4xx are never retried: one request per memory.
        assert_eq!(
            standin.state.requests.load(Ordering::SeqCst),
            8 + 1 + 40 + 2,
            "grpc={grpc}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("near-duplicate of d1"), "{stdout}");
        assert!(stdout.contains("over the server's limit of 30"), "{stdout}");
    }
}

#[test]
fn a_complete_load_exits_zero_and_transient_faults_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..60)
        .map(|i| mem(&format!("m{i}"), unit_vector(i), 0.7))
        .collect();
    let bundle = write_bundle(&tmp.path().join("ok.bundle"), &[("plain", mems)], 768);
    for grpc in [false, true] {
        let standin = Standin::start(Config::default());
        standin.state.config.fail_next.store(4, Ordering::SeqCst);
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        let out = load(&bundle, &target, &["--batch-size", "25"]);
        assert_eq!(code(&out), 0, "grpc={grpc}");
        assert_eq!(standin.state.ids("plain").len(), 60);
        // The 4 injected 503/Unavailable answers were sent again.
        assert!(standin.state.requests.load(Ordering::SeqCst) >= 64);
        let r = report(&bundle);
        assert_eq!(r["verification"]["kept_total"], 60);
        assert_eq!(r["verification"]["not_kept"].as_array().unwrap().len(), 0);
    }
    // A server without StreamingRemember: the gRPC sink falls back to unary Remember.
    let standin = Standin::start(Config::default());
    standin
        .state
        .config
        .streaming
        .store(false, Ordering::SeqCst);
    let out = load(&bundle, &standin.grpc_target(), &[]);
    assert_eq!(code(&out), 0);
    assert_eq!(standin.state.ids("plain").len(), 60);
}

#[test]
fn unreachable_server_wrong_token_and_non_768_embeddings_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..5)
        .map(|i| mem(&format!("m{i}"), unit_vector(i), 0.7))
        .collect();
    let bundle = write_bundle(
        &tmp.path().join("ok.bundle"),
        &[("plain", mems.clone())],
        768,
    );

    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for target in [
        format!("engram+http://127.0.0.1:{port}"),
        format!("engram+grpc://127.0.0.1:{port}?http_port={port}"),
    ] {
        let started = Instant::now();
        let out = load(&bundle, &target, &[]);
        assert_eq!(code(&out), 4, "{target}");
        let e = stderr(&out);
        assert!(e.contains("check that Engram is running"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    // Wrong key: refused before anything is sent, and the key is not printed.
    let secret = "engram_key_k1_right-secret";
    let wrong = "engram_key_k1_wrong-secret-xyz";
    let standin = Standin::start(Config {
        token: Some(secret.into()),
        ..Default::default()
    });
    for target in [standin.http_target(), standin.grpc_target()] {
        let args = ["load", "--bundle", p(&bundle), "--target", target.as_str()];
        let out = run_env(&args, &[("ENGRAM_API_KEY", wrong)]);
        assert_eq!(code(&out), 4);
        let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(all.contains("refused the credentials"), "{all}");
        assert!(!all.contains("wrong-secret"), "the key was printed: {all}");
        assert_eq!(standin.state.total(), 0);
        // No key at all: the same.
        let out = run_env(&args, &[]);
        assert_eq!(code(&out), 4);
    }
    // The right key works, over both protocols, and is not printed either.
    for target in [standin.http_target(), standin.grpc_target()] {
        let args = ["load", "--bundle", p(&bundle), "--target", target.as_str()];
        let out = run_env(&args, &[("ENGRAM_API_KEY", secret)]);
        assert_eq!(code(&out), 0);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("right-secret"));
        let rep = std::fs::read_to_string(
            PathBuf::from(format!("{}.work", bundle.display())).join("report.json"),
        )
        .unwrap();
        assert!(!rep.contains("right-secret"));
    }
    assert_eq!(standin.state.ids("plain").len(), 5);

    // A bundle with 1536-float embeddings (more than Engram's 768): refused before the first write.
    let bad = write_bundle(
        &tmp.path().join("bad.bundle"),
        &[("plain", mems.clone())],
        1536,
    );
    let standin = Standin::start(Config::default());
    let out = load(&bad, standin.http_target().as_str(), &[]);
    assert_eq!(code(&out), 3);
    let e = stderr(&out);
    assert!(e.contains("768") && e.contains("part-00000.parquet"), "{e}");
    assert_eq!(
        standin.state.requests.load(Ordering::SeqCst),
        0,
        "nothing sent"
    );
    // A live target without --bundle, for `load` and for `run`: usage errors.
    let out = run(&[
        "load",
        "--target",
        standin.http_target().as_str(),
        "--work-dir",
        p(tmp.path()),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--bundle"));
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        standin.http_target().as_str(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--bundle DIR"), "{}", stderr(&out));
}

/// `run --bundle DIR --target engram+...`: the pipeline writes and validates the bundle, then sends it; the
/// read-back report matches the stand-in, and the bundle stays (it is the full truth).
#[test]
fn run_into_a_live_target_writes_the_bundle_then_loads_it() {
    for grpc in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("run.bundle");
        let standin = Standin::start(Config::default());
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        // By default the predicted loss (hashing embeddings of the fixture collapse) stops the load: exit 2,
        // the bundle written and validated, nothing sent.
        let fx = fixture();
        let args = [
            "run",
            "--source",
            p(&fx),
            "--bundle",
            p(&bundle),
            "--target",
            target.as_str(),
        ];
        let out = run(&args);
        assert_eq!(code(&out), 2, "grpc={grpc}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("predicted to be dropped silently"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("--max-predicted-loss 1"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            standin.state.requests.load(Ordering::SeqCst),
            0,
            "nothing sent"
        );
        assert!(bundle.join("bundle.json").is_file());
        // Told to send anyway: the same command resumes (the bundle is done) and loads, one write at a time so
        // the server sees the bundle's order (with writes in flight together, which of two near-duplicates in a
        // chain arrives first varies, and so does the count by a few).
        let out = run(&[
            &args[..],
            &["--max-predicted-loss", "1", "--target-parallel", "1"][..],
        ]
        .concat());
        let r = report(&bundle);
        // The prediction was right: what the stand-in dropped is what was predicted (within 1%).
        let predicted = r["predicted_lost"].as_u64().unwrap();
        let dropped = r["verification"]["not_kept"].as_array().unwrap().len() as u64;
        assert!(
            predicted.abs_diff(dropped) * 100 <= dropped.max(1),
            "predicted {predicted}, dropped {dropped}"
        );
        let in_bundle = json(&bundle.join("bundle.json"))["totals"]["memories"]
            .as_u64()
            .unwrap();
        let on_server = standin.state.total() as u64;
        assert!(
            on_server < in_bundle,
            "grpc={grpc}: {on_server} of {in_bundle} kept"
        );
        assert_eq!(code(&out), 5, "grpc={grpc}: {}", stderr(&out));
        assert_eq!(dropped, in_bundle - on_server, "grpc={grpc}");
        assert!(bundle.join("bundle.json").is_file(), "the bundle is kept");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("validation:") && stdout.contains("read-back verification"),
            "{stdout}"
        );
        assert_report_matches_standin(&bundle, &standin);
        let bundle_total = r["verification"]["bundle_total"].as_u64().unwrap();
        assert!(bundle_total > 0);
        assert_eq!(standin.state.requests.load(Ordering::SeqCst), bundle_total);
    }
}

#[test]
fn a_killed_load_resumes_and_every_memory_lands_once() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 600u64;
    let mems: Vec<TestMemory> = (0..n)
        .map(|i| mem(&format!("m{i:04}"), unit_vector(10_000 + i), 0.7))
        .collect();
    let bundle = write_bundle(&tmp.path().join("big.bundle"), &[("resume_a", mems)], 768);
    let ckpt = PathBuf::from(format!("{}.work", bundle.display())).join("load-checkpoint.json");
    for grpc in [false, true] {
        let standin = Standin::start(Config {
            delay: Duration::from_millis(4),
            ..Default::default()
        });
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        let args = [
            "load",
            "--bundle",
            p(&bundle),
            "--target",
            target.as_str(),
            "--batch-size",
            "50",
            "--parallel-workers",
            "2",
            "--quiet",
        ];
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        // Kill once some batches are acknowledged (checkpointed) and more are in flight.
        loop {
            let done: u64 = std::fs::read(&ckpt)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|v| {
                    v["rows_done"]
                        .as_object()
                        .map(|o| o.values().filter_map(|x| x.as_u64()).sum::<u64>())
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            if done >= 150 {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the load finished before the kill point"
            );
            assert!(started.elapsed() < Duration::from_secs(120));
            std::thread::sleep(Duration::from_millis(2));
        }
        let before = standin.state.total() as u64;
        assert!(before > 0 && before < n, "killed mid-way: {before}");
        let out = load(
            &bundle,
            &target,
            &["--batch-size", "50", "--parallel-workers", "2"],
        );
        assert_eq!(code(&out), 0, "grpc={grpc}");
        let r = report(&bundle);
        assert!(r["resumed"].as_u64().unwrap() >= 150, "{r}");
        // Every memory present once.
        let ids = standin.state.ids("resume_a");
        assert_eq!(ids.len() as u64, n);
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len() as u64, n);
        // Acknowledged batches were not sent again: only what was answered or in flight after the last
        // checkpoint, i.e. under one batch (50) plus 2 units in flight (HTTP: 1 memory each; gRPC: 25).
        let writes = standin.state.writes.lock().unwrap();
        let total_writes: u32 = writes.values().sum();
        let bound = n + 50 + if grpc { 2 * 25 } else { 2 };
        assert!(
            total_writes as u64 <= bound,
            "{total_writes} writes for {n} memories (bound {bound})"
        );
        assert!(
            !ckpt.exists(),
            "the checkpoint is removed after a complete load"
        );
    }
}

/// A server whose health endpoints answer 503 with a well-formed body (one probe failing, every API working, as
/// a real server on a busy machine did for minutes) is loaded and verified: the warning names the failing
/// check, and the counts come from the 503 body.
#[test]
fn a_degraded_server_answering_503_with_a_body_is_loaded_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..30)
        .map(|i| mem(&format!("d{i}"), unit_vector(500 + i), 0.7))
        .collect();
    let bundle = write_bundle(&tmp.path().join("deg.bundle"), &[("degraded", mems)], 768);
    for grpc in [false, true] {
        let standin = Standin::start(Config::default());
        standin.state.config.unhealthy.store(true, Ordering::SeqCst);
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        let mut c = Command::new(bin());
        c.args(["load", "--bundle", p(&bundle), "--target", &target])
            .env_remove("ENGRAM_API_KEY");
        let out = c.output().unwrap();
        let err = stderr(&out);
        eprintln!("{}\n{err}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(code(&out), 0, "grpc={grpc}: {err}");
        assert!(
            err.contains("spreading"),
            "grpc={grpc}: the failing check is not named: {err}"
        );
        assert_eq!(standin.state.ids("degraded").len(), 30);
        let r = report(&bundle);
        assert_eq!(r["verification"]["kept_total"], 30, "grpc={grpc}");
        let space = &r["verification"]["spaces"][0];
        assert_eq!(
            space["server_count"], 30,
            "grpc={grpc}: counts read from the 503 body"
        );
    }
}

/// Something else on the port (here an HTTP server that knows no /health): a clear target error before any
/// memory is sent, not a load into nowhere.
#[test]
fn a_server_that_is_not_engram_is_refused_before_sending() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..3)
        .map(|i| mem(&format!("n{i}"), unit_vector(900 + i), 0.7))
        .collect();
    let bundle = write_bundle(&tmp.path().join("n.bundle"), &[("nothere", mems)], 768);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        axum::serve(listener, app).await.unwrap();
    });
    let out = load(&bundle, &format!("engram+http://{addr}"), &[]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is this an Engram server"),
        "{}",
        stderr(&out)
    );
}

/// A live target that does not answer is found before the first stage: exit 4 within seconds, no snapshot
/// started, no bundle written.
#[test]
fn run_into_an_unreachable_target_fails_before_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bundle = tmp.path().join("b");
    for scheme in ["engram+http", "engram+grpc"] {
        let target = match scheme {
            "engram+http" => format!("{scheme}://127.0.0.1:{port}"),
            _ => format!("{scheme}://127.0.0.1:{port}?http_port={port}"),
        };
        let started = Instant::now();
        let out = run(&[
            "run",
            "--source",
            p(&fixture()),
            "--target",
            &target,
            "--bundle",
            p(&bundle),
        ]);
        let took = started.elapsed();
        assert_eq!(code(&out), 4, "{scheme}: {}", stderr(&out));
        assert!(took < Duration::from_secs(5), "{scheme}: took {took:?}");
        assert!(!bundle.exists(), "{scheme}: a bundle was written");
        assert!(
            !tmp.path().join("b.work/snapshot").exists(),
            "{scheme}: the snapshot was started"
        );
    }
}

/// A bundle at a provider's own dimension (256, as model2vec makes): the Engram sink zero-pads each vector to
/// Engram's 768 when it sends it (cosine unchanged), and the read-back compares the padded vectors.
#[test]
fn a_bundle_of_256_float_embeddings_is_padded_for_engram_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..20)
        .map(|i| mem(&format!("s{i}"), unit_vector(700 + i), 0.7))
        .collect();
    let bundle = write_bundle(
        &tmp.path().join("small.bundle"),
        &[("small_dim", mems)],
        256,
    );
    for grpc in [false, true] {
        let standin = Standin::start(Config::default());
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        let out = load(&bundle, &target, &[]);
        assert_eq!(code(&out), 0, "grpc={grpc}: {}", stderr(&out));
        assert_eq!(standin.state.ids("small_dim").len(), 20);
        let r = report(&bundle);
        assert_eq!(r["verification"]["kept_total"], 20);
        assert_eq!(
            r["verification"]["embedding_differs"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}

/// Engram deletes nothing (its DELETE answers 200 "not_supported"): `rollback` says so, exits 2 and changes
/// nothing on the server.
#[test]
fn rollback_of_an_engram_load_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mems: Vec<TestMemory> = (0..5)
        .map(|i| mem(&format!("r{i}"), unit_vector(900 + i), 0.7))
        .collect();
    let bundle = write_bundle(&tmp.path().join("rb.bundle"), &[("roll_back", mems)], 768);
    let standin = Standin::start(Config::default());
    let out = load(&bundle, &standin.http_target(), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run_env(
        &[
            "rollback",
            "--bundle",
            p(&bundle),
            "--target",
            &standin.http_target(),
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not_supported") && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(standin.state.ids("roll_back").len(), 5);
    // With no server there, the same answer: whether Engram can delete does not depend on it being up.
    let out = run_env(
        &[
            "rollback",
            "--bundle",
            p(&bundle),
            "--target",
            "engram+http://127.0.0.1:9",
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("not_supported"), "{}", stderr(&out));
    // A bundle directory as the target: told how a bundle is rolled back.
    let out = run_env(
        &["rollback", "--bundle", p(&bundle), "--target", p(&bundle)],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("deleting it"), "{}", stderr(&out));
}

/// Every space of the bundle is created before the first memory is sent, several at once (a real server takes
/// ~14 s per space), and each memory lands in its space.
#[test]
fn spaces_are_created_up_front_and_concurrently() {
    let tmp = tempfile::tempdir().unwrap();
    let spaces: Vec<(String, Vec<TestMemory>)> = (0..8)
        .map(|s| {
            (
                format!("space_{s}"),
                (0..3)
                    .map(|i| mem(&format!("m{s}_{i}"), unit_vector(3000 + s * 10 + i), 0.7))
                    .collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, Vec<TestMemory>)> = spaces
        .iter()
        .map(|(n, m)| (n.as_str(), m.clone()))
        .collect();
    let bundle = write_bundle(&tmp.path().join("spaces.bundle"), &refs, 768);
    let standin = Standin::start(Config {
        space_creation: Duration::from_millis(300),
        ..Default::default()
    });
    let out = load(&bundle, &standin.http_target(), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        standin.state.max_creating_at_once.load(Ordering::SeqCst) >= 2,
        "spaces were created one by one"
    );
    for (name, _) in &spaces {
        assert_eq!(standin.state.ids(name).len(), 3, "{name}");
    }
}

/// A sensor table whose only text column repeats 97 values over 2,000 rows (the table that lost 95%):
/// with `--text-columns readings:sensor` the prediction says so and the load refuses by default, naming the space;
/// the generic mapping's own default sees that the text does not tell the rows apart, adds the key and the
/// many-valued columns, and the stand-in (Engram's near-duplicate filter, to the letter) keeps over 99%.
#[test]
fn a_repeating_text_column_is_widened_by_default_and_the_server_keeps_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sensors.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT NOT NULL, status TEXT, value REAL,
                                taken_at INTEGER);",
    )
    .unwrap();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.execute(
            "INSERT INTO readings VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                i,
                format!("s{}", i % 97),
                if i % 3 == 0 { "ok" } else { "warn" },
                (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0,
                1_700_000_000 + i * 60
            ],
        )
        .unwrap();
    }
    drop(c);
    let standin = Standin::start(Config::default());
    let target = standin.http_target();

    // Told to embed only the sensor: refused before anything is sent, the space and the fix named.
    let narrow = tmp.path().join("narrow.bundle");
    let out = run(&[
        "run",
        "--source",
        p(&db),
        "--bundle",
        p(&narrow),
        "--target",
        &target,
        "--text-columns",
        "readings:sensor",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("predicted to be dropped silently") && e.contains("readings"),
        "{e}"
    );
    assert_eq!(
        standin.state.requests.load(Ordering::SeqCst),
        0,
        "nothing sent"
    );
    // `plan` with the same flags predicts from the snapshot the run left; sent anyway (one write at a time, so
    // the server sees the bundle's order), the stand-in drops what was predicted, within 1%.
    let narrow_args = [
        "--source",
        p(&db),
        "--bundle",
        p(&narrow),
        "--target",
        &target,
        "--text-columns",
        "readings:sensor",
    ];
    let out = run(&[&["plan"][..], &narrow_args[..]].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let predicted: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("predicted loss: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prediction in: {said}"));
    assert!(said.contains("97 distinct texts of 2000 rows"), "{said}");
    assert!(said.contains("--max-predicted-loss"), "{said}");
    let out = run(&[
        &["run"][..],
        &narrow_args[..],
        &["--max-predicted-loss", "1", "--target-parallel", "1"][..],
    ]
    .concat());
    assert_eq!(code(&out), 5, "the server drops rows: {}", stderr(&out));
    let dropped = report(&narrow)["verification"]["not_kept"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert!(dropped >= 1800, "dropped {dropped}");
    assert!(
        predicted.abs_diff(dropped) * 100 <= dropped,
        "plan predicted {predicted}, the server dropped {dropped}"
    );

    // The default: the text also embeds the key and the many-valued columns; sent and kept.
    let wide = tmp.path().join("wide.bundle");
    let out = run(&[
        "run",
        "--source",
        p(&db),
        "--bundle",
        p(&wide),
        "--target",
        &target,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let work = PathBuf::from(format!("{}.work", wide.display()));
    let texts = &json(&work.join("report.json"))["texts"];
    let t = texts
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "readings")
        .unwrap_or_else(|| panic!("{texts}"));
    let added: Vec<&str> = t["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(added.contains(&"id") && added.contains(&"value"), "{t}");
    assert!(
        !added.contains(&"status"),
        "a two-valued column tells no rows apart: {t}"
    );
    assert!(t["distinct_texts"].as_u64().unwrap() >= 1980, "{t}");
    let out = run(&[
        "plan",
        "--source",
        p(&db),
        "--bundle",
        p(&wide),
        "--target",
        &target,
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("added id, value"), "{said}");
    let r = report(&wide);
    let dropped = r["verification"]["not_kept"].as_array().unwrap().len();
    assert!(dropped * 100 < 2000, "the server dropped {dropped} of 2000");
    assert!(r["predicted_lost"].as_u64().unwrap() * 100 < 2000, "{r}");
}
