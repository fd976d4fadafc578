//! `--engine ballista://` against a real cluster on loopback: a scheduler and two executors, each a separate
//! process of this binary (`engram-migrate scheduler`, `engram-migrate executor`), as a user starts them.
//! The bundle of a cluster run is compared with a local run's (memories, edges, orphans, their checksums and the
//! vectors), the report must show tasks on both executors, and an executor killed mid-run must never leave a
//! bundle that passes validation with rows missing.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A port that is free now, with the next one free too (an executor listens on both).
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 65_000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A scheduler and executors, killed when dropped.
pub struct Cluster {
    pub port: u16,
    scheduler: Child,
    pub executors: Vec<Child>,
    log_dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(executors: usize, executor_timeout_secs: u64) -> Cluster {
        let log_dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let log = |name: &str| std::fs::File::create(log_dir.path().join(name)).unwrap();
        let scheduler = Command::new(bin())
            .args([
                "scheduler",
                "--port",
                &port.to_string(),
                "--executor-timeout-secs",
                &executor_timeout_secs.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log("scheduler.log"))
            .spawn()
            .expect("start the scheduler");
        let mut cluster = Cluster {
            port,
            scheduler,
            executors: vec![],
            log_dir,
        };
        for _ in 0..executors {
            cluster.add_executor();
        }
        cluster.wait_for_executors(executors);
        cluster
    }

    pub fn add_executor(&mut self) {
        let port = self.port;
        let i = self.executors.len();
        let logs = self.log_dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
        {
            let p = free_port_pair();
            let work = self.log_dir.path().join(format!("executor-{i}"));
            let child = Command::new(bin())
                .args([
                    "executor",
                    "--scheduler",
                    &format!("127.0.0.1:{port}"),
                    "--port",
                    &p.to_string(),
                    "--concurrent-tasks",
                    "2",
                    "--heartbeat-secs",
                    "1",
                    "--work-dir",
                    p_str(&work),
                ])
                .stdout(Stdio::null())
                .stderr(log(&format!("executor-{i}.log")))
                .spawn()
                .expect("start an executor");
            std::fs::create_dir_all(&work).unwrap();
            self.executors.push(child);
        }
    }

    pub fn url(&self) -> String {
        format!("ballista://127.0.0.1:{}", self.port)
    }

    /// The scheduler's job list (our route beside its gRPC).
    pub fn state(&self) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/engram/v1/jobs", self.port),
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_for_executors(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.state() {
                // Exactly n: a killed executor stays listed until the scheduler's timeout expires it.
                if s["executors"].as_array().map_or(0, |e| e.len()) == n {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the cluster did not come up with {n} executors:\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.log_dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn p_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What must be equal between two bundles of the same input: per space the rows and checksums of memories
/// (content and vectors) and edges, and the totals.
fn bundle_content(bundle: &Path) -> serde_json::Value {
    let b = json(&bundle.join("bundle.json"));
    let spaces: Vec<serde_json::Value> = b["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            serde_json::json!({
                "space": s["space"],
                "memories": [s["memories"]["rows"], s["memories"]["checksum"]],
                "edges": [s["edges"]["rows"], s["edges"]["checksum"]],
            })
        })
        .collect();
    serde_json::json!({
        "spaces": spaces,
        "orphans": [b["orphans"]["rows"], b["orphans"]["checksum"]],
        "totals": b["totals"],
        "embedding": [b["embedding"]["provider"], b["embedding"]["dimension"]],
    })
}

fn run_both(source: &Path, extra: &[&str]) -> (tempfile::TempDir, serde_json::Value) {
    // A cluster of its own (two executors of two task slots each), stopped when the test ends: a cluster in a
    // static would outlive the test binary (statics are never dropped).
    let cluster = Cluster::start(2, 30);
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local.bundle");
    let remote = tmp.path().join("cluster.bundle");
    let mut args = vec!["run", "--source", p(source), "--target", p(&local)];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(code(&out), 0, "local run");
    let url = cluster.url();
    let mut args = vec![
        "run",
        "--source",
        p(source),
        "--target",
        p(&remote),
        "--engine",
        &url,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(code(&out), 0, "cluster run\n{}", cluster.logs());
    assert_eq!(
        bundle_content(&remote),
        bundle_content(&local),
        "the cluster's bundle differs from the local one"
    );
    // The tables written for the cluster (sampled source values among them) are not left behind.
    assert!(!tmp
        .path()
        .join("cluster.bundle.work/engine/tables")
        .exists());
    let report = json(&tmp.path().join("cluster.bundle.work/report.json"));
    assert_eq!(report["engine"], serde_json::json!(url));
    let failed: Vec<&serde_json::Value> = report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] != serde_json::json!(true))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    (tmp, report)
}

#[test]
fn fixture_on_the_cluster_equals_the_local_run_with_tasks_on_both_executors() {
    let (_tmp, report) = run_both(&fixture(), &[]);
    let cluster = &report["cluster"];
    let jobs = cluster["jobs"].as_array().unwrap();
    assert!(
        jobs.len() >= 5,
        "transform, embedding and validation jobs: {cluster}"
    );
    assert!(
        jobs.iter().all(|j| j["status"] == "successful"),
        "{cluster}"
    );
    let tasks = cluster["tasks_per_executor"].as_object().unwrap();
    let executors: Vec<&str> = cluster["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(executors.len(), 2, "{cluster}");
    for e in executors {
        assert!(
            tasks.get(e).and_then(|n| n.as_u64()).unwrap_or(0) > 0,
            "executor {e} ran no task: {cluster}"
        );
    }
    // The embedding ran on the cluster: the report's embedding counts are those of a local run.
    assert!(report["embedding"]["embedded"].as_u64().unwrap() > 0);
}

/// model2vec on the executors: each loads the model from the same path (potion-base-8M, scripts/models.sh) and the
/// vectors are the local run's, bit for bit (the memories' checksums cover them).
#[test]
fn model2vec_on_the_executors_equals_the_local_run() {
    let provider = format!("model2vec:{}", crate::embed::model_dir().display());
    let (_tmp, report) = run_both(&fixture(), &["--embedding-provider", &provider]);
    assert!(report["embedding"]["provider"]
        .as_str()
        .unwrap()
        .starts_with("model2vec"));
    assert!(report["embedding"]["embedded"].as_u64().unwrap() > 0);
}

#[test]
fn a_larger_database_split_into_many_files_equals_the_local_run() {
    let tmp = tempfile::tempdir().unwrap();
    let db = large_sqlite(tmp.path(), 30_000);
    let (_t, report) = run_both(&db, &["--max-file-rows", "4000"]);
    let tasks = report["cluster"]["tasks_per_executor"].as_object().unwrap();
    assert_eq!(tasks.len(), 2, "{}", report["cluster"]);
}

#[test]
fn an_unreachable_scheduler_stops_the_run_before_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b.bundle");
    let port = free_port_pair();
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&target),
        "--engine",
        &format!("ballista://127.0.0.1:{port}"),
    ]);
    assert_eq!(code(&out), 4, "a target/engine error");
    let err = stderr(&out);
    assert!(err.contains("no scheduler answers"), "{err}");
    assert!(err.contains("engram-migrate scheduler"), "{err}");
    assert!(!tmp.path().join("b.bundle.work/snapshot").exists());
    assert!(!target.exists());
}

