//! The one pipeline: sequences the stages of a plan (source -> snapshot -> transform -> embed + bundle ->
//! validation -> delivery to a live target), decides what can be reused from the work directory (resume), and
//! writes the run report. Sources and sinks know nothing of each other; the work directory's layout is
//! `crate::workdir`'s, the plan `crate::plan`'s, the load loop `crate::sink::load`'s.

use std::fs;
use std::path::{Path, PathBuf};

use crate::bundle::{self, writer::WriteOptions};
use crate::config::{self, Options};
use crate::embed::memories::EmbedStage;
use crate::embed::openai::OpenAiProvider;
use crate::embed::{DiskCache, Embedder, EmbeddingProvider, HashingProvider, Model2VecProvider};
use crate::error::{Error, Result};
use crate::parquet_io::PartLimits;
use crate::plan::{self, Command, MappingPlan, RunPlan};
use crate::report::{self, EmbeddingLine, RunReport, SpaceLine, TableLine, Timer};
use crate::sink::Target;
use crate::snapshot::{self, Manifest, SnapshotOptions};
use crate::source::{self, Source};
use crate::transform::{self, TransformSummary};
use crate::validate::{self, ValidateOptions};
use crate::workdir::{RunKey, WorkDir, WorkLock};

fn run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id()
    )
}

fn limits(plan: &RunPlan) -> PartLimits {
    PartLimits {
        max_file_bytes: plan.limits.max_file_mb << 20,
        max_file_rows: plan.limits.max_file_rows.unwrap_or(u64::MAX).max(1),
        row_group_rows: 65_536,
    }
}

pub fn snapshot_options(plan: &RunPlan) -> SnapshotOptions {
    let (include, exclude) = plan
        .source
        .as_ref()
        .map(|s| (s.include.clone(), s.exclude.clone()))
        .unwrap_or_default();
    SnapshotOptions {
        batch_size: plan.limits.batch_rows,
        limits: limits(plan),
        workers: plan.limits.workers,
        include,
        exclude,
        reuse_stale: plan.source.as_ref().is_some_and(|s| s.reuse_snapshot),
    }
}

/// The SQL engine of the run (`--engine`), with its memory bound and where its spill and shared tables go.
fn engine(plan: &RunPlan) -> crate::engine::Engine {
    crate::engine::Engine {
        spec: plan.engine.clone(),
        workers: plan.limits.workers,
        batch_size: plan.limits.batch_rows,
        memory: crate::engine::SqlMemory {
            limit_bytes: (plan.limits.memory_limit_mb as usize) << 20,
            spill_dir: plan.work_dir.spill(),
        },
        shared_dir: plan.work_dir.engine_shared(),
        job_name: crate::engine::process_job_name(),
    }
}

pub fn open_source(opts: &Options) -> Result<Box<dyn Source>> {
    let so = source::SourceOptions {
        column_types: config::parse_column_types(&opts.column_type)?,
        partition_rows: opts.partition_rows,
        redis_db: opts.source_db,
        redis_keep_expired: opts.expired.as_deref() == Some("keep"),
        neo4j: source::neo4j::Neo4jOptions {
            user: opts.source_user.clone(),
            password: opts.source_password.clone(),
            fetch_size: opts.fetch_size,
        },
    };
    source::open(opts.require_source()?, &so)
}

/// The mapping SQL to run and where it came from; a generated one is written to `<work>/mapping.sql`.
/// `embedding_dim` is the run's: a generic mapping uses source vectors of that size as they are.
pub fn mapping_sql(
    mapping: &MappingPlan,
    manifest: &Manifest,
    work: &Path,
    embedding_dim: usize,
    texts: &[transform::generic::TextChoice],
) -> Result<(String, String)> {
    let path = WorkDir::new(work).mapping_sql();
    let (sql, from) = generated_mapping(mapping, manifest, embedding_dim, texts)?;
    if matches!(mapping, MappingPlan::File { .. }) {
        return Ok((sql, from));
    }
    crate::parquet_io::write_atomic(&path, sql.as_bytes())?;
    Ok((sql, format!("{} ({from})", path.display())))
}

/// A layer's memory delta: the memories it removed against those it wrote (the same id with the same hash is
/// unchanged: a keyless table is mapped again whole).
fn layer_counts(
    removed: &std::collections::BTreeMap<(String, String), u128>,
    written: &std::collections::HashMap<(String, String), u128>,
    manifest: &bundle::BundleManifest,
) -> crate::delta::MemoryDeltaCounts {
    let mut c = crate::delta::MemoryDeltaCounts::default();
    for (k, h) in written {
        match removed.get(k) {
            None => c.added += 1,
            Some(was) if was != h => c.changed += 1,
            Some(_) => {}
        }
    }
    c.deleted = removed.keys().filter(|k| !written.contains_key(*k)).count() as u64;
    let live = manifest.totals.get("memories").copied().unwrap_or(0);
    c.unchanged = live.saturating_sub(c.added + c.changed);
    c
}

/// The generated mapping's options for this snapshot: the run's embedding dimension, and the text columns the
/// data made it add.
fn generic_options(
    m: &transform::generic::MappingOptions,
    embedding_dim: usize,
    texts: &[transform::generic::TextChoice],
) -> transform::generic::MappingOptions {
    let mut m = m.clone();
    m.embedding_dim = embedding_dim;
    for t in texts.iter().filter(|t| !t.explicit && !t.added.is_empty()) {
        m.text_columns.insert(t.table.clone(), t.columns.clone());
    }
    m
}

/// The mapping SQL and where it comes from, written nowhere (`plan` writes nothing).
fn generated_mapping(
    mapping: &MappingPlan,
    manifest: &Manifest,
    embedding_dim: usize,
    texts: &[transform::generic::TextChoice],
) -> Result<(String, String)> {
    let (sql, from) = match mapping {
        MappingPlan::File { path } => {
            let sql = fs::read_to_string(path)
                .map_err(|e| Error::usage(format!("--sql {}: {e}", path.display())))?;
            return Ok((sql, path.display().to_string()));
        }
        MappingPlan::Redis(r) => (transform::redis::mapping(r)?, "sql/redis.sql".to_string()),
        _ if manifest.tables.is_empty() => {
            return Err(Error::source_err(
                manifest.source.to_string(),
                "has no tables to migrate",
            ));
        }
        MappingPlan::Engram => (
            transform::engram::generate(manifest, embedding_dim),
            "generated from the Engram spaces".to_string(),
        ),
        MappingPlan::Graph(g) => (
            transform::neo4j::generate(g),
            "generated from sql/neo4j.sql".to_string(),
        ),
        MappingPlan::Generic(m) => {
            check_mapping_names(m, manifest)?;
            let m = generic_options(m, embedding_dim, texts);
            // Say which tables became edges: a newcomer must see that the link rows were not lost.
            let links = transform::generic::link_tables(manifest, &m);
            let from = if links.is_empty() {
                "generated".to_string()
            } else {
                format!("generated; link tables as edges: {}", links.join(", "))
            };
            (transform::generic::generate(manifest, &m), from)
        }
    };
    Ok((sql, from))
}

