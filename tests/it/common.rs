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

/// The report of the latest `validate` in a work directory (`validate-report-<time>-<pid>.json`; the run's own
/// report.json is never overwritten by it).
pub fn validate_report(work: &Path) -> serde_json::Value {
    let mut reports: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("validate-report-") && n.ends_with(".json"))
        })
        .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    reports.sort();
    let (_, latest) = reports
        .last()
        .unwrap_or_else(|| panic!("no validate-report-*.json in {}", work.display()));
    json(latest)
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

/// A PostgreSQL 15 + pgvector server for the tests, installed and started by the project's script on a loopback
/// port of its own (ENGRAM_TEST_PG_PORT, default 55432), with the fixture database loaded once per test binary.
/// scripts/test.sh stops it when the tests are done. Returns the fixture database's URL.
pub fn postgres_fixture() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let script = repo().join("scripts/services/postgres.sh");
        let port = pg_port();
        let start = Command::new("bash")
            .arg(&script)
            .args(["start", &port])
            .output()
            .expect("run scripts/services/postgres.sh");
        assert!(
            start.status.success(),
            "postgres.sh start failed:\n{}",
            String::from_utf8_lossy(&start.stderr)
        );
        let load = Command::new("bash")
            .arg(&script)
            .args(["load", "fixture", &port])
            .output()
            .expect("run scripts/services/postgres.sh");
        assert!(
            load.status.success(),
            "postgres.sh load failed:\n{}",
            String::from_utf8_lossy(&load.stderr)
        );
        String::from_utf8_lossy(&load.stdout)
            .lines()
            .last()
            .expect("a URL")
            .trim()
            .to_string()
    })
    .clone()
}

/// A new, empty database `name` on the test PostgreSQL server (dropped first if there); its URL.
pub fn pg_database(name: &str) -> String {
    let url = postgres_fixture();
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {name}"));
    let base = url.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

pub fn pg_port() -> String {
    std::env::var("ENGRAM_TEST_PG_PORT").unwrap_or_else(|_| "55432".into())
}

/// One value from psql (as the postgres user over the server's socket directory).
pub fn psql(db: &str, sql: &str) -> String {
    let port = pg_port();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "psql", "-h"])
        .arg(format!("/tmp/engram-migrate-pg-{port}"))
        .args([
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub const ARCADEDB_PASSWORD: &str = "engram-test-pw";

pub fn arcadedb_port() -> String {
    std::env::var("ENGRAM_TEST_ARCADEDB_PORT").unwrap_or_else(|_| "57687".into())
}

/// An ArcadeDB server (Bolt + Cypher, the stand-in for Neo4j) started once per test binary by the project's
/// script on a loopback port of its own (ENGRAM_TEST_ARCADEDB_PORT, default 57687), with the Cypher file
/// `fixture` (under fixtures/neo4j/) loaded into a fresh database `db`. scripts/test.sh stops it at the end.
/// Returns the database's bolt:// URL (no credentials: user root, password ARCADEDB_PASSWORD).
pub fn arcadedb_fixture(db: &str, fixture: &str) -> String {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    static LOADED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let script = repo().join("scripts/services/arcadedb.sh");
    let port = arcadedb_port();
    STARTED.get_or_init(|| {
        let start = Command::new("bash")
            .arg(&script)
            .args(["start", &port])
            .env("ARCADEDB_PASSWORD", ARCADEDB_PASSWORD)
            .output()
            .expect("run scripts/services/arcadedb.sh");
        assert!(
            start.status.success(),
            "arcadedb.sh start failed:\n{}",
            String::from_utf8_lossy(&start.stderr)
        );
    });
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if !loaded.iter().any(|d| d == db) {
        let load = Command::new("bash")
            .arg(&script)
            .arg("load")
            .arg(repo().join("fixtures/neo4j").join(fixture))
            .args([&port, db])
            .env("ARCADEDB_PASSWORD", ARCADEDB_PASSWORD)
            .output()
            .expect("run scripts/services/arcadedb.sh");
        assert!(
            load.status.success(),
            "arcadedb.sh load failed:\n{}",
            String::from_utf8_lossy(&load.stderr)
        );
        loaded.push(db.to_string());
    }
    format!("bolt://127.0.0.1:{port}/{db}")
}

/// A Bolt connection to a database of the test ArcadeDB (user root), with the runtime to drive it.
pub fn bolt(db: &str) -> (tokio::runtime::Runtime, neo4rs::Graph) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = neo4rs::ConfigBuilder::new()
        .uri(format!("bolt://127.0.0.1:{}", arcadedb_port()))
        .user("root")
        .password(ARCADEDB_PASSWORD)
        .db(db)
        .build()
        .unwrap();
    let g = {
        let _in_runtime = rt.enter();
        neo4rs::Graph::connect(cfg).unwrap()
    };
    (rt, g)
}

/// Runs Cypher statements on a database of the test ArcadeDB through the neo4rs driver (with parameters).
pub fn cypher(db: &str, statements: &[neo4rs::Query]) {
    let (rt, g) = bolt(db);
    rt.block_on(async {
        for q in statements {
            g.run(q.clone()).await.unwrap();
        }
    });
}

/// The validation check `name` of a run report.
pub fn check(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in the report"))
        .clone()
}

/// Memories of a bundle as JSON rows: its live memories, read as every reader of the tool reads them (an
/// incremental run's layered bundle holds removed rows in its earlier parts).
pub fn bundle_memories(bundle: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use engram_migrate::bundle::{read_live, BundleManifest, Removed};
    let m = BundleManifest::load(bundle).unwrap();
    let removed = Removed::load(bundle, &m).unwrap();
    let mut rows = vec![];
    for part in m.memory_parts(bundle) {
        for b in read_live(&part, &removed, 8192).unwrap() {
            let b = b.unwrap();
            for r in 0..b.num_rows() {
                rows.push(engram_migrate::json::row_object(&b, r).unwrap());
            }
        }
    }
    rows
}
