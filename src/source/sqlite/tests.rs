use super::*;
use crate::parquet_io::{read_all, PartLimits};
use crate::snapshot::{self, SnapshotOptions};

fn db(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    let c = Connection::open(&path).unwrap();
    c.execute_batch(sql).unwrap();
    (dir, path)
}

/// Snapshots a database and returns (manifest, all rows of table `t` as JSON objects).
fn stage(
    path: &Path,
    overrides: &[(String, String)],
) -> Result<(snapshot::Manifest, Vec<Map<String, Value>>)> {
    let out = path.parent().unwrap().join("snap");
    let mut src = SqliteSource::open(path)?;
    src.set_overrides(overrides)?;
    let m = snapshot::take(
        &mut src,
        &out,
        &SnapshotOptions {
            batch_size: 2,
            limits: PartLimits::default(),
            workers: 2,
            include: vec![],
            exclude: vec![],
            reuse_stale: false,
        },
    )?
    .manifest;
    let entry = m.table("t").unwrap();
    let mut rows = vec![];
    for f in snapshot::table_files(&out, entry) {
        for b in read_all(&f)? {
            for r in 0..b.num_rows() {
                rows.push(crate::json::row_object(&b, r)?);
            }
        }
    }
    Ok((m, rows))
}

/// A value of each staging type and how it must come out.
fn sample(t: ColType) -> (&'static str, Value) {
    match t {
        ColType::Integer => ("-9223372036854775808", json!(i64::MIN)),
        ColType::Real => ("-1.25e-3", json!(-1.25e-3)),
        ColType::Boolean => ("1", json!(true)),
        ColType::Text => ("'héllo 日本 🚀'", json!("héllo 日本 🚀")),
        ColType::Json => ("'{\"a\": [1, null]}'", json!("{\"a\": [1, null]}")),
        ColType::Bytes => ("x'00ff10'", json!({"$base64": "AP8Q"})),
        ColType::Timestamp => (
            "'2024-01-02 03:04:05.5+02:00'",
            json!("2024-01-02T01:04:05.500Z"),
        ),
        ColType::Date => ("'1969-12-31'", json!("1969-12-31")),
        ColType::Time => ("'23:59:59.123456'", json!("23:59:59.123456")),
    }
}

/// One test per row of the type table: declared type -> Arrow type, and a value that survives exactly.
#[test]
fn every_row_of_the_type_map() {
    for (declared, t, _) in TYPE_MAP {
        let decl = match *declared {
            "VARCHAR" | "CHAR" | "NVARCHAR" | "NCHAR" | "CHARACTER" => format!("{declared}(80)"),
            "DECIMAL" | "NUMERIC" => format!("{declared}(10,2)"),
            d => d.to_string(),
        };
        let (value, want) = sample(*t);
        let (_d, path) = db(&format!("CREATE TABLE t (id INTEGER PRIMARY KEY, v {decl}); INSERT INTO t VALUES (1, {value}), (2, NULL);"));
        let (m, rows) = stage(&path, &[]).unwrap_or_else(|e| panic!("{declared}: {e}"));
        let col = m.table("t").unwrap().info.column("v").unwrap().clone();
        assert_eq!(
            col.arrow_type,
            crate::schema::type_name(&t.data_type()),
            "{declared}"
        );
        assert!(
            !col.fidelity.contains("fallback"),
            "{declared}: {}",
            col.fidelity
        );
        assert_eq!(rows[0]["v"], want, "{declared}");
        assert_eq!(rows[1]["v"], Value::Null, "{declared}: NULL stays NULL");
    }
}

#[test]
fn declared_type_names_are_normalised() {
    assert_eq!(
        map_declared("varchar(255)").unwrap().unwrap().0,
        ColType::Text
    );
    assert_eq!(
        map_declared("  double   precision ").unwrap().unwrap().0,
        ColType::Real
    );
    assert_eq!(
        map_declared("Unsigned Big Int").unwrap().unwrap().0,
        ColType::Integer
    );
    assert!(
        map_declared("").unwrap().is_none(),
        "undeclared is typed from its values"
    );
    assert!(map_declared("GEOMETRY").is_none());
}