/// The tables and columns the generic mapping's flags name must exist: a typo must stop the run with the names
/// that do exist, not be ignored or surface as a planner error about the generated SQL.
fn check_mapping_names(m: &transform::generic::MappingOptions, manifest: &Manifest) -> Result<()> {
    let tables = || {
        manifest
            .tables
            .iter()
            .map(|t| t.info.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for t in m.text_columns.keys().chain(m.table_to_space.keys()) {
        if manifest.table(t).is_none() {
            return Err(Error::usage(format!(
                "table {t:?} named in a flag is not in the source; tables: {}",
                tables()
            )));
        }
    }
    for (t, cols) in &m.text_columns {
        let entry = manifest.table(t).expect("checked");
        if let Some(c) = cols.iter().find(|c| entry.info.column(c).is_none()) {
            return Err(Error::usage(format!(
                "--text-columns: table {t} has no column {c:?}; its columns: {}",
                entry
                    .info
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if let Some(c) = &m.timestamp_column {
        if !manifest.tables.iter().any(|t| t.info.column(c).is_some()) {
            return Err(Error::usage(format!(
                "--timestamp-column {c:?}: no table has this column; tables: {}",
                tables()
            )));
        }
    }
    Ok(())
}

/// What the generic mapping embeds of each table, chosen from the snapshot's data (see
/// `transform::generic::choose_texts`); nothing for the other mappings, whose text is their own.
async fn text_choices(
    plan: &RunPlan,
    engine: &crate::engine::Engine,
    dir: &Path,
    manifest: &Manifest,
    remember: bool,
) -> Result<Vec<transform::generic::TextChoice>> {
    let Some(MappingPlan::Generic(m)) = &plan.mapping else {
        return Ok(vec![]);
    };
    check_mapping_names(m, manifest)?;
    // The choice is deterministic for a snapshot and options (counting the texts of 10M rows takes seconds):
    // kept in the work directory under their key, so a resumed run starts where it stopped.
    let mut key = serde_json::to_string(m)?;
    for t in &manifest.tables {
        key.push_str(&format!("\n{}:{}:{}", t.info.name, t.rows, t.checksum));
    }
    let key = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()));
    let path = plan.work_dir.text_choices();
    let saved: Option<(String, Vec<transform::generic::TextChoice>)> = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some((_, choices)) = saved.filter(|(k, _)| *k == key) {
        return Ok(choices);
    }
    let ctx = engine.session().await?;
    transform::register_snapshot(&ctx, dir, manifest).await?;
    let choices = transform::generic::choose_texts(&ctx, manifest, m).await?;
    if remember {
        crate::parquet_io::write_atomic(&path, &serde_json::to_vec_pretty(&(key, &choices))?)?;
    }
    Ok(choices)
}

/// The plan's embedding provider; the API key (never in the plan) comes from the options.
fn provider(
    e: &plan::EmbeddingPlan,
    opts: &Options,
) -> Result<std::sync::Arc<dyn EmbeddingProvider>> {
    let spec = e.provider.as_str();
    if spec == "hashing" {
        return Ok(std::sync::Arc::new(HashingProvider::new()));
    }
    if let Some(dir) = spec.strip_prefix("model2vec:") {
        return Ok(std::sync::Arc::new(Model2VecProvider::load(Path::new(
            dir,
        ))?));
    }
    if let Some(url) = spec.strip_prefix("openai:") {
        let model = e.model.clone().ok_or_else(|| {
            Error::usage("--embedding-provider openai:URL needs --embedding-model (or ENGRAM_EMBEDDING_MODEL)")
        })?;
        let http = crate::embed::openai::OpenAiOptions {
            url: url.to_string(),
            model,
            api_key: opts.embedding_api_key.as_ref().map(|k| k.0.clone()),
            request_size: e.request_size,
            max_dimensions: e.max_dimensions,
            ..Default::default()
        };
        return Ok(std::sync::Arc::new(OpenAiProvider::connect(http)?));
    }
    Err(Error::usage(format!(
        "--embedding-provider {spec:?}: unknown; use hashing, model2vec:DIR or openai:URL"
    )))
}

/// The stage's embedder for this run: the provider and the bounded in-memory cache, sized as the plan says. The
/// persistent cache is attached by the load stage (`with_disk_cache`), which knows whether it needs it.
fn embedder(plan: &RunPlan, opts: &Options) -> Result<Embedder> {
    let e = &plan.embedding;
    #[allow(unused_mut)]
    let mut provider = provider(e, opts)?;
    // On a cluster the executors embed (a provider that runs in SQL: hashing, model2vec); an HTTP endpoint is
    // still called from here, which holds its key.
    #[cfg(feature = "distributed")]
    if !plan.engine.is_local() && crate::embed::udf::runs_in_sql(&e.provider) {
        provider = std::sync::Arc::new(crate::engine::ballista::ClusterEmbedding::new(
            provider,
            &e.provider,
            engine(plan),
        )?);
    }
    Embedder::new(provider, e.cache_entries)
}

/// `embedder` with the persistent cache the plan asks for, read back (the vectors of earlier runs: gigabytes
/// for a million memories, so only where a stage will look them up).
fn with_disk_cache(plan: &RunPlan, work: &Path, embedder: Embedder) -> Result<Embedder> {
    let e = &plan.embedding;
    if e.cache_mb == 0 || embedder.disk_cache().is_some() {
        return Ok(embedder);
    }
    let name = embedder.provider_name();
    let dim = embedder.native_dimension();
    let disk = DiskCache::open(work, &name, dim, (e.cache_mb as usize) << 20)?;
    embedder.with_disk_cache(disk)
}

fn fresh(plan: &RunPlan) -> Result<()> {
    plan.work_dir.fresh(plan.bundle.as_deref())
}

/// State carried from stage to stage within one command.
struct Ctx {
    /// What this command executes.
    plan: RunPlan,
    /// Kept for what the plan holds no copy of: credentials of the source and the embedding provider.
    opts: Options,
    work: PathBuf,
    report: RunReport,
    /// Where the report goes: `<work>/report.json` for the run's stages; a `validate` of a finished run writes
    /// its own, so re-checking never overwrites the run's report.
    report_path: PathBuf,
    source: Option<Box<dyn Source>>,
    /// Made before the long stages by `run`, so a bad provider (model directory, URL, key) fails at once.
    embedder: Option<Embedder>,
    /// The snapshot stands for the source in validation: the source is a snapshot directory, or it changed
    /// since and the snapshot is reused on purpose (`--reuse-snapshot`).
    against_snapshot: bool,
    /// An incremental run's layer (see `layer`), decided by the transform, written by the load.
    layer: Option<bundle::writer::Base>,
    /// Memory parts of layers below this were validated by the runs that wrote them (see `ValidateOptions`).
    verified_below_layer: u32,
}

impl Ctx {
    fn new(command: Command, opts: Options) -> Result<Ctx> {
        let plan = RunPlan::for_command(&opts, command)?;
        Ok(Ctx::from_plan(plan, opts))
    }

    fn from_plan(plan: RunPlan, opts: Options) -> Ctx {
        let work = plan.work_dir.root().to_path_buf();
        let report = RunReport {
            command: plan.command.name().into(),
            run_id: run_id(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            target: plan
                .bundle
                .as_ref()
                .map(|b| b.display().to_string())
                .unwrap_or_default(),
            work_dir: work.display().to_string(),
            ..Default::default()
        };
        let report_path = match plan.command {
            Command::Validate => plan.work_dir.validate_report(&report.run_id),
            _ => plan.work_dir.report(),
        };
        Ctx {
            plan,
            opts,
            work,
            report,
            report_path,
            source: None,
            embedder: None,
            against_snapshot: false,
            layer: None,
            verified_below_layer: 0,
        }
    }

    /// Where the SQL ran, and on a cluster this run's jobs and their tasks per executor. A scheduler that stopped
    /// answering by now is warned about, not fatal: the stages it ran have finished and been checked.
    async fn record_engine(&mut self) {
        let e = engine(&self.plan);
        self.report.engine = e.spec.to_string();
        match e.jobs().await {
            Ok(jobs) => self.report.cluster = jobs,
            Err(err) => crate::progress::warn(&format!(
                "the report lacks the cluster's jobs and tasks: {err}"
            )),
        }
    }

    /// Notes a snapshot reused although the source changed since (`--reuse-snapshot`): said on screen and in
    /// the report, and validation compares with the snapshot, the data migrated, not with the changed source.
    fn reused_stale(&mut self, dir: &Path, changes: Vec<String>) {
        if changes.is_empty() {
            return;
        }
        crate::progress::warn(&format!(
            "the source has changed since the snapshot in {} was taken; it is reused as asked \
             (--reuse-snapshot) and validation compares with it, not with the source: {}",
            dir.display(),
            changes.join("; ")
        ));
        self.against_snapshot = true;
        self.source = None;
        self.report.source_changed_since_snapshot = changes;
    }

    fn incremental(&self) -> bool {
        self.plan.source.as_ref().is_some_and(|s| s.incremental)
    }

    fn filters(&self) -> (Vec<String>, Vec<String>) {
        self.plan
            .source
            .as_ref()
            .map(|s| (s.include.clone(), s.exclude.clone()))
            .unwrap_or_default()
    }

    /// `--incremental`, before the snapshot: the last run's snapshot becomes the baseline (`snapshot.prev`),
    /// and the hashes of the memories the target holds are kept (unless an earlier delta never reached it, in
    /// which case the older hashes stay, so it is sent everything it missed). A killed incremental run finds
    /// its baseline in place and resumes.
    fn begin_incremental(&mut self, bundle_dir: &Path) -> Result<()> {
        let w = self.plan.work_dir.clone();
        let prev = w.previous_snapshot();
        if prev.join(snapshot::MANIFEST).is_file() {
            tracing::info!(dir = %prev.display(), "resuming an incremental run against its baseline");
            return Ok(());
        }
        let snap = w.snapshot();
        let done = Manifest::load(&snap).ok().filter(|m| m.complete);
        let Some(done) = done.filter(|_| bundle_dir.join(bundle::BUNDLE_FILE).is_file()) else {
            return Err(Error::usage(format!(
                "--incremental needs an earlier completed run in {} (its snapshot) and its bundle {}; run once \
                 without --incremental first",
                w.root().display(),
                bundle_dir.display()
            )));
        };
        // A later run that stopped after its snapshot (a schema drift, a failed check) left a snapshot that is
        // not what the bundle was made from: a delta against it would be wrong.
        if let Some(last) = crate::delta::SchemaRecord::load(&w.schema_record())? {
            if !last.checksums.is_empty() && !last.is_snapshot_of(&done) {
                return Err(Error::usage(format!(
                    "--incremental: the snapshot in {} is not the one the last completed run ({}) migrated: a later \
                     run stopped after taking it. Run without --incremental (--fresh --overwrite) to rebuild from \
                     the source as it is now",
                    snap.display(),
                    last.run_id
                )));
            }
        }
        // A live target is sent the delta of the memories it holds: their hashes, before the bundle changes. A
        // bundle alone needs them only if it is rewritten (see `load`).
        if self.plan.deliver.is_some() {
            self.baseline(bundle_dir)?;
        }
        fs::rename(&snap, &prev).map_err(Error::io("rename into place", &prev))
    }

    /// The hashes of the memories the target holds (`previous_memories`), for the memory delta; kept as they
    /// are while an earlier delta has not reached its live target.
    fn baseline(&mut self, bundle_dir: &Path) -> Result<()> {
        let w = self.plan.work_dir.clone();
        // No bundle (a run killed while moving its new bundle into place): nothing to compare with; the memory
        // delta is then unknown and a live target is sent the whole bundle.
        if !bundle_dir.join(bundle::BUNDLE_FILE).is_file() {
            let stale = w.previous_memories();
            if stale.exists() && !w.undelivered().exists() {
                fs::remove_file(&stale).map_err(Error::io("remove", &stale))?;
            }
            return Ok(());
        }
        if !w.undelivered().exists() {
            let t = Timer::start();
            // The bundle's writer recorded its hashes; only a part it has no record of is read and hashed.
            let (hashes, read) = crate::delta::memory_hashes(
                bundle_dir,
                self.plan.limits.batch_rows,
                Some(&w.bundle_hashes()),
            )?;
            crate::delta::save_hashes(&w.previous_memories(), &hashes)?;
            self.report.stages.push(t.stage(
                "baseline",
                hashes.len() as u64,
                if read == 0 {
                    "hashes of the memories the target holds, recorded by the bundle writer"
                        .to_string()
                } else {
                    format!("hashes of the memories the target holds ({read} bundle parts hashed)")
                },
            ));
        }
        Ok(())
    }

    /// Stops (exit 2) when the snapshot's tables or columns are not those of the last completed run, unless
    /// `--allow-schema-drift`; the report lists the drift either way. The baseline is the work directory's
    /// record of the last completed run (an incremental run's previous snapshot where there is none).
    fn check_schema_drift(&mut self, manifest: &Manifest) -> Result<()> {
        let (include, exclude) = self.filters();
        let path = self.plan.work_dir.schema_record();
        let prev = self.plan.work_dir.previous_snapshot();
        let (last, record) = match crate::delta::SchemaRecord::load(&path)? {
            Some(r) => (r, path),
            // A work directory of an older version has no record: an incremental run has its baseline.
            None => match Manifest::load(&prev) {
                Ok(m) if self.incremental() => (
                    crate::delta::SchemaRecord::of(&m, "previous snapshot", &include, &exclude),
                    prev.join(snapshot::MANIFEST),
                ),
                _ => return Ok(()),
            },
        };
        let now = crate::delta::SchemaRecord::of(manifest, &self.report.run_id, &include, &exclude);
        if !last.same_source(&now) {
            tracing::info!(record = %record.display(), "the last completed run migrated another source: no drift check");
            return Ok(());
        }
        let drift = crate::delta::schema_drift(&last, &now, source::is_included);
        if drift.is_empty() {
            return Ok(());
        }
        self.report.schema_drift = drift.clone();
        let changes: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
        if self
            .plan
            .source
            .as_ref()
            .is_some_and(|s| s.allow_schema_drift)
        {
            crate::progress::warn(&format!(
                "the source's schema has changed since the last run; proceeding as asked (--allow-schema-drift): {}",
                changes.join("; ")
            ));
            return Ok(());
        }
        Err(Error::SchemaDrift {
            changes,
            record: record.display().to_string(),
        })
    }

    /// `--incremental`: the row delta of every table against the baseline snapshot, into the report.
    fn row_delta(&mut self, dir: &Path, manifest: &Manifest) -> Result<()> {
        let t = Timer::start();
        let prev = self.plan.work_dir.previous_snapshot();
        let old = Manifest::load(&prev)?;
        let d =
            crate::delta::snapshot_delta(&prev, &old, dir, manifest, self.plan.limits.batch_rows)?;
        self.report.stages.push(t.stage(
            "delta",
            d.added + d.changed + d.deleted + d.unchanged,
            format!(
                "{} added, {} changed, {} deleted, {} unchanged rows",
                d.added, d.changed, d.deleted, d.unchanged
            ),
        ));
        self.report.delta = Some(d);
        Ok(())
    }

    /// `--incremental`, after the bundle: which memories the target must be sent and delete. None when the
    /// target's state is not known (an earlier load of it did not finish): it is then sent the whole bundle.
    fn memory_delta(&mut self, bundle_dir: &Path) -> Result<Option<crate::delta::MemoryDelta>> {
        let path = self.plan.work_dir.previous_memories();
        if !path.is_file() {
            return Ok(None);
        }
        let t = Timer::start();
        let before = crate::delta::load_hashes(&path)?;
        let (now, _) = crate::delta::memory_hashes(
            bundle_dir,
            self.plan.limits.batch_rows,
            Some(&self.plan.work_dir.bundle_hashes()),
        )?;
        let d = crate::delta::memory_delta(&before, &now);
        self.report.stages.push(t.stage(
            "memory delta",
            now.len() as u64,
            format!(
                "{} added, {} changed, {} deleted memories",
                d.counts.added, d.counts.changed, d.counts.deleted
            ),
        ));
        if let Some(r) = self.report.delta.as_mut() {
            r.memories = Some(d.counts.clone());
        }
        Ok(Some(d))
    }

    /// A completed run: its schema becomes the next run's baseline, and an incremental run's old snapshot goes.
    fn complete_run(&mut self, manifest: &Manifest) -> Result<()> {
        let (include, exclude) = self.filters();
        let mut record =
            crate::delta::SchemaRecord::of(manifest, &self.report.run_id, &include, &exclude);
        // Only a run whose checks passed gets here with a validation plan.
        record.validated = self.plan.validate.is_some();
        record.save(&self.plan.work_dir.schema_record())?;
        let prev = self.plan.work_dir.previous_snapshot();
        if prev.exists() {
            fs::remove_dir_all(&prev).map_err(Error::io("remove", &prev))?;
        }
        Ok(())
    }

    fn bundle_dir(&self) -> Result<PathBuf> {
        self.plan
            .bundle
            .clone()
            .ok_or_else(|| Error::usage("--target is required (a directory for the Engram bundle)"))
    }

    fn snapshot_dir(&self) -> Result<PathBuf> {
        self.plan.snapshot.clone().ok_or_else(|| {
            Error::usage("--source is required (a SQLite file, a URL or a snapshot directory)")
        })
    }

    /// The run's embedding dimension: the provider's own (made here if the command has not made it yet).
    fn embedding_dim(&mut self) -> Result<usize> {
        if self.embedder.is_none() {
            self.embedder = Some(embedder(&self.plan, &self.opts)?);
        }
        Ok(self
            .embedder
            .as_ref()
            .map(|e| e.native_dimension())
            .unwrap_or(0))
    }

    fn snapshot(&mut self) -> Result<(PathBuf, Manifest)> {
        let t = Timer::start();
        let dir = self.snapshot_dir()?;
        let mut src = open_source(&self.opts)?;
        self.report.source = src.describe();
        let manifest = if src.kind() == "snapshot" {
            Manifest::load(&dir)?
        } else {
            let opts = snapshot_options(&self.plan);
            let taken = match snapshot::take(src.as_mut(), &dir, &opts) {
                // An incremental run's own new snapshot, of a source that changed again since it was killed:
                // the baseline (snapshot.prev) is safe, so the new one is simply taken again.
                Err(Error::SourceChanged { .. }) if self.incremental() => {
                    tracing::info!(dir = %dir.display(), "the source changed again; taking the new snapshot again");
                    fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
                    snapshot::take(src.as_mut(), &dir, &opts)?
                }
                other => other?,
            };
            self.source = Some(src);
            self.reused_stale(&dir, taken.stale);
            taken.manifest
        };
        for e in &manifest.tables {
            self.report.tables.push(TableLine {
                table: e.info.name.clone(),
                rows: e.rows,
                files: e.files.len(),
                checksum: e.checksum.clone(),
                columns: e
                    .info
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} -> {} ({})",
                            c.name, c.source_type, c.arrow_type, c.fidelity
                        )
                    })
                    .collect(),
                widened: e
                    .info
                    .columns
                    .iter()
                    .filter(|c| c.fidelity.starts_with("widened"))
                    .count(),
                not_staged: e.not_staged.clone(),
            });
        }
        self.report.stages.push(t.stage(
            "snapshot",
            manifest.total_rows(),
            format!("{} tables in {}", manifest.tables.len(), dir.display()),
        ));
        Ok((dir, manifest))
    }

    async fn transform(
        &mut self,
        dir: &Path,
        manifest: &Manifest,
    ) -> Result<(TransformSummary, String, String)> {
        let t = Timer::start();
        let dim = self.embedding_dim()?;
        let texts = text_choices(&self.plan, &engine(&self.plan), dir, manifest, true).await?;
        for t in texts.iter().filter(|t| !t.added.is_empty()) {
            tracing::info!(
                table = %t.table,
                "the text columns repeat; the text also embeds {} ({} distinct texts of {} rows)",
                t.added.join(", "),
                t.distinct_texts,
                t.rows
            );
        }
        // The mapping the bundle was made with, before this run writes its own (an incremental layer needs the same).
        let previous_sql = fs::read_to_string(WorkDir::new(&self.work).mapping_sql()).ok();
        let (sql, origin) = mapping_sql(
            self.plan
                .mapping
                .as_ref()
                .ok_or_else(|| Error::usage("--source is required to know the mapping"))?,
            manifest,
            &self.work,
            dim,
            &texts,
        )?;
        let key = transform::transform_key(&sql, manifest, dim);
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "transform: text columns chosen, mapping generated"
        );
        if self.incremental() {
            if let Some(done) = self
                .layer_transform(
                    dir,
                    manifest,
                    &sql,
                    &key,
                    previous_sql.as_deref(),
                    &texts,
                    &origin,
                    &t,
                )
                .await?
            {
                self.report.texts = texts;
                self.report.mapping = origin.clone();
                return Ok((done, sql, origin));
            }
        }
        self.report.texts = texts;
        self.report.mapping = origin.clone();
        let out = WorkDir::new(&self.work).transform();
        let reuse = TransformSummary::load(&out).ok().filter(|s| s.key == key);
        let (summary, note) = match reuse {
            Some(s) => (s, "reused staged output".to_string()),
            None => {
                let s = transform::run(
                    &key,
                    dir,
                    manifest,
                    &sql,
                    &origin,
                    &out,
                    limits(&self.plan),
                    &engine(&self.plan),
                    dim,
                    None,
                )
                .await?;
                (s, format!("mapping {origin}"))
            }
        };
        self.report.orphans = summary.orphan_rows();
        self.report.stages.push(t.stage(
            "transform",
            summary.memory_rows() + summary.edge_rows(),
            note,
        ));
        Ok((summary, sql, origin))
    }

    /// `--incremental`: the transform of a layer (see `layer`): the changed rows mapped into memories, edges and
    /// orphans mapped again. None when the bundle is to be rewritten instead (the reason is logged and noted).
    #[allow(clippy::too_many_arguments)]
    async fn layer_transform(
        &mut self,
        dir: &Path,
        manifest: &Manifest,
        sql: &str,
        key: &str,
        previous_sql: Option<&str>,
        texts: &[transform::generic::TextChoice],
        origin: &str,
        t: &Timer,
    ) -> Result<Option<TransformSummary>> {
        let bundle_dir = self.bundle_dir()?;
        let dim = self.embedding_dim()?;
        let Some(MappingPlan::Generic(m)) = &self.plan.mapping else {
            return Ok(None);
        };
        let why_not = if !matches!(engine(&self.plan).spec, crate::engine::EngineSpec::Local) {
            Some("the SQL runs on a cluster")
        } else if !self.report.schema_drift.is_empty() {
            Some("the schema drifted")
        } else if self.plan.embedding.reembed {
            Some("--reembed")
        } else {
            None
        };
        let provider = self
            .embedder
            .as_ref()
            .map(|e| e.provider_name())
            .unwrap_or_default();
        let Some(delta) = self.report.delta.as_ref() else {
            return Ok(None);
        };
        let decision = match why_not {
            Some(why) => crate::layer::Decision::Full(why.to_string()),
            None => {
                let prev_dir = self.plan.work_dir.previous_snapshot();
                let old = Manifest::load(&prev_dir)?;
                let mapping = generic_options(m, dim, texts);
                crate::layer::prepare(crate::layer::Inputs {
                    bundle_dir: &bundle_dir,
                    recorded: &self.plan.work_dir.bundle_hashes(),
                    previous_sql,
                    sql,
                    full_key: key,
                    old_dir: &prev_dir,
                    old: &old,
                    new_dir: dir,
                    new: manifest,
                    delta,
                    mapping: &mapping,
                    embedding_dim: dim,
                    provider: &provider,
                    batch_rows: self.plan.limits.batch_rows,
                })
                .await?
            }
        };
        let validated_run = crate::delta::SchemaRecord::load(&self.plan.work_dir.schema_record())?
            .filter(|r| r.validated);
        let input = match decision {
            crate::layer::Decision::Layer(input) => input,
            crate::layer::Decision::Complete { orphans, layers } => {
                // Validated by the run that made it only if that run completed with its checks passed (a run
                // that failed validation leaves its bundle in place: its re-run must check it all).
                if validated_run
                    .as_ref()
                    .is_some_and(|r| r.is_snapshot_of(manifest))
                {
                    self.verified_below_layer = layers;
                }
                self.report.incremental_mode = Some("unchanged".into());
                self.report.orphans = orphans;
                self.report.stages.push(t.stage(
                    "transform",
                    0,
                    "bundle of this input already complete",
                ));
                return Ok(Some(TransformSummary {
                    key: key.to_string(),
                    ..Default::default()
                }));
            }
            crate::layer::Decision::Full(why) => {
                tracing::info!(%why, "incremental run: the bundle is rewritten, not extended");
                self.report.incremental_mode = Some(format!("rewrite: {why}"));
                return Ok(None);
            }
        };
        let out = WorkDir::new(&self.work).transform();
        let summary = match TransformSummary::load(&out)
            .ok()
            .filter(|s| s.key == input.key)
        {
            Some(s) => s,
            None => {
                transform::run(
                    &input.key,
                    dir,
                    manifest,
                    &input.sql,
                    origin,
                    &out,
                    limits(&self.plan),
                    &engine(&self.plan),
                    dim,
                    Some(&input.changed),
                )
                .await?
            }
        };
        let layer = input.base.manifest.top_layer() + 1;
        let note = format!(
            "layer {layer}: {} changed rows mapped, {} earlier memories removed; edges mapped again",
            input.rows,
            input.base.removed.len()
        );
        self.report.incremental_mode = Some(format!("layer {layer}"));
        self.report.orphans = summary.orphan_rows();
        self.report.stages.push(t.stage(
            "transform",
            summary.memory_rows() + summary.edge_rows(),
            note,
        ));
        self.layer = Some(input.base);
        // The layers below were validated by the runs that wrote them (with validation off, they were not:
        // this run reads them all).
        if validated_run.is_some() {
            self.verified_below_layer = layer;
        }
        Ok(Some(summary))
    }

    fn load(&mut self, summary: &TransformSummary, origin: &str) -> Result<()> {
        let t = Timer::start();
        let target = self.bundle_dir()?;
        let mut embedder = match self.embedder.take() {
            Some(e) => e,
            None => embedder(&self.plan, &self.opts)?,
        };
        // A run killed after its bundle was renamed into place (but before it finished) left a complete bundle
        // of this very input: keep it instead of asking for --overwrite.
        // So does an incremental run whose input did not change.
        if target.join(bundle::BUNDLE_FILE).is_file()
            && (!self.plan.overwrite || self.incremental())
        {
            let key = self
                .layer
                .as_ref()
                .map(|b| b.transform_key.as_str())
                .unwrap_or(&summary.key);
            if let Ok(done) = bundle::BundleManifest::load(&target) {
                if done.transform_key == key && done.embedding.provider == embedder.provider_name()
                {
                    self.layer = None;
                    if self.incremental() && self.plan.deliver.is_none() {
                        let live = done.totals.get("memories").copied().unwrap_or(0);
                        if let Some(r) = self.report.delta.as_mut() {
                            r.memories = Some(crate::delta::MemoryDeltaCounts {
                                unchanged: live,
                                ..Default::default()
                            });
                        }
                    }
                    for s in &done.spaces {
                        self.report.spaces.push(SpaceLine {
                            space: s.space.clone(),
                            memories: s.memories.rows,
                            edges: s.edges.rows,
                        });
                    }
                    self.report.stages.push(t.stage(
                        "embed + load",
                        0,
                        "bundle of this input already complete",
                    ));
                    return Ok(());
                }
            }
        }
        // The persistent cache, read back for a bundle written whole; a layer embeds its few changed texts and
        // keeps the unchanged vectors in the bundle: reading gigabytes of earlier vectors back would cost more.
        if self.layer.is_none() {
            let t = Timer::start();
            embedder = with_disk_cache(&self.plan, &self.work, embedder)?;
            // Reading an earlier run's vectors back is work of its own (gigabytes for a million memories): shown.
            let loaded = embedder.disk_cache().map(|d| d.stats().loaded).unwrap_or(0);
            if loaded > 0 {
                self.report.stages.push(t.stage(
                    "open cache",
                    loaded,
                    "vectors of earlier runs read back",
                ));
            }
        }
        // A rewrite's memory delta compares with the hashes of the bundle it replaces (a layer knows its own).
        if self.incremental() && self.layer.is_none() && self.plan.deliver.is_none() {
            self.baseline(&target)?;
        }
        let checkpoint_file = self
            .opts
            .checkpoint_file
            .clone()
            .unwrap_or_else(|| WorkDir::new(&self.work).bundle_checkpoint());
        let lopts = WriteOptions {
            batch_size: self.plan.limits.batch_rows,
            run_id: self.report.run_id.clone(),
            source: self.report.source.clone(),
            mapping: origin.to_string(),
            // An incremental run replaces the earlier run's bundle, as a fresh full run with --overwrite would.
            overwrite: self.plan.overwrite || self.incremental(),
            checkpoint_file,
            hashes_dir: Some(self.plan.work_dir.bundle_hashes()),
            base: self.layer.take(),
            run_key: RunKey::of(&[
                ("transform", &summary.key),
                ("provider", &embedder.provider_name()),
                ("bundle", &target.display().to_string()),
                (
                    "reembed",
                    if self.plan.embedding.reembed {
                        "yes"
                    } else {
                        "no"
                    },
                ),
            ]),
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.plan.limits.workers)
            .build_global()
            .ok();
        let mut stage = EmbedStage {
            embedder: &mut embedder,
            reembed: self.plan.embedding.reembed,
        };
        let staged = WorkDir::new(&self.work).transform();
        let res = bundle::writer::write(&staged, summary, &target, &mut stage, &lopts)?;
        if let Some(base) = &lopts.base {
            let counts = layer_counts(&base.removed, &res.layer_hashes, &res.manifest);
            if let Some(r) = self.report.delta.as_mut() {
                r.memories = Some(counts);
            }
        }
        for s in &res.manifest.spaces {
            self.report.spaces.push(SpaceLine {
                space: s.space.clone(),
                memories: s.memories.rows,
                edges: s.edges.rows,
            });
        }
        let mut line = EmbeddingLine::new(embedder.provider_name(), embedder.stats());
        line.persistent_cache_entries = embedder.disk_cache().map(|d| d.len() as u64);
        self.report.embedding = Some(line);
        let note = if res.resumed_parts > 0 {
            format!("resumed after {} committed parts", res.resumed_parts)
        } else {
            String::new()
        };
        self.report.stages.push(t.stage(
            "embed + load",
            res.manifest.totals.get("memories").copied().unwrap_or(0),
            note,
        ));
        Ok(())
    }

    async fn validate(
        &mut self,
        dir: &Path,
        manifest: &Manifest,
        sql: &str,
        origin: &str,
    ) -> Result<usize> {
        let t = Timer::start();
        let target = self.bundle_dir()?;
        if self.source.is_none() && !self.against_snapshot {
            let mut src = open_source(&self.opts)?;
            if src.kind() != "snapshot" {
                // A later `validate` of a source that changed since the snapshot: the checks that compare with
                // the source may fail for that change, not for the migration. Say so first; with
                // --reuse-snapshot compare with the snapshot, the data that was migrated, instead.
                let opts = snapshot_options(&self.plan);
                let now = src
                    .fingerprint()?
                    .only_tables(|t| source::is_included(t, &opts.include, &opts.exclude));
                let changes = manifest.source_fingerprint.changes(&now);
                if !changes.is_empty() && !opts.reuse_stale {
                    crate::progress::warn(&format!(
                        "the source has changed since the snapshot in {} was taken ({}); the checks that compare \
                         with the source (counts_source, counts_groups, sample_values) may fail for that change, \
                         not for the migration. --reuse-snapshot validates against the snapshot instead",
                        dir.display(),
                        changes.join("; ")
                    ));
                    self.report.source_changed_since_snapshot = changes;
                    self.source = Some(src);
                } else {
                    self.source = Some(src);
                    self.reused_stale(dir, changes);
                }
            }
        }
        let v = self
            .plan
            .validate
            .clone()
            .ok_or_else(|| Error::Internal("validate without a validation plan".into()))?;
        let vopts = ValidateOptions {
            id_scope: v.id_scope,
            sample_size: v.sample_size,
            sample_seed: v.sample_seed,
            extra_checks: v.checks,
            allow_skipped: v.allow_skipped,
            // The tool's own count of what the mapping must produce, where it knows the mapping.
            derived_counts: match &self.plan.mapping {
                Some(MappingPlan::Generic(m)) => {
                    Some(transform::generic::derived_counts_sql(manifest, m))
                }
                Some(MappingPlan::Redis(r)) => Some(transform::redis::derived_counts_sql(r)),
                _ => None,
            },
            engine: engine(&self.plan),
            verified_below_layer: self.verified_below_layer,
        };
        let src: Option<&mut dyn Source> = match self.source.as_mut() {
            Some(s) => Some(s.as_mut()),
            None => None,
        };
        let results = validate::run(src, dir, manifest, sql, origin, &target, &vopts).await?;
        let failed = validate::count_failed(&results);
        validate::print_results(&results);
        self.report.stages.push(t.stage(
            "validate",
            results.len() as u64,
            format!("{failed} of {} checks failed", results.len()),
        ));
        self.report.validation = results;
        Ok(failed)
    }

    fn finish(mut self, started: Timer, outcome: Result<()>) -> Result<()> {
        self.report.seconds = started.stage("", 0, "").seconds;
        self.report.finished_at =
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.report.outcome = match &outcome {
            Ok(()) => "ok".into(),
            Err(e) => format!("failed: {e}"),
        };
        let saved = self.report.save(&self.report_path);
        if outcome.is_ok() || matches!(outcome, Err(Error::ValidationFailed { .. })) {
            self.report.print_summary(&self.report_path);
        }
        outcome?;
        saved
    }
}

fn failed_checks(failed: usize, total: usize, report: &Path) -> Result<()> {
    if failed > 0 {
        return Err(Error::ValidationFailed {
            failed,
            total,
            report: report.display().to_string(),
        });
    }
    Ok(())
}

/// `snapshot`: stage the source into `<work>/snapshot`.
pub async fn snapshot_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut ctx = Ctx::new(Command::Snapshot, opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    if ctx.plan.fresh {
        fresh(&ctx.plan)?;
    }
    record_plan(&ctx.plan, &ctx.opts)?;
    let r = ctx.snapshot().map(|_| ());
    ctx.finish(started, r)
}

/// `transform`: run the mapping over the snapshot.
pub async fn transform_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let opts = continuing(opts, config::Role::Transform)?;
    let mut ctx = Ctx::new(Command::Transform, opts)?;
    engine(&ctx.plan).check().await?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    record_plan(&ctx.plan, &ctx.opts)?;
    let r = async {
        let dir = ctx.snapshot_dir()?;
        let manifest = require_complete(&dir)?;
        ctx.transform(&dir, &manifest).await?;
        ctx.record_engine().await;
        Ok(())
    }
    .await;
    ctx.finish(started, r)
}

