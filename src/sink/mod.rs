//! Sinks deliver a finished bundle to a target. The bundle (`crate::bundle`) is the contract: the producing half
//! writes it, every sink loads it through the one resumable loader (`load::run`) and reads back what the target
//! kept. A sink implements only what is specific to its target ([`Sink`]); the sinks are listed once, by URL
//! scheme, in [`registry`].
//!
//! Adding a sink: a folder `src/sink/<name>/` with a [`SinkFactory`] and a [`Sink`], one line in [`registry`].

pub mod engram;
pub mod load;
pub mod neo4j;
pub mod postgres;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
pub use load::{DeliverLimits, LoadOutcome, Rejection};

/// A bundle directory as given (`--target out/`, `--bundle ./b//`) without trailing separators: its siblings
/// `<dir>.partial`, `<dir>.old` and `<dir>.work` are then next to it, never inside it (a bundle built in
/// `out/.partial` could not be renamed onto `out/`, its own parent).
pub fn bundle_path(p: &std::path::Path) -> std::path::PathBuf {
    let normal: std::path::PathBuf = p.components().collect();
    if normal.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        normal
    }
}

/// Rows of one bundle memory part that go out together (one request, one stream, one COPY), in bundle order.
#[derive(Debug, Clone)]
pub struct WriteUnit {
    pub space: String,
    /// `space/part-NNNNN.parquet`: the part's key in the checkpoint.
    pub part: String,
    /// The part file, for messages.
    pub file: PathBuf,
    /// The rows, in the bundle's memory schema.
    pub batch: RecordBatch,
    /// Set on the last unit of a batch: the batch's rows, checkpointed once this unit is answered.
    pub ends_batch: Option<u64>,
}

/// What the target answered for one row of a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Accepted,
    /// Refused for this row (not retried; reported with the read-back).
    Rejected {
        id: String,
        status: String,
        message: String,
    },
}

/// A bundle memory the target holds (`target_memories` of the target checks).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldMemory {
    pub space: String,
    pub id: String,
    /// Whether the target's embedding is the bundle's, as the sink compares them; None if it stores none.
    pub embedding_matches: Option<bool>,
    /// Whether the target's content is the bundle's as JSON (`json::same_json`); None if it cannot be read back.
    pub content_matches: Option<bool>,
}

/// Why the target lacks a bundle memory, as the sink found out (`target_explained`).
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub space: String,
    pub id: String,
    /// A short key: `rejected`, `near_duplicate`, ...
    pub reason: String,
    pub detail: String,
}

/// What the target kept, read back after a load. The verdict is SQL (`validate::check_target` over these rows
/// and the bundle), the same for every sink; the sink adds its own findings for the report.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub held: Vec<HeldMemory>,
    pub explained: Vec<Explanation>,
    /// The sink's own findings for the report (Engram: protocol, per-space counts, every memory not kept and why).
    pub details: serde_json::Value,
    /// The same for people.
    pub rendered: String,
}

/// What a target is predicted to lose silently of a bundle, before anything is sent.
#[derive(Debug, Clone)]
pub struct LossPrediction {
    pub lost: u64,
    pub total: u64,
    /// The table for people.
    pub rendered: String,
    /// One line per space that loses something, worst first as the sink orders them.
    pub worst: Vec<String>,
}

/// What a target did with an incremental run's deletes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DeleteOutcome {
    pub requested: u64,
    /// Removed, or already absent.
    pub deleted: u64,
    /// Still held: the target cannot delete (said in `note`).
    pub kept: u64,
    pub note: String,
}

impl DeleteOutcome {
    /// Every one of `n` requested deletes done (or the memory already absent).
    pub fn all_deleted(n: usize) -> DeleteOutcome {
        DeleteOutcome {
            requested: n as u64,
            deleted: n as u64,
            kept: 0,
            note: String::new(),
        }
    }

    pub fn add(&mut self, o: DeleteOutcome) {
        self.requested += o.requested;
        self.deleted += o.deleted;
        self.kept += o.kept;
        if self.note.is_empty() {
            self.note = o.note;
        }
    }
}

