//! The one pipeline: wires source -> snapshot -> transform -> embed + bundle -> validation, decides what can be
//! reused from the work directory (resume), and writes the run report. Sources and sinks know nothing of each other.
//!
//! Work directory: `snapshot/` (unless the source is a snapshot), `mapping.sql` (generated), `transform/`
//! (staged memories and edges), `checkpoint.json` (load progress), `report.json`, `.lock`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{self, Options};
use crate::embed::{Embedder, EmbeddingProvider, HashingProvider};
use crate::error::{Error, Result};
use crate::parquet_io::PartLimits;
use crate::report::{EmbeddingLine, RunReport, SpaceLine, TableLine, Timer};
use crate::sink::bundle::{self, LoadOptions};
use crate::sink::Target;
use crate::snapshot::{self, Manifest, SnapshotOptions};
use crate::source::{self, Source};
use crate::transform::{self, generic::MappingOptions, TransformSummary};
use crate::validate::{self, ValidateOptions};

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

fn run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id()
    )
}

fn limits(opts: &Options) -> PartLimits {
    PartLimits {
        max_file_bytes: opts.max_file_mb.unwrap_or(128).max(1) << 20,
        max_file_rows: opts.max_file_rows.unwrap_or(u64::MAX).max(1),
        row_group_rows: 65_536,
    }
}

pub fn snapshot_options(opts: &Options) -> SnapshotOptions {
    let list = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .unwrap_or("")
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    SnapshotOptions {
        batch_size: opts.batch_size(),
        limits: limits(opts),
        workers: opts.workers(),
        include: list(&opts.include),
        exclude: list(&opts.exclude),
    }
}

fn sql_memory(opts: &Options, work: &Path) -> transform::SqlMemory {
    transform::SqlMemory {
        limit_bytes: (opts.memory_limit_mb.unwrap_or(2048).max(64) as usize) << 20,
        spill_dir: work.join("spill"),
    }
}

pub fn open_source(opts: &Options) -> Result<Box<dyn Source>> {
    let so = source::SourceOptions {
        column_types: config::parse_column_types(&opts.column_type)?,
        partition_rows: opts.partition_rows,
        redis_db: opts.source_db,
    };
    source::open(opts.require_source()?, &so)
}

/// The snapshot a run works from: the source itself when it is a snapshot directory, else `<work>/snapshot`.
pub fn snapshot_dir(opts: &Options) -> Result<PathBuf> {
    let src = opts.require_source()?;
    let p = Path::new(src);
    if p.is_dir() && p.join(snapshot::MANIFEST).is_file() {
        return Ok(p.to_path_buf());
    }
    Ok(opts.work_dir()?.join("snapshot"))
}

fn mapping_options(opts: &Options) -> Result<MappingOptions> {
    let mut m = MappingOptions::default();
    if let Some(s) = &opts.memory_space {
        if !crate::schema::is_valid_space_id(s) {
            return Err(Error::usage(format!("--memory-space {s:?}: an Engram space id is 3 to 64 characters of a-z, 0-9, _ and -")));
        }
        m.memory_space = Some(s.clone());
    }
    m.table_to_space = config::parse_pairs("table-to-space", opts.table_to_space.as_deref())?;
    for (t, s) in &m.table_to_space {
        if !crate::schema::is_valid_space_id(s) {
            return Err(Error::usage(format!("--table-to-space {t}:{s}: {s:?} is not a valid Engram space id (3-64 of a-z, 0-9, _, -)")));
        }
    }
    m.text_columns = config::parse_table_lists("text-columns", opts.text_columns.as_deref())?;
    m.timestamp_column = opts.timestamp_column.clone();
    if let Some(c) = opts.confidence {
        if !(0.0..=1.0).contains(&c) {
            return Err(Error::usage(format!(
                "--confidence {c}: must be between 0 and 1"
            )));
        }
        m.confidence = c;
    }
    m.skip_edges = opts.skip_edges;
    Ok(m)
}

