//! A `run` killed with SIGKILL at several points and started again with the same arguments ends with a bundle
//! whose checksums equal those of an uninterrupted run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn args<'a>(src: &'a str, target: &'a str, work: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--source",
        src,
        "--target",
        target,
        "--work-dir",
        work,
        "--max-file-rows",
        "4000",
        "--batch-size",
        "1000",
        "--quiet",
    ]
}

fn any_file(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        let p = e.path();
        if pred(&p) || (p.is_dir() && any_file(&p, pred)) {
            return true;
        }
    }
    false
}

/// Starts the run and SIGKILLs it as soon as `marker` holds; returns whether it was killed before finishing.
/// A run that ends by itself prints its stderr, so a failed kill test says why.
pub fn run_and_kill(a: &[&str], marker: &dyn Fn() -> bool) -> bool {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin())
        .args(a)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            eprintln!(
                "run ended by itself ({st}) before the kill point; its stderr:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            return false;
        }
        if marker() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "run neither finished nor reached the kill point"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn killed_runs_resume_to_identical_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let db = large_sqlite(tmp.path(), 40_000);
    let src = p(&db).to_string();

    let clean = tmp.path().join("clean");
    let clean_work = tmp.path().join("clean.work");
    let out = Command::new(bin())
        .args(args(&src, p(&clean), p(&clean_work)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let target = tmp.path().join("killed");
    let work = tmp.path().join("killed.work");
    let (t, w) = (p(&target).to_string(), p(&work).to_string());
    let snap_tables = work.join("snapshot/tables");
    let partial = tmp.path().join("killed.partial");
    type Marker<'a> = Box<dyn Fn() -> bool + 'a>;
    let markers: Vec<(&str, Marker)> = vec![
        (
            "mid-snapshot",
            Box::new(|| any_file(&snap_tables, &|p| p.ends_with("part-00002.parquet"))),
        ),
        (
            "mid-transform",
            Box::new(|| work.join("transform.partial/memories").exists()),
        ),
        (
            "mid-load",
            Box::new(|| any_file(&partial, &|p| p.ends_with("part-00003.parquet"))),
        ),
    ];
    // Every kill point must be reached: a run that finished before one proves nothing about resuming from it.
    for (name, marker) in &markers {
        assert!(!marker(), "kill point {name} holds before the run starts");
        assert!(
            run_and_kill(&args(&src, &t, &w), marker.as_ref()),
            "the run finished before the kill point {name}; make the input larger"
        );
        eprintln!("killed {name}");
        assert!(
            !target.exists() || target.join("bundle.json").exists(),
            "a half-written bundle at the target after a kill {name}"
        );
    }
    let out = Command::new(bin())
        .args(args(&src, &t, &w))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resumed run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(space_checksums(&clean), space_checksums(&target));
    let report = json(&work.join("report.json"));
    assert!(report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
}
