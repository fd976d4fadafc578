//! Incremental re-runs, schema drift and Engram as a source (issue 21). Each incremental run is checked against a
//! fresh full run of the changed source (the bundles' per-space checksums cover every column, embeddings
//! included), and its delta against changes the test made itself.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use crate::engram_standin::{Config, Standin, Write};

/// A deterministic generator: doubles with 17 significant digits, NULLs, unicode.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn f64(&mut self) -> f64 {
        (self.next() as f64 / (1u64 << 53) as f64) * 1000.0 - 500.0
    }
}

/// parents (keyed), children (keyed, FK to parents, NULLs), log (no key of its own: a SQLite rowid table).
fn source_db(dir: &Path) -> PathBuf {
    let db = dir.join("src.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
         CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parents(id),
                                note TEXT, v REAL);
         CREATE TABLE log (msg TEXT, n INTEGER);",
    )
    .unwrap();
    let mut g = Lcg(7);
    let tx = c.unchecked_transaction().unwrap();
    for i in 1..=60 {
        tx.execute(
            "INSERT INTO parents VALUES (?1, ?2, ?3)",
            rusqlite::params![
                i,
                format!("parent {i} ünïcode"),
                if i % 7 == 0 { None } else { Some(g.f64()) }
            ],
        )
        .unwrap();
    }
    for i in 1..=400 {
        let note = if i % 5 == 0 {
            None
        } else {
            Some(format!("child {i} of {}", i % 60 + 1))
        };
        tx.execute(
            "INSERT INTO children VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![i, i % 60 + 1, note, g.f64()],
        )
        .unwrap();
    }
    for i in 0..30 {
        tx.execute(
            "INSERT INTO log VALUES (?1, ?2)",
            rusqlite::params![format!("event {}", i % 25), i % 4],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    db
}

fn sql(db: &Path, s: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(s)
        .unwrap();
}

/// `run` of `source` into `target` with the work directory `work`, then `extra`.
fn migrate_args<'a>(
    source: &'a str,
    target: &'a Path,
    work: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "--source",
        source,
        "--target",
        p(target),
        "--work-dir",
        p(work),
    ];
    // The persistent cache keeps the vectors of unchanged memories (hashing turns it off by default).
    a.extend_from_slice(&["--embedding-cache-mb", "64"]);
    a.extend_from_slice(extra);
    a
}

fn migrate(source: &str, target: &Path, work: &Path, extra: &[&str]) -> Output {
    run(&migrate_args(source, target, work, extra))
}

fn ok(out: &Output) {
    assert_eq!(code(out), 0, "{}", stderr(out));
}

/// The command exited with `exit` and said `said` on stderr.
fn fails(out: &Output, exit: i32, said: &str) {
    let e = stderr(out);
    assert_eq!(code(out), exit, "{e}");
    assert!(e.contains(said), "expected {said:?} in: {e}");
}