fn require_complete(dir: &Path) -> Result<Manifest> {
    if !dir.join(snapshot::MANIFEST).is_file() {
        return Err(Error::usage(format!(
            "no snapshot in {}; run `engram-migrate snapshot` first (same --source and --work-dir)",
            dir.display()
        )));
    }
    let m = Manifest::load(dir)?;
    if !m.complete {
        return Err(Error::usage(format!(
            "the snapshot in {} is incomplete; run `engram-migrate snapshot` again to finish it",
            dir.display()
        )));
    }
    Ok(m)
}

/// `load`: embed the staged memories and write the bundle, or send a finished bundle to a live Engram server.
pub async fn load_cmd(opts: Options) -> Result<()> {
    // A finished bundle sent to a live target continues no run; otherwise take what the run recorded.
    let opts = match opts.bundle {
        Some(_) => opts,
        None => continuing(opts, config::Role::Load)?,
    };
    let target = Target::parse(opts.require_target()?)?;
    if matches!(target, Target::Live { .. }) {
        return load_live_cmd(opts, &target).await;
    }
    if opts.bundle.is_some() {
        return Err(Error::usage(
            "--bundle goes with a live target: --target engram+http://HOST:PORT or engram+grpc://HOST:PORT",
        ));
    }
    let started = Timer::start();
    let mut ctx = Ctx::new(Command::Load, opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    record_plan(&ctx.plan, &ctx.opts)?;
    let r = (|| {
        let out = WorkDir::new(&ctx.work).transform();
        let summary = TransformSummary::load(&out).map_err(|_| {
            Error::usage(format!(
                "no staged transform output in {}; run `engram-migrate transform` first",
                out.display()
            ))
        })?;
        if summary.layer {
            // Only the changed rows' memories: written alone they would be a bundle missing all the others.
            return Err(Error::usage(format!(
                "the staged output in {} is an incremental run's layer (the changed rows only), not a whole \
                 transform; finish it with the same `run --incremental`, or run `engram-migrate transform` first",
                out.display()
            )));
        }
        let origin = ctx
            .opts
            .sql
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| WorkDir::new(&ctx.work).mapping_sql().display().to_string());
        ctx.load(&summary, &origin)
    })();
    ctx.finish(started, r)
}

