use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_engram-migrate")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture() -> PathBuf {
    repo().join("fixtures/codegraph.sqlite")
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run engram-migrate");
    eprintln!(
        "$ engram-migrate {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// Per space: (memories checksum, edges checksum), from a bundle.json.
pub fn space_checksums(bundle: &Path) -> Vec<(String, String, String, u64)> {
    let b = json(&bundle.join("bundle.json"));
    b["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["space"].as_str().unwrap().to_string(),
                s["memories"]["checksum"].as_str().unwrap().to_string(),
                s["edges"]["checksum"].as_str().unwrap().to_string(),
                s["memories"]["rows"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Builds a synthetic SQLite file with scripts/gen-large-sqlite.sh.
pub fn large_sqlite(dir: &Path, rows: u64) -> PathBuf {
    let out = dir.join(format!("large-{rows}.sqlite"));
    let st = Command::new("bash")
        .arg(repo().join("scripts/gen-large-sqlite.sh"))
        .arg(rows.to_string())
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "gen-large-sqlite.sh failed");
    out
}

pub fn sqlite_count(db: &Path, table: &str) -> u64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

/// The Python with pyarrow and duckdb, installed by the project's script.
pub fn python() -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/python-env.sh"))
        .output()
        .expect("scripts/python-env.sh");
    assert!(
        out.status.success(),
        "scripts/python-env.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string()
}
