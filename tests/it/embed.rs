//! Embedding providers end to end: model2vec from the real potion-base-8M files (scripts/models.sh), the
//! OpenAI-compatible HTTP provider against the local server of openai_server.rs (with 413/429/503 faults), and
//! the persistent cache across runs.

use std::path::PathBuf;
use std::process::Command;

use engram_migrate::embed::openai::{OpenAiOptions, OpenAiProvider};
use engram_migrate::embed::EmbeddingProvider;

use crate::common::*;
use crate::openai_server::{vector, Behaviour, Server};

/// potion-base-8M, fetched and checked (sha256) by scripts/models.sh into the cache outside the clone.
pub fn model_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/models.sh"))
            .arg("potion-base-8M")
            .output()
            .expect("scripts/models.sh");
        assert!(
            out.status.success(),
            "scripts/models.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap()
                .trim(),
        )
    })
    .clone()
}

/// Every memory vector of a bundle: (dimension, norm, non-zero components), via pyarrow.
fn vector_profile(bundle: &std::path::Path) -> Vec<(usize, f64, usize)> {
    let script = r#"
import sys, glob, math, pyarrow.parquet as pq
for f in sorted(glob.glob(sys.argv[1] + "/spaces/*/memories/*.parquet")):
    for v in pq.read_table(f, columns=["embedding"]).column("embedding").to_pylist():
        print(len(v), math.sqrt(sum(x * x for x in v)), sum(1 for x in v if x != 0.0))
"#;
    let out = Command::new(python())
        .args(["-c", script, p(bundle)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn model2vec_run_validates_and_a_second_run_embeds_nothing() {
    let model = model_dir();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bundle");
    let provider = format!("model2vec:{}", model.display());
    let fixture = fixture();
    let args = [
        "run",
        "--source",
        p(&fixture),
        "--target",
        p(&target),
        "--embedding-provider",
        &provider,
    ];
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Validation ran (embedding_quality among the checks) and passed.
    let report = json(&dir.path().join("bundle.work/report.json"));
    let checks = report["validation"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "embedding_quality"));
    let b = json(&target.join("bundle.json"));
    let e = &b["embedding"];
    assert!(
        e["provider"]
            .as_str()
            .unwrap()
            .starts_with("model2vec:potion-base-8M:"),
        "{e}"
    );
    // The bundle keeps the model's own 256 floats (a target pads if it must: the Engram sink to 768).
    assert_eq!(e["dimension"], 256);
    assert_eq!(e["native_dimension"], 256);
    assert_eq!(e["zero_padding"], 0);
    assert_eq!(e["model"], model.display().to_string());
    // Read back by pyarrow: 256 floats, unit norm.
    let prof = vector_profile(&target);
    assert_eq!(prof.len() as u64, b["totals"]["memories"].as_u64().unwrap());
    for (d, n, nz) in &prof {
        assert_eq!(*d, 256);
        assert!((n - 1.0).abs() < 1e-3, "norm {n}");
        assert!(*nz > 1 && *nz <= 256, "{nz} non-zero components");
    }
    let first = &report["embedding"];
    assert!(first["embedded"].as_u64().unwrap() > 0);
    assert_eq!(first["hits_from_earlier_runs"], 0);

    // Second run over the same input (new bundle in place of the old): everything from the persistent cache.
    let o = run(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("cache hit rate 100.0%"), "{stdout}");
    let report = json(&dir.path().join("bundle.work/report.json"));
    let second = &report["embedding"];
    assert_eq!(second["embedded"], 0, "{second}");
    assert_eq!(second["texts"], first["texts"]);
    assert_eq!(second["hits_from_earlier_runs"], second["texts"]);
    assert!(second["hit_rate"].as_f64().unwrap() > 0.8);
    // Same vectors: same checksums as the first bundle's.
    let b2 = json(&target.join("bundle.json"));
    assert_eq!(b2["spaces"], b["spaces"]);
}

#[test]
fn model2vec_bad_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&dir.path().join("b")),
        "--embedding-provider",
        &format!("model2vec:{}", dir.path().join("nowhere").display()),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    assert!(!dir.path().join("b").exists());
    // Refused before the long stages: nothing was snapshotted.
    assert!(!dir.path().join("b.work/snapshot").exists());
}