/// What one load sends: the whole bundle, or an incremental run's delta (its added and changed memories, then
/// deletes of those gone). A delta load leaves the target's memories and edges of the bundle's spaces equal to
/// the bundle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadScope {
    Whole,
    Delta,
}

/// A target that loads finished bundles. Writes must be idempotent (keyed by memory id): a resumed load sends
/// the unacknowledged tail again.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Short name for progress lines and the report: "engram", ...
    fn name(&self) -> &'static str;
    /// The target as given, without secrets; part of the load's run key.
    fn identity(&self) -> String;
    /// Reachability and credentials, quick (a few seconds at most): run before any long stage of `run`.
    async fn healthcheck(&self) -> Result<()>;
    /// What can be decided from the bundle alone, before any write: a refusal is an error naming the fix.
    fn accepts(&self, bundle: &Path, manifest: &BundleManifest) -> Result<()>;
    /// What the target would silently drop of this bundle (a target that answers "ok" and keeps less), predicted
    /// from the bundle alone. Default: nothing is predicted.
    fn predict_loss(
        &self,
        _bundle: &Path,
        _manifest: &BundleManifest,
    ) -> Result<Option<LossPrediction>> {
        Ok(None)
    }
    /// Idempotent schema work before data (Engram: spaces).
    async fn prepare(&self, manifest: &BundleManifest) -> Result<()>;
    /// Rows per unit for this target.
    fn unit_rows(&self, limits: &DeliverLimits) -> usize;
    /// Sends one unit; one outcome per row, in order. An error stops the load (it resumes from the checkpoint).
    async fn write(&self, unit: &WriteUnit) -> Result<Vec<RowOutcome>>;
    /// After the last unit and the deletes (what is not sent in units, indexes, analyze). With
    /// [`LoadScope::Delta`] the target's edges of the bundle's spaces are made the bundle's (an edge gone from the
    /// source is removed). Default: nothing.
    async fn finish(
        &self,
        _bundle: &Path,
        _manifest: &BundleManifest,
        _scope: LoadScope,
    ) -> Result<()> {
        Ok(())
    }
    /// After `prepare`: the target already holds this bundle's load (recorded there), so its units are
    /// acknowledged without being sent. Default: no.
    fn already_loaded(&self) -> bool {
        false
    }
    /// Whether `rollback` can remove anything; a target that cannot says so without being asked over the network
    /// (so its answer does not depend on the server being up). Default: yes.
    fn can_roll_back(&self) -> bool {
        true
    }
    /// Removes what loading this bundle put into the target (the bundle's memories, by id), where the target can;
    /// returns how many it removed. A target that cannot refuses with an error that says so and changes nothing.
    async fn rollback(&self, _bundle: &Path, _manifest: &BundleManifest) -> Result<u64> {
        Err(Error::usage(format!(
            "{}: this target cannot roll back a load; nothing was changed",
            self.identity()
        )))
    }
    /// Whether a load may send only part of a bundle (an incremental run's added and changed memories): the
    /// sink keeps no per-load state that needs the whole bundle. Default: no, the whole bundle is sent (its
    /// writes are idempotent, so that is always correct, only slower).
    fn accepts_delta(&self) -> bool {
        false
    }
    /// Deletes memories by id (an incremental run's deleted rows), with their edges. The loader calls it after
    /// the units and before `finish`; a transactional target may stage the deletes and apply them with `finish`
    /// (then they count as deleted here: a failed `finish` fails the load). Must be idempotent (a resumed load
    /// asks again). Answers what the target removed; a target without deletes keeps them and says why. Default:
    /// nothing is deleted.
    async fn delete(&self, _space: &str, ids: &[String]) -> Result<DeleteOutcome> {
        Ok(DeleteOutcome {
            requested: ids.len() as u64,
            deleted: 0,
            kept: ids.len() as u64,
            note: format!(
                "{} cannot delete memories: they stay in the target",
                self.name()
            ),
        })
    }
    /// Reads back what the target holds and compares it with the bundle.
    async fn read_back(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        rejected: &[Rejection],
    ) -> Result<ReadBack>;
}