/// An executor killed while the run's jobs are running: the run either finishes with a bundle equal to the
/// local run's (its tasks ran again on the other executor) or fails with a message; never a bundle that passes
/// validation with rows missing.
#[test]
fn a_killed_executor_never_yields_a_passing_bundle_with_rows_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = large_sqlite(tmp.path(), 60_000);
    let local = tmp.path().join("local.bundle");
    assert_eq!(
        code(&run(&["run", "--source", p(&db), "--target", p(&local)])),
        0
    );
    let mut cluster = Cluster::start(2, 4);
    let remote = tmp.path().join("cluster.bundle");
    // Killed if the test fails before it has waited for it (a panic must not leave a run behind).
    struct KillOnDrop(Option<Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let url = cluster.url();
    let run_args = [
        "run",
        "--source",
        p(&db),
        "--target",
        p(&remote),
        "--engine",
        &url,
        "--max-file-rows",
        "5000",
    ];
    let mut guard = KillOnDrop(Some(
        Command::new(bin())
            .args(run_args)
            .arg("--quiet")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let child = guard.0.as_mut().unwrap();
    // Kill an executor once the cluster has finished some jobs of the run (the transform is under way).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = cluster
            .state()
            .map(|s| s["jobs"].as_array().map_or(0, |j| j.len()))
            .unwrap_or(0);
        if jobs >= 4 || Instant::now() > deadline {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = &mut cluster.executors[0];
    victim.kill().unwrap();
    victim.wait().unwrap();
    let started = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break guard.0.take().unwrap().wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!(
                "the run hangs after an executor was killed\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("exit {:?}\n{err}", out.status.code());
    match out.status.code() {
        Some(0) => assert_eq!(
            bundle_content(&remote),
            bundle_content(&local),
            "a run that passed after losing an executor must hold every row"
        ),
        Some(c) => {
            // A cluster failure is the target/engine's (exit 4) and says what to do; a validation failure (5)
            // caught what was lost.
            assert!(c == 4 || c == 5, "exit {c}: {err}");
            if c == 4 {
                assert!(err.contains("the cluster running"), "{err}");
                assert!(err.contains("run the same command again"), "{err}");
                // As it says: with an executor back, the same command resumes and completes, equal to local.
                cluster.add_executor();
                cluster.wait_for_executors(2);
                let again = run(&run_args);
                assert_eq!(code(&again), 0, "{}", cluster.logs());
                assert_eq!(bundle_content(&remote), bundle_content(&local));
            }
            // Nothing half-written passes for a bundle.
            assert!(
                !remote.join("bundle.json").exists()
                    || bundle_content(&remote) == bundle_content(&local)
                    || c == 5,
                "{err}"
            );
        }
        None => panic!("killed by a signal: {err}"),
    }
}