/// `load --bundle DIR --target URL`: send a finished bundle to a live target through its sink and the one
/// loader, then read back what the target kept. Work directory: `--work-dir`, else `<bundle>.work`.
async fn load_live_cmd(opts: Options, target: &Target) -> Result<()> {
    if opts.bundle.is_none() {
        return Err(Error::usage(format!(
            "--bundle DIR is required to load into {}: write one with `engram-migrate run --target DIR` first",
            target.describe()
        )));
    }
    let plan = RunPlan::for_command(&opts, Command::Load)?;
    let (Some(bundle), Some(d)) = (&plan.bundle, &plan.deliver) else {
        return Err(Error::Internal(
            "a live load's plan without bundle or target".into(),
        ));
    };
    let sink = target
        .open(&d.options)?
        .ok_or_else(|| Error::Internal("load_live_cmd without a live target".into()))?;
    deliver(&plan, bundle, sink.as_ref(), d, None).await
}

/// Sends a finished bundle to a sink through the one loader, reads back what the target kept, and writes the
/// "delivery" section of `report.json`. Exit 5 (validation failed) when the target does not hold every memory.
/// Order: what the bundle alone decides (accepts, predicted loss), then the target's health, then the load.
/// With `delta` (an incremental run), a sink that accepts it is sent only the added and changed memories and
/// asked to delete those gone; the read-back still checks the whole bundle.
async fn deliver(
    plan: &RunPlan,
    bundle: &Path,
    sink: &dyn crate::sink::Sink,
    d: &plan::DeliverPlan,
    delta: Option<&crate::delta::MemoryDelta>,
) -> Result<()> {
    let work = &plan.work_dir;
    let _lock = work.lock()?;
    let limits = &crate::sink::DeliverLimits {
        batch_rows: d.batch_rows,
        parallel: d.parallel,
    };
    let checkpoint_file = d.checkpoint.as_path();
    let manifest = bundle::BundleManifest::load(bundle)?;
    // Everything that can be checked before the first write is checked first: nothing half-sent on bad input.
    sink.accepts(bundle, &manifest)?;
    // What the target would drop while answering "ok": shown, and a load over the limit is refused.
    let prediction = sink.predict_loss(bundle, &manifest)?;
    if let Some(p) = &prediction {
        if p.lost > 0 {
            println!("predicted silent loss in {}:", sink.identity());
            print!("{}", p.rendered);
        }
        let share = if p.total == 0 {
            0.0
        } else {
            p.lost as f64 / p.total as f64
        };
        if share > d.max_predicted_loss {
            return Err(Error::usage(format!(
                "{}: {} of {} memories ({:.1}%) are predicted to be dropped silently, over --max-predicted-loss {} \
                 ({}%); nothing was sent.\n  {}\n  Fix: give each memory a text that tells it apart (--text-columns \
                 with the columns that differ between rows, e.g. the key; or --sql with your own text), or a real \
                 embedding model (--embedding-provider model2vec:DIR); or send anyway with --max-predicted-loss 1 \
                 (the bundle keeps every memory)",
                sink.identity(),
                p.lost,
                p.total,
                100.0 * share,
                d.max_predicted_loss,
                100.0 * d.max_predicted_loss,
                p.worst.join("\n  ")
            )));
        }
    }
    sink.healthcheck().await?;
    let checksums: Vec<&str> = manifest
        .spaces
        .iter()
        .map(|s| s.memories.checksum.as_str())
        .collect();
    // A sink that takes no partial load is sent the whole bundle; it is still asked to delete what is gone.
    let gone = delta.map(|m| &m.delete);
    let delta = delta.filter(|_| sink.accepts_delta());
    let scope = match delta {
        Some(m) => format!(
            "delta: {} to send, {} to delete",
            m.to_send(),
            m.delete.len()
        ),
        None => "whole bundle".to_string(),
    };
    let run_key = RunKey::of(&[
        ("bundle", &manifest.run_id),
        ("memories", &checksums.join(",")),
        ("target", &sink.identity()),
        ("scope", &scope),
    ]);
    let started = Timer::start();
    let out = crate::sink::load::run(
        bundle,
        &manifest,
        sink,
        limits,
        checkpoint_file,
        &run_key,
        crate::sink::load::Delta {
            send: delta.map(|m| &m.send),
            delete: gone.map(|g| g.as_slice()),
        },
    )
    .await?;
    if let Some(outcome) = out.deletes.as_ref().filter(|o| o.kept > 0) {
        crate::progress::warn(&format!(
            "{}: {} of {} memories deleted from the source are still in the target: {}",
            sink.identity(),
            outcome.kept,
            outcome.requested,
            outcome.note
        ));
    }
    let deletes = out.deletes.clone();
    let read_back = sink.read_back(bundle, &manifest, &out.rejected).await?;
    // The verdict in SQL, the same checks for every sink (sql/validate/target_*.sql).
    let vopts = ValidateOptions {
        id_scope: validate::IdScope::PerSpace,
        sample_size: 0,
        sample_seed: 0,
        extra_checks: None,
        allow_skipped: false,
        derived_counts: None,
        engine: engine(plan),
        verified_below_layer: 0,
    };
    let checks = validate::check_target(bundle, &read_back, &vopts).await?;
    let mut delivery =
        report::Delivery::new(sink, bundle, &out, &read_back, &checks, started.elapsed());
    delivery.predicted_lost = prediction.map(|p| p.lost);
    delivery.scope = scope;
    delivery.deletes = deletes;
    report::save_delivery(&work.report(), &delivery)?;
    if sink.already_loaded() {
        // Nothing went over the wire: say so rather than count the acknowledged units as sent.
        println!(
            "{} was already loaded into {}: nothing sent, {} memories checked in {:.1} s",
            bundle.display(),
            sink.identity(),
            out.sent,
            out.seconds
        );
    } else {
        println!(
            "loaded {} into {} ({}): sent {} memories{} in {:.1} s ({:.0} memories/s)",
            bundle.display(),
            sink.identity(),
            delivery.scope,
            out.sent,
            if out.resumed > 0 {
                format!(" (resumed: {} acknowledged before)", out.resumed)
            } else {
                String::new()
            },
            out.seconds,
            out.rows_per_second
        );
    }
    println!("read-back verification:");
    print!("{}", read_back.rendered);
    validate::print_results(&checks);
    println!("report: {} (\"delivery\")", work.report().display());
    // The checkpoint is kept until the read-back is done: a load killed during it only reads back again.
    let _ = fs::remove_file(checkpoint_file);
    let failed = validate::count_failed(&checks);
    if failed > 0 {
        return Err(Error::ValidationFailed {
            failed,
            total: checks.len(),
            report: work.report().display().to_string(),
        });
    }
    Ok(())
}

