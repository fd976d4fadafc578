//! The PostgreSQL source against a real server (scripts/services/postgres.sh) and the fixture database
//! (fixtures/postgres/*.sql): type fidelity per row of the type table, a full run with validation, a snapshot
//! killed mid-way and resumed, and bad input.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::*;

/// The staged rows of one snapshot table, as JSON objects keyed by column, in key order.
fn staged_rows(snapshot: &Path, table: &str) -> Vec<serde_json::Map<String, Value>> {
    let m = json(&snapshot.join("manifest.json"));
    let entry = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == table)
        .unwrap_or_else(|| panic!("table {table} not in the manifest"))
        .clone();
    let dir = snapshot
        .join("tables")
        .join(entry["folder"].as_str().unwrap());
    let mut rows = vec![];
    for f in entry["files"].as_array().unwrap() {
        let path = dir.join(f["file"].as_str().unwrap());
        for b in engram_migrate::parquet_io::read_all(&path).unwrap() {
            for r in 0..b.num_rows() {
                rows.push(engram_migrate::json::row_object(&b, r).unwrap());
            }
        }
    }
    rows
}

fn column_entry(snapshot: &Path, table: &str, column: &str) -> Value {
    let m = json(&snapshot.join("manifest.json"));
    m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == table)
        .unwrap()["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == column)
        .unwrap_or_else(|| panic!("column {column} not in the manifest"))
        .clone()
}

