//! Re-runs and re-checks (issue 24): a source that changed since its snapshot stops a re-run with what changed
//! and the choices, on every kind of source; `validate --work-dir W` alone re-checks a run made with any flags,
//! refuses a flag that contradicts the run, and never overwrites the run's report.

use std::path::Path;
use std::process::Output;

use crate::common::*;
use crate::redis::{cmd, con, lock, server};

fn rerun_stops(out: &Output, said: &str) {
    let e = stderr(out);
    assert_eq!(code(out), 2, "a changed source must stop the re-run: {e}");
    assert!(
        e.contains("the source has changed since the snapshot"),
        "{e}"
    );
    assert!(e.contains(said), "expected {said:?} in: {e}");
    assert!(
        e.contains("--fresh") && e.contains("--reuse-snapshot"),
        "{e}"
    );
}

fn memories(bundle: &Path) -> u64 {
    json(&bundle.join("bundle.json"))["totals"]["memories"]
        .as_u64()
        .unwrap()
}

#[test]
fn sqlite_rerun_after_a_change_stops_and_each_choice_does_what_it_says() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("src.sqlite");
    std::fs::copy(fixture(), &db).unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let args = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--source",
            p(&db),
            "--target",
            p(&target),
            "--work-dir",
            p(&work),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let out = args(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = memories(&target);

    // Touching the file changes no data: the re-run reuses everything and passes.
    let f = std::fs::File::options().write(true).open(&db).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let out = args(&[]);
    assert_eq!(
        code(&out),
        0,
        "a touched file is not a changed source: {}",
        stderr(&out)
    );

    // An update that changes no count is still a change (the file's content).
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "UPDATE nodes SET name = name || '_renamed' WHERE rowid = 1",
        [],
    )
    .unwrap();
    drop(c);
    rerun_stops(&args(&[]), "content of the file");

    // A new row: said as a count.
    let nodes = sqlite_count(&db, "nodes");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "INSERT INTO nodes (id, type, name, path) VALUES ('n:new', 'file', 'new.py', 'new.py');",
    )
    .unwrap();
    drop(c);
    rerun_stops(
        &args(&[]),
        &format!("rows of \"nodes\": {nodes} then, {} now", nodes + 1),
    );

    // --reuse-snapshot: the old data, validated against the snapshot it came from, and said in the report.
    let out = args(&["--reuse-snapshot"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--reuse-snapshot"),
        "{}",
        stderr(&out)
    );
    let r = json(&work.join("report.json"));
    assert!(
        r["source_changed_since_snapshot"]
            .to_string()
            .contains("rows of \\\"nodes\\\""),
        "{r}"
    );
    assert_eq!(memories(&target), before);

    // --fresh (with --overwrite for the existing bundle): the source as it is now, one more memory.
    let out = args(&["--fresh", "--overwrite"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(memories(&target), before + 1);
    assert!(json(&work.join("report.json"))
        .get("source_changed_since_snapshot")
        .is_none());
}

#[test]
fn postgres_rerun_after_an_update_stops() {
    let url = pg_database("it_rerun");
    psql(
        "it_rerun",
        "CREATE TABLE items (id int PRIMARY KEY, name text, score float8);
         INSERT INTO items SELECT g, 'item ' || g, random() FROM generate_series(1, 200) g;
         CREATE TABLE untouched (id int PRIMARY KEY, v text); INSERT INTO untouched VALUES (1, 'a');",
    );
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let a = [
        "run",
        "--source",
        url.as_str(),
        "--target",
        p(&target),
        "--include",
        "items",
    ];
    let out = run(&a);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A write to a table that is not migrated is not a change of this migration's source.
    psql("it_rerun", "UPDATE untouched SET v = 'b'");
    let out = run(&a);
    assert_eq!(code(&out), 0, "an excluded table changed: {}", stderr(&out));
    psql(
        "it_rerun",
        "UPDATE items SET score = score + 1 WHERE id = 7",
    );
    rerun_stops(&run(&a), "inserts + updates + deletes of \"items\"");
}

#[test]
fn redis_rerun_after_a_write_stops() {
    let _guard = lock(8);
    let (url, _) = server(8);
    let mut c = con(&url);
    crate::redis::reset(&mut c);
    cmd(&mut c, &[b"SET", b"user:1", b"ada"]);
    cmd(&mut c, &[b"SELECT", b"2"]);
    cmd(&mut c, &[b"SET", b"user:1", b"grace"]);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let a = ["run", "--source", url.as_str(), "--target", p(&target)];
    let out = run(&a);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A read changes nothing.
    cmd(&mut c, &[b"GET", b"user:1"]);
    let out = run(&a);
    assert_eq!(code(&out), 0, "a read is not a change: {}", stderr(&out));
    // An overwrite keeps every key count: the server's write counter says it.
    cmd(&mut c, &[b"SET", b"user:1", b"hopper"]);
    rerun_stops(&run(&a), "writes since the last save");
    // A new key in database 2: said per database.
    let out = run(&[&a[..], &["--fresh", "--overwrite"]].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cmd(&mut c, &[b"SET", b"user:2", b"lovelace"]);
    rerun_stops(&run(&a), "keys in db2: 1 then, 2 now");
}

#[test]
fn bolt_rerun_after_a_new_node_stops() {
    let url = arcadedb_fixture("it_rerun", "codegraph.cypher");
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let a = [
        "run",
        "--source",
        url.as_str(),
        "--target",
        p(&target),
        "--source-user",
        "root",
        "--source-password",
        ARCADEDB_PASSWORD,
    ];
    let out = run(&a);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cypher(
        "it_rerun",
        &[neo4rs::query("CREATE (:File {idx: 1000, name: 'late.py'})")],
    );
    rerun_stops(&run(&a), "nodes labelled [File]");
}

/// `validate --work-dir W` alone: the run's mapping flags come from the record (here flags that change the
/// bundle's spaces and texts, so a validation that forgot them would fail counts_bundle), its own report goes
/// to a file of its own, and a flag that contradicts the run is refused by name.
#[test]
fn validate_with_only_the_work_dir_uses_the_runs_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
        "--memory-space",
        "one_space",
        "--text-columns",
        "nodes:name",
        "--skip-edges",
        "--sample-size",
        "50",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let run_report = std::fs::read(work.join("report.json")).unwrap();

    let out = run(&["validate", "--work-dir", p(&work)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(work.join("report.json")).unwrap(),
        run_report,
        "the run's report was rewritten"
    );
    let v = validate_report(&work);
    assert_eq!(v["command"], "validate");
    assert_eq!(v["outcome"], "ok");
    assert!(
        v["validation"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["passed"] == true),
        "{v}"
    );

    // Its own options may change; the run's may not.
    let out = run(&["validate", "--work-dir", p(&work), "--sample-size", "5"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for (flag, value) in [
        ("--memory-space", "elsewhere"),
        ("--source", "other.sqlite"),
    ] {
        let out = run(&["validate", "--work-dir", p(&work), flag, value]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
    let out = run(&["validate", "--work-dir", p(&work), "--bidirectional"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--bidirectional"), "{}", stderr(&out));
    assert_eq!(std::fs::read(work.join("report.json")).unwrap(), run_report);

    // The record holds no password.
    let plan = std::fs::read_to_string(work.join("plan.json")).unwrap();
    assert!(plan.contains("\"memory-space\": \"one_space\""), "{plan}");
}
