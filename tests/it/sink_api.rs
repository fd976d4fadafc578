//! The `Sink` trait from outside the crate: a minimal in-memory sink, written here with nothing but the public
//! API (`Sink`, `WriteUnit`, `RowOutcome`, `ReadBack`, `sink::load::run`), driven by the one loader. What it
//! needed: this file. Registered in the crate it would be its folder under src/sink/ plus one line of
//! `sink::registry()`. The loader's contract is checked on it: ordered units of the sink's size, a failed write
//! stops the load with nothing lost, the resumed load sends only the unacknowledged tail, refusals are carried
//! into the read-back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;

use arrow::array::{Array, AsArray};
use engram_migrate::bundle::BundleManifest;
use engram_migrate::engine::{Engine, SqlMemory};
use engram_migrate::schema::memory;
use engram_migrate::sink::{
    load, DeliverLimits, Explanation, HeldMemory, ReadBack, Rejection, RowOutcome, Sink, WriteUnit,
};
use engram_migrate::validate::{self, IdScope, ValidateOptions};
use engram_migrate::workdir::RunKey;
use engram_migrate::{Error, Result};

use crate::engram::{mem, write_bundle, TestMemory};

/// Keeps (space, id) -> times written; refuses ids ending in "-bad"; fails every write once `fail_in` reaches 0.
struct MemorySink {
    held: Mutex<BTreeMap<(String, String), u32>>,
    unit_sizes: Mutex<Vec<usize>>,
    fail_in: AtomicI64,
    writes: AtomicUsize,
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn identity(&self) -> String {
        "memory://test".into()
    }
    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }
    fn accepts(&self, _bundle: &Path, _manifest: &BundleManifest) -> Result<()> {
        Ok(())
    }
    async fn prepare(&self, _manifest: &BundleManifest) -> Result<()> {
        Ok(())
    }
    fn unit_rows(&self, _limits: &DeliverLimits) -> usize {
        7
    }
    async fn write(&self, unit: &WriteUnit) -> Result<Vec<RowOutcome>> {
        if self.fail_in.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(Error::target_err("memory://test", "injected failure"));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.unit_sizes.lock().unwrap().push(unit.batch.num_rows());
        let ids = unit
            .batch
            .column_by_name(memory::ID)
            .unwrap()
            .as_string::<i32>();
        let mut held = self.held.lock().unwrap();
        Ok((0..ids.len())
            .map(|i| {
                let id = ids.value(i).to_string();
                if id.ends_with("-bad") {
                    return RowOutcome::Rejected {
                        id,
                        status: "400".into(),
                        message: "refused".into(),
                    };
                }
                *held.entry((unit.space.clone(), id)).or_default() += 1;
                RowOutcome::Accepted
            })
            .collect())
    }
    /// This target can: it removes the bundle's memories it holds.
    async fn rollback(&self, bundle: &Path, manifest: &BundleManifest) -> Result<u64> {
        let mut held = self.held.lock().unwrap();
        let mut removed = 0;
        for f in manifest.memory_files(bundle) {
            for b in engram_migrate::parquet_io::read_all(&f)? {
                let ids = b.column_by_name(memory::ID).unwrap().as_string::<i32>();
                let space = b.column_by_name(memory::SPACE).unwrap().as_string::<i32>();
                for i in 0..b.num_rows() {
                    let key = (space.value(i).to_string(), ids.value(i).to_string());
                    removed += held.remove(&key).is_some() as u64;
                }
            }
        }
        Ok(removed)
    }

    async fn read_back(
        &self,
        _bundle: &Path,
        manifest: &BundleManifest,
        rejected: &[Rejection],
    ) -> Result<ReadBack> {
        let held = self.held.lock().unwrap();
        let total: u64 = manifest.spaces.iter().map(|s| s.memories.rows).sum();
        Ok(ReadBack {
            held: held
                .keys()
                .map(|(space, id)| HeldMemory {
                    space: space.clone(),
                    id: id.clone(),
                    embedding_matches: None,
                    content_matches: None,
                })
                .collect(),
            explained: rejected
                .iter()
                .map(|r| Explanation {
                    space: r.space.clone(),
                    id: r.id.clone(),
                    reason: "rejected".into(),
                    detail: r.message.clone(),
                })
                .collect(),
            details: serde_json::json!({ "kept": held.len(), "rejected": rejected.len() }),
            rendered: format!("kept {} of {total}\n", held.len()),
        })
    }
}