fn delta_of(report: &serde_json::Value, table: &str) -> (u64, u64, u64, u64) {
    let t = report["delta"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no delta for {table}: {}", report["delta"]));
    let n = |k: &str| t[k].as_u64().unwrap();
    (n("added"), n("changed"), n("deleted"), n("unchanged"))
}

/// The source database in `dir` and a completed full run of it: (database, bundle, work directory).
fn first_run(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let db = source_db(dir);
    let (target, work) = (dir.join("b"), dir.join("w"));
    ok(&migrate(p(&db), &target, &work, &[]));
    (db, target, work)
}

/// The bundle a fresh full run of `db` (copied, so nothing is shared) writes.
fn full_run(dir: &Path, db: &Path) -> PathBuf {
    let copy = dir.join("full.sqlite");
    std::fs::copy(db, &copy).unwrap();
    let (target, work) = (dir.join("full-bundle"), dir.join("full-work"));
    ok(&migrate(p(&copy), &target, &work, &[]));
    target
}

#[test]
fn sqlite_incremental_reports_the_exact_delta_and_equals_a_full_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    let first = json(&work.join("report.json"));
    assert!(first["delta"].is_null(), "a first run has no delta");

    // One unit in the last place of a double is a change; so are a new NULL and a new text.
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: f64 = c
        .query_row("SELECT v FROM children WHERE id = 10", [], |r| r.get(0))
        .unwrap();
    c.execute(
        "UPDATE children SET v = ?1 WHERE id = 10",
        [f64::from_bits(v.to_bits() + 1)],
    )
    .unwrap();
    drop(c);
    sql(
        &db,
        "UPDATE children SET note = 'changed ✓' WHERE id = 11;
         UPDATE children SET note = NULL WHERE id = 12;
         DELETE FROM children WHERE id IN (20, 21);
         INSERT INTO children VALUES (1001, 3, 'new one', 0.30000000000000004), (1002, NULL, NULL, NULL);
         UPDATE parents SET name = 'renamed' WHERE id = 5;
         INSERT INTO log VALUES ('event 3', 3);
         DELETE FROM log WHERE rowid = 30;",
    );
    let out = migrate(p(&db), &target, &work, &["--incremental"]);
    ok(&out);
    let r = json(&work.join("report.json"));
    assert_eq!(delta_of(&r, "children"), (2, 3, 2, 395));
    assert_eq!(delta_of(&r, "parents"), (0, 1, 0, 59));
    // log has no key of its own: its rows compare by content, as a multiset (the new row repeats an old one).
    assert_eq!(delta_of(&r, "log"), (1, 0, 1, 29));
    let d = &r["delta"];
    assert_eq!(
        (
            d["added"].as_u64(),
            d["changed"].as_u64(),
            d["deleted"].as_u64()
        ),
        (Some(3), Some(4), Some(3))
    );
    let m = &d["memories"];
    assert_eq!(m["deleted"].as_u64(), Some(3), "{m}");
    assert_eq!(m["added"].as_u64(), Some(3), "{m}");
    // The bundle was extended by a layer: only the changed rows (5) and the keyless log (31 rows, mapped again
    // whole) went through the embedding stage, without reading the persistent cache back.
    assert_eq!(r["incremental_mode"], "layer 1", "{}", r["stages"]);
    let e = &r["embedding"];
    let (embedded, texts) = (
        e["embedded"].as_u64().unwrap(),
        e["texts"].as_u64().unwrap(),
    );
    assert!(embedded > 0 && embedded <= texts, "{e}");
    assert!(
        texts <= 5 + 31,
        "only the layer's memories are embedded: {e}"
    );
    let stages = r["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s["stage"] != "open cache"),
        "{stages:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("delta since the last run"));
    assert!(
        !work.join("snapshot.prev").exists(),
        "the baseline goes once the run is complete"
    );

    // The same bundle as a fresh full run of the changed source.
    let full = full_run(tmp.path(), &db);
    assert_eq!(space_checksums(&target), space_checksums(&full));

    // Nothing changed since: an empty delta, and the bundle is kept as it is.
    ok(&migrate(p(&db), &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    assert_eq!(
        (
            r["delta"]["added"].as_u64(),
            r["delta"]["changed"].as_u64(),
            r["delta"]["deleted"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(
        r["delta"]["memories"]["unchanged"].as_u64(),
        json(&target.join("bundle.json"))["totals"]["memories"].as_u64()
    );
    assert_eq!(space_checksums(&target), space_checksums(&full));
    assert_eq!(r["incremental_mode"], "unchanged");
    let stages = r["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s["stage"] != "baseline"),
        "a bundle without a live target needs no baseline: {stages:?}"
    );
}

/// Layers stack: each incremental run removes from every layer below it, a memory changed twice keeps its
/// last version, one added and then deleted is gone, a deleted parent turns its children's edges into orphans;
/// after each run the bundle equals a fresh full run's. The layered bundle then goes to a live target whole:
/// every live memory once, no removed one.
#[test]
fn layers_stack_and_each_equals_a_full_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    let steps = [
        "UPDATE children SET note = 'once' WHERE id = 11; INSERT INTO children VALUES (1001, 3, 'new', 0.1);
         DELETE FROM children WHERE id IN (20, 21);",
        "UPDATE children SET note = 'twice' WHERE id = 11; DELETE FROM children WHERE id = 1001;
         INSERT INTO children VALUES (20, 4, 'back again', 1.5); DELETE FROM parents WHERE id = 7;",
        "UPDATE children SET parent_id = 999 WHERE id = 30; UPDATE parents SET name = 'p ✓' WHERE id = 8;
         DELETE FROM log WHERE rowid = 5;",
        // VACUUM renumbers the rowids of a table without a key of its own: its content compares equal, its
        // memories' ids (made of the rowid) do not.
        "VACUUM;",
    ];
    for (n, step) in steps.iter().enumerate() {
        // A child of a parent that is not there is what the test is about: no foreign key enforcement.
        sql(&db, &format!("PRAGMA foreign_keys = OFF; {step}"));
        ok(&migrate(p(&db), &target, &work, &["--incremental"]));
        let r = json(&work.join("report.json"));
        assert_eq!(
            r["incremental_mode"],
            format!("layer {}", n + 1),
            "{}",
            r["stages"]
        );
        let full_dir = tmp.path().join(format!("full-{n}"));
        std::fs::create_dir_all(&full_dir).unwrap();
        let full = full_run(&full_dir, &db);
        assert_eq!(
            space_checksums(&target),
            space_checksums(&full),
            "after step {n}"
        );
        let (a, b) = (
            json(&target.join("bundle.json")),
            json(&full.join("bundle.json")),
        );
        assert_eq!(a["totals"], b["totals"]);
        assert_eq!(a["orphans"]["checksum"], b["orphans"]["checksum"]);
        assert_eq!(a["transform_key"], b["transform_key"]);
        assert_eq!(a["format"], "engram-bundle/3");
        assert_eq!(a["removed"].as_array().unwrap().len(), n + 1);
        assert_eq!(a["totals"]["spaces"], b["totals"]["spaces"]);
        if n == 2 {
            assert_eq!(
                r["delta"]["memories"]["changed"].as_u64(),
                Some(2),
                "{}",
                r["delta"]
            );
        }
    }
    // The work directory's staged output is the last layer's (the changed rows only): `load` alone refuses to
    // make a bundle of it, even with --overwrite, and the bundle is untouched.
    let before = space_checksums(&target);
    let out = run(&[
        "load",
        "--work-dir",
        p(&work),
        "--target",
        p(&target),
        "--overwrite",
    ]);
    fails(&out, 2, "incremental run's layer");
    assert_eq!(space_checksums(&target), before);

    // The whole layered bundle into a fresh live target.
    let standin = Standin::start(Config::default());
    let out = run(&[
        "load",
        "--bundle",
        p(&target),
        "--target",
        &standin_target(&standin),
        "--work-dir",
        p(&tmp.path().join("load-work")),
        "--max-predicted-loss",
        "1",
    ]);
    ok(&out);
    let writes = standin.state.writes.lock().unwrap().clone();
    let live = json(&target.join("bundle.json"))["totals"]["memories"]
        .as_u64()
        .unwrap();
    assert_eq!(writes.len() as u64, live, "every live memory");
    assert!(writes.values().all(|n| *n == 1), "each once");
    for gone in ["children_1001", "children_21"] {
        assert!(
            !writes.contains_key(&("children".to_string(), gone.to_string())),
            "{gone} was removed"
        );
    }
    assert!(!writes.contains_key(&("parents".to_string(), "parents_7".to_string())));
}

#[test]
fn incremental_needs_an_earlier_run_and_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let out = migrate(p(&db), &target, &work, &["--incremental"]);
    fails(&out, 2, "needs an earlier completed run");
    assert!(!target.exists(), "nothing written");
    ok(&migrate(p(&db), &target, &work, &[]));
    let out = run(&[
        "snapshot",
        "--source",
        p(&db),
        "--work-dir",
        p(&work),
        "--incremental",
    ]);
    fails(&out, 2, "--incremental is a flag of `run`");
}

#[test]
fn a_killed_incremental_run_resumes_against_its_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    sql(
        &db,
        "DELETE FROM children WHERE id <= 50; UPDATE parents SET score = NULL WHERE id = 1;",
    );
    // The run stops after its new snapshot (a failing mapping file stands for a kill between stages).
    let bad = tmp.path().join("bad.sql");
    std::fs::write(&bad, "CREATE VIEW memories AS SELECT * FROM no_such_table;").unwrap();
    let out = migrate(p(&db), &target, &work, &["--incremental", "--sql", p(&bad)]);
    assert_ne!(code(&out), 0);
    assert!(
        work.join("snapshot.prev/manifest.json").is_file(),
        "the baseline is kept"
    );
    // The source changes again before the resume: the new snapshot is taken again, the baseline stays.
    sql(&db, "INSERT INTO children VALUES (2000, 1, 'late', 1.5);");
    ok(&migrate(p(&db), &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    assert_eq!(delta_of(&r, "children"), (1, 0, 50, 350));
    assert_eq!(delta_of(&r, "parents"), (0, 1, 0, 59));
    assert_eq!(
        space_checksums(&target),
        space_checksums(&full_run(tmp.path(), &db))
    );
}

fn drift_stops(out: &Output, said: &[&str]) {
    let e = stderr(out);
    assert_eq!(code(out), 2, "{e}");
    assert!(
        e.contains("schema has changed since the last completed run"),
        "{e}"
    );
    for s in said {
        assert!(e.contains(s), "expected {s:?} in: {e}");
    }
    assert!(e.contains("--allow-schema-drift"), "{e}");
}

#[test]
fn schema_drift_stops_each_kind_of_change_and_allow_proceeds() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    let again = |extra: &[&str]| {
        let mut a = vec!["--fresh", "--overwrite"];
        a.extend_from_slice(extra);
        migrate(p(&db), &target, &work, &a)
    };
    // Data changes alone are no drift.
    sql(&db, "UPDATE children SET note = 'x' WHERE id = 1;");
    ok(&again(&[]));

    sql(&db, "ALTER TABLE children ADD COLUMN extra TEXT;");
    let out = again(&[]);
    drift_stops(&out, &["table children: column added extra (TEXT"]);
    let r = json(&work.join("report.json"));
    assert_eq!(
        r["schema_drift"][0]["change"], "column added",
        "the report lists it: {r}"
    );
    // An incremental run now refuses: the work directory's snapshot is the stopped run's, not the bundle's.
    let out = migrate(p(&db), &target, &work, &["--incremental"]);
    fails(&out, 2, "is not the one the last completed run");

    let out = again(&["--allow-schema-drift"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("column added extra"));
    assert_eq!(
        json(&work.join("report.json"))["schema_drift"][0]["column"],
        "extra"
    );
    // The accepted schema is the new baseline.
    ok(&again(&[]));

    sql(&db, "ALTER TABLE children DROP COLUMN extra;");
    drift_stops(&again(&[]), &["table children: column removed extra"]);
    ok(&again(&["--allow-schema-drift"]));

    // A retyped column: SQLite rebuilds the table.
    sql(
        &db,
        "CREATE TABLE parents2 (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score TEXT);
         INSERT INTO parents2 SELECT id, name, CAST(score AS TEXT) FROM parents;
         PRAGMA foreign_keys = OFF; DROP TABLE parents; ALTER TABLE parents2 RENAME TO parents;",
    );
    drift_stops(
        &again(&[]),
        &["table parents: column retyped score (REAL", "-> TEXT"],
    );
    ok(&again(&["--allow-schema-drift"]));

    sql(&db, "CREATE TABLE tags (id INTEGER PRIMARY KEY, tag TEXT);");
    drift_stops(&again(&[]), &["table tags: table added"]);
    ok(&again(&["--allow-schema-drift"]));
    sql(&db, "DROP TABLE tags;");
    drift_stops(&again(&[]), &["table tags: table removed"]);
    ok(&again(&["--allow-schema-drift"]));
    // A table the run leaves out is no drift.
    sql(&db, "CREATE TABLE scratch (id INTEGER PRIMARY KEY);");
    ok(&again(&["--exclude", "scratch"]));
    // Nor is another source in the same work directory (--fresh): it has another schema, not a drifted one.
    let other = tmp.path().join("other.sqlite");
    sql(
        &other,
        "CREATE TABLE z (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO z VALUES (1, 'a'), (2, 'b');",
    );
    ok(&migrate(
        p(&other),
        &target,
        &work,
        &["--fresh", "--overwrite"],
    ));
}

#[test]
fn an_incremental_run_stops_on_drift_and_proceeds_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    sql(
        &db,
        "ALTER TABLE parents ADD COLUMN motto TEXT; UPDATE parents SET motto = 'm' WHERE id = 1;",
    );
    drift_stops(
        &migrate(p(&db), &target, &work, &["--incremental"]),
        &["table parents: column added motto"],
    );
    ok(&migrate(
        p(&db),
        &target,
        &work,
        &["--incremental", "--allow-schema-drift"],
    ));
    let r = json(&work.join("report.json"));
    // A new column changes every row of its table.
    assert_eq!(delta_of(&r, "parents"), (0, 60, 0, 0));
    assert_eq!(delta_of(&r, "children"), (0, 0, 0, 400));
    assert_eq!(r["schema_drift"][0]["column"], "motto");
    assert_eq!(
        space_checksums(&target),
        space_checksums(&full_run(tmp.path(), &db))
    );
}

// ---------------------------------------------------------------------------------------------- Engram

fn standin_target(s: &Standin) -> String {
    s.http_target()
}

/// `run` of `db` into the Engram stand-in, the bundle in `dir/b` and the work directory `dir/w`.
fn run_live(db: &Path, standin: &Standin, dir: &Path, extra: &[&str]) -> Output {
    let target = standin_target(standin);
    let (bundle, work) = (dir.join("b"), dir.join("w"));
    let mut a = vec![
        "run",
        "--source",
        p(db),
        "--target",
        &target,
        "--bundle",
        p(&bundle),
    ];
    a.extend_from_slice(&[
        "--work-dir",
        p(&work),
        "--embedding-cache-mb",
        "64",
        "--max-predicted-loss",
        "1",
    ]);
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn the_delta_goes_to_engram_and_deletes_are_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    let standin = Standin::start(Config::default());
    let work = tmp.path().join("w");
    let live = |extra: &[&str]| run_live(&db, &standin, tmp.path(), extra);
    ok(&live(&[]));
    let sent_first: u64 = standin
        .state
        .writes
        .lock()
        .unwrap()
        .values()
        .map(|n| *n as u64)
        .sum();
    assert!(
        sent_first >= 460,
        "the first run sends everything: {sent_first}"
    );

    sql(&db, "UPDATE children SET note = 'now different' WHERE id = 7; DELETE FROM children WHERE id = 8;
              INSERT INTO children VALUES (3000, 2, 'brand new', 2.5);");
    let out = live(&["--incremental"]);
    ok(&out);
    let writes = standin.state.writes.lock().unwrap().clone();
    let twice: Vec<_> = writes
        .iter()
        .filter(|(_, n)| **n == 2)
        .map(|(k, _)| k.1.clone())
        .collect();
    assert_eq!(
        twice,
        vec!["children_7".to_string()],
        "only the changed memory is sent again"
    );
    assert_eq!(
        writes.get(&("children".to_string(), "children_3000".to_string())),
        Some(&1)
    );
    let sent_now: u64 = writes.values().map(|n| *n as u64).sum();
    assert_eq!(
        sent_now - sent_first,
        2,
        "one changed and one added memory sent, nothing else"
    );
    assert_eq!(
        *standin.state.deletes.lock().unwrap(),
        vec!["children_8".to_string()]
    );
    let r = json(&work.join("report.json"));
    let d = &r["delivery"];
    assert_eq!(d["scope"], "delta: 2 to send, 1 to delete", "{d}");
    // Engram answers "not_supported" and keeps it: counted as kept, said on screen and in the report.
    assert_eq!(d["deletes"]["kept"].as_u64(), Some(1), "{d}");
    assert!(
        stderr(&out).contains("still in the target"),
        "{}",
        stderr(&out)
    );
    assert!(!work.join("delta/undelivered").exists(), "delivered");
}

#[test]
fn an_undelivered_delta_is_sent_with_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    let standin = Standin::start(Config::default());
    let work = tmp.path().join("w");
    let live = |extra: &[&str]| run_live(&db, &standin, tmp.path(), extra);
    ok(&live(&[]));
    // The second run's delivery fails (the server refuses every write for a while): its delta stays owed.
    sql(&db, "UPDATE children SET note = 'second' WHERE id = 30;");
    standin
        .state
        .config
        .fail_next
        .store(10_000, std::sync::atomic::Ordering::SeqCst);
    let out = live(&["--incremental"]);
    assert_ne!(code(&out), 0, "the delivery failed");
    assert!(work.join("delta/undelivered").exists());
    standin
        .state
        .config
        .fail_next
        .store(0, std::sync::atomic::Ordering::SeqCst);
    sql(&db, "UPDATE children SET note = 'third' WHERE id = 31;");
    ok(&live(&["--incremental"]));
    let writes = standin.state.writes.lock().unwrap().clone();
    for id in ["children_30", "children_31"] {
        assert_eq!(
            writes.get(&("children".to_string(), id.to_string())),
            Some(&2),
            "{id} sent again"
        );
    }
    let r = json(&work.join("report.json"));
    assert_eq!(r["delivery"]["scope"], "delta: 2 to send, 0 to delete");
}

/// Unit vectors that differ (Engram's near-duplicate filter keeps them all).
fn vector(seed: u64) -> Vec<f32> {
    let mut g = Lcg(seed * 7919 + 1);
    let v: Vec<f32> = (0..768).map(|_| g.f64() as f32).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn engram_memories_come_back_into_a_bundle_with_their_vectors() {
    let standin = Standin::start(Config::default());
    for (space, n) in [("notes", 25u64), ("people", 12)] {
        for i in 0..n {
            standin
                .state
                .remember(Write {
                    space: space.into(),
                    id: Some(format!("{space}-{i}")),
                    content: format!("{{\"title\": \"{space} {i} ✓\"}}"),
                    embedding: Some(vector(i + if space == "notes" { 0 } else { 1000 })),
                    confidence: Some(0.25 + i as f32 / 100.0),
                    timestamp: Some(format!("2026-01-{:02}T10:00:00Z", i + 1)),
                })
                .unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let source = standin_target(&standin);
    let out = run(&[
        "run",
        "--source",
        &source,
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    ok(&out);
    let b = json(&target.join("bundle.json"));
    assert_eq!(b["totals"]["memories"].as_u64(), Some(37));
    assert_eq!(
        b["totals"]["edges"].as_u64(),
        Some(0),
        "Engram stores no edges"
    );
    assert_eq!(
        b["embedding"]["existing_vectors"].as_u64(),
        Some(37),
        "{}",
        b["embedding"]
    );
    let mems = bundle_memories(&target);
    for m in &mems {
        let (space, id) = (m["space"].as_str().unwrap(), m["id"].as_str().unwrap());
        let i: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        let want = vector(i + if space == "notes" { 0 } else { 1000 });
        let got: Vec<f32> = m["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-6,
            "{space}/{id}: the server's vector is kept ({diff})"
        );
        let content: serde_json::Value =
            serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            content["content"],
            format!("{{\"title\": \"{space} {i} ✓\"}}")
        );
        assert_eq!(content["id"], id);
    }
    let r = json(&work.join("report.json"));
    assert_eq!(r["outcome"], "ok", "{}", r["validation"]);
    // One space with --include.
    let (t2, w2) = (tmp.path().join("b2"), tmp.path().join("w2"));
    ok(&run(&[
        "run",
        "--source",
        &source,
        "--target",
        p(&t2),
        "--work-dir",
        p(&w2),
        "--include",
        "people",
    ]));
    assert_eq!(
        json(&t2.join("bundle.json"))["totals"]["memories"].as_u64(),
        Some(12)
    );
}

#[test]
fn engram_source_errors_name_the_server() {
    let out = run(&[
        "plan",
        "--source",
        "engram+http://127.0.0.1:9",
        "--target",
        "/tmp/x",
    ]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("Engram at http://127.0.0.1:9"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "plan",
        "--source",
        "engram+grpc://127.0.0.1:9",
        "--target",
        "/tmp/x",
    ]);
    fails(&out, 2, "engram+http://");
}

// ---------------------------------------------------------------------------------- PostgreSQL and Redis

/// A fresh full run of `source` as it is now, in a work directory of its own.
fn full_run_of(dir: &Path, source: &str, extra: &[&str]) -> PathBuf {
    let (target, work) = (dir.join("full-bundle"), dir.join("full-work"));
    ok(&migrate(source, &target, &work, extra));
    target
}

#[test]
fn postgres_incremental_reports_the_delta_and_equals_a_full_run() {
    let url = pg_database("it_incremental");
    psql(
        "it_incremental",
        "CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE members (id bigint PRIMARY KEY, team_id int REFERENCES teams(id), name text,
                               score float8, tags text[], seen timestamptz);
         CREATE TABLE events (what text, n int);
         INSERT INTO teams SELECT g, 'team ' || g FROM generate_series(1, 20) g;
         INSERT INTO members SELECT g, 1 + g % 20, CASE WHEN g % 9 = 0 THEN NULL ELSE 'member ' || g END,
                sin(g) * 1e6, ARRAY['a' || g % 3], '2026-01-01'::timestamptz + g * interval '1 hour'
           FROM generate_series(1, 300) g;
         INSERT INTO events SELECT 'event ' || g % 10, g % 3 FROM generate_series(1, 40) g;",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    ok(&migrate(&url, &target, &work, &[]));
    psql(
        "it_incremental",
        "UPDATE members SET score = score + 1e-9 WHERE id = 5;
         UPDATE members SET name = NULL WHERE id = 6;
         DELETE FROM members WHERE id IN (7, 8, 9);
         INSERT INTO members VALUES (1000, 2, 'new', 0.1, '{}', NULL);
         UPDATE teams SET name = 'renamed' WHERE id = 3;
         DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE what = 'event 1');",
    );
    ok(&migrate(&url, &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    assert_eq!(delta_of(&r, "members"), (1, 2, 3, 295));
    assert_eq!(delta_of(&r, "teams"), (0, 1, 0, 19));
    assert_eq!(delta_of(&r, "events"), (0, 0, 1, 39), "no key: by content");
    // A layer: the 4 changed members and teams, and events (no key of its own: mapped again whole, 39 rows).
    assert_eq!(r["incremental_mode"], "layer 1", "{}", r["stages"]);
    let embedded = r["embedding"]["embedded"].as_u64().unwrap();
    assert!(
        embedded <= 4 + 39,
        "only the layer's texts embedded: {}",
        r["embedding"]
    );
    assert_eq!(
        space_checksums(&target),
        space_checksums(&full_run_of(tmp.path(), &url, &[]))
    );
}

#[test]
fn redis_incremental_reports_the_delta_and_equals_a_full_run() {
    use crate::redis::{cmd, con, lock, reset, server};
    let _guard = lock(7);
    let (url, _) = server(7);
    let mut c = con(&url);
    reset(&mut c);
    for i in 0..50 {
        cmd(
            &mut c,
            &[
                b"SET",
                format!("user:{i}").as_bytes(),
                format!("{{\"n\": {i}}}").as_bytes(),
            ],
        );
    }
    cmd(&mut c, &[b"HSET", b"cfg", b"a", b"1", b"b", b"2"]);
    cmd(
        &mut c,
        &[b"ZADD", b"board", b"1.5", b"x", b"2.25", b"y", b"3", b"z"],
    );
    cmd(&mut c, &[b"SELECT", b"1"]);
    cmd(
        &mut c,
        &[b"SET", b"user:1", b"the same key in another database"],
    );
    cmd(&mut c, &[b"SELECT", b"0"]);
    let tmp = tempfile::tempdir().unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    ok(&migrate(&url, &target, &work, &[]));
    cmd(&mut c, &[b"SET", b"user:3", b"changed"]);
    cmd(&mut c, &[b"DEL", b"user:4"]);
    cmd(&mut c, &[b"SET", "user:ü\u{1F600}".as_bytes(), b"new"]);
    cmd(&mut c, &[b"ZADD", b"board", b"9", b"y"]);
    cmd(&mut c, &[b"HSET", b"cfg", b"c", b"3"]);
    ok(&migrate(&url, &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    // keys: user:3 and the two collections changed (their value JSON), user:4 deleted, one added.
    assert_eq!(delta_of(&r, "keys"), (1, 3, 1, 49));
    // members are keyed by position in their collection's canonical order: y moved past z (both positions
    // changed), cfg gained c at the end.
    assert_eq!(delta_of(&r, "members"), (1, 2, 0, 3));
    assert_eq!(
        space_checksums(&target),
        space_checksums(&full_run_of(tmp.path(), &url, &[]))
    );
    reset(&mut c);
}

/// Changes that move, orphan and remove edges as well as memories: a changed row, a deleted one, a new one, a
/// child moved to another parent (its old edge must go), a deleted parent (its children's edges become orphans)
/// and a deleted row of the table without a key.
const DELTA_WITH_EDGES: &str = "PRAGMA foreign_keys = OFF;
     UPDATE children SET note = 'now different' WHERE id = 7;
     DELETE FROM children WHERE id = 8;
     INSERT INTO children VALUES (3000, 2, 'brand new', 2.5);
     UPDATE children SET parent_id = 33 WHERE id = 9;
     DELETE FROM parents WHERE id = 60;
     DELETE FROM log WHERE rowid = 3;";

/// The bundle's memories as `space/id`, sorted.
fn bundle_ids(bundle: &Path) -> Vec<String> {
    let mut ids: Vec<String> = bundle_memories(bundle)
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["space"].as_str().unwrap(),
                m["id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    ids
}

/// The bundle's edges (not orphans) as `source_id -type-> target_id`, sorted.
fn bundle_edges(bundle: &Path) -> Vec<String> {
    let mut out = vec![];
    for space in std::fs::read_dir(bundle.join("spaces")).unwrap() {
        let dir = space.unwrap().path().join("edges");
        for f in std::fs::read_dir(&dir).into_iter().flatten() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "parquet") {
                for b in engram_migrate::parquet_io::read_all(&f).unwrap() {
                    for r in 0..b.num_rows() {
                        let e = engram_migrate::json::row_object(&b, r).unwrap();
                        let s = |k: &str| e[k].as_str().unwrap().to_string();
                        out.push(format!(
                            "{} -{}-> {}",
                            s("source_id"),
                            s("edge_type"),
                            s("target_id")
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn the_delta_goes_to_postgres_with_deletes_and_stale_edges_and_rolls_back() {
    let url = pg_database("it_incremental");
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    let (bundle, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let live = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--source",
            p(&db),
            "--target",
            url.as_str(),
            "--bundle",
            p(&bundle),
            "--work-dir",
            p(&work),
            "--embedding-cache-mb",
            "64",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let target_ids = || {
        lines(&psql(
            "it_incremental",
            "SELECT space || '/' || id FROM engram.memories",
        ))
    };
    let target_edges = || {
        lines(&psql(
            "it_incremental",
            "SELECT source_id || ' -' || edge_type || '-> ' || target_id FROM engram.edges",
        ))
    };
    let orphans = || psql("it_incremental", "SELECT count(*) FROM engram.orphans");
    ok(&live(&[]));
    let (first_ids, first_edges, first_orphans) = (target_ids(), target_edges(), orphans());
    assert_eq!(first_ids, bundle_ids(&bundle));
    assert_eq!(first_edges, bundle_edges(&bundle));

    sql(&db, DELTA_WITH_EDGES);
    let out = live(&["--incremental"]);
    ok(&out);
    let r = json(&work.join("report.json"));
    let d = &r["delivery"];
    assert!(d["scope"].as_str().unwrap().starts_with("delta: "), "{d}");
    assert_eq!(d["deletes"]["deleted"].as_u64(), Some(3), "{d}");
    // The target now holds exactly the new bundle: memories, edges (the moved child's old edge and the deleted
    // parent's edges gone) and orphans.
    assert_eq!(target_ids(), bundle_ids(&bundle));
    assert_eq!(target_edges(), bundle_edges(&bundle));
    assert_eq!(
        orphans(),
        json(&bundle.join("bundle.json"))["totals"]["orphans"].to_string()
    );
    let edges = target_edges();
    assert!(
        edges.contains(&"children_9 -fk:parent_id->parents-> parents_33".to_string()),
        "{edges:?}"
    );
    assert!(
        !edges.iter().any(|e| e.ends_with("parents_60")),
        "{edges:?}"
    );
    assert!(!target_ids().contains(&"children/children_8".to_string()));

    // Rolled back: the target is as the first load left it, deleted rows and removed edges back.
    let out = run(&["rollback", "--bundle", p(&bundle), "--target", url.as_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(target_ids(), first_ids);
    assert_eq!(target_edges(), first_edges);
    assert_eq!(orphans(), first_orphans);
}

#[test]
fn the_delta_goes_to_a_bolt_target_with_deletes_and_stale_relationships() {
    let url = arcadedb_fixture("it_incremental_graph", "preexisting.cypher");
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    let (bundle, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let live = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--source",
            p(&db),
            "--target",
            url.as_str(),
            "--bundle",
            p(&bundle),
            "--work-dir",
            p(&work),
            "--embedding-cache-mb",
            "64",
            "--target-user",
            "root",
            "--target-password",
            ARCADEDB_PASSWORD,
            "--max-predicted-loss",
            "1",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let query = |q: &str| -> Vec<String> {
        let (rt, g) = bolt("it_incremental_graph");
        let mut out: Vec<String> = rt.block_on(async {
            let mut s = g.execute(neo4rs::query(q)).await.unwrap();
            let mut v = vec![];
            while let Some(r) = s.next().await.unwrap() {
                v.push(r.get::<String>("x").unwrap());
            }
            v
        });
        out.sort();
        out
    };
    let target_ids =
        || query("MATCH (n:Node) WHERE n.space IS NOT NULL RETURN n.space + '/' + n.id AS x");
    let target_edges =
        || query("MATCH (a:Node)-[e]->(b:Node) RETURN a.id + ' -' + type(e) + '-> ' + b.id AS x");
    ok(&live(&[]));
    assert_eq!(target_ids(), bundle_ids(&bundle));
    assert_eq!(target_edges(), bundle_edges(&bundle));

    sql(&db, DELTA_WITH_EDGES);
    let out = live(&["--incremental"]);
    ok(&out);
    let d = &json(&work.join("report.json"))["delivery"];
    assert!(d["scope"].as_str().unwrap().starts_with("delta: "), "{d}");
    assert_eq!(d["deletes"]["deleted"].as_u64(), Some(3), "{d}");
    assert_eq!(target_ids(), bundle_ids(&bundle));
    let edges = target_edges();
    assert_eq!(edges, bundle_edges(&bundle));
    assert!(
        edges.contains(&"children_9 -fk:parent_id->parents-> parents_33".to_string()),
        "{edges:?}"
    );
    // What was there before the tool stays.
    assert_eq!(
        query("MATCH (n:Legacy) RETURN n.id AS x"),
        vec!["legacy-1".to_string()]
    );
}

/// The bundle writer records each memory part's row hashes (the ones its checksum sums): the next incremental
/// run's baseline reads them instead of hashing the bundle, and they equal what hashing the bundle gives.
#[test]
fn the_bundle_writer_records_the_hashes_an_incremental_run_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, bundle, work) = first_run(tmp.path());
    let recorded = work.join("delta/bundle-hashes");
    let files: Vec<_> = std::fs::read_dir(recorded.join("children"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "no hashes recorded for space children");
    let (read, parts) = engram_migrate::delta::memory_hashes(&bundle, 100, None).unwrap();
    let (saved, none) =
        engram_migrate::delta::memory_hashes(&bundle, 100, Some(&recorded)).unwrap();
    assert_eq!(read.len(), 490, "every memory");
    assert_eq!(read, saved);
    assert!(parts > 0);
    assert_eq!(none, 0, "every part's hashes recorded");
    // A recorded file that does not hold the part's rows is not trusted: the part is read instead.
    let any = &files[0];
    engram_migrate::delta::save_hashes(any, &Default::default()).unwrap();
    let (again, reread) =
        engram_migrate::delta::memory_hashes(&bundle, 100, Some(&recorded)).unwrap();
    assert_eq!(read, again);
    assert_eq!(reread, 1, "the part with a bad record is read");
}

/// An incremental run killed while it writes its layer (hard links and new parts in `<bundle>.partial`) resumes
/// with the same command: the layer is finished, the bundle equals a full run's, and it was extended, not
/// rewritten.
#[test]
fn a_layer_killed_while_written_resumes_to_the_same_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let db = source_db(tmp.path());
    // Enough changed rows that writing the layer takes a while (a fifth of the children: under the share that
    // would rewrite the bundle).
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 401 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
         INSERT INTO children SELECT i, i % 60 + 1, 'child ' || i || ' of ' || (i % 60 + 1), i * 0.5 FROM n;",
    );
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    ok(&migrate(p(&db), &target, &work, &[]));
    sql(
        &db,
        "UPDATE children SET note = 'changed ' || id WHERE id % 5 = 0; DELETE FROM children WHERE id % 97 = 0;",
    );
    let args = migrate_args(p(&db), &target, &work, &["--incremental"]);
    let partial = tmp.path().join("b.partial");
    let marker = || {
        std::fs::read_dir(partial.join("spaces/children/memories"))
            .map(|d| d.count() > 1)
            .unwrap_or(false)
    };
    assert!(
        crate::resume::run_and_kill(&args, &marker),
        "the run finished before its layer was being written"
    );
    assert!(
        json(&target.join("bundle.json"))["removed"].is_null(),
        "the bundle in place is still the first run's"
    );
    ok(&run(&args));
    let r = json(&work.join("report.json"));
    assert_eq!(r["incremental_mode"], "layer 1", "{}", r["stages"]);
    assert!(!partial.exists());
    assert_eq!(
        space_checksums(&target),
        space_checksums(&full_run(tmp.path(), &db))
    );
}

/// What an incremental run re-reads depends on what was validated before it: after a completed run with its
/// checks passed, an unchanged source re-reads nothing of the bundle (the sample is empty); after a run whose
/// checks failed (its bundle is in place, its work not complete), the re-run checks the whole bundle again.
#[test]
fn a_rerun_after_failed_checks_validates_the_whole_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, target, work) = first_run(tmp.path());
    let checks = tmp.path().join("checks");
    std::fs::create_dir_all(&checks).unwrap();
    std::fs::write(
        checks.join("always_fails.sql"),
        "-- Fails on purpose.\nSELECT 1 AS one",
    )
    .unwrap();
    sql(&db, "UPDATE children SET note = 'x' WHERE id = 3;");
    let out = migrate(
        p(&db),
        &target,
        &work,
        &["--incremental", "--checks", p(&checks)],
    );
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let sampled = |r: &serde_json::Value| check(r, "sample_values")["note"].to_string();
    // The bundle is this input's, but nothing says its checks passed: all of it is read again.
    ok(&migrate(p(&db), &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    assert_eq!(r["incremental_mode"], "unchanged");
    assert!(sampled(&r).contains("of 490 sampled"), "{}", sampled(&r));
    // Now it was validated: the next unchanged run reads none of it again.
    ok(&migrate(p(&db), &target, &work, &["--incremental"]));
    let r = json(&work.join("report.json"));
    assert_eq!(r["incremental_mode"], "unchanged");
    assert!(sampled(&r).contains("0 of 0 sampled"), "{}", sampled(&r));
}
