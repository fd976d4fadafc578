//! Correct data passes validation, exactly: doubles and floats as real data has them (random values with 17
//! significant digits, subnormals, the extremes, negative zero, integers above 2^53) go source -> snapshot ->
//! bundle content -> re-read -> compare without a false alarm, in every source type that holds them (SQLite REAL,
//! PostgreSQL double precision and real, Bolt floats; Redis scores are in redis.rs). Each test also changes
//! values on the source afterwards and requires `sample_values` to fail: the comparison is exact, not lenient.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value};

use crate::common::*;

/// Edge-case doubles every test stores besides its random ones.
const EDGE_DOUBLES: &[f64] = &[
    99.17157569580637,
    -209497.86536355934,
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.1125369292536007e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    9_007_199_254_740_993.0,
    1_152_921_504_606_851_072.0,
    1e23,
    0.30000000000000004,
    0.3333333333333333,
];

fn assert_all_passed(report: &Value) {
    for c in report["validation"].as_array().unwrap() {
        assert_eq!(c["passed"], true, "check failed on correct data: {c}");
    }
}

/// Every memory's content of a bundle, parsed, by the memory's source table (source_name).
fn contents(bundle: &Path) -> BTreeMap<String, Vec<Map<String, Value>>> {
    let mut out: BTreeMap<String, Vec<Map<String, Value>>> = BTreeMap::new();
    for space in std::fs::read_dir(bundle.join("spaces")).unwrap() {
        let dir = space.unwrap().path().join("memories");
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            for b in engram_migrate::parquet_io::read_all(&f).unwrap() {
                for r in 0..b.num_rows() {
                    let row = engram_migrate::json::row_object(&b, r).unwrap();
                    let Value::Object(c) =
                        serde_json::from_str(row["content"].as_str().unwrap()).unwrap()
                    else {
                        panic!("content is not an object")
                    };
                    out.entry(row["source_name"].as_str().unwrap().to_string())
                        .or_default()
                        .push(c);
                }
            }
        }
    }
    out
}