/// Makes a sink from a `--target` URL. No I/O: parsing and checking the URL and its settings only; credentials
/// come from the environment, never from the URL.
pub trait SinkFactory: Sync {
    fn name(&self) -> &'static str;
    /// The URL schemes this sink answers to, with "://".
    fn schemes(&self) -> &'static [&'static str];
    fn open(&self, spec: &str, opts: &SinkOptions) -> Result<Box<dyn Sink>>;
    /// Whether the target keys memories by id alone (a graph database), so ids must be unique across spaces
    /// (validation's `duplicate_ids` then checks that); Engram and PostgreSQL key them per space.
    fn ids_unique_across_spaces(&self) -> bool {
        false
    }
    /// The most floats per embedding this target takes with these options; None: any.
    fn embedding_dim_limit(&self, _opts: &SinkOptions) -> Option<usize> {
        None
    }
}

/// Target settings from flags that a sink may use (`--target-schema`, `--target-index`); each sink says which.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkOptions {
    /// Database targets: the schema the tables go into.
    pub schema: Option<String>,
    /// Vector databases: the vector index built after the data.
    pub index: Option<String>,
    /// Graph databases: space -> label, "space:Label,...".
    pub labels: Option<String>,
    /// Graph databases: the user (else from the URL or the environment).
    pub user: Option<String>,
    /// Graph databases: the password (else from the URL or the environment). Never printed or recorded.
    #[serde(skip)]
    pub password: Option<String>,
}

/// The bits of a vector as one digest (XXH3-64 of the floats' little-endian bytes): read-backs compare embeddings
/// bit for bit without holding a million vectors in memory.
pub fn vector_digest(v: impl IntoIterator<Item = f32>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in v {
        h.update(&f.to_bits().to_le_bytes());
    }
    h.digest()
}

/// What a read-back compares a target with, per bundle memory (space, id): a digest of its embedding's bits (None:
/// no embedding) and of its content as JSON (`json::json_digest`; 0 when the content is not JSON, which a target
/// refuses at write time). Digests, not values: a million 768-float vectors would not fit in memory.
pub fn bundle_digests(
    bundle: &Path,
    manifest: &BundleManifest,
) -> Result<std::collections::HashMap<(String, String), (Option<u64>, u64)>> {
    bundle_digests_as(bundle, manifest, |content| {
        serde_json::from_str(content)
            .map(|j| crate::json::json_digest(&j))
            .unwrap_or(0)
    })
}

/// `bundle_digests`, with the content digested as the target stores it (a graph target keeps the content's
/// fields as node properties: `sink::neo4j::node_view`).
pub fn bundle_digests_as(
    bundle: &Path,
    manifest: &BundleManifest,
    content_digest: impl Fn(&str) -> u64,
) -> Result<std::collections::HashMap<(String, String), (Option<u64>, u64)>> {
    use crate::schema::memory;
    use arrow::array::{Array, AsArray};
    let mut out = std::collections::HashMap::new();
    let removed = crate::bundle::Removed::load(bundle, manifest)?;
    for sp in &manifest.spaces {
        for part in manifest.memory_parts_of(bundle, &sp.space) {
            let path = &part.path;
            let bad = |m: String| Error::source_err(path.display().to_string(), m);
            for b in crate::bundle::read_live(&part, &removed, 8192)? {
                let b = b?;
                let string = |n: &str| {
                    b.column_by_name(n)
                        .and_then(|c| c.as_string_opt::<i32>().cloned())
                };
                let emb = b
                    .column_by_name(memory::EMBEDDING)
                    .and_then(|c| c.as_fixed_size_list_opt().cloned());
                let (Some(ids), Some(content), Some(emb)) =
                    (string(memory::ID), string(memory::CONTENT), emb)
                else {
                    return Err(bad("not a bundle memory part".into()));
                };
                let values = emb
                    .values()
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .clone();
                let dim = emb.value_length() as usize;
                for i in 0..b.num_rows() {
                    let v = (!emb.is_null(i)).then(|| {
                        vector_digest(values.values()[i * dim..(i + 1) * dim].iter().copied())
                    });
                    let c = content_digest(content.value(i));
                    out.insert((sp.space.clone(), ids.value(i).to_string()), (v, c));
                }
            }
        }
    }
    Ok(out)
}

