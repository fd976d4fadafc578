//! Wrong inputs end in a clear message naming the file/table, a non-zero documented exit code, and no bundle.

use crate::common::*;

fn assert_no_bundle(target: &std::path::Path) {
    assert!(
        !target.exists(),
        "a bundle was written at {}",
        target.display()
    );
}

#[test]
fn missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("b");
    let out = run(&[
        "run",
        "--source",
        "/nonexistent/db.sqlite",
        "--target",
        p(&t),
    ]);
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("/nonexistent/db.sqlite"),
        "{}",
        stderr(&out)
    );
    assert_no_bundle(&t);
}

#[test]
fn not_a_sqlite_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("notes.db");
    std::fs::write(
        &f,
        "just some text, definitely not a database file; padding padding padding padding",
    )
    .unwrap();
    let t = tmp.path().join("b");
    let out = run(&["run", "--source", p(&f), "--target", p(&t)]);
    assert_eq!(code(&out), 3);
    let e = stderr(&out);
    assert!(
        e.contains("notes.db") && e.contains("not a SQLite database"),
        "{e}"
    );
    assert_no_bundle(&t);
}

#[test]
fn corrupt_page() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("corrupt.sqlite");
    let mut bytes = std::fs::read(fixture()).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    // Keep page 1 (header and schema), garble every other page: reading any table hits garbage.
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&f, bytes).unwrap();
    let t = tmp.path().join("b");
    let out = run(&["run", "--source", p(&f), "--target", p(&t)]);
    assert_eq!(code(&out), 3);
    let e = stderr(&out);
    assert!(
        e.contains("corrupt.sqlite") && (e.contains("malformed") || e.contains("corrupt")),
        "{e}"
    );
    assert_no_bundle(&t);
}

#[test]
fn unknown_declared_type_names_table_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("geo.sqlite");
    let c = rusqlite::Connection::open(&f).unwrap();
    c.execute_batch("CREATE TABLE places (id INTEGER PRIMARY KEY, shape GEOMETRY); INSERT INTO places VALUES (1, 'POINT(0 0)');").unwrap();
    drop(c);
    let t = tmp.path().join("b");
    let out = run(&["run", "--source", p(&f), "--target", p(&t)]);
    assert_eq!(code(&out), 3);
    let e = stderr(&out);
    assert!(
        e.contains("geo.sqlite")
            && e.contains("table places, column shape")
            && e.contains("--column-type"),
        "{e}"
    );
    assert_no_bundle(&t);
    // The hint works.
    let out = run(&[
        "run",
        "--source",
        p(&f),
        "--target",
        p(&t),
        "--column-type",
        "places.shape=text",
    ]);
    assert_eq!(code(&out), 0);
}

#[test]
fn unwritable_target() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let t = file.join("bundle");
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&t),
        "--work-dir",
        p(&tmp.path().join("w")),
    ]);
    assert_eq!(code(&out), 4);
    assert!(stderr(&out).contains("a-file/bundle"), "{}", stderr(&out));
    assert_no_bundle(&t);
}

#[test]
fn existing_target_needs_overwrite_and_bad_flags_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("b");
    std::fs::create_dir(&t).unwrap();
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&t)]);
    assert_eq!(code(&out), 4);
    assert!(stderr(&out).contains("--overwrite"));
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("c")),
        "--memory-space",
        "NO",
    ]);
    assert_eq!(code(&out), 2);
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("c")),
        "--text-columns",
        "nodes:nope",
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("nope"));
    let out = run(&[
        "run",
        "--source",
        "postgres://no-such-host.invalid/db",
        "--target",
        p(&tmp.path().join("c")),
    ]);
    // A PostgreSQL server that cannot be reached is a source error (3), named, with what to check.
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    assert_no_bundle(&tmp.path().join("c"));
}

#[test]
fn broken_mapping_sql_is_a_usage_error_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    // A view missing from the contract.
    let sql = tmp.path().join("m.sql");
    std::fs::write(&sql, "CREATE VIEW memories AS SELECT 1 AS x;\n").unwrap();
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("b")),
        "--sql",
        p(&sql),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("does not define the view edges"),
        "{}",
        stderr(&out)
    );
    // A memories view with a column the schema does not have.
    let good = std::fs::read_to_string(repo().join("sql/codegraph.sql")).unwrap();
    std::fs::write(
        &sql,
        good.replace(
            "'semantic'                                  AS memory_type",
            "'semantic' AS memory_kind",
        ),
    )
    .unwrap();
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("b")),
        "--sql",
        p(&sql),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("memory_kind"), "{}", stderr(&out));
    assert!(!tmp.path().join("b").exists());
}

/// A flag that names a table or column the source does not have stops the run with the names that exist: never
/// ignored in silence, never a planner error about the generated SQL.
#[test]
fn flags_naming_missing_tables_or_columns_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (flag, value, says)) in [
        (
            "--column-type",
            "nope.geom=text",
            "--column-type nope.geom: the source has no table \"nope\"",
        ),
        (
            "--column-type",
            "nodes.nosuch=text",
            "--column-type nodes.nosuch: table nodes has no column \"nosuch\"",
        ),
        (
            "--text-columns",
            "nodes:nme",
            "--text-columns: table nodes has no column \"nme\"; its columns: id, type",
        ),
        (
            "--timestamp-column",
            "nosuch",
            "--timestamp-column \"nosuch\": no table has this column",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let target = tmp.path().join(format!("b{i}"));
        let o = run(&[
            "run",
            "--source",
            p(&fixture()),
            "--target",
            p(&target),
            flag,
            value,
        ]);
        assert_eq!(code(&o), 2, "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{flag} {value}: {}", stderr(&o));
        assert!(!target.exists(), "{flag} {value}: a bundle was written");
    }
}

/// Leaving out a table the shipped mapping needs is refused up front with what to do instead, not a planner
/// error after the snapshot (checked before any connection: the server here does not exist).
#[test]
fn excluding_a_table_the_shipped_mapping_needs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "--source",
        "bolt://127.0.0.1:1",
        "--target",
        p(&tmp.path().join("b")),
        "--exclude",
        "relationships",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("leave out the table \"relationships\"")
            && stderr(&o).contains("--skip-edges leaves the edges out"),
        "{}",
        stderr(&o)
    );
}