/// `validate`: re-check a finished run.
pub async fn validate_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut opts = continuing(opts, config::Role::Validate)?;
    // A run into a live target validated its bundle: so does a later `validate` of it.
    if let (Some(t), Some(b)) = (&opts.target, &opts.bundle) {
        if matches!(Target::parse(t)?, Target::Live { .. }) {
            opts.target = Some(b.display().to_string());
            opts.bundle = None;
        }
    }
    let mut ctx = Ctx::new(Command::Validate, opts)?;
    engine(&ctx.plan).check().await?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    let r = async {
        let dir = ctx.snapshot_dir()?;
        let manifest = require_complete(&dir)?;
        // The mapping as the run generated it: with the bundle's embedding dimension.
        let dim = bundle::BundleManifest::load(&ctx.bundle_dir()?)?
            .embedding
            .dimension;
        let mapping = ctx
            .plan
            .mapping
            .clone()
            .ok_or_else(|| Error::usage("--source is required to validate"))?;
        let texts = text_choices(&ctx.plan, &engine(&ctx.plan), &dir, &manifest, true).await?;
        let (sql, origin) = mapping_sql(&mapping, &manifest, &ctx.work, dim, &texts)?;
        ctx.report.source = manifest.source.clone();
        ctx.report.mapping = origin.clone();
        ctx.report.texts = texts;
        let failed = ctx.validate(&dir, &manifest, &sql, &origin).await?;
        ctx.record_engine().await;
        failed_checks(failed, ctx.report.validation.len(), &ctx.report_path)
    }
    .await;
    ctx.finish(started, r)
}