/// The mapping SQL to run and where it came from.
pub fn mapping_sql(opts: &Options, manifest: &Manifest, work: &Path) -> Result<(String, String)> {
    if let Some(path) = &opts.sql {
        let sql = fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("--sql {}: {e}", path.display())))?;
        return Ok((sql, path.display().to_string()));
    }
    if transform::redis::is_redis(&manifest.source) {
        let sql = transform::redis::mapping(&transform::redis::RedisMapping {
            memory_space: opts.memory_space.clone(),
            ttl_as_decay: opts.ttl_as_decay.unwrap_or(true),
            hash_field_memories: opts.hash_field_memories,
        })?;
        let path = work.join("mapping.sql");
        crate::parquet_io::write_atomic(&path, sql.as_bytes())?;
        return Ok((sql, format!("{} (sql/redis.sql)", path.display())));
    }
    if manifest.tables.is_empty() {
        return Err(Error::source_err(
            manifest.source.to_string(),
            "has no tables to migrate",
        ));
    }
    let mopts = mapping_options(opts)?;
    for t in mopts.text_columns.keys().chain(mopts.table_to_space.keys()) {
        if manifest.table(t).is_none() {
            return Err(Error::usage(format!(
                "table {t:?} named in a flag is not in the source; tables: {}",
                manifest
                    .tables
                    .iter()
                    .map(|t| t.info.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    for (t, cols) in &mopts.text_columns {
        let entry = manifest.table(t).expect("checked");
        if let Some(c) = cols.iter().find(|c| entry.info.column(c).is_none()) {
            return Err(Error::usage(format!(
                "--text-columns: table {t} has no column {c:?}"
            )));
        }
    }
    let sql = transform::generic::generate(manifest, &mopts);
    let path = work.join("mapping.sql");
    crate::parquet_io::write_atomic(&path, sql.as_bytes())?;
    Ok((sql, format!("{} (generated)", path.display())))
}

fn provider(opts: &Options) -> Result<std::sync::Arc<dyn EmbeddingProvider>> {
    match opts.embedding_provider.as_deref().unwrap_or("hashing") {
        "hashing" => Ok(std::sync::Arc::new(HashingProvider::new())),
        other => Err(Error::usage(format!(
            "--embedding-provider {other:?}: unknown; available: hashing (model2vec:DIR and openai:URL are planned)"
        ))),
    }
}

fn fresh(opts: &Options, work: &Path) -> Result<()> {
    for name in [
        "spill",
        "snapshot",
        "transform",
        "transform.partial",
        "mapping.sql",
        "checkpoint.json",
        "report.json",
    ] {
        let p = work.join(name);
        if p.is_dir() {
            fs::remove_dir_all(&p).map_err(Error::io("remove", &p))?;
        } else if p.exists() {
            fs::remove_file(&p).map_err(Error::io("remove", &p))?;
        }
    }
    if let Some(t) = &opts.target {
        let partial = PathBuf::from(format!("{}.partial", t.trim_end_matches('/')));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(Error::io("remove", &partial))?;
        }
    }
    Ok(())
}

/// State carried from stage to stage within one command.
struct Ctx {
    opts: Options,
    work: PathBuf,
    report: RunReport,
    source: Option<Box<dyn Source>>,
}

impl Ctx {
    fn new(command: &str, opts: Options) -> Result<Ctx> {
        let work = opts.work_dir()?;
        let report = RunReport {
            command: command.into(),
            run_id: run_id(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            target: opts.target.clone().unwrap_or_default(),
            work_dir: work.display().to_string(),
            ..Default::default()
        };
        Ok(Ctx {
            opts,
            work,
            report,
            source: None,
        })
    }

    fn snapshot(&mut self) -> Result<(PathBuf, Manifest)> {
        let t = Timer::start();
        let dir = snapshot_dir(&self.opts)?;
        let mut src = open_source(&self.opts)?;
        self.report.source = src.describe();
        let manifest = if src.kind() == "snapshot" {
            Manifest::load(&dir)?
        } else {
            let m = snapshot::take(src.as_mut(), &dir, &snapshot_options(&self.opts))?;
            self.source = Some(src);
            m
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
        let (sql, origin) = mapping_sql(&self.opts, manifest, &self.work)?;
        self.report.mapping = origin.clone();
        let key = transform::transform_key(&sql, manifest);
        let out = self.work.join("transform");
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
                    self.opts.workers(),
                    self.opts.batch_size(),
                    limits(&self.opts),
                    &sql_memory(&self.opts, &self.work),
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

    fn load(&mut self, summary: &TransformSummary, origin: &str) -> Result<()> {
        let t = Timer::start();
        let Target::Bundle(target) = Target::parse(self.opts.require_target()?)?;
        let provider = provider(&self.opts)?;
        let mut embedder = Embedder::new(
            provider,
            self.opts
                .cache_size
                .unwrap_or(crate::embed::stage::DEFAULT_CACHE_CAPACITY),
        )?;
        // A run killed after its bundle was renamed into place (but before it finished) left a complete bundle
        // of this very input: keep it instead of asking for --overwrite.
        if target.join(bundle::BUNDLE_FILE).is_file() && !self.opts.overwrite {
            if let Ok(done) = bundle::BundleManifest::load(&target) {
                if done.transform_key == summary.key
                    && done.embedding.provider == embedder.provider_name()
                {
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
        let checkpoint_file = self
            .opts
            .checkpoint_file
            .clone()
            .unwrap_or_else(|| self.work.join("checkpoint.json"));
        let lopts = LoadOptions {
            batch_size: self.opts.batch_size(),
            run_id: self.report.run_id.clone(),
            source: self.report.source.clone(),
            mapping: origin.to_string(),
            overwrite: self.opts.overwrite,
            checkpoint_file,
            run_key: format!(
                "{}:{}:{}",
                summary.key,
                embedder.provider_name(),
                target.display()
            ),
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.opts.workers())
            .build_global()
            .ok();
        let res = bundle::load(
            &self.work.join("transform"),
            summary,
            &target,
            &mut embedder,
            &lopts,
        )?;
        for s in &res.manifest.spaces {
            self.report.spaces.push(SpaceLine {
                space: s.space.clone(),
                memories: s.memories.rows,
                edges: s.edges.rows,
            });
        }
        self.report.embedding = Some(EmbeddingLine::new(embedder.provider_name(), res.embed));
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
        let Target::Bundle(target) = Target::parse(self.opts.require_target()?)?;
        if self.source.is_none() {
            let src = open_source(&self.opts)?;
            if src.kind() != "snapshot" {
                self.source = Some(src);
            }
        }
        let vopts = ValidateOptions {
            sample_size: self.opts.sample_size.unwrap_or(1000),
            sample_seed: self.opts.sample_seed.unwrap_or(42),
            extra_checks: self.opts.checks.clone(),
            workers: self.opts.workers(),
            batch_size: self.opts.batch_size(),
            memory: sql_memory(&self.opts, &self.work),
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
        let saved = self.report.save(&self.work);
        if outcome.is_ok() || matches!(outcome, Err(Error::ValidationFailed { .. })) {
            self.report.print_summary();
        }
        outcome?;
        saved
    }
}

fn failed_checks(failed: usize, total: usize, work: &Path) -> Result<()> {
    if failed > 0 {
        return Err(Error::ValidationFailed {
            failed,
            total,
            report: work.join("report.json").display().to_string(),
        });
    }
    Ok(())
}

/// `snapshot`: stage the source into `<work>/snapshot`.
pub async fn snapshot_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut ctx = Ctx::new("snapshot", opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    if ctx.opts.fresh {
        fresh(&ctx.opts, &ctx.work)?;
    }
    let r = ctx.snapshot().map(|_| ());
    ctx.finish(started, r)
}

/// `transform`: run the mapping over the snapshot.
pub async fn transform_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut ctx = Ctx::new("transform", opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    let r = async {
        let dir = snapshot_dir(&ctx.opts)?;
        let manifest = require_complete(&dir)?;
        ctx.transform(&dir, &manifest).await.map(|_| ())
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

/// `load`: embed the staged memories and write the bundle.
pub async fn load_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut ctx = Ctx::new("load", opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    let r = (|| {
        let out = ctx.work.join("transform");
        let summary = TransformSummary::load(&out).map_err(|_| {
            Error::usage(format!(
                "no staged transform output in {}; run `engram-migrate transform` first",
                out.display()
            ))
        })?;
        let origin = ctx
            .opts
            .sql
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ctx.work.join("mapping.sql").display().to_string());
        ctx.load(&summary, &origin)
    })();
    ctx.finish(started, r)
}

/// `validate`: re-check a finished run.
pub async fn validate_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let mut ctx = Ctx::new("validate", opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    let r = async {
        let dir = snapshot_dir(&ctx.opts)?;
        let manifest = require_complete(&dir)?;
        let (sql, origin) = mapping_sql(&ctx.opts, &manifest, &ctx.work)?;
        let failed = ctx.validate(&dir, &manifest, &sql, &origin).await?;
        failed_checks(failed, ctx.report.validation.len(), &ctx.work)
    }
    .await;
    ctx.finish(started, r)
}

/// `run`: every stage, resuming from whatever a killed earlier run committed.
pub async fn run_cmd(opts: Options) -> Result<()> {
    let started = Timer::start();
    let target = Target::parse(opts.require_target()?)?;
    let Target::Bundle(target_dir) = &target;
    // Fail before the long stages when the target is in the way; an existing bundle may be this run's own,
    // finished just before a kill, which the load stage recognises.
    if target_dir.exists() && !opts.overwrite && !target_dir.join(bundle::BUNDLE_FILE).is_file() {
        return Err(Error::target_err(
            target.describe(),
            "already exists; pass --overwrite to replace it, or choose another --target",
        ));
    }
    let mut ctx = Ctx::new("run", opts)?;
    let _lock = WorkLock::acquire(&ctx.work)?;
    if ctx.opts.fresh {
        fresh(&ctx.opts, &ctx.work)?;
    }
    let r = async {
        let (dir, manifest) = ctx.snapshot()?;
        let (summary, sql, origin) = ctx.transform(&dir, &manifest).await?;
        ctx.load(&summary, &origin)?;
        if ctx.opts.validate.unwrap_or(true) {
            let failed = ctx.validate(&dir, &manifest, &sql, &origin).await?;
            failed_checks(failed, ctx.report.validation.len(), &ctx.work)?;
        }
        Ok(())
    }
    .await;
    ctx.finish(started, r)
}

/// `plan` (and `--dry-run`): what a run would read and write. Writes nothing.
pub async fn plan_cmd(opts: Options) -> Result<()> {
    let mut src = open_source(&opts)?;
    let mut catalog = src.catalog()?;
    let so = snapshot_options(&opts);
    source::filter_catalog(&mut catalog, &so.include, &so.exclude)?;
    println!("source: {}", src.describe());
    println!("tables, in dependency order (parents first):");
    for t in &catalog.tables {
        println!(
            "  {}  ({} rows, key: {})",
            t.name,
            t.row_estimate.map(|n| n.to_string()).unwrap_or("?".into()),
            t.primary_key.join(", ")
        );
        if let Some(parts) = src.partitions(t, so.workers)? {
            println!(
                "      read in {} partition(s), {} in parallel: {}",
                parts.len(),
                so.workers.min(parts.len()),
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
        for fk in &t.foreign_keys {
            println!(
                "      foreign key ({}) -> {}({})  => edge child -> parent, weight 0.8",
                fk.columns.join(", "),
                fk.parent_table,
                fk.parent_columns.join(", ")
            );
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
    let work = opts.work_dir().ok();
    println!(
        "work directory: {}",
        work.as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or("(none: give --work-dir or --target)".into())
    );
    if src.kind() == "snapshot" {
        println!("snapshot: the source itself (nothing to stage)");
    } else if let Some(w) = &work {
        println!("snapshot: {}", w.join("snapshot").display());
    }
    println!(
        "mapping: {}",
        opts.sql
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| {
                "generated from the catalog (table -> space, row -> memory, foreign key -> edge)"
                    .into()
            })
    );
    println!("embedding provider: {}", provider(&opts)?.name());
    match &opts.target {
        Some(t) => println!(
            "target: {} (Engram bundle{})",
            t,
            if Path::new(t).exists() {
                ", exists: needs --overwrite"
            } else {
                ""
            }
        ),
        None => println!("target: (none given)"),
    }
    Ok(())
}