fn http(url: &str) -> OpenAiOptions {
    OpenAiOptions {
        url: url.to_string(),
        model: "test-embed".into(),
        request_size: 16,
        backoff: engram_migrate::retry::Backoff {
            attempts: 4,
            base: std::time::Duration::from_millis(10),
            cap: std::time::Duration::from_millis(100),
        },
        ..Default::default()
    }
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("text number {i} about topic {}", i % 7))
        .collect()
}

#[test]
fn http_provider_batches_splits_on_413_and_retries_429_and_503() {
    let server = Server::start(Behaviour {
        dim: 384,
        max_inputs: 5,
        fail_429: 2,
        fail_503: 1,
        ..Default::default()
    });
    // The probe (1 text) meets the faults first: 429, 429, 503, then 200.
    let p = OpenAiProvider::connect(http(&server.url)).unwrap();
    assert_eq!(p.dimension(), 384);
    assert_eq!(server.statuses(), vec![429, 429, 503, 200]);
    assert!(p.name().starts_with(&format!(
        "openai:{}/v1/embeddings:test-embed:384",
        server.url
    )));

    let t = texts(40);
    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
    let mut out = vec![0.0f32; 40 * 384];
    p.embed(&refs, &mut out).unwrap();
    // 16 > 5: 413, split to 8 (413), 4 (ok) ... then the request size stays at the size that fitted.
    let log = server.log.lock().unwrap().clone();
    let after_probe = &log[4..];
    // Every request names the configured model (servers such as Ollama serve several).
    assert!(log.iter().all(|l| l.model == "test-embed"), "{log:?}");
    assert!(after_probe.iter().any(|l| l.status == 413));
    assert!(after_probe
        .iter()
        .filter(|l| l.status == 200)
        .all(|l| l.inputs <= 5));
    assert_eq!(
        after_probe
            .iter()
            .filter(|l| l.status == 200)
            .map(|l| l.inputs)
            .sum::<usize>(),
        40
    );
    assert!(p.request_size() <= 5);
    assert!(
        p.stats().splits >= 2 && p.stats().retries == 3,
        "{:?}",
        p.stats()
    );
    // Right vector in the right row (the server answers in reverse order), re-normalised to unit length.
    for (i, row) in out.chunks_exact(384).enumerate() {
        let want = vector(&t[i], 384);
        let n: f32 = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b / n).abs() < 1e-6, "row {i}");
        }
    }
}