/// `run`: every stage, resuming from whatever a killed earlier run committed. The plan is made once from the
/// flags, recorded in `<work>/plan.json`, and executed. With a live target (`--target URL --bundle DIR`) the
/// target is checked (reachable, credentials) before the first stage, so an unreachable one costs seconds, not a
/// snapshot; the bundle is written and validated first (the full truth: edges, decay rates, provenance, which a
/// live target may have no API for), and only then sent, with its read-back. A failed validation sends nothing.
pub async fn run_cmd(opts: Options) -> Result<()> {
    let plan = RunPlan::for_command(&opts, Command::Run)?;
    // A cluster that cannot run queries stops the run before anything is read.
    engine(&plan).check().await?;
    let sink = match &plan.deliver {
        Some(d) => {
            let sink = Target::parse(&d.spec)?
                .open(&d.options)?
                .ok_or_else(|| Error::Internal("a deliver plan without a live target".into()))?;
            sink.healthcheck().await?;
            Some(sink)
        }
        None => None,
    };
    let bundle_dir = plan
        .bundle
        .clone()
        .ok_or_else(|| Error::Internal("a run plan without a bundle".into()))?;
    let delta = run_bundle(opts, plan.clone(), &bundle_dir).await?;
    if let (Some(sink), Some(d)) = (sink, &plan.deliver) {
        deliver(&plan, &bundle_dir, sink.as_ref(), d, delta.as_ref()).await?;
        // The target holds this bundle: the next incremental run diffs against it.
        let marker = plan.work_dir.undelivered();
        if marker.exists() {
            fs::remove_file(&marker).map_err(Error::io("remove", &marker))?;
        }
    }
    Ok(())
}

