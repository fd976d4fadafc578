//! The work directory: the one place that knows its layout, the lock that keeps two runs out of it, and the
//! generic checkpoint every resumable stage saves into it.
//!
//! ```text
//! <work>/
//!   .lock                 pid of the command using it (WorkLock)
//!   snapshot/             the source staged as Parquet + manifest.json (unless the source is a snapshot)
//!   snapshot.prev/        the last run's snapshot while an incremental run diffs against it
//!   schema.json           the tables and columns of the last completed run (schema-drift check; kept by --fresh)
//!   delta/                previous-memories.parquet: hashes of the memories a target last received;
//!                         bundle-memories.parquet/.json: hashes of the current bundle's (the next baseline);
//!                         undelivered: marks an incremental delta not yet delivered to its live target
//!   mapping.sql           the generated mapping that ran
//!   transform/            staged memories, edges and orphans (transform.partial/ while being written)
//!   spill/                DataFusion's spill files
//!   embed-cache/          content hash -> vector, per provider (kept by --fresh)
//!   checkpoint.json       the bundle stage's progress
//!   load-checkpoint.json  a live load's progress
//!   plan.json             the plan the last `run` executed
//!   report.json           the last run's report
//! ```
//! The bundle's own siblings (`<bundle>.partial`, `<bundle>.old`) are next to the bundle, named here too.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every path under a work directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkDir {
    root: PathBuf,
}

impl WorkDir {
    pub fn new(root: impl Into<PathBuf>) -> WorkDir {
        WorkDir { root: root.into() }
    }

    /// The default work directory of a bundle: `<bundle>.work`, beside it.
    pub fn beside(bundle: &Path) -> WorkDir {
        WorkDir::new(sibling(bundle, ".work"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }
    pub fn snapshot(&self) -> PathBuf {
        self.root.join("snapshot")
    }
    /// The last run's snapshot, kept while an incremental run diffs the new one against it.
    pub fn previous_snapshot(&self) -> PathBuf {
        self.root.join("snapshot.prev")
    }
    /// The schema of the last completed run, which the next one is checked against for drift.
    pub fn schema_record(&self) -> PathBuf {
        self.root.join("schema.json")
    }
    pub fn delta(&self) -> PathBuf {
        self.root.join("delta")
    }
    /// Hashes of the memories the target last received (the bundle before this incremental run).
    pub fn previous_memories(&self) -> PathBuf {
        self.delta().join("previous-memories.parquet")
    }
    /// Row hashes of the bundle's memory parts, recorded by the bundle writer (`<space>/<part checksum>.parquet`).
    pub fn bundle_hashes(&self) -> PathBuf {
        self.delta().join("bundle-hashes")
    }
    /// Present while an incremental run's delta has not reached its live target: the next run keeps
    /// `previous_memories` as it is, so the target is sent everything it has missed.
    pub fn undelivered(&self) -> PathBuf {
        self.delta().join("undelivered")
    }
    pub fn mapping_sql(&self) -> PathBuf {
        self.root.join("mapping.sql")
    }
    /// The generated mapping's text columns as chosen from a snapshot's data, with the key of that snapshot and
    /// those options: a resumed run or a later command on the same snapshot does not count its texts again.
    pub fn text_choices(&self) -> PathBuf {
        self.root.join("text-choices.json")
    }
    pub fn transform(&self) -> PathBuf {
        self.root.join("transform")
    }
    pub fn transform_partial(&self) -> PathBuf {
        self.root.join("transform.partial")
    }
    pub fn spill(&self) -> PathBuf {
        self.root.join("spill")
    }
    /// Files a cluster engine's executors read: tables the tool computed, texts to embed (`engine::ballista`).
    pub fn engine_shared(&self) -> PathBuf {
        self.root.join("engine")
    }
    /// The persistent embedding cache's root (`embed::cache` lays out its provider folders inside).
    pub fn embed_cache_root(&self) -> &Path {
        &self.root
    }
    pub fn bundle_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.json")
    }
    pub fn load_checkpoint(&self) -> PathBuf {
        self.root.join("load-checkpoint.json")
    }
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.json")
    }
    /// The report of one `validate` of a finished run (`run_id` starts with its UTC time): its own file, so the
    /// run's report stays as the run left it.
    pub fn validate_report(&self, run_id: &str) -> PathBuf {
        self.root.join(format!("validate-report-{run_id}.json"))
    }

    /// Takes the directory for this process (creating it); released when the lock is dropped.
    pub fn lock(&self) -> Result<WorkLock> {
        WorkLock::acquire(&self.root)
    }

    /// `--fresh`: forgets the earlier state of a run (snapshot, mapping, staged output, checkpoints, plan,
    /// report, an incremental run's delta state) and the bundle's half-built sibling. The embedding cache stays:
    /// its vectors depend only on the text and the provider. The schema record stays: a fresh run of a source
    /// whose schema changed is still told so.
    pub fn fresh(&self, bundle: Option<&Path>) -> Result<()> {
        for p in [
            self.spill(),
            self.engine_shared(),
            self.snapshot(),
            self.previous_snapshot(),
            self.delta(),
            self.transform(),
            self.transform_partial(),
            self.mapping_sql(),
            self.bundle_checkpoint(),
            self.load_checkpoint(),
            self.plan(),
            self.report(),
        ] {
            remove(&p)?;
        }
        if let Some(b) = bundle {
            remove(&bundle_partial(b))?;
        }
        Ok(())
    }
}