#[test]
fn a_sink_from_outside_the_crate_loads_resumes_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mems: Vec<TestMemory> = (0..95)
        .map(|i| mem(&format!("m{i:03}"), vec![1.0; 768], 0.7))
        .collect();
    mems.push(mem("m095-bad", vec![1.0; 768], 0.7));
    let other: Vec<TestMemory> = (0..30)
        .map(|i| mem(&format!("o{i:03}"), vec![1.0; 768], 0.7))
        .collect();
    let bundle = write_bundle(
        &tmp.path().join("b.bundle"),
        &[("space_a", mems), ("space_b", other)],
        768,
    );
    let manifest = BundleManifest::load(&bundle).unwrap();
    let ckpt = tmp.path().join("load-checkpoint.json");
    let key = RunKey::of(&[("bundle", &manifest.run_id), ("target", "memory://test")]);
    let limits = DeliverLimits {
        batch_rows: 20,
        parallel: 3,
    };
    let sink = MemorySink {
        held: Mutex::new(BTreeMap::new()),
        unit_sizes: Mutex::new(vec![]),
        fail_in: AtomicI64::new(8),
        writes: AtomicUsize::new(0),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The 9th unit fails: the load stops with an error, having checkpointed only whole batches.
    let e = rt
        .block_on(load::run(
            &bundle,
            &manifest,
            &sink,
            &limits,
            &ckpt,
            &key,
            Default::default(),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    let done: u64 = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&ckpt).unwrap())
        .unwrap()["rows_done"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        done > 0 && done % 20 == 0,
        "whole batches checkpointed: {done}"
    );

    // Resumed: everything lands; only the unacknowledged tail (less than one batch per unit in flight) twice.
    sink.fail_in.store(i64::MAX, Ordering::SeqCst);
    let out = rt
        .block_on(load::run(
            &bundle,
            &manifest,
            &sink,
            &limits,
            &ckpt,
            &key,
            Default::default(),
        ))
        .unwrap();
    assert_eq!(out.resumed, done);
    assert_eq!(out.sent + out.resumed, 126);
    let held = sink.held.lock().unwrap().clone();
    assert_eq!(held.len(), 125, "every memory but the refused one");
    let twice = held.values().filter(|&&n| n > 1).count();
    assert!(
        twice < 20 * 2,
        "only the unacknowledged tail is sent again: {twice}"
    );
    // Units: at most the sink's size, never across batches.
    assert!(sink
        .unit_sizes
        .lock()
        .unwrap()
        .iter()
        .all(|&n| (1..=7).contains(&n)));
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].id, "m095-bad");
    assert_eq!(out.rejected[0].space, "space_a");
    // The verdict is the same SQL as for every sink: one memory missing, with the sink's reason.
    let rb = rt
        .block_on(sink.read_back(&bundle, &manifest, &out.rejected))
        .unwrap();
    let vopts = ValidateOptions {
        id_scope: IdScope::PerSpace,
        sample_size: 0,
        sample_seed: 0,
        extra_checks: None,
        allow_skipped: false,
        derived_counts: None,
        engine: Engine::local(
            2,
            8192,
            SqlMemory {
                limit_bytes: 256 << 20,
                spill_dir: tmp.path().join("spill"),
            },
        ),
        verified_below_layer: 0,
    };
    let checks = rt
        .block_on(validate::check_target(&bundle, &rb, &vopts))
        .unwrap();
    let kept = checks.iter().find(|c| c.name == "target_kept").unwrap();
    assert_eq!((kept.passed, kept.offending_rows), (false, 1), "{kept:?}");
    assert_eq!(kept.examples[0]["id"], "m095-bad");
    assert_eq!(kept.examples[0]["reason"], "rejected");
    assert!(
        checks
            .iter()
            .find(|c| c.name == "target_embeddings")
            .unwrap()
            .passed
    );
    // Rollback, where the target can: every memory the load put there is removed.
    assert_eq!(rt.block_on(sink.rollback(&bundle, &manifest)).unwrap(), 125);
    assert!(sink.held.lock().unwrap().is_empty());
}