#[test]
fn values_that_do_not_fit_widen_the_column_and_are_counted_not_dropped() {
    let (_d, path) = db("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, d DATETIME, s TEXT);
        INSERT INTO t VALUES (1, 5, '2024-01-01 00:00:00', 'a'), (2, 'N/A', 'yesterday', x'ff00'), (3, 7, 1700000000, 'c');");
    let (m, rows) = stage(&path, &[]).unwrap();
    let e = m.table("t").unwrap();
    let n = e.info.column("n").unwrap();
    assert_eq!(n.arrow_type, "Utf8");
    assert!(n.fidelity.starts_with("text fallback"), "{}", n.fidelity);
    let d = e.info.column("d").unwrap();
    assert!(d.fidelity.starts_with("text fallback"), "{}", d.fidelity);
    let s = e.info.column("s").unwrap();
    assert_eq!(
        s.arrow_type, "Binary",
        "a blob in a TEXT column widens it to bytes"
    );
    assert_eq!(rows.len(), 3, "no row dropped");
    assert_eq!(rows[0]["n"], json!("5"));
    assert_eq!(rows[1]["n"], json!("N/A"));
    assert_eq!(rows[2]["d"], json!("1700000000"));
    assert_eq!(rows[1]["s"], json!({"$base64": "/wA="}));
    assert_eq!(rows[0]["s"], json!({"$base64": "YQ=="}));
    let misfits = &e.read_up_to["values_not_fitting_declared_type"];
    assert_eq!(misfits["n"]["count"], json!(1));
    assert_eq!(misfits["n"]["first_key"], json!("{\"id\":2}"));
    assert_eq!(
        misfits["d"]["count"],
        json!(1),
        "the integer fits DATETIME as Unix seconds; 'yesterday' does not"
    );
}

#[test]
fn integers_in_datetime_are_unix_seconds_and_sub_microseconds_do_not_fit() {
    let (_d, path) = db("CREATE TABLE t (id INTEGER PRIMARY KEY, d DATETIME); INSERT INTO t VALUES (1, 0), (2, '2024-01-01T00:00:00Z');");
    let (_, rows) = stage(&path, &[]).unwrap();
    assert_eq!(rows[0]["d"], json!("1970-01-01T00:00:00Z"));
    assert_eq!(
        parse_timestamp("2024-01-01 00:00:00.123456789"),
        None,
        "nanoseconds would be truncated"
    );
    assert_eq!(
        parse_timestamp("2024-01-01 00:00:00.123456"),
        Some(1_704_067_200_123_456)
    );
    assert_eq!(parse_time("12:00:00.5"), Some(43_200_500_000));
}

#[test]
fn unknown_declared_type_is_an_error_naming_table_and_column_unless_overridden() {
    let (_d, path) = db("CREATE TABLE t (id INTEGER PRIMARY KEY, g GEOMETRY); INSERT INTO t VALUES (1, 'POINT(1 2)');");
    let e = stage(&path, &[]).unwrap_err().to_string();
    assert!(
        e.contains("table t, column g") && e.contains("GEOMETRY") && e.contains("--column-type"),
        "{e}"
    );
    let (m, rows) = stage(&path, &[("t.g".into(), "text".into())]).unwrap();
    assert_eq!(rows[0]["g"], json!("POINT(1 2)"));
    assert!(m
        .table("t")
        .unwrap()
        .info
        .column("g")
        .unwrap()
        .fidelity
        .contains("--column-type"));
}

#[test]
fn keys_foreign_keys_rowid_and_undeclared_columns_are_introspected() {
    let (_d, path) = db("
        CREATE TABLE parent (a TEXT, b INTEGER, PRIMARY KEY (a, b));
        CREATE TABLE child (id INTEGER PRIMARY KEY, pa TEXT, pb INTEGER, up INTEGER REFERENCES child, FOREIGN KEY (pa, pb) REFERENCES parent (a, b));
        CREATE TABLE t (x, y);
        INSERT INTO t VALUES (1, 'a'), (2.5, 'b');
        CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID;");
    let mut src = SqliteSource::open(&path).unwrap();
    let cat = src.catalog().unwrap();
    let names: Vec<_> = cat.tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.iter().position(|n| *n == "parent") < names.iter().position(|n| *n == "child"));
    let child = cat.table("child").unwrap();
    assert_eq!(child.foreign_keys.len(), 2);
    let multi = child
        .foreign_keys
        .iter()
        .find(|f| f.parent_table == "parent")
        .unwrap();
    assert_eq!(multi.columns, vec!["pa", "pb"]);
    assert_eq!(multi.parent_columns, vec!["a", "b"]);
    let selfref = child
        .foreign_keys
        .iter()
        .find(|f| f.parent_table == "child")
        .unwrap();
    assert_eq!(
        selfref.parent_columns,
        vec!["id"],
        "implicit reference means the parent's primary key"
    );
    assert_eq!(cat.table("parent").unwrap().primary_key, vec!["a", "b"]);
    let t = cat.table("t").unwrap();
    assert_eq!(t.primary_key, vec![ROWID_COLUMN]);
    assert_eq!(
        t.column("x").unwrap().arrow_type,
        "Float64",
        "undeclared: integer and real values -> real"
    );
    assert_eq!(t.column("y").unwrap().arrow_type, "Utf8");
    assert_eq!(cat.table("w").unwrap().primary_key, vec!["k"]);
}

#[test]
fn not_a_database_and_missing_file_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.db");
    std::fs::write(
        &p,
        b"this is not sqlite at all, just some text that is long enough to be a header",
    )
    .unwrap();
    let e = SqliteSource::open(&p).err().unwrap();
    assert!(
        e.to_string().contains("not a SQLite database") && e.to_string().contains("junk.db"),
        "{e}"
    );
    assert_eq!(e.exit_code(), crate::error::exit::SOURCE);
    let e = SqliteSource::open(&dir.path().join("missing.db"))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("missing.db") && e.to_string().contains("no such file"),
        "{e}"
    );
}

