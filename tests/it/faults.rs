//! Every validation check must be able to fail: each test injects one fault into a good bundle and requires
//! `validate` to exit 5 with that check failed (and a control run on the untouched bundle to pass).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use arrow::compute::concat_batches;
use engram_migrate::parquet_io::{read_all, PartLimits, RollingWriter};

use crate::common::*;

struct Good {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    work: PathBuf,
}

fn good_bundle() -> Good {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("b");
    let work = tmp.path().join("w");
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    assert_eq!(code(&out), 0);
    Good {
        _tmp: tmp,
        target,
        work,
    }
}

fn validate(g: &Good) -> (i32, serde_json::Value) {
    let out = run(&[
        "validate",
        "--source",
        p(&fixture()),
        "--target",
        p(&g.target),
        "--work-dir",
        p(&g.work),
        "--sample-size",
        "100000",
    ]);
    (code(&out), validate_report(&g.work))
}

fn failed(report: &serde_json::Value) -> Vec<String> {
    report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Rewrites the first part file of `space`'s `kind` (memories/edges) through `f`.
fn rewrite(bundle: &Path, space: &str, kind: &str, f: impl Fn(RecordBatch) -> RecordBatch) {
    let dir = bundle.join("spaces").join(space).join(kind);
    let file = dir.join("part-00000.parquet");
    let batches = read_all(&file).unwrap();
    let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
    let changed = f(batch);
    std::fs::remove_file(&file).unwrap();
    let mut w = RollingWriter::new(&dir, changed.schema(), PartLimits::default(), 0).unwrap();
    w.write(&changed).unwrap();
    w.finish(true).unwrap();
}

fn replace_col(b: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let i = b.schema().index_of(name).unwrap();
    let mut cols = b.columns().to_vec();
    cols[i] = col;
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

#[test]
fn control_untouched_bundle_passes() {
    let g = good_bundle();
    let (c, r) = validate(&g);
    assert_eq!(c, 0, "{:?}", failed(&r));
}

#[test]
fn dropped_row_is_caught_by_counts() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "memories", |b| {
        b.slice(0, b.num_rows() - 1)
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    assert!(
        failed(&r).contains(&"counts_bundle".to_string()),
        "{:?}",
        failed(&r)
    );
}

#[test]
fn changed_value_is_caught_by_sampled_comparison() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "memories", |b| {
        let content = b.column_by_name("content").unwrap().as_string::<i32>();
        let mut v: Vec<String> = content.iter().map(|s| s.unwrap().to_string()).collect();
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&v[0]).unwrap();
        obj.insert("name".into(), serde_json::json!("tampered"));
        v[0] = serde_json::Value::Object(obj).to_string();
        replace_col(&b, "content", Arc::new(StringArray::from(v)))
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    assert!(
        failed(&r).contains(&"sample_values".to_string()),
        "{:?}",
        failed(&r)
    );
}

#[test]
fn orphan_edge_is_caught() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "edges", |b| {
        let t = b.column_by_name("target_id").unwrap().as_string::<i32>();
        let mut v: Vec<String> = t.iter().map(|s| s.unwrap().to_string()).collect();
        v[0] = "nodes_does/not/exist.py".into();
        replace_col(&b, "target_id", Arc::new(StringArray::from(v)))
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    assert!(
        failed(&r).contains(&"orphan_edges".to_string()),
        "{:?}",
        failed(&r)
    );
}

#[test]
fn zero_vector_is_caught() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "memories", |b| {
        let e = b.column_by_name("embedding").unwrap().as_fixed_size_list();
        let values = e.values().as_primitive::<arrow::datatypes::Float32Type>();
        let mut v: Vec<f32> = values.values().to_vec();
        v[..768].iter_mut().for_each(|x| *x = 0.0);
        let field = match e.data_type() {
            arrow::datatypes::DataType::FixedSizeList(f, _) => f.clone(),
            _ => unreachable!(),
        };
        let list = FixedSizeListArray::new(
            field,
            768,
            Arc::new(Float32Array::from(v)),
            e.nulls().cloned(),
        );
        replace_col(&b, "embedding", Arc::new(list))
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    assert!(
        failed(&r).contains(&"embedding_quality".to_string()),
        "{:?}",
        failed(&r)
    );
}

#[test]
fn duplicated_id_is_caught() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "memories", |b| {
        let first = b.slice(0, 1);
        concat_batches(&b.schema(), &[b.clone(), first]).unwrap()
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    assert!(
        failed(&r).contains(&"duplicate_ids".to_string()),
        "{:?}",
        failed(&r)
    );
}

#[test]
fn changed_file_is_caught_by_checksums_and_source_change_by_counts() {
    let g = good_bundle();
    rewrite(&g.target, "nodes", "edges", |b| {
        b.slice(1, b.num_rows() - 1)
    });
    let (c, r) = validate(&g);
    assert_eq!(c, 5);
    let f = failed(&r);
    assert!(f.contains(&"checksums".to_string()), "{f:?}");

    // The source gains a row after the run: `validate` says the source changed since the snapshot (what, in
    // words) and then fails the checks that compare with the source; with --reuse-snapshot it checks the
    // migration against the snapshot it was made from, which passes.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("changing.sqlite");
    std::fs::copy(fixture(), &src).unwrap();
    let (target, work) = (tmp.path().join("b"), tmp.path().join("w"));
    let out = run(&[
        "run",
        "--source",
        p(&src),
        "--target",
        p(&target),
        "--work-dir",
        p(&work),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let edges = sqlite_count(&src, "edges");
    let conn = rusqlite::Connection::open(&src).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    conn.execute(
        "INSERT INTO edges (source, target, type) VALUES ('a', 'b', 'CALLS')",
        [],
    )
    .unwrap();
    drop(conn);
    let out = run(&["validate", "--work-dir", p(&work)]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let said = format!("rows of \"edges\": {edges} then, {} now", edges + 1);
    assert!(stderr(&out).contains(&said), "{}", stderr(&out));
    let r = validate_report(&work);
    assert!(failed(&r).contains(&"counts_source".to_string()));
    let changes = r["source_changed_since_snapshot"].as_array().unwrap();
    assert!(changes.iter().any(|c| c == &said), "{r}");
    let out = run(&["validate", "--work-dir", p(&work), "--reuse-snapshot"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[allow(dead_code)]
fn _uses(_: &dyn Array) {}

/// A bundle written before manifests recorded their checksum scheme (no `checksum_scheme`, memories
/// checksummed under scheme 1, vectors through the row format) passes `checksums`: the mismatch under today's
/// scheme is checked again under the old one. The same checksums in a bundle that says it is of today's scheme
/// fail: the fallback is only for bundles that do not say.
#[test]
fn bundle_of_the_older_checksum_scheme_passes_and_a_wrong_scheme_fails() {
    let g = good_bundle();
    let path = g.target.join("bundle.json");
    let mut m: serde_json::Value = json(&path);
    assert_eq!(m["checksum_scheme"], engram_migrate::checksum::SCHEME);
    for s in m["spaces"].as_array_mut().unwrap() {
        let dir = g
            .target
            .join("spaces")
            .join(s["space"].as_str().unwrap())
            .join("memories");
        let files: Vec<PathBuf> = s["memories"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| dir.join(f["file"].as_str().unwrap()))
            .collect();
        let old = engram_migrate::parquet_io::checksum_parts_with(&files, 1).unwrap();
        assert_ne!(
            old.to_hex(),
            s["memories"]["checksum"],
            "schemes differ for vectors"
        );
        s["memories"]["checksum"] = old.to_hex().into();
    }
    let write = |m: &serde_json::Value| {
        std::fs::write(&path, serde_json::to_vec_pretty(m).unwrap()).unwrap()
    };
    write(&m);
    let (c, r) = validate(&g);
    assert_eq!(c, 5, "recorded as scheme 2, checksummed under 1");
    assert_eq!(failed(&r), vec!["checksums".to_string()]);

    m.as_object_mut().unwrap().remove("checksum_scheme");
    write(&m);
    let (c, r) = validate(&g);
    assert_eq!(c, 0, "{:?}", failed(&r));
}