/// What a command records of its plan in `<work>/plan.json`: the text `plan` prints, the same as data, and the
/// options it was made from (without secrets), which later commands continuing the run start from.
pub fn plan_record(plan: &RunPlan, opts: &Options) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(&serde_json::json!({
        "rendered": plan.render(),
        "plan": plan,
        "options": opts.recordable()?,
    }))?)
}

fn record_plan(plan: &RunPlan, opts: &Options) -> Result<()> {
    crate::parquet_io::write_atomic(&plan.work_dir.plan(), &plan_record(plan, opts)?)
}

/// `opts` completed from the run recorded in the work directory (see `Options::continuing`); as given when the
/// work directory records none (a run of an older version, or a first command).
fn continuing(opts: Options, redoes: config::Role) -> Result<Options> {
    let path = WorkDir::new(opts.work_dir()?).plan();
    let Ok(bytes) = fs::read(&path) else {
        return Ok(opts);
    };
    let record: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(format!(
            "{}: not a plan record ({e}); remove it or use --fresh",
            path.display()
        ))
    })?;
    let Some(recorded) = record.get("options") else {
        return Ok(opts);
    };
    let recorded: Options = serde_json::from_value(recorded.clone()).map_err(|e| {
        Error::usage(format!(
            "{}: options this version does not know ({e}); give every option again, or use --fresh",
            path.display()
        ))
    })?;
    opts.continuing(&recorded, redoes)
}

/// The bundle half of `run`: snapshot, transform, embed + bundle, validate, as the plan says. An incremental
/// run also answers what its live target must be sent (None: everything).
async fn run_bundle(
    mut opts: Options,
    plan: RunPlan,
    bundle_dir: &Path,
) -> Result<Option<crate::delta::MemoryDelta>> {
    let started = Timer::start();
    // Fail before the long stages when the target is in the way; an existing bundle may be this run's own,
    // finished just before a kill, which the load stage recognises.
    if bundle_dir.exists() && !plan.overwrite && !bundle_dir.join(bundle::BUNDLE_FILE).is_file() {
        return Err(Error::target_err(
            bundle_dir.display().to_string(),
            "already exists; pass --overwrite to replace it, or choose another --target",
        ));
    }
    if plan.deliver.is_some() {
        // --checkpoint-file names the live load's checkpoint; the bundle stage keeps its own in the work dir.
        opts.checkpoint_file = None;
    }
    let mut ctx = Ctx::from_plan(plan, opts);
    let _lock = WorkLock::acquire(&ctx.work)?;
    if ctx.plan.fresh {
        fresh(&ctx.plan)?;
    }
    record_plan(&ctx.plan, &ctx.opts)?;
    let mut delta = None;
    let r = async {
        // Made first, so a bad provider (model directory, URL, key) fails before the long stages.
        ctx.embedder = Some(embedder(&ctx.plan, &ctx.opts)?);
        if ctx.incremental() {
            ctx.begin_incremental(bundle_dir)?;
        }
        if ctx.plan.deliver.is_some() {
            // Until the delivery succeeds, the target's state is this run's business: see `begin_incremental`.
            crate::parquet_io::write_atomic(&ctx.plan.work_dir.undelivered(), b"")?;
        }
        // Between stages, what the last one freed goes back to the system (see `return_freed_memory`).
        let (dir, manifest) = ctx.snapshot()?;
        crate::engine::memory::return_freed_memory();
        ctx.check_schema_drift(&manifest)?;
        if ctx.incremental() {
            ctx.row_delta(&dir, &manifest)?;
        }
        let (summary, sql, origin) = ctx.transform(&dir, &manifest).await?;
        crate::engine::memory::return_freed_memory();
        ctx.load(&summary, &origin)?;
        crate::engine::memory::return_freed_memory();
        // A live target's delta, or a rewritten bundle's counts (a layer counted its own).
        let counted = ctx
            .report
            .delta
            .as_ref()
            .is_some_and(|d| d.memories.is_some());
        if ctx.incremental() && (ctx.plan.deliver.is_some() || !counted) {
            delta = ctx.memory_delta(bundle_dir)?;
        }
        if ctx.plan.validate.is_some() {
            let failed = ctx.validate(&dir, &manifest, &sql, &origin).await?;
            ctx.record_engine().await;
            failed_checks(failed, ctx.report.validation.len(), &ctx.report_path)?;
        } else {
            ctx.record_engine().await;
        }
        ctx.complete_run(&manifest)
    }
    .await;
    ctx.finish(started, r)?;
    Ok(delta)
}

/// The kind of an open source, for choosing its mapping.
fn src_kind(src: &dyn Source) -> source::SourceKind {
    source::SourceKind::of_description(&src.describe()).unwrap_or(source::SourceKind::Sqlite)
}