/// One row of the type table, checked against values the fixture wrote into a real server:
/// (column, staged Arrow type, fidelity prefix, [(row id, expected staged value as JSON)]).
type Case = (&'static str, &'static str, &'static str, Vec<(i64, Value)>);

fn cases() -> Vec<Case> {
    vec![
        (
            "c_smallint",
            "Int16",
            "exact",
            vec![
                (1, json!(42)),
                (2, json!(-32768)),
                (3, json!(32767)),
                (4, Value::Null),
            ],
        ),
        (
            "c_integer",
            "Int32",
            "exact",
            vec![(2, json!(-2147483648i64)), (3, json!(2147483647))],
        ),
        (
            "c_bigint",
            "Int64",
            "exact",
            vec![(2, json!(i64::MIN)), (3, json!(i64::MAX))],
        ),
        (
            "c_numeric",
            "Decimal128(38, 10)",
            "exact",
            vec![
                (1, json!("12345.6789000000")),
                (2, json!("-9999999999999999999999999999.9999999999")),
                (3, json!("9999999999999999999999999999.9999999999")),
            ],
        ),
        (
            "c_numeric_small",
            "Decimal128(5, 2)",
            "exact",
            vec![(1, json!("123.45")), (2, json!("-999.99"))],
        ),
        (
            "c_numeric_wide",
            "Utf8",
            "widened",
            vec![(
                2,
                json!("-99999999999999999999999999999999999999999999.99999"),
            )],
        ),
        (
            "c_numeric_free",
            "Utf8",
            "widened",
            vec![(1, json!("3.14159265358979323846")), (5, json!("0"))],
        ),
        (
            "c_real",
            "Float32",
            "exact",
            vec![(1, json!(1.5)), (2, json!(-3.4028235e38))],
        ),
        (
            "c_double",
            "Float64",
            "exact",
            vec![(1, json!(2.25)), (2, json!(-1.7976931348623157e308))],
        ),
        (
            "c_boolean",
            "Boolean",
            "exact",
            vec![(1, json!(true)), (2, json!(false)), (4, Value::Null)],
        ),
        (
            "c_text",
            "Utf8",
            "exact",
            vec![
                (
                    5,
                    json!("ünïcödé — 日本語テキスト — emoji 😀🚀 — RTL עברית"),
                ),
                (2, json!("")),
            ],
        ),
        ("c_varchar", "Utf8", "exact", vec![(5, json!("ñandú"))]),
        (
            "c_char",
            "Utf8",
            "exact",
            vec![(1, json!("ab   ")), (5, json!("ü    "))],
        ),
        (
            "c_bytea",
            "Binary",
            "exact",
            vec![(1, json!({"$base64": "AQI="})), (2, json!({"$base64": ""}))],
        ),
        (
            "c_uuid",
            "Utf8",
            "exact",
            vec![(3, json!("ffffffff-ffff-ffff-ffff-ffffffffffff"))],
        ),
        (
            "c_date",
            "Date32",
            "exact",
            vec![(1, json!("2024-02-29")), (3, json!("9999-12-31"))],
        ),
        (
            "c_time",
            "Time64(µs)",
            "exact",
            vec![(1, json!("13:14:15.123456")), (3, json!("23:59:59.999999"))],
        ),
        (
            "c_timestamp",
            "Timestamp(µs)",
            "exact",
            vec![(1, json!("2024-02-29T13:14:15.123456"))],
        ),
        (
            "c_timestamptz",
            "Timestamp(µs, \"UTC\")",
            "exact",
            vec![(1, json!("2024-02-29T11:14:15.123456Z"))],
        ),
        (
            "c_interval",
            "Utf8",
            "exact",
            vec![(1, json!("P1Y2M3DT4H5M6.789S")), (5, json!("PT0S"))],
        ),
        (
            "c_json",
            "Utf8",
            "exact",
            vec![(1, json!("{\"b\": 1, \"a\": [1, 2, {\"c\": null}]}"))],
        ),
        (
            "c_jsonb",
            "Utf8",
            "exact",
            vec![(1, json!("{\"a\": [1, 2, {\"c\": null}], \"b\": 1}"))],
        ),
        (
            "c_int_array",
            "List(Int32)",
            "exact",
            vec![(1, json!([1, null, 3])), (2, json!([]))],
        ),
        (
            "c_text_array",
            "List(Utf8)",
            "exact",
            vec![
                (1, json!(["a,b", "x y", null])),
                (5, json!(["日本", "😀", ""])),
            ],
        ),
        (
            "c_float_array",
            "List(Float64)",
            "exact",
            vec![(1, json!([1.5, -2.25]))],
        ),
        (
            "c_uuid_array",
            "Utf8",
            "text fallback",
            vec![(1, json!("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"))],
        ),
        ("c_enum", "Utf8", "exact", vec![(5, json!("ünïcödé 😀"))]),
        (
            "c_inet",
            "Utf8",
            "exact",
            vec![
                (1, json!("192.168.0.1/24")),
                (5, json!("2001:db8::ff00:42:8329")),
            ],
        ),
        ("c_cidr", "Utf8", "exact", vec![(2, json!("::/0"))]),
        ("c_domain", "Int32", "exact", vec![(3, json!(2147483647))]),
        (
            "c_money",
            "Utf8",
            "text fallback",
            vec![(1, json!("$12.34"))],
        ),
        (
            "c_point",
            "Utf8",
            "text fallback",
            vec![(1, json!("(1.5,2.5)"))],
        ),
        (
            "c_timetz",
            "Utf8",
            "text fallback",
            vec![(1, json!("13:14:15+02"))],
        ),
        (
            "c_vector",
            "FixedSizeList(3 x Float32)",
            "exact",
            vec![(1, json!([0.5, -0.25, 1.0]))],
        ),
        // Values the binary decoders cannot hold: the column is widened to text, never nulled.
        (
            "c_numeric_nan",
            "Utf8",
            "text fallback",
            vec![(2, json!("NaN")), (1, json!("1.25"))],
        ),
        (
            "c_ts_infinity",
            "Utf8",
            "text fallback",
            vec![(2, json!("infinity")), (3, json!("-infinity"))],
        ),
        (
            "c_matrix",
            "Utf8",
            "text fallback",
            vec![(2, json!("{{1,2},{3,4}}")), (1, json!("{1,2}"))],
        ),
    ]
}

#[test]
fn type_fidelity_per_type_against_a_real_server() {
    let url = postgres_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    let o = run(&[
        "snapshot",
        "--source",
        &url,
        "--work-dir",
        p(&work),
        "--include",
        "all_types",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let snap = work.join("snapshot");
    let rows = staged_rows(&snap, "all_types");
    assert_eq!(rows.len(), 5);
    let by_id = |id: i64| rows.iter().find(|r| r["id"] == json!(id)).unwrap();
    let mut failures = vec![];
    for (column, arrow, fidelity, values) in cases() {
        let c = column_entry(&snap, "all_types", column);
        if c["arrow_type"] != json!(arrow) {
            failures.push(format!(
                "{column}: staged as {}, expected {arrow}",
                c["arrow_type"]
            ));
        }
        if !c["fidelity"].as_str().unwrap_or("").starts_with(fidelity) {
            failures.push(format!(
                "{column}: fidelity {:?}, expected {fidelity}...",
                c["fidelity"]
            ));
        }
        for (id, want) in values {
            let got = by_id(id).get(column).cloned().unwrap_or(Value::Null);
            if got != want {
                failures.push(format!("{column} row {id}: staged {got}, expected {want}"));
            }
        }
        // Row 4 is all NULL: every column must stage NULL, not a default.
        if by_id(4).get(column) != Some(&Value::Null) {
            failures.push(format!(
                "{column} row 4: NULL became {:?}",
                by_id(4).get(column)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "type fidelity failures:\n{}",
        failures.join("\n")
    );
    // No column is silently narrowed: every fidelity note is exact, widened or text fallback.
    let m = json(&snap.join("manifest.json"));
    for t in m["tables"].as_array().unwrap() {
        for c in t["columns"].as_array().unwrap() {
            let f = c["fidelity"].as_str().unwrap();
            assert!(
                f.starts_with("exact")
                    || f.starts_with("widened")
                    || f.starts_with("text fallback")
                    || f.starts_with("synthetic"),
                "{}.{}: {f}",
                t["name"],
                c["name"]
            );
        }
    }
}

#[test]
fn run_migrates_the_fixture_database_with_validation() {
    let url = postgres_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("pg.bundle");
    let o = run(&[
        "run",
        "--source",
        &url,
        "--target",
        p(&target),
        "--partition-rows",
        "40000",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let work = tmp.path().join("pg.bundle.work");
    let report = json(&work.join("report.json"));
    let text = report.to_string();
    assert!(!text.contains("engram@"), "the password reached the report");

    // Every table's memories count equals the server's row count.
    let m = json(&work.join("snapshot/manifest.json"));
    for t in m["tables"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let qualified = if name.contains('.') {
            name.to_string()
        } else {
            format!("public.{name}")
        };
        let want: u64 = psql("fixture", &format!("SELECT count(*) FROM {qualified}"))
            .parse()
            .unwrap();
        assert_eq!(t["rows"].as_u64().unwrap(), want, "rows of {name}");
    }
    // events was read in partitions.
    let events = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap();
    assert!(
        events["partitions"].as_array().unwrap().len() >= 5,
        "{}",
        events["partitions"]
    );
    // The cycle departments <-> employees is reported, and the orphan shipment is listed, not dropped.
    assert!(
        m["cycles"].to_string().contains("departments"),
        "{}",
        m["cycles"]
    );
    let orphans = engram_migrate::parquet_io::list_parts(&target.join("orphans")).unwrap();
    let mut orphan_rows = vec![];
    for f in orphans {
        for b in engram_migrate::parquet_io::read_all(&f).unwrap() {
            for r in 0..b.num_rows() {
                orphan_rows.push(engram_migrate::json::row_object(&b, r).unwrap());
            }
        }
    }
    assert_eq!(orphan_rows.len(), 1, "{orphan_rows:?}");
    assert_eq!(orphan_rows[0]["source_id"], json!("shipments_4"));

    // Edges: one per non-null foreign key value (the orphan excepted), per type, as the server counts them.
    let edges = edge_counts(&target);
    let cases = [
        ("fk:manager_id->users", "SELECT count(manager_id) FROM users"),
        // sales.orders.user_id and events.user_id both reference users: one edge type, both tables' edges.
        ("fk:user_id->users", "SELECT (SELECT count(user_id) FROM sales.orders) + (SELECT count(user_id) FROM events)"),
        ("fk:order_id->sales.orders", "SELECT count(order_id) FROM sales.order_lines"),
        ("fk:order_id,line_no->sales.order_lines", "SELECT count(*) - 1 FROM shipments"),
        ("fk:head_id->employees", "SELECT count(head_id) FROM departments"),
        ("fk:dept_id->departments", "SELECT count(dept_id) FROM employees"),
    ];
    for (etype, sql) in cases {
        let want: u64 = psql("fixture", sql).parse().unwrap();
        let got = edges
            .iter()
            .find(|(t, _)| t == etype)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        assert_eq!(got, want, "edges {etype}: {edges:?}");
    }

    // The 768-dim pgvector column is the embedding as is; the 1536-dim one is reported and embedded from text.
    let mapping = std::fs::read_to_string(work.join("mapping.sql")).unwrap();
    assert!(
        mapping.contains("column embedding holds 768-float vectors"),
        "{mapping}"
    );
    assert!(
        mapping.contains("embedding_big (FixedSizeList(1536 x Float32)) is not 768 floats"),
        "{mapping}"
    );
    let want: Vec<f32> = psql(
        "fixture",
        "SELECT embedding::text FROM chunks WHERE id = 'chunk-7'",
    )
    .trim_matches(|c| c == '[' || c == ']')
    .split(',')
    .map(|x| x.parse().unwrap())
    .collect();
    let got = memory_embedding(&target, "chunks_chunk-7");
    assert_eq!(
        got, want,
        "the pgvector embedding was not passed through as is"
    );
    // --reembed: the same memory embedded from its text instead (from the same snapshot).
    let again = tmp.path().join("reembed.bundle");
    let o = run(&[
        "run",
        "--source",
        p(&work.join("snapshot")),
        "--target",
        p(&again),
        "--reembed",
        "--include",
        "chunks",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let re = memory_embedding(&again, "chunks_chunk-7");
    assert_eq!(re.len(), want.len());
    assert_ne!(re, want, "--reembed kept the source vector");
}

/// (edge_type, count) over every space of a bundle.
fn edge_counts(bundle: &Path) -> Vec<(String, u64)> {
    use arrow::array::AsArray;
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for space in std::fs::read_dir(bundle.join("spaces")).unwrap().flatten() {
        for f in engram_migrate::parquet_io::list_parts(&space.path().join("edges")).unwrap() {
            for b in engram_migrate::parquet_io::read_all(&f).unwrap() {
                let t = b.column_by_name("edge_type").unwrap().as_string::<i32>();
                for i in 0..b.num_rows() {
                    *counts.entry(t.value(i).to_string()).or_default() += 1;
                }
            }
        }
    }
    counts.into_iter().collect()
}

fn memory_embedding(bundle: &Path, id: &str) -> Vec<f32> {
    use arrow::array::AsArray;
    for space in std::fs::read_dir(bundle.join("spaces")).unwrap().flatten() {
        for f in engram_migrate::parquet_io::list_parts(&space.path().join("memories")).unwrap() {
            for b in engram_migrate::parquet_io::read_all(&f).unwrap() {
                let ids = b.column_by_name("id").unwrap().as_string::<i32>();
                let emb = b.column_by_name("embedding").unwrap().as_fixed_size_list();
                for i in 0..b.num_rows() {
                    if ids.value(i) == id {
                        let v = emb.value(i);
                        let v = v.as_primitive::<arrow::datatypes::Float32Type>();
                        return v.values().to_vec();
                    }
                }
            }
        }
    }
    panic!("memory {id} not in the bundle")
}

#[test]
fn a_killed_snapshot_resumes_from_finished_partitions() {
    let url = postgres_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let o = run(&[
        "snapshot",
        "--source",
        &url,
        "--work-dir",
        p(&clean),
        "--include",
        "events",
        "--partition-rows",
        "10000",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // --partition-rows: 250,000 rows in partitions of 10,000.
    let parts = json(&clean.join("snapshot/manifest.json"))["tables"][0]["partitions"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    assert_eq!(parts, 25, "--partition-rows 10000");
    let killed = tmp.path().join("killed");
    let manifest = killed.join("snapshot/manifest.json");
    let m2 = manifest.clone();
    let args = [
        "snapshot",
        "--source",
        &url,
        "--work-dir",
        p(&killed),
        "--include",
        "events",
        "--partition-rows",
        "10000",
        "--quiet",
    ];
    // Kill once some partitions are committed and others are not.
    let was_killed = crate::resume::run_and_kill(&args, &move || {
        let Ok(bytes) = std::fs::read(&m2) else {
            return false;
        };
        let Ok(m) = serde_json::from_slice::<Value>(&bytes) else {
            return false;
        };
        let parts = m["tables"][0]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = parts.iter().filter(|p| p["done"] == json!(true)).count();
        done >= 3 && done < parts.len()
    });
    assert!(was_killed, "the snapshot finished before the kill point");
    let m = json(&manifest);
    let done_before: Vec<Value> = m["tables"][0]["files"].as_array().unwrap().clone();
    assert!(!done_before.is_empty());
    let o = run(&[
        "snapshot",
        "--source",
        &url,
        "--work-dir",
        p(&killed),
        "--include",
        "events",
        "--partition-rows",
        "10000",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let a = json(&clean.join("snapshot/manifest.json"));
    let b = json(&manifest);
    assert_eq!(a["tables"][0]["rows"], json!(250000));
    assert_eq!(a["tables"][0]["checksum"], b["tables"][0]["checksum"]);
    assert_eq!(a["tables"][0]["rows"], b["tables"][0]["rows"]);
    // The files committed before the kill were kept, not re-read.
    let after = b["tables"][0]["files"].as_array().unwrap();
    for f in &done_before {
        assert!(after.contains(f), "{f} was re-read after the resume");
    }
}

#[test]
fn bad_input_gives_clear_errors_and_never_the_password() {
    let url = postgres_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let port = pg_port();
    // Wrong password.
    let bad = format!("postgres://postgres:Wr0ngSecret@127.0.0.1:{port}/fixture");
    let o = run(&[
        "snapshot",
        "--source",
        &bad,
        "--work-dir",
        p(&tmp.path().join("a")),
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("Wr0ngSecret"), "the password was printed: {e}");
    // Unreachable server.
    let o = run(&[
        "snapshot",
        "--source",
        "postgres://postgres:Wr0ngSecret@127.0.0.1:1/fixture",
        "--work-dir",
        p(&tmp.path().join("b")),
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Wr0ngSecret"));
    // A database that does not exist.
    let o = run(&[
        "plan",
        "--source",
        &format!("postgres://postgres:engram@127.0.0.1:{port}/nosuchdb"),
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("nosuchdb"), "{}", stderr(&o));
    // A missing table.
    let o = run(&[
        "snapshot",
        "--source",
        &url,
        "--work-dir",
        p(&tmp.path().join("c")),
        "--include",
        "no_such_table",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no_such_table"), "{}", stderr(&o));
    assert!(
        !tmp.path().join("c/snapshot/manifest.json").exists(),
        "a snapshot was started for a missing table"
    );
}

#[test]
fn plan_prints_keys_foreign_keys_cycles_partitions_and_fidelity() {
    let url = postgres_fixture();
    let o = run(&["plan", "--source", &url, "--partition-rows", "50000"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for want in [
        "sales.order_lines",
        "key: order_id, line_no",
        "foreign key (order_id, line_no) -> sales.order_lines(order_id, line_no)",
        "foreign key (manager_id) -> users(id)",
        "foreign-key cycle",
        "audit_log  (4 rows, key: __pg_ctid)",
        "read in 5 partition(s)",
        "vector(1536)",
        "text fallback",
    ] {
        assert!(out.contains(want), "plan lacks {want:?}:\n{out}");
    }
    assert!(!out.contains("engram@"), "plan printed the password");
}

/// json and jsonb columns arrive in the memory's content as nested JSON (not a string holding JSON), arrays of
/// common element types as JSON arrays, and validation's sampled values pass on them.
#[test]
fn json_columns_are_nested_in_the_content_and_validate() {
    let url = postgres_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b.bundle");
    let o = run(&[
        "run",
        "--source",
        &url,
        "--include",
        "all_types",
        "--target",
        p(&bundle),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mems = bundle_memories(&bundle);
    let content = |id: &str| -> Value {
        let m = mems
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("memory {id}"));
        serde_json::from_str(m["content"].as_str().unwrap()).unwrap()
    };
    let c = content("all_types_1");
    assert_eq!(c["c_json"], json!({"b": 1, "a": [1, 2, {"c": null}]}));
    assert_eq!(c["c_jsonb"], json!({"a": [1, 2, {"c": null}], "b": 1}));
    assert_eq!(c["c_int_array"], json!([1, null, 3]));
    // Key order as stored: json keeps the text's order, jsonb its own.
    let text = mems.iter().find(|m| m["id"] == "all_types_1").unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(r#""c_json":{"b":1,"a":[1,2,{"c":null}]}"#),
        "{text}"
    );
    assert_eq!(content("all_types_4")["c_jsonb"], Value::Null);
    let report = json(&bundle.with_extension("bundle.work").join("report.json"));
    let sample = check(&report, "sample_values");
    assert_eq!(sample["passed"], true, "{sample}");
}

/// A source URL without a password takes it from --source-password, ENGRAM_MIGRATE_SOURCE_PASSWORD or PGPASSWORD
/// (as libpq does); none of them is printed or recorded.
#[test]
fn source_password_from_a_flag_or_the_environment() {
    let url = postgres_fixture();
    let (head, rest) = url.split_once("://").unwrap();
    let (userinfo, hostpath) = rest.split_once('@').unwrap();
    let (user, password) = userinfo
        .split_once(':')
        .expect("the fixture URL has a password");
    let bare = format!("{head}://{user}@{hostpath}");
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&[
        "plan",
        "--source",
        &bare,
        "--include",
        "all_types",
        "--target",
        p(&tmp.path().join("x")),
    ]);
    assert_ne!(code(&o), 0, "no password anywhere must fail");
    for (i, how) in ["flag", "ENGRAM_MIGRATE_SOURCE_PASSWORD", "PGPASSWORD"]
        .iter()
        .enumerate()
    {
        let target = tmp.path().join(format!("b{i}"));
        let mut c = Command::new(bin());
        c.args([
            "run",
            "--source",
            &bare,
            "--include",
            "all_types",
            "--target",
            p(&target),
        ]);
        match *how {
            "flag" => {
                c.args(["--source-password", password]);
            }
            env => {
                c.env(env, password);
            }
        }
        let o = c.output().unwrap();
        assert_eq!(code(&o), 0, "{how}: {}", stderr(&o));
        let report =
            std::fs::read_to_string(target.with_extension("work").join("report.json")).unwrap();
        assert!(
            !report.contains(password),
            "{how}: the password reached the report"
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains(password),
            "{how}: printed"
        );
    }
}

/// The binary COPY decoder on the types the fixture lacks, against the real server: `halfvec` and a `vector`
/// without dimension, an `oid` beyond 2^31, a `time` of 24:00:00 and an array whose index starts at 0 (both
/// widened to text, their values kept as PostgreSQL prints them), NULLs in each.
#[test]
fn the_binary_decoder_reads_rarer_types_and_widens_what_arrow_cannot_hold() {
    let url = pg_database("it_decoder");
    psql(
        "it_decoder",
        "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE TABLE rare (id int PRIMARY KEY, h halfvec(3), v vector, o oid, t time, a int[]);
         INSERT INTO rare VALUES
           (1, '[1.5,-2,0.25]', '[1,2,3,4]', 4000000000, '24:00:00', '[0:1]={7,8}'),
           (2, NULL, NULL, NULL, NULL, NULL),
           (3, '[0,0,1]', '[0.5]', 7, '12:34:56.789', '{1,NULL,3}');",
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    let o = run(&["snapshot", "--source", url.as_str(), "--work-dir", p(&work)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let snap = work.join("snapshot");
    let rows = staged_rows(&snap, "rare");
    let row = |id: i64| {
        rows.iter()
            .find(|r| r["id"] == json!(id))
            .unwrap_or_else(|| panic!("row {id}: {rows:?}"))
            .clone()
    };
    assert_eq!(row(1)["h"], json!([1.5, -2.0, 0.25]));
    assert_eq!(row(1)["v"], json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(row(3)["v"], json!([0.5]));
    assert_eq!(row(1)["o"], json!(4000000000u64));
    assert_eq!(row(1)["t"], json!("24:00:00"));
    assert_eq!(row(3)["t"], json!("12:34:56.789"));
    assert_eq!(row(1)["a"], json!("[0:1]={7,8}"));
    assert_eq!(row(3)["a"], json!("{1,NULL,3}"));
    for c in ["h", "v", "o", "t", "a"] {
        assert_eq!(row(2)[c], Value::Null, "{c}");
    }
    for (c, arrow, fidelity) in [
        ("h", "FixedSizeList", "widened"),
        ("v", "List", "exact"),
        ("o", "Int64", "exact"),
        ("t", "Utf8", "text fallback: a time of 24:00:00"),
        (
            "a",
            "Utf8",
            "text fallback: an array whose index does not start at 1",
        ),
    ] {
        let e = column_entry(&snap, "rare", c);
        assert!(
            e["arrow_type"].as_str().unwrap().starts_with(arrow),
            "{c}: {e}"
        );
        assert!(
            e["fidelity"].as_str().unwrap().starts_with(fidelity),
            "{c}: {e}"
        );
    }
}