fn python_script(script: &str, args: &[&str]) {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A REAL column of `random.random() * 100` (the shape of the bug report), 50k rows; a table of edge-case and
/// random-bit-pattern doubles with NULLs; a table without a key. Every memory is sampled, every value must
/// pass; then every reading moves by one ulp on the source and `sample_values` must fail.
#[test]
fn sqlite_doubles_validate_exactly_and_a_one_ulp_change_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("doubles.sqlite");
    let edges: Vec<String> = EDGE_DOUBLES.iter().map(|f| format!("{f:e}")).collect();
    python_script(
        r#"
import random, sqlite3, struct, sys, math
random.seed(20261124)
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, value REAL)")
c.executemany("INSERT INTO readings VALUES (?, ?, ?)",
              [(i, "s%d" % (i % 97), random.random() * 100) for i in range(50000)])
c.execute("CREATE TABLE edge_doubles (id INTEGER PRIMARY KEY, v REAL, w REAL)")
vals = [float(x) for x in sys.argv[2:]]
while len(vals) < 3000:
    f = struct.unpack("<d", random.getrandbits(64).to_bytes(8, "little"))[0]
    if math.isfinite(f):
        vals.append(f)
c.executemany("INSERT INTO edge_doubles VALUES (?, ?, ?)",
              [(i, v, None if i % 3 == 0 else -v) for i, v in enumerate(vals)])
c.execute("CREATE TABLE no_key (v REAL, note TEXT)")
c.executemany("INSERT INTO no_key VALUES (?, ?)",
              [(random.uniform(-1e6, 1e6) if i % 5 else None, None if i % 7 else "n%d" % i) for i in range(2000)])
c.commit()
"#,
        &[
            &[p(&db)][..],
            &edges.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    let target = tmp.path().join("b");
    let work = tmp.path().join("b.work");
    let o = run(&[
        "run",
        "--source",
        p(&db),
        "--target",
        p(&target),
        "--sample-size",
        "100000",
    ]);
    assert_eq!(
        code(&o),
        0,
        "a correct migration of doubles failed: {}",
        stderr(&o)
    );
    let report = json(&work.join("report.json"));
    assert_all_passed(&report);

    // Independently of validation: every bundle value has the bits SQLite holds.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut want: BTreeMap<i64, f64> = BTreeMap::new();
    let mut st = conn.prepare("SELECT id, value FROM readings").unwrap();
    for r in st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?)))
        .unwrap()
    {
        let (id, v) = r.unwrap();
        want.insert(id, v);
    }
    let got = contents(&target);
    let readings = &got["readings"];
    assert_eq!(readings.len(), 50_000);
    for c in readings {
        let id = c["id"].as_i64().unwrap();
        let v = c["value"].as_f64().unwrap();
        assert_eq!(
            v.to_bits(),
            want[&id].to_bits(),
            "readings {id}: bundle {v:e}, source {:e}",
            want[&id]
        );
    }
    let edge_rows = &got["edge_doubles"];
    assert_eq!(edge_rows.len(), 3000);
    for (i, f) in EDGE_DOUBLES.iter().enumerate() {
        let c = edge_rows.iter().find(|c| c["id"] == i).unwrap();
        let v = c["v"].as_f64().unwrap();
        // SQLite keeps -0.0 as 0.0 (it stores integral reals as integers): compare what SQLite holds.
        let held: f64 = conn
            .query_row(
                "SELECT v FROM edge_doubles WHERE id = ?1",
                [i as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            v.to_bits(),
            held.to_bits(),
            "edge value {f:e}: bundle {v:e}, sqlite {held:e}"
        );
        if *f != 0.0 {
            assert_eq!(v.to_bits(), f.to_bits(), "edge value {f:e} became {v:e}");
        }
    }
    assert_eq!(got["no_key"].len(), 2000);

    // A genuine change, as small as it gets: every reading one ulp up. The sample must catch it.
    python_script(
        r#"
import sqlite3, sys, math
c = sqlite3.connect(sys.argv[1])
c.create_function("up", 1, lambda v: math.nextafter(v, math.inf))
c.execute("UPDATE readings SET value = up(value)")
c.commit()
"#,
        &[p(&db)],
    );
    let o = run(&[
        "validate",
        "--source",
        p(&db),
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    assert_eq!(
        code(&o),
        5,
        "a one-ulp change passed validation: {}",
        stderr(&o)
    );
    let report = validate_report(&work);
    let sample = &check(&report, "sample_values");
    assert_eq!(sample["passed"], false, "{sample}");
    assert!(
        sample["examples"]
            .to_string()
            .contains("\"column_name\":\"value\""),
        "{sample}"
    );
    // Only the values changed: the other checks still pass.
    assert_eq!(check(&report, "counts_source")["passed"], true);
}

/// A PostgreSQL database of its own on the test server, (re)created.
/// `double precision` and `real` columns: random values from the server's own generator, edge cases, NULLs, a
/// table without a key. PostgreSQL's text output is the shortest exact form, so psql is the independent oracle.
#[test]
fn postgres_double_and_real_validate_exactly_and_a_change_fails() {
    let url = pg_database("it_floats");
    let edges: Vec<String> = EDGE_DOUBLES
        .iter()
        .map(|f| format!("({f:e}::float8)"))
        .collect();
    psql(
        "it_floats",
        &format!(
            "SELECT setseed(0.24);
             CREATE TABLE measures (id int PRIMARY KEY, d double precision, r real);
             INSERT INTO measures SELECT g, random() * 1000 - 500, (random() * 1000)::real FROM generate_series(1, 20000) g;
             INSERT INTO measures SELECT 100000 + row_number() OVER (), v, v::real FROM (VALUES {}) AS t(v)
               WHERE abs(v) < 3.4e38 AND (v = 0 OR abs(v) > 1.2e-38);
             INSERT INTO measures SELECT 200000 + row_number() OVER (), v, NULL FROM (VALUES {}) AS t(v);
             INSERT INTO measures VALUES (300001, NULL, '1.4e-45'), (300002, NULL, '3.4028235e38'), (300003, NULL, '-0'),
               (300004, NULL, '1.17549435e-38'), (300005, NULL, '16777217');
             CREATE TABLE loose (d double precision, r real);
             INSERT INTO loose SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE random() * 1e6 END, random()::real FROM generate_series(1, 1000) g;",
            edges.join(", "),
            edges.join(", ")
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let work = tmp.path().join("b.work");
    let o = run(&[
        "run",
        "--source",
        &url,
        "--target",
        p(&target),
        "--sample-size",
        "100000",
    ]);
    assert_eq!(
        code(&o),
        0,
        "a correct migration of doubles and reals failed: {}",
        stderr(&o)
    );
    assert_all_passed(&json(&work.join("report.json")));

    // Independently: the bundle's values are the server's, bit for bit (float8 as f64, float4 as f32).
    let server: BTreeMap<i64, (Option<f64>, Option<f32>)> =
        psql("it_floats", "SELECT id, d, r FROM measures")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (
                    f[0].parse().unwrap(),
                    (f[1].parse().ok(), f[2].parse().ok()),
                )
            })
            .collect();
    let got = contents(&target);
    let rows = got
        .iter()
        .find(|(k, _)| k.ends_with("measures"))
        .expect("measures memories")
        .1;
    assert_eq!(rows.len(), server.len());
    for c in rows {
        let id = c["id"].as_i64().unwrap();
        let (d, r) = server[&id];
        assert_eq!(
            c["d"].as_f64().map(f64::to_bits),
            d.map(f64::to_bits),
            "measures {id}: d {}",
            c["d"]
        );
        assert_eq!(
            c["r"].as_f64().map(|x| (x as f32).to_bits()),
            r.map(f32::to_bits),
            "measures {id}: r {}",
            c["r"]
        );
    }
    // The edge cases arrived (not filtered out by the guards above).
    assert!(server.len() > 20_000 + EDGE_DOUBLES.len());

    psql(
        "it_floats",
        "UPDATE measures SET d = d * (1 + 1e-15) + 1e-300 WHERE id <= 20000",
    );
    let o = run(&[
        "validate",
        "--source",
        &url,
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    assert_eq!(
        code(&o),
        5,
        "changed doubles passed validation: {}",
        stderr(&o)
    );
    let report = validate_report(&work);
    let sample = &check(&report, "sample_values");
    assert_eq!(sample["passed"], false, "{sample}");
    assert!(
        sample["examples"]
            .to_string()
            .contains("\"column_name\":\"d\""),
        "{sample}"
    );
}

/// Bolt floats (always 64-bit) as node properties: random values and edge cases, through ArcadeDB.
#[test]
fn bolt_float_properties_validate_exactly_and_a_change_fails() {
    let url = arcadedb_fixture("it_floats", "codegraph.cypher");
    let mut x = 0x2026_1124_u64;
    let mut values: Vec<f64> = EDGE_DOUBLES.to_vec();
    while values.len() < 400 {
        // splitmix64 -> uniform doubles in [-1e4, 1e4) with full 53-bit mantissas.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        values.push(((z >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2e4);
    }
    let idx: Vec<i64> = (0..values.len() as i64).collect();
    cypher(
        "it_floats",
        &[neo4rs::query(
            "UNWIND $idx AS i CREATE (:Reading {idx: i, value: $values[i], half: $values[i] / 2.0})",
        )
        .param("idx", idx)
        .param("values", values.clone())],
    );
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let work = tmp.path().join("b.work");
    let auth = [
        "--source-user",
        "root",
        "--source-password",
        ARCADEDB_PASSWORD,
    ];
    let o = run(&[
        &[
            "run",
            "--source",
            &url,
            "--target",
            p(&target),
            "--sample-size",
            "100000",
        ][..],
        &auth[..],
    ]
    .concat());
    assert_eq!(
        code(&o),
        0,
        "a correct migration of Bolt floats failed: {}",
        stderr(&o)
    );
    assert_all_passed(&json(&work.join("report.json")));

    // Independently: each Reading's value in the bundle is the double the test sent.
    let got = contents(&target);
    let mut seen = 0;
    for c in got.values().flatten() {
        // The node's property map, nested or as JSON text.
        let props: Map<String, Value> = match c.get("properties") {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
            _ => continue,
        };
        let (Some(i), Some(v)) = (
            props.get("idx").and_then(Value::as_i64),
            props.get("value").and_then(Value::as_f64),
        ) else {
            continue;
        };
        if props.get("half").is_none() {
            continue;
        }
        let want = values[i as usize];
        if want != 0.0 {
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "Reading {i}: bundle {v:e}, sent {want:e}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, values.len(), "every Reading in the bundle");

    cypher(
        "it_floats",
        &[neo4rs::query(
            "MATCH (r:Reading) WHERE r.idx >= 100 SET r.value = r.value * 1.0000000001",
        )],
    );
    let o = run(&[
        &[
            "validate",
            "--source",
            &url,
            "--target",
            p(&target),
            "--work-dir",
            p(&work),
        ][..],
        &auth[..],
    ]
    .concat());
    assert_eq!(
        code(&o),
        5,
        "changed Bolt floats passed validation: {}",
        stderr(&o)
    );
    let report = validate_report(&work);
    let sample = &check(&report, "sample_values");
    assert_eq!(sample["passed"], false, "{sample}");
    assert!(sample["examples"].to_string().contains("value"), "{sample}");
}