/// `plan` (and `--dry-run`): what a run would read and write. Writes nothing.
pub async fn plan_cmd(opts: Options) -> Result<()> {
    let mut src = open_source(&opts)?;
    let mut catalog = src.catalog()?;
    let workers = opts.workers();
    let (include, exclude) = (
        plan::comma_list(&opts.include),
        plan::comma_list(&opts.exclude),
    );
    source::filter_catalog(&mut catalog, &include, &exclude)?;
    println!("source: {}", src.describe());
    println!("tables, in dependency order (parents first):");
    let infos: Vec<&source::TableInfo> = catalog.tables.iter().collect();
    let generic = match plan::mapping_plan(&opts, src_kind(src.as_ref())) {
        Ok(MappingPlan::Generic(m)) => Some(m),
        _ => None,
    };
    for t in &catalog.tables {
        println!(
            "  {}  ({} rows, key: {})",
            t.name,
            t.row_estimate.map(|n| n.to_string()).unwrap_or("?".into()),
            t.primary_key.join(", ")
        );
        if let Some(parts) = src.partitions(t, workers)? {
            println!(
                "      read in {} partition(s), {} in parallel: {}",
                parts.len(),
                workers.min(parts.len()),
                parts.first().map(|p| p.filter.as_str()).unwrap_or("")
            );
        }
        for c in &t.columns {
            println!(
                "      {:<28} {:<20} -> {:<28} {}",
                c.name,
                if c.source_type.is_empty() {
                    "(none)"
                } else {
                    &c.source_type
                },
                c.arrow_type,
                c.fidelity
            );
        }
        // The generic mapping turns a link table's rows into edges.
        let link = match &generic {
            Some(m) if !m.skip_edges => transform::generic::link_keys(t, &infos, m),
            _ => None,
        };
        if let Some((a, b)) = link {
            println!(
                "      link table => each row an edge {} -> {}, typed by {}, not a memory",
                a.parent_table,
                b.parent_table,
                transform::generic::link_type_column(t)
                    .map(|c| format!("column {c}"))
                    .unwrap_or_else(|| format!("the table name ({})", t.name.to_uppercase()))
            );
            continue;
        }
        for fk in &t.foreign_keys {
            println!(
                "      foreign key ({}) -> {}({})  => edge child -> parent, weight 0.8",
                fk.columns.join(", "),
                fk.parent_table,
                fk.parent_columns.join(", ")
            );
        }
    }
    let groups = src.group_counts()?;
    if !groups.is_empty() {
        println!("rows per label / relationship type:");
        for g in &groups {
            println!("  {}.{} = {}: {} rows", g.table, g.column, g.value, g.rows);
        }
    }
    for c in &catalog.cycles {
        println!(
            "foreign-key cycle: {} -> {} (edges are still made)",
            c.join(" -> "),
            c[0]
        );
    }
    for (name, why) in &catalog.skipped {
        println!("skipped: {name}: {why}");
    }
    let total: u64 = catalog.tables.iter().filter_map(|t| t.row_estimate).sum();
    println!("total rows: {total}");
    // What `run` with these flags executes, made the way `run` makes it (and records in <work>/plan.json).
    match RunPlan::from_options(&opts) {
        Ok(plan) => {
            // A provider that cannot be loaded (model directory, endpoint) fails here, as it would in `run`.
            provider(&plan.embedding, &opts)?;
            println!("plan:");
            print!("{}", plan.render());
            if let Some(b) = plan.bundle.as_ref().filter(|b| b.exists()) {
                if !plan.overwrite && !b.join(bundle::BUNDLE_FILE).is_file() {
                    println!("note: {} exists: `run` needs --overwrite", b.display());
                }
            }
            plan_prediction(&plan, &opts, src.as_mut()).await?;
        }
        Err(_) if opts.target.is_none() => {
            println!("plan: give --target to see what `run` would execute")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The part of `plan` that needs the data: what each table's memories embed and how many distinct texts that
/// gives, and what Engram would drop silently (near-duplicate embeddings, the per-space limit, contents over
/// 100 KB over HTTP), replayed over the memories the mapping makes, embedded as `run` would embed them. Made from
/// the snapshot in the work directory when there is a complete one of this source as it is now; otherwise it
/// says how to get one. Writes nothing.
async fn plan_prediction(plan: &RunPlan, opts: &Options, src: &mut dyn Source) -> Result<()> {
    let Some(dir) = plan.snapshot.as_ref() else {
        return Ok(());
    };
    let complete = Manifest::load(dir).ok().filter(|m| m.complete);
    let manifest = match complete {
        Some(m) if src.kind() == "snapshot" => m,
        Some(m) => {
            let s = snapshot_options(plan);
            let now = src
                .fingerprint()?
                .only_tables(|t| source::is_included(t, &s.include, &s.exclude));
            let changes = m.source_fingerprint.changes(&now);
            if !changes.is_empty() {
                println!(
                    "what Engram would keep: not predicted; the snapshot in {} is stale ({}): `run` stops there \
                     (--fresh or --reuse-snapshot)",
                    dir.display(),
                    changes.join("; ")
                );
                return Ok(());
            }
            m
        }
        None => {
            println!(
                "what Engram would keep: predicted from the data once a snapshot is taken: `engram-migrate \
                 snapshot` with these flags (seconds to minutes, reused by `run`), then `plan` again"
            );
            return Ok(());
        }
    };
    // `plan` runs its SQL here whatever --engine says: it reads a sample and writes nothing, and needs no cluster.
    let local = crate::engine::Engine {
        spec: crate::engine::EngineSpec::Local,
        ..engine(plan)
    };
    // Read a saved choice, never write one: `plan` writes nothing.
    let texts = text_choices(plan, &local, dir, &manifest, false).await?;
    if !texts.is_empty() {
        println!("text embedded per table (from the snapshot):");
        for t in &texts {
            let how = if t.explicit {
                "as --text-columns says".to_string()
            } else if t.added.is_empty() {
                "the text columns".to_string()
            } else {
                format!("the text columns repeat; added {}", t.added.join(", "))
            };
            println!(
                "  {:<28} {} distinct texts of {} rows: {} ({how})",
                t.table,
                t.distinct_texts,
                t.rows,
                t.columns.join(", ")
            );
        }
    }
    // Embedded as `run` embeds: the same provider, its in-memory cache only (nothing is written).
    let provider = provider(&plan.embedding, opts)?;
    let mut embedder = Embedder::new(provider, plan.embedding.cache_entries)?;
    let dim = embedder.native_dimension();
    let mapping = plan
        .mapping
        .as_ref()
        .ok_or_else(|| Error::usage("--source is required to know the mapping"))?;
    let (sql, origin) = generated_mapping(mapping, &manifest, dim, &texts)?;
    let ctx = local.session().await?;
    transform::register_snapshot(&ctx, dir, &manifest).await?;
    transform::run_statements(&ctx, &sql, &origin).await?;
    let target = plan
        .deliver
        .as_ref()
        .and_then(|d| crate::sink::engram::EngramTarget::parse(&d.target).ok());
    let (protocol, limit) = target
        .as_ref()
        .map(|t| (t.protocol, t.space_limit))
        .unwrap_or((
            crate::sink::engram::Protocol::Http,
            crate::sink::engram::DEFAULT_SPACE_LIMIT,
        ));
    let mut predictor = crate::sink::engram::predict::Predictor::new(limit);
    let schema = crate::schema::memory_schema(dim);
    let pb = crate::progress::bar(manifest.total_rows(), "predict", "memories");
    let mut stream = transform::stream(&ctx, "SELECT * FROM memories", &origin).await?;
    use futures::StreamExt;
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| Error::sql(&origin, e))?;
        let b = transform::conform(&b, &schema, "memories")?;
        let b = crate::embed::memories::embed_memories(&mut embedder, &b, plan.embedding.reembed)?;
        crate::sink::engram::predict::offer_batch(&mut predictor, None, &b)
            .map_err(|m| Error::Internal(format!("plan's prediction: {m}")))?;
        pb.inc(b.num_rows() as u64);
    }
    pb.finish_and_clear();
    let p = predictor.finish();
    println!(
        "what Engram would keep ({} embeddings, over {}, per-space limit {limit}):",
        plan.embedding.provider,
        match protocol {
            crate::sink::engram::Protocol::Http => "HTTP",
            crate::sink::engram::Protocol::Grpc => "gRPC",
        }
    );
    print!("{}", p.render(protocol));
    let too_large: u64 = p.spaces.iter().map(|s| s.too_large_for_http).sum();
    if too_large > 0 && protocol == crate::sink::engram::Protocol::Http {
        println!(
            "note: {too_large} memories have content over 100 KB, which Engram's HTTP API refuses; \
             engram+grpc://HOST:PORT accepts them (the bundle keeps them whole either way)"
        );
    }
    let max = plan
        .deliver
        .as_ref()
        .map(|d| d.max_predicted_loss)
        .unwrap_or(plan::DEFAULT_MAX_PREDICTED_LOSS);
    if p.fraction(protocol) > max {
        println!(
            "note: over --max-predicted-loss {max}: a live load would refuse to send; give the rows distinct texts \
             (--text-columns TABLE:COL,COL with columns that tell the rows apart, or your own --sql), or pass \
             --max-predicted-loss 1 to send anyway"
        );
    }
    Ok(())
}

/// `rollback --bundle DIR --target URL`: asks the live target's sink to remove what loading the bundle put there.
pub async fn rollback_cmd(opts: Options) -> Result<()> {
    // `rollback --work-dir W`: the bundle and target of the run recorded there.
    let opts = match (&opts.bundle, &opts.work_dir) {
        (None, Some(_)) => continuing(opts, config::Role::Load)?,
        _ => opts,
    };
    let target = Target::parse(opts.require_target()?)?;
    let sink_options = opts.sink_options();
    let Some(sink) = target.open(&sink_options)? else {
        return Err(Error::usage(format!(
            "rollback works on a live target (--target URL --bundle DIR); a bundle directory ({}) is rolled back by \
             deleting it, and its work directory with it",
            target.describe()
        )));
    };
    let bundle = opts
        .bundle
        .as_deref()
        .map(crate::sink::bundle_path)
        .ok_or_else(|| {
            Error::usage("--bundle DIR is required: the bundle whose load is rolled back")
        })?;
    let manifest = bundle::BundleManifest::load(&bundle)?;
    // A target that cannot roll back says so whether or not its server is up.
    if sink.can_roll_back() {
        sink.healthcheck().await?;
    }
    let removed = sink.rollback(&bundle, &manifest).await?;
    println!(
        "rolled back {}: removed {removed} memories of {}",
        sink.identity(),
        bundle.display()
    );
    Ok(())
}