/// `<bundle>.partial`: where a bundle is built before it is renamed into place.
pub fn bundle_partial(bundle: &Path) -> PathBuf {
    sibling(bundle, ".partial")
}

/// `<bundle>.old`: where an existing bundle waits while `--overwrite` moves the new one into place.
pub fn bundle_old(bundle: &Path) -> PathBuf {
    sibling(bundle, ".old")
}

/// `<path><suffix>` beside `path`, whatever trailing separators `path` was given with.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let p = crate::sink::bundle_path(path);
    let mut s = p.into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove(p: &Path) -> Result<()> {
    if p.is_dir() {
        fs::remove_dir_all(p).map_err(Error::io("remove", p))?;
    } else if p.exists() {
        fs::remove_file(p).map_err(Error::io("remove", p))?;
    }
    Ok(())
}

/// Holds `<work-dir>/.lock` for the life of a command, so two runs never share a work directory.
pub struct WorkLock(PathBuf);

impl WorkLock {
    pub fn acquire(work: &Path) -> Result<WorkLock> {
        fs::create_dir_all(work).map_err(|e| {
            Error::target_err(
                work.display().to_string(),
                format!("cannot create the work directory: {e}; check --work-dir"),
            )
        })?;
        let path = work.join(".lock");
        if let Ok(pid) = fs::read_to_string(&path) {
            let pid = pid.trim();
            // A lock left by a killed run (its process is gone) is taken over.
            if !pid.is_empty()
                && Path::new(&format!("/proc/{pid}")).exists()
                && pid != std::process::id().to_string()
            {
                return Err(Error::usage(format!(
                    "work directory {} is in use by process {pid}; wait for it or use another --work-dir",
                    work.display()
                )));
            }
        }
        fs::write(&path, std::process::id().to_string()).map_err(Error::io("write", &path))?;
        Ok(WorkLock(path))
    }
}

impl Drop for WorkLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// What a checkpoint belongs to: the input and the settings that decide its content. A checkpoint of another
/// run key is stale and is started over, never resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct RunKey(String);

impl RunKey {
    /// Joined from named parts, so two keys differ exactly when one part does.
    pub fn of(parts: &[(&str, &str)]) -> RunKey {
        RunKey(
            parts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("|"),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stage's progress, saved atomically after every unit of work and tied to a run key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<T> {
    pub run_key: RunKey,
    #[serde(flatten)]
    pub state: T,
}

impl<T: Serialize + DeserializeOwned + Default> Checkpoint<T> {
    /// The saved progress of `run_key`, or a new one when there is none or it belongs to another run.
    pub fn load_or_new(path: &Path, run_key: &RunKey) -> Result<Checkpoint<T>> {
        if let Ok(bytes) = fs::read(path) {
            let c: Checkpoint<T> = serde_json::from_slice(&bytes).map_err(|e| {
                Error::usage(format!(
                    "checkpoint {} is unreadable ({e}); delete it to start this stage over",
                    path.display()
                ))
            })?;
            if &c.run_key == run_key {
                return Ok(c);
            }
            tracing::info!(checkpoint = %path.display(), "checkpoint belongs to other input or settings; starting over");
        }
        Ok(Checkpoint {
            run_key: run_key.clone(),
            state: T::default(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::parquet_io::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_sit_beside_the_bundle_whatever_its_spelling() {
        for b in ["out", "out/", "out//"] {
            assert_eq!(bundle_partial(Path::new(b)), Path::new("out.partial"));
            assert_eq!(bundle_old(Path::new(b)), Path::new("out.old"));
            assert_eq!(WorkDir::beside(Path::new(b)).root(), Path::new("out.work"));
        }
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Progress {
        rows: u64,
    }

    #[test]
    fn a_checkpoint_resumes_only_its_own_run() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.json");
        let a = RunKey::of(&[("input", "x"), ("target", "t")]);
        let mut c: Checkpoint<Progress> = Checkpoint::load_or_new(&f, &a).unwrap();
        c.state.rows = 7;
        c.save(&f).unwrap();
        assert_eq!(
            Checkpoint::<Progress>::load_or_new(&f, &a)
                .unwrap()
                .state
                .rows,
            7
        );
        let b = RunKey::of(&[("input", "x"), ("target", "u")]);
        assert_eq!(
            Checkpoint::<Progress>::load_or_new(&f, &b)
                .unwrap()
                .state
                .rows,
            0
        );
        std::fs::write(&f, "not json").unwrap();
        assert!(Checkpoint::<Progress>::load_or_new(&f, &a).is_err());
    }

    #[test]
    fn fresh_forgets_the_run_but_keeps_the_embedding_cache() {
        let dir = tempfile::tempdir().unwrap();
        let w = WorkDir::new(dir.path().join("w"));
        fs::create_dir_all(w.snapshot()).unwrap();
        fs::create_dir_all(w.root().join("embed-cache")).unwrap();
        fs::write(w.report(), "{}").unwrap();
        let bundle = dir.path().join("b");
        fs::create_dir_all(bundle_partial(&bundle)).unwrap();
        w.fresh(Some(&bundle)).unwrap();
        assert!(
            !w.snapshot().exists() && !w.report().exists() && !bundle_partial(&bundle).exists()
        );
        assert!(w.root().join("embed-cache").exists());
    }
}