#[test]
fn http_provider_errors_are_clear_and_never_show_the_key() {
    // Wrong key: 401, a usage error naming the key variable, without the key.
    let server = Server::start(Behaviour {
        key: Some("sk-right".into()),
        ..Default::default()
    });
    let mut o = http(&server.url);
    o.api_key = Some("sk-wrong-SECRET".into());
    let e = OpenAiProvider::connect(o.clone()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("401") && msg.contains("ENGRAM_EMBEDDING_API_KEY"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"));
    assert_eq!(e.exit_code(), 2);
    o.api_key = Some("sk-right".into());
    assert!(OpenAiProvider::connect(o).is_ok());
    assert_eq!(
        server
            .log
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .authorization
            .as_deref(),
        Some("Bearer sk-right")
    );

    // Still 429 after every retry: an error saying so.
    let server = Server::start(Behaviour {
        fail_429: 100,
        ..Default::default()
    });
    let e = OpenAiProvider::connect(http(&server.url)).unwrap_err();
    assert!(e.to_string().contains("gave up after 3 retries"), "{e}");
    assert_eq!(server.statuses().len(), 4);

    // A 413 for a single text cannot be split.
    let server = Server::start(Behaviour {
        max_inputs: 0,
        ..Default::default()
    });
    let e = OpenAiProvider::connect(http(&server.url)).unwrap_err();
    assert!(e.to_string().contains("single text"), "{e}");

    // The model behind the URL changes dimension mid-run: refused.
    let server = Server::start(Behaviour {
        change_dim_after: Some(1),
        ..Default::default()
    });
    let p = OpenAiProvider::connect(http(&server.url)).unwrap();
    let mut out = vec![0.0; 384];
    let e = p.embed(&["x"], &mut out).unwrap_err();
    assert!(e.to_string().contains("385 dimensions"), "{e}");

    // A model of more than 768 dimensions is asked for 768 ("dimensions" in the request).
    let server = Server::start(Behaviour {
        dim: 1536,
        ..Default::default()
    });
    let p = OpenAiProvider::connect(http(&server.url)).unwrap();
    assert_eq!(p.dimension(), 768);

    // Nothing listening: connection errors are retried, then reported.
    let gone = Server::start(Behaviour::default());
    let url = gone.url.clone();
    drop(gone);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let e = OpenAiProvider::connect(http(&url)).unwrap_err();
    assert!(e.to_string().contains("gave up"), "{e}");
}

#[test]
fn http_provider_run_end_to_end_with_faults_and_a_cached_second_run() {
    let server = Server::start(Behaviour {
        dim: 384,
        max_inputs: 20,
        fail_429: 1,
        fail_503: 1,
        key: Some("sk-e2e-SECRET-7f3a".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bundle");
    let provider = format!("openai:{}", server.url);
    let fixture = fixture();
    let args = [
        "run",
        "--source",
        p(&fixture),
        "--target",
        p(&target),
        "--embedding-provider",
        &provider,
        "--embedding-model",
        "test-embed",
        "--embedding-request-size",
        "64",
    ];
    let go = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .args(extra)
            .arg("--quiet")
            .env("ENGRAM_EMBEDDING_API_KEY", "sk-e2e-SECRET-7f3a")
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(!all.contains("SECRET"), "the key was printed: {all}");
        all
    };
    go(&[]);
    let statuses = server.statuses();
    assert!(
        statuses.contains(&429) && statuses.contains(&503) && statuses.contains(&413),
        "{statuses:?}"
    );
    assert!(server
        .log
        .lock()
        .unwrap()
        .iter()
        .all(|l| l.authorization.as_deref() == Some("Bearer sk-e2e-SECRET-7f3a")));
    for f in ["bundle.work/report.json", "bundle/bundle.json"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(!text.contains("SECRET"), "key in {f}");
    }
    let b = json(&target.join("bundle.json"));
    assert_eq!(b["embedding"]["native_dimension"], 384);
    assert_eq!(b["embedding"]["dimension"], 384);
    assert_eq!(b["embedding"]["zero_padding"], 0);
    for (d, n, nz) in vector_profile(&target) {
        assert_eq!(d, 384);
        assert!((n - 1.0).abs() < 1e-3);
        assert!(nz <= 384);
    }

    // Second run: no text goes to the server again (only the probe that learns the dimension).
    let before = server.statuses().len();
    let out = go(&["--overwrite"]);
    assert!(out.contains("cache hit rate 100.0%"), "{out}");
    let after = server.log.lock().unwrap()[before..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].inputs, 1);
    let report = json(&dir.path().join("bundle.work/report.json"));
    assert_eq!(report["embedding"]["embedded"], 0);
}

#[test]
fn http_provider_without_model_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args([
            "run",
            "--source",
            p(&fixture()),
            "--target",
            p(&dir.path().join("b")),
            "--embedding-provider",
            "openai:http://127.0.0.1:9",
        ])
        .env_remove("ENGRAM_EMBEDDING_MODEL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--embedding-model"));
}