/// The fast parser of the common ISO shapes agrees with chrono's general parsers wherever it answers, and
/// leaves the rest to them (offsets, one-digit fields, leap seconds, impossible dates, odd fractions).
#[test]
fn fast_iso_timestamps_agree_with_the_general_parser() {
    let general = |s: &str| parse_datetime_general(s);
    let mut answered = 0;
    let mut cases: Vec<String> = vec![];
    for date in [
        "2024-02-29",
        "2023-02-29",
        "1969-12-31",
        "0001-01-01",
        "9999-12-31",
        "2024-13-01",
        "2024-1-05",
    ] {
        cases.push(date.to_string());
        for sep in [" ", "T"] {
            for time in [
                "00:00",
                "23:59",
                "24:00",
                "12:34:56",
                "23:59:59",
                "23:59:60",
                "12:34:5",
                "1:02:03",
                "12:34:56.",
                "12:34:56.1",
                "12:34:56.123456",
                "12:34:56.123456789",
                "12:34:56.1234567891",
                "12:34:56Z",
                "12:34:56+02:00",
                "12:34:56.5-0130",
                "12:34:56 ",
            ] {
                cases.push(format!("{date}{sep}{time}"));
            }
        }
    }
    for c in &cases {
        if let Some(fast) = iso_fast(c) {
            answered += 1;
            assert_eq!(Some(fast), general(c), "{c}");
        }
        // Whichever way it goes, the public parsers give the general parser's answer.
        let micros = general(c.trim()).and_then(|dt| {
            let u = dt.and_utc();
            (u.timestamp_subsec_nanos() % 1000 == 0).then(|| u.timestamp_micros())
        });
        assert_eq!(parse_timestamp(c), micros, "{c}");
    }
    assert!(
        answered > 40,
        "the fast path answered only {answered} of {}",
        cases.len()
    );
    assert_eq!(parse_date("2024-02-29"), Some(19782));
    assert_eq!(parse_date("2023-02-29"), None);
    assert_eq!(parse_date(" 1969-12-31 "), Some(-1));
}