/// A load's key: the bundle's run id and its checksums (a rebuilt bundle is another load). Targets record it
/// with what a load wrote, so a repeated load is recognised and a rollback removes exactly that load.
pub fn bundle_load_key(manifest: &BundleManifest) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(manifest.run_id.as_bytes());
    for s in &manifest.spaces {
        h.update(s.space.as_bytes());
        h.update(s.memories.checksum.as_bytes());
        h.update(s.edges.checksum.as_bytes());
    }
    h.update(manifest.orphans.checksum.as_bytes());
    format!("{:016x}", h.digest())
}

/// Every sink, by URL scheme: the one place a `--target` URL is matched.
pub fn registry() -> &'static [&'static dyn SinkFactory] {
    &[
        &engram::EngramFactory,
        &postgres::PostgresFactory,
        &neo4j::Neo4jFactory,
    ]
}

/// Target schemes that are planned but not built yet, so that they get a clear answer.
const NOT_BUILT: &[&str] = &["engram://"];

/// Where `--target` points: a directory for the bundle (the embedded default), or a registered live target that
/// is loaded from a bundle.
#[derive(Clone)]
pub enum Target {
    Bundle(PathBuf),
    Live {
        factory: &'static dyn SinkFactory,
        spec: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    pub fn parse(spec: &str) -> Result<Target> {
        if let Some(factory) = registry()
            .iter()
            .find(|f| f.schemes().iter().any(|s| spec.starts_with(s)))
        {
            return Ok(Target::Live {
                factory: *factory,
                spec: spec.to_string(),
            });
        }
        if let Some(scheme) = NOT_BUILT.iter().find(|s| spec.starts_with(*s)) {
            let live: Vec<&str> = registry()
                .iter()
                .flat_map(|f| f.schemes().iter().copied())
                .collect();
            return Err(Error::usage(format!(
                "target {scheme}...: this sink is not built yet; --target takes a directory for an Engram bundle, \
                 or a live target ({}...) with `load --bundle` or `run --bundle`",
                live.join("..., ")
            )));
        }
        Ok(Target::Bundle(bundle_path(Path::new(spec))))
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Bundle(p) => p.display().to_string(),
            Target::Live { factory, spec } => {
                format!("{} ({})", crate::source::redact_url(spec), factory.name())
            }
        }
    }

    /// The sink of a live target (no I/O yet).
    pub fn open(&self, opts: &SinkOptions) -> Result<Option<Box<dyn Sink>>> {
        match self {
            Target::Bundle(_) => Ok(None),
            Target::Live { factory, spec } => factory.open(spec, opts).map(Some),
        }
    }

    /// The bundle directory of a bundle target; a live target is loaded from a finished bundle instead.
    pub fn bundle_dir(self) -> Result<PathBuf> {
        match self {
            Target::Bundle(p) => Ok(p),
            Target::Live { spec, .. } => Err(Error::usage(format!(
                "--target {spec}: this command writes a bundle; use `engram-migrate run --bundle DIR --target {spec}` \
                 (writes the bundle, then sends it), or send a finished bundle with `engram-migrate load --bundle DIR \
                 --target {spec}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_bundle_target_has_no_trailing_separator() {
        for (given, want) in [
            ("out/", "out"),
            ("a/b//", "a/b"),
            ("./x/", "./x"),
            ("/tmp/b", "/tmp/b"),
            ("b", "b"),
        ] {
            let t = Target::parse(given).unwrap().bundle_dir().unwrap();
            assert_eq!(t, Path::new(want), "--target {given}");
            assert_eq!(bundle_path(Path::new(given)), Path::new(want));
        }
    }
}
