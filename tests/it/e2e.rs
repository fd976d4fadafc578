use crate::common::*;
use std::collections::BTreeSet;
use std::process::Command;

use arrow::array::AsArray;
use engram_migrate::parquet_io::read_all;

#[test]
fn fixture_to_bundle_validates_and_external_readers_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("codegraph.bundle");
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&target)]);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("checksums") && stdout.contains("pass"),
        "{stdout}"
    );

    // The code graph is recognised: `edges` is a link table, so every node is a memory and every edges row
    // one relationship between two nodes, typed as in the source (CONTAINS, CALLS, ...), and the output says so.
    assert!(
        stdout.contains("generated; link tables as edges: edges"),
        "{stdout}"
    );
    let b = json(&target.join("bundle.json"));
    let nodes = sqlite_count(&fixture(), "nodes");
    let edges = sqlite_count(&fixture(), "edges");
    assert_eq!(b["totals"]["memories"].as_u64().unwrap(), nodes);
    assert_eq!(
        b["totals"]["edges"].as_u64().unwrap() + b["totals"]["orphans"].as_u64().unwrap(),
        edges
    );
    let py = python();
    let by_type = |sql: &str| {
        let o = Command::new(&py)
            .args([
                "-c",
                &format!("import duckdb; print(sorted(duckdb.sql({sql:?}).fetchall()))"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let in_bundle = by_type(&format!(
        "SELECT edge_type, count(*) FROM read_parquet(['{}/spaces/*/edges/*.parquet', '{}/orphans/*.parquet']) GROUP BY 1",
        target.display(),
        target.display()
    ));
    let c = rusqlite::Connection::open(fixture()).unwrap();
    let mut st = c
        .prepare("SELECT type, count(*) FROM edges GROUP BY 1 ORDER BY 1")
        .unwrap();
    let rows: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let in_source = format!(
        "[{}]",
        rows.iter()
            .map(|(t, n)| format!("('{t}', {n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(in_bundle, in_source);
    assert!(in_source.contains("('CALLS', "), "{in_source}");
    assert_eq!(
        b["totals"]["orphans"].as_u64().unwrap(),
        3,
        "the fixture has 3 imports of missing files"
    );
    assert_eq!(b["embedding"]["dimension"], 768);

    // The report and the generated mapping are in the work directory.
    let work = tmp.path().join("codegraph.bundle.work");
    let report = json(&work.join("report.json"));
    assert_eq!(report["outcome"], "ok");
    assert!(report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
    assert!(std::fs::read_to_string(work.join("mapping.sql"))
        .unwrap()
        .contains("CREATE VIEW memories"));

    // `validate` re-checks the finished run on its own.
    let v = run(&[
        "validate",
        "--source",
        p(&fixture()),
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    assert_eq!(code(&v), 0);

    // pyarrow and DuckDB read every Parquet file written (snapshot, staged output, bundle), with equal counts.
    let py = python();
    for dir in [&target, &work] {
        let o = Command::new(&py)
            .arg(repo().join("scripts/read_parquet_check.py"))
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(r["files"].as_u64().unwrap() > 0);
    }
}

#[test]
fn same_input_same_checksums_and_snapshot_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    assert_eq!(
        code(&run(&["run", "--source", p(&fixture()), "--target", p(&a)])),
        0
    );
    assert_eq!(
        code(&run(&[
            "run",
            "--source",
            p(&fixture()),
            "--target",
            p(&b),
            "--batch-size",
            "7",
            "--parallel-workers",
            "1"
        ])),
        0
    );
    assert_eq!(
        space_checksums(&a),
        space_checksums(&b),
        "a second run gives the same checksums, whatever the batching"
    );

    // A snapshot is a source: a run from it gives the same bundle.
    let snap = tmp.path().join("a.work/snapshot");
    let c = tmp.path().join("c");
    assert_eq!(
        code(&run(&[
            "run",
            "--source",
            p(&snap),
            "--target",
            p(&c),
            "--work-dir",
            p(&tmp.path().join("cw"))
        ])),
        0
    );
    assert_eq!(space_checksums(&a), space_checksums(&c));
}

#[test]
fn custom_codegraph_mapping_places_nodes_by_label() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("cg");
    let sql = repo().join("sql/codegraph.sql");
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&t),
        "--sql",
        p(&sql),
    ]);
    assert_eq!(code(&out), 0);
    let spaces = space_checksums(&t);
    let names: Vec<&str> = spaces.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, vec!["code_classes", "code_files", "code_functions"]);
    let total: u64 = spaces.iter().map(|s| s.3).sum();
    assert_eq!(total, sqlite_count(&fixture(), "nodes"));
    let b = json(&t.join("bundle.json"));
    assert_eq!(
        b["totals"]["edges"].as_u64().unwrap() + b["totals"]["orphans"].as_u64().unwrap(),
        sqlite_count(&fixture(), "edges")
    );
}

#[test]
fn plan_writes_nothing_and_lists_tables_and_types() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("never");
    let out = run(&["plan", "--source", p(&fixture()), "--target", p(&t)]);
    assert_eq!(code(&out), 0);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("nodes") && s.contains("DATETIME") && s.contains("Timestamp(µs, \"UTC\")"),
        "{s}"
    );
    assert!(
        s.contains("link table => each row an edge nodes -> nodes, typed by column type"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "plan wrote something"
    );
    let out = run(&[
        "run",
        "--dry-run",
        "--source",
        p(&fixture()),
        "--target",
        p(&t),
    ]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "--dry-run wrote something"
    );
}

/// The generic mapping follows the Engram team's plan: `<table>_<pk>` ids, "col: value | col: value" text with
/// NULLs skipped, created_at from created_at, foreign key -> edge child -> parent with weight 0.8, orphans reported.
#[test]
fn generic_mapping_follows_the_plan() {
    use arrow::array::{Array, AsArray};
    use engram_migrate::parquet_io::read_all;
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("shop.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, bio TEXT, created_at DATETIME);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), note TEXT);
         INSERT INTO users VALUES (1, 'Ann', NULL, '2024-05-01 10:00:00'), (2, 'Bo', 'likes tea', NULL);
         INSERT INTO orders VALUES (10, 1, 'first'), (11, 99, 'ghost'), (12, NULL, NULL);",
    )
    .unwrap();
    drop(c);
    let t = tmp.path().join("b");
    assert_eq!(
        code(&run(&["run", "--source", p(&db), "--target", p(&t)])),
        0
    );

    let users = read_all(&t.join("spaces/users/memories/part-00000.parquet")).unwrap();
    let b = &users[0];
    let col = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
    let (ids, texts) = (col("id"), col("text"));
    let row = (0..b.num_rows())
        .find(|i| ids.value(*i) == "users_1")
        .expect("memory users_1");
    assert_eq!(texts.value(row), "name: Ann", "NULL bio skipped");
    let other = (0..b.num_rows())
        .find(|i| ids.value(*i) == "users_2")
        .unwrap();
    assert_eq!(texts.value(other), "name: Bo | bio: likes tea");
    let created = b.column_by_name("created_at").unwrap();
    assert!(created.is_valid(row) && created.is_null(other));
    assert_eq!(col("source_key").value(row), r#"{"id":1}"#);
    let content: serde_json::Value = serde_json::from_str(col("content").value(row)).unwrap();
    assert_eq!(
        content,
        serde_json::json!({"id": 1, "name": "Ann", "bio": null, "created_at": "2024-05-01T10:00:00Z"})
    );

    let edges = read_all(&t.join("spaces/orders/edges/part-00000.parquet")).unwrap();
    let e = &edges[0];
    assert_eq!(
        e.num_rows(),
        1,
        "one order has an existing user; the NULL reference makes no edge"
    );
    let s = |n: &str| {
        e.column_by_name(n)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string()
    };
    assert_eq!(
        (s("source_id"), s("target_id"), s("edge_type")),
        (
            "orders_10".into(),
            "users_1".into(),
            "fk:user_id->users".into()
        )
    );
    let w = e
        .column_by_name("weight")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float32Type>()
        .value(0);
    assert!((w - 0.8).abs() < 1e-6);
    let bundle = json(&t.join("bundle.json"));
    assert_eq!(
        bundle["totals"]["orphans"], 1,
        "order 11 references missing user 99"
    );
}

/// `--target out/` (a trailing slash, as shell completion leaves it): the bundle is built beside the target and
/// renamed onto it, not built inside it (which made the final rename fail).
#[test]
fn a_target_with_a_trailing_slash_names_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("{}/out/", p(tmp.path()));
    let o = run(&["run", "--source", p(&fixture()), "--target", &target]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        tmp.path().join("out/bundle.json").exists(),
        "no bundle in out/"
    );
    for stray in ["out/.partial", "out/.old", "out.partial", "out/.work"] {
        assert!(!tmp.path().join(stray).exists(), "{stray} left behind");
    }
    assert!(tmp.path().join("out.work/report.json").exists());
    // And again with --overwrite: the old bundle is replaced, not nested.
    let o = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        &target,
        "--overwrite",
        "--fresh",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(tmp.path().join("out/bundle.json").exists());
    assert!(!tmp.path().join("out/.old").exists() && !tmp.path().join("out.old").exists());
}

/// An SQLite column declared JSON is nested in the content as JSON; text that merely looks like JSON in a TEXT
/// column stays a string; a JSON column holding text that is not JSON is kept as that text. Validation passes.
#[test]
fn sqlite_json_columns_are_nested_and_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("docs.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        r#"CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSON, note TEXT);
         INSERT INTO docs VALUES
           (1, '{"title": "Ada", "tags": ["x", 2.5, null], "n": {"deep": true}}', '{"looks": "like json"}'),
           (2, '[1, 2, 3]', 'plain'),
           (3, NULL, NULL);"#,
    )
    .unwrap();
    drop(c);
    let bundle = tmp.path().join("docs.bundle");
    let o = run(&["run", "--source", p(&db), "--target", p(&bundle)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mems = bundle_memories(&bundle);
    let content = |id: &str| -> serde_json::Value {
        let m = mems.iter().find(|m| m["id"] == id).unwrap();
        serde_json::from_str(m["content"].as_str().unwrap()).unwrap()
    };
    let one = content("docs_1");
    assert_eq!(
        one["body"],
        serde_json::json!({"title": "Ada", "tags": ["x", 2.5, null], "n": {"deep": true}})
    );
    assert_eq!(
        one["note"], r#"{"looks": "like json"}"#,
        "a TEXT column stays text"
    );
    assert_eq!(content("docs_2")["body"], serde_json::json!([1, 2, 3]));
    assert_eq!(content("docs_3")["body"], serde_json::Value::Null);
    let report = json(&bundle.with_extension("bundle.work").join("report.json"));
    assert_eq!(check(&report, "sample_values")["passed"], true);
}

/// What counts as a link table: two foreign keys, nothing pointing at it, no text but its type. Its rows become
/// edges with their other columns as properties; a table with a text of its own stays memories; --skip-edges
/// keeps the link rows as memories (they must land somewhere); validation passes each way.
#[test]
fn link_tables_become_edges_and_tables_of_things_stay_memories() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("shop.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT);
         CREATE TABLE purchases (user_id INTEGER REFERENCES users(id), product_id INTEGER REFERENCES products(id),
                                 qty INTEGER, PRIMARY KEY (user_id, product_id));
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                               product_id INTEGER REFERENCES products(id), body TEXT);
         INSERT INTO users VALUES (1, 'Ann'), (2, 'Bo');
         INSERT INTO products VALUES (10, 'tea'), (11, 'cup');
         INSERT INTO purchases VALUES (1, 10, 3), (2, 11, 1), (2, 99, 5);
         INSERT INTO reviews VALUES (100, 1, 10, 'lovely tea');",
    )
    .unwrap();
    drop(c);
    let bundle = tmp.path().join("shop.bundle");
    let o = run(&["run", "--source", p(&db), "--target", p(&bundle)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mems = bundle_memories(&bundle);
    let ids: BTreeSet<String> = mems
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains("reviews_100"),
        "a table with its own text stays memories"
    );
    assert!(!ids.iter().any(|i| i.starts_with("purchases_")), "{ids:?}");
    let b = json(&bundle.join("bundle.json"));
    // 2 purchases between existing rows + 1 orphan (product 99), 2 review foreign keys.
    assert_eq!(b["totals"]["orphans"], 1);
    assert_eq!(b["totals"]["edges"], 4);
    let edges = read_all(&bundle.join("spaces/users/edges/part-00000.parquet")).unwrap();
    let props: Vec<String> = edges
        .iter()
        .flat_map(|b| {
            let props = b
                .column_by_name("properties")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let types = b
                .column_by_name("edge_type")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..b.num_rows())
                .map(move |i| format!("{} {}", types.value(i), props.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        props.contains(&r#"PURCHASES {"qty":3}"#.to_string()),
        "{props:?}"
    );
    let o = run(&[
        "run",
        "--source",
        p(&db),
        "--target",
        p(&tmp.path().join("skip.bundle")),
        "--skip-edges",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let skip = bundle_memories(&tmp.path().join("skip.bundle"));
    assert_eq!(
        skip.iter()
            .filter(|m| m["id"].as_str().unwrap().starts_with("purchases_"))
            .count(),
        3
    );
}

/// Validation does not trust the mapping: a mapping bug that drops a table's rows and lowers its own
/// expected_counts to match passes `counts_bundle` (the mapping agrees with itself) but fails `counts_derived`,
/// which counts from the snapshot. Injected through the debug build's fault switch.
#[test]
fn a_mapping_that_drops_rows_and_expects_fewer_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("cg.bundle");
    let o = Command::new(bin())
        .args(["run", "--source", p(&fixture()), "--target", p(&target)])
        .env("ENGRAM_MIGRATE_FAULT_DROP_TABLE", "nodes")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 5, "{out}\n{}", stderr(&o));
    let report = json(&tmp.path().join("cg.bundle.work/report.json"));
    assert_eq!(
        check(&report, "counts_bundle")["passed"],
        true,
        "the mapping agrees with itself"
    );
    let derived = check(&report, "counts_derived");
    assert_eq!(derived["passed"], false, "{derived}");
    assert_eq!(derived["examples"][0]["source_name"], "nodes", "{derived}");
    assert_eq!(derived["examples"][0]["derived"], 379, "{derived}");
    assert_eq!(derived["examples"][0]["in_bundle"], 0, "{derived}");
}

/// sample_values says how many rows it compared; a mapping whose memories cannot be compared with any source row
/// fails sample_coverage with the reason, instead of passing a check that compared nothing.
#[test]
fn a_sample_that_compares_nothing_fails_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("cg.bundle");
    let o = run(&["run", "--source", p(&fixture()), "--target", p(&target)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("compared 379 of 379 sampled memories with their source rows"),
        "{out}"
    );
    // --sample-size: the sample is that many memories.
    let o = run(&[
        "validate",
        "--work-dir",
        p(&tmp.path().join("cg.bundle.work")),
        "--sample-size",
        "50",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("compared 50 of 50 sampled memories"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The same mapping, its memories claimed by no snapshot table.
    let sql = std::fs::read_to_string(tmp.path().join("cg.bundle.work/mapping.sql"))
        .unwrap()
        .replace("'nodes' AS source_name", "'summary' AS source_name");
    let custom = tmp.path().join("custom.sql");
    std::fs::write(&custom, sql).unwrap();
    let o = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("custom.bundle")),
        "--sql",
        p(&custom),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 5, "{out}\n{}", stderr(&o));
    assert!(out.contains("sample_coverage      FAIL"), "{out}");
    assert!(
        out.contains("compared 0 of 379 sampled memories with their source rows; 379 not: its source_name is not a snapshot table"),
        "{out}"
    );
}

/// Each generic-mapping flag changes what it says, and would fail here if ignored: --table-to-space,
/// --timestamp-column, --confidence, --text-columns, --exclude, --checks (a failing check of one's own),
/// --validate false, --config, --checkpoint-file.
#[test]
fn generic_flags_each_change_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("app.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, bio TEXT, joined DATETIME, updated_at DATETIME);
         CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
         INSERT INTO users VALUES (1, 'Ann', 'likes tea', '2020-01-02 03:04:05', '2024-01-01 00:00:00'),
                                  (2, 'Bo', 'plays chess', '2021-06-07 08:09:10', NULL);
         INSERT INTO audit VALUES (1, 'login');",
    )
    .unwrap();
    drop(c);
    let bundle = tmp.path().join("a.bundle");
    // --checkpoint-file is where the bundle stage keeps its checkpoint (removed once the stage is done): an
    // unreadable file there stops the run and is named, so the flag is read, not ignored.
    let checkpoint = tmp.path().join("my-checkpoint.json");
    std::fs::write(&checkpoint, "not a checkpoint").unwrap();
    let args = [
        "run",
        "--source",
        p(&db),
        "--target",
        p(&bundle),
        "--table-to-space",
        "users:people",
        "--timestamp-column",
        "joined",
        "--confidence",
        "0.9",
        "--activation",
        "0.3",
        "--text-columns",
        "users:bio",
        "--exclude",
        "audit",
        "--checkpoint-file",
        p(&checkpoint),
    ];
    let o = run(&args);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains(&format!(
            "checkpoint {} is unreadable",
            checkpoint.display()
        )),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(&checkpoint).unwrap();
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !checkpoint.exists(),
        "the checkpoint is removed once the stage is done"
    );
    let mems = bundle_memories(&bundle);
    assert_eq!(mems.len(), 2, "--exclude audit: {mems:?}");
    let ann = mems.iter().find(|m| m["id"] == "users_1").unwrap();
    assert_eq!(ann["space"], "people", "--table-to-space");
    assert_eq!(
        ann["created_at"], "2020-01-02T03:04:05Z",
        "--timestamp-column"
    );
    assert!(
        (ann["confidence"].as_f64().unwrap() - 0.9).abs() < 1e-6,
        "--confidence"
    );
    assert!(
        (ann["activation"].as_f64().unwrap() - 0.3).abs() < 1e-6,
        "--activation"
    );
    assert_eq!(ann["text"], "bio: likes tea", "--text-columns");

    // --checks: a check of one's own that finds rows fails the run, by its file name.
    let checks = tmp.path().join("checks");
    std::fs::create_dir(&checks).unwrap();
    std::fs::write(
        checks.join("no_people.sql"),
        "-- Nobody may be in the people space.\nSELECT id FROM bundle_memories WHERE space = 'people';\n",
    )
    .unwrap();
    let b2 = tmp.path().join("b.bundle");
    let args = [
        "run",
        "--source",
        p(&db),
        "--target",
        p(&b2),
        "--table-to-space",
        "users:people",
        "--checks",
        p(&checks),
    ];
    let o = run(&args);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let report = json(&b2.with_extension("bundle.work").join("report.json"));
    assert_eq!(check(&report, "no_people")["offending_rows"], 2);
    // --validate false: the same run, not validated, succeeds.
    let b3 = tmp.path().join("c.bundle");
    let mut args = args.to_vec();
    args[4] = p(&b3);
    args.extend(["--validate", "false"]);
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report = json(&b3.with_extension("bundle.work").join("report.json"));
    assert_eq!(
        report["validation"],
        serde_json::json!([]),
        "--validate false"
    );
    // --config: options from a TOML file.
    let config = tmp.path().join("run.toml");
    std::fs::write(
        &config,
        "confidence = 0.4\nmemory-space = \"from_config\"\n",
    )
    .unwrap();
    let b4 = tmp.path().join("d.bundle");
    let o = run(&[
        "run",
        "--source",
        p(&db),
        "--target",
        p(&b4),
        "--config",
        p(&config),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mems = bundle_memories(&b4);
    assert!(mems.iter().all(|m| m["space"] == "from_config"), "--config");
    assert!(mems
        .iter()
        .all(|m| (m["confidence"].as_f64().unwrap() - 0.4).abs() < 1e-6));
}

/// Tuning flags with an effect one can see: --embedding-cache-mb keeps vectors on disk for the next run,
/// --batch-size and --max-file-mb decide how parts roll over.
#[test]
fn tuning_flags_have_their_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("cache.bundle");
    let fx = fixture();
    let args = [
        "run",
        "--source",
        p(&fx),
        "--target",
        p(&b),
        "--embedding-cache-mb",
        "8",
    ];
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = json(&tmp.path().join("cache.bundle.work/report.json"))["embedding"].clone();
    assert_eq!(e["persistent_cache_entries"], 379, "{e}");
    let o = run(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = json(&tmp.path().join("cache.bundle.work/report.json"))["embedding"].clone();
    assert_eq!(
        e["hits_from_earlier_runs"], 379,
        "the second run embeds nothing: {e}"
    );

    // Parts roll over after a batch once a file holds --max-file-rows: batches of 100 give 4 parts of 379 rows.
    let parts = |work: &std::path::Path, table: &str| -> usize {
        let m = json(&work.join("snapshot/manifest.json"));
        m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == table)
            .unwrap()["files"]
            .as_array()
            .unwrap()
            .len()
    };
    let w1 = tmp.path().join("w1");
    let o = run(&[
        "snapshot",
        "--source",
        p(&fixture()),
        "--work-dir",
        p(&w1),
        "--max-file-rows",
        "1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let w2 = tmp.path().join("w2");
    let o = run(&[
        "snapshot",
        "--source",
        p(&fixture()),
        "--work-dir",
        p(&w2),
        "--max-file-rows",
        "1",
        "--batch-size",
        "100",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(parts(&w1, "nodes"), 1);
    assert_eq!(parts(&w2, "nodes"), 4, "--batch-size 100");

    // --max-file-mb: 20,000 rows of 200 characters (about 4 MB) in files of at most about 1 MB.
    let db = tmp.path().join("wide.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t SELECT i, hex(randomblob(100)) FROM n;",
    )
    .unwrap();
    drop(c);
    let w3 = tmp.path().join("w3");
    let o = run(&[
        "snapshot",
        "--source",
        p(&db),
        "--work-dir",
        p(&w3),
        "--max-file-mb",
        "1",
        "--batch-size",
        "2000",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        parts(&w3, "t") >= 3,
        "--max-file-mb 1: {} parts",
        parts(&w3, "t")
    );
}
