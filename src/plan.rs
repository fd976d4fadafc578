//! The run plan: flags and the config file turned once into a checked, typed description of what a run does
//! (ripgrep's low-level args -> high-level args). `plan` prints it, `run` executes it and records it in
//! `<work>/plan.json`, so what was shown is what ran. Every default is resolved here, in one place.
//!
//! Secrets never enter the plan: source and target locations are redacted, passwords and keys stay in the
//! options the sources and sinks read them from.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, Options};
use crate::error::{Error, Result};
use crate::source::{self, SourceKind};
use crate::transform::{
    generic::MappingOptions,
    neo4j::{GraphKey, GraphMapping},
    redis::RedisMapping,
};
use crate::validate::IdScope;
use crate::workdir::WorkDir;

/// Rows per batch read from the source, run through SQL and embedded.
pub const DEFAULT_BATCH_ROWS: usize = 8192;
/// SQL memory (`--memory-limit-mb`): joins (sort-merge), aggregations and sorts spill past it, so the SQL stages
/// stay within about this much whatever the row count; 256 MiB kept an 11M-row run at the 1.1M run's peak RSS
/// (docs/benchmarks.md) at the same speed.
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 256;
/// Memories per acknowledged (checkpointed) batch of a live load.
pub const DEFAULT_TARGET_BATCH_ROWS: usize = 1000;
/// The seed's own threshold: a load that would silently lose more than 1% is refused unless told otherwise.
pub const DEFAULT_MAX_PREDICTED_LOSS: f64 = 0.01;
/// Requests or streams in flight to a live target.
pub const DEFAULT_TARGET_PARALLEL: usize = 16;

/// The commands that execute a plan. `run` is every stage; the others are one stage each, on the same plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Run,
    Snapshot,
    Transform,
    Load,
    Validate,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Snapshot => "snapshot",
            Command::Transform => "transform",
            Command::Load => "load",
            Command::Validate => "validate",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub command: Command,
    /// None only for `load` of a finished bundle into a live target (nothing is read from a source).
    pub source: Option<SourcePlan>,
    pub work_dir: WorkDir,
    /// Where the snapshot is: `<work>/snapshot`, or the source itself when it is a snapshot.
    pub snapshot: Option<PathBuf>,
    pub mapping: Option<MappingPlan>,
    pub embedding: EmbeddingPlan,
    /// The bundle directory: the target itself, or `--bundle` for a live target; None for `snapshot` and
    /// `transform` given only a work directory.
    pub bundle: Option<PathBuf>,
    /// A live target the bundle is then loaded into.
    pub deliver: Option<DeliverPlan>,
    /// None with `--validate false`.
    pub validate: Option<ValidatePlan>,
    pub limits: Limits,
    /// Where the SQL stages and the embedding run (`--engine`).
    pub engine: crate::engine::EngineSpec,
    pub fresh: bool,
    pub overwrite: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourcePlan {
    pub kind: SourceKind,
    /// The `--source` value without its password.
    pub location: String,
    /// For a snapshot: the kind of source it was taken from (decides the shipped mapping).
    pub origin: SourceKind,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub column_types: Vec<(String, String)>,
    pub partition_rows: Option<u64>,
    pub redis_db: Option<u64>,
    /// Redis: keys expired at the snapshot's as-of time are staged (`--expired keep`).
    pub keep_expired: bool,
    pub fetch_size: Option<usize>,
    /// `--reuse-snapshot`: a complete snapshot is used even when the source has changed since.
    pub reuse_snapshot: bool,
    /// `--incremental`: a new snapshot diffed against the last completed run's.
    pub incremental: bool,
    /// `--allow-schema-drift`: proceed when the tables or columns changed since the last completed run.
    pub allow_schema_drift: bool,
}

/// Which mapping SQL runs, with every knob the flags set.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MappingPlan {
    /// `--sql FILE`: the user's own.
    File { path: PathBuf },
    /// Generated from the catalog (table -> space, row -> memory, foreign key -> edge).
    Generic(MappingOptions),
    /// `sql/neo4j.sql` (node -> memory in its primary label's space, relationship -> edge).
    Graph(GraphMapping),
    /// `sql/redis.sql` (key -> memory, TTL -> decay, sorted sets -> members and edges).
    Redis(RedisMapping),
    /// Generated from `sql/engram.sql`'s shape: each space's memories back as they were, with their vectors.
    Engram,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingPlan {
    /// `hashing`, `model2vec:DIR` or `openai:URL`.
    pub provider: String,
    pub model: Option<String>,
    pub request_size: usize,
    /// Persistent cache bound in MiB (0: off).
    pub cache_mb: u64,
    /// In-memory cache entries.
    pub cache_entries: usize,
    pub reembed: bool,
    /// The most floats the target takes (an Engram bundle or server: 768; PostgreSQL: what pgvector indexes): a
    /// provider whose vectors are longer is asked for this many (OpenAI's text-embedding-3 models shorten on
    /// request), else refused before the run.
    pub max_dimensions: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliverPlan {
    /// The `--target` URL without its password (the plan is printed and recorded).
    pub target: String,
    /// The `--target` URL as given, password included (PostgreSQL): for opening the sink, never shown or kept.
    #[serde(skip)]
    pub spec: String,
    /// `--target-schema`, `--target-index`.
    pub options: crate::sink::SinkOptions,
    /// The load refuses when the sink predicts a larger share of silent drops.
    pub max_predicted_loss: f64,
    pub sink: &'static str,
    pub batch_rows: usize,
    pub parallel: usize,
    pub checkpoint: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidatePlan {
    pub sample_size: usize,
    pub sample_seed: u64,
    pub checks: Option<PathBuf>,
    /// `--allow-skipped`: skipped records do not fail the check `skipped_items`.
    pub allow_skipped: bool,
    /// What the target calls a duplicate id.
    pub id_scope: IdScope,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub batch_rows: usize,
    pub workers: usize,
    pub memory_limit_mb: u64,
    pub max_file_mb: u64,
    pub max_file_rows: Option<u64>,
}

/// "a, b,,c" -> [a, b, c]: the comma lists of the flags (--include, --text-properties, ...).
pub fn comma_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or("")
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn unit_interval(flag: &str, v: Option<f32>, default: f32) -> Result<f32> {
    match v {
        Some(v) if !(0.0..=1.0).contains(&v) => {
            Err(Error::usage(format!("{flag} {v}: must be between 0 and 1")))
        }
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn space_id(flag: &str, s: &str) -> Result<()> {
    if crate::schema::is_valid_space_id(s) {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{flag} {s:?}: an Engram space id is 3 to 64 characters of a-z, 0-9, _ and -"
        )))
    }
}

impl RunPlan {
    /// The plan of `run` (and `plan`, `--dry-run`) for these options. Checks every flag; opens nothing.
    pub fn from_options(o: &Options) -> Result<RunPlan> {
        Self::for_command(o, Command::Run)
    }

    /// The plan a command executes: what it needs is required, the rest resolved where the flags give it.
    pub fn for_command(o: &Options, command: Command) -> Result<RunPlan> {
        if o.incremental && command != Command::Run {
            return Err(Error::usage(format!(
                "--incremental is a flag of `run` (it diffs, rebuilds and delivers as one run), not of `{}`",
                command.name()
            )));
        }
        let target = o
            .target
            .as_deref()
            .map(crate::sink::Target::parse)
            .transpose()?;
        // `load` reads no source: it embeds the staged transform output, or sends a finished bundle.
        let needs_source = command != Command::Load;
        let source_spec = if needs_source {
            Some(o.require_source()?)
        } else {
            None
        };
        if matches!(command, Command::Run | Command::Load | Command::Validate) && target.is_none() {
            o.require_target()?;
        }
        let (bundle, deliver) = match &target {
            None => (None, None),
            Some(crate::sink::Target::Bundle(dir)) => (Some(dir.clone()), None),
            Some(crate::sink::Target::Live { factory, spec }) => {
                let shown = crate::source::redact_url(spec);
                let spec = &shown;
                if matches!(
                    command,
                    Command::Snapshot | Command::Transform | Command::Validate
                ) {
                    return Err(Error::usage(format!(
                        "--target {spec}: `{}` works on the bundle; give the bundle directory as --target (or use \
                         `run --bundle DIR --target {spec}`)",
                        command.name()
                    )));
                }
                // `run` into a live target keeps its bundle (the run's full record): where --bundle says, else in
                // the work directory the user named. Never in a directory the tool makes up.
                let bundle = match (&o.bundle, &o.work_dir, command) {
                    (Some(b), _, _) => crate::sink::bundle_path(b),
                    (None, Some(w), Command::Run) => WorkDir::new(w).root().join("bundle"),
                    _ => {
                        return Err(Error::usage(format!(
                            "--target {spec}: give --bundle DIR, the bundle to send (`run`: where it is written \
                             and kept before it is sent; or --work-dir W, which then holds it in W/bundle)"
                        )))
                    }
                };
                (Some(bundle), Some((factory.name(), shown.clone())))
            }
        };
        let work_dir = match (&o.work_dir, &bundle) {
            (Some(w), _) => WorkDir::new(w),
            (None, Some(b)) => WorkDir::beside(b),
            (None, None) => {
                return Err(Error::usage(
                    "--work-dir is required when there is no --target",
                ))
            }
        };
        let source = match source_spec {
            Some(spec) => Some(source_plan(o, spec)?),
            None => None,
        };
        let snapshot = match (&source, source_spec) {
            (Some(s), Some(spec)) if s.kind == SourceKind::Snapshot => Some(PathBuf::from(spec)),
            (Some(_), _) => Some(work_dir.snapshot()),
            _ => None,
        };
        let mapping = match &source {
            Some(s) => Some(mapping_plan(o, s.origin)?),
            None => None,
        };
        let workers = o.workers();
        let max_predicted_loss = match o.max_predicted_loss {
            Some(f) if !(0.0..=1.0).contains(&f) => {
                return Err(Error::usage(format!(
                    "--max-predicted-loss {f}: must be between 0 and 1"
                )))
            }
            Some(f) => f,
            None => DEFAULT_MAX_PREDICTED_LOSS,
        };
        let deliver = deliver.map(|(sink, target)| DeliverPlan {
            target,
            spec: o.target.clone().unwrap_or_default(),
            options: o.sink_options(),
            max_predicted_loss,
            sink,
            // `load` only delivers: the old spellings --batch-size/--parallel-workers still mean the target's there.
            batch_rows: match command {
                Command::Load => o.target_batch_size.or(o.batch_size),
                _ => o.target_batch_size,
            }
            .unwrap_or(DEFAULT_TARGET_BATCH_ROWS)
            .max(1),
            parallel: match command {
                Command::Load => o.target_parallel.or(o.parallel_workers),
                _ => o.target_parallel,
            }
            .unwrap_or(DEFAULT_TARGET_PARALLEL)
            .max(1),
            checkpoint: o
                .checkpoint_file
                .clone()
                .unwrap_or_else(|| work_dir.load_checkpoint()),
        });
        let provider = o
            .embedding_provider
            .clone()
            .unwrap_or_else(|| "hashing".into());
        let engine = crate::engine::EngineSpec::parse(o.engine.as_deref().unwrap_or("local"))?;
        let plan = RunPlan {
            command,
            source,
            mapping,
            embedding: EmbeddingPlan {
                // Feature hashing recomputes a vector about as fast as the cache would read it back.
                cache_mb: o.embedding_cache_mb.unwrap_or(if provider == "hashing" {
                    0
                } else {
                    1024
                }),
                provider,
                model: o.embedding_model.clone(),
                request_size: o.embedding_request_size.unwrap_or(128).max(1),
                cache_entries: o
                    .cache_size
                    .unwrap_or(crate::embed::stage::DEFAULT_CACHE_CAPACITY),
                reembed: o.reembed,
                max_dimensions: match &target {
                    Some(crate::sink::Target::Live { factory, .. }) => {
                        factory.embedding_dim_limit(&o.sink_options())
                    }
                    _ => Some(crate::sink::engram::ENGRAM_DIM),
                },
            },
            // `run` validates unless told not to; `validate` always; the other commands never.
            validate: match command {
                Command::Run => o.validate.unwrap_or(true),
                Command::Validate => true,
                _ => false,
            }
            .then(|| ValidatePlan {
                sample_size: o.sample_size.unwrap_or(1000),
                sample_seed: o.sample_seed.unwrap_or(42),
                checks: o.checks.clone(),
                allow_skipped: o.allow_skipped,
                // The bundle is validated for its target: a graph database keys nodes by id alone.
                id_scope: match &target {
                    Some(crate::sink::Target::Live { factory, .. })
                        if factory.ids_unique_across_spaces() =>
                    {
                        IdScope::Global
                    }
                    _ => IdScope::PerSpace,
                },
            }),
            limits: Limits {
                batch_rows: o.batch_size.unwrap_or(DEFAULT_BATCH_ROWS).max(1),
                workers,
                memory_limit_mb: o.memory_limit_mb.unwrap_or(DEFAULT_MEMORY_LIMIT_MB).max(64),
                max_file_mb: o.max_file_mb.unwrap_or(128).max(1),
                // A cluster reads a file as one task: without a size of the user's, files are split so that a
                // table of a few hundred thousand rows already spreads over the executors.
                max_file_rows: o.max_file_rows.or(match engine {
                    crate::engine::EngineSpec::Local => None,
                    _ => Some(crate::engine::CLUSTER_FILE_ROWS),
                }),
            },
            engine: engine.clone(),
            bundle,
            deliver,
            work_dir,
            snapshot,
            fresh: o.fresh,
            overwrite: o.overwrite,
        };
        if plan.embedding.provider.starts_with("openai:") && plan.embedding.model.is_none() {
            return Err(Error::usage(
                "--embedding-provider openai:URL needs --embedding-model (or ENGRAM_EMBEDDING_MODEL)",
            ));
        }
        Ok(plan)
    }

    /// The plan for people, one setting per line; `plan` prints exactly this, and `run` records it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
        match &self.source {
            Some(s) => {
                let mut src = format!("{} {}", s.kind.name(), s.location);
                if s.kind == SourceKind::Snapshot {
                    src.push_str(&format!(" (a snapshot of {})", s.origin.name()));
                }
                for (k, v) in [
                    ("include", s.include.join(",")),
                    ("exclude", s.exclude.join(",")),
                ] {
                    if !v.is_empty() {
                        src.push_str(&format!(", {k} {v}"));
                    }
                }
                if let Some(n) = s.partition_rows {
                    src.push_str(&format!(", partitions of {n} rows"));
                }
                if let Some(db) = s.redis_db {
                    src.push_str(&format!(", database {db} only"));
                }
                if s.keep_expired {
                    src.push_str(", keys expired at the as-of time kept");
                }
                if s.reuse_snapshot {
                    src.push_str(
                        ", an existing snapshot is reused even if the source changed since",
                    );
                }
                if s.incremental {
                    src.push_str(", incremental: a new snapshot diffed against the last run's");
                }
                if s.allow_schema_drift {
                    src.push_str(", schema drift since the last run allowed");
                }
                line("source", src);
            }
            None => line("source", "none: a finished bundle is sent".into()),
        }
        line("work dir", self.work_dir.root().display().to_string());
        let shown = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into())
        };
        line("snapshot", shown(&self.snapshot));
        line(
            "mapping",
            self.mapping
                .as_ref()
                .map(MappingPlan::describe)
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(MappingPlan::Graph(g)) = &self.mapping {
            line("graph ids", g.id_key.describe());
            if g.id_key == GraphKey::ElementId {
                line(
                    "warning",
                    "servers reuse element ids after deletes (ArcadeDB and Neo4j 5 do): a re-run can give a new node \
                     a deleted node's id; --id-property gives ids stable across re-runs"
                        .into(),
                );
            }
        }
        let e = &self.embedding;
        line(
            "embedding",
            format!(
                "{}{}, cache {} entries + {} MiB on disk{}",
                e.provider,
                e.model
                    .as_deref()
                    .map(|m| format!(" model {m}"))
                    .unwrap_or_default(),
                e.cache_entries,
                e.cache_mb,
                if e.reembed {
                    ", re-embed existing vectors"
                } else {
                    ""
                }
            ),
        );
        line(
            "bundle",
            format!(
                "{}{}",
                shown(&self.bundle),
                if self.overwrite { " (--overwrite)" } else { "" }
            ),
        );
        match &self.deliver {
            Some(d) => line(
                "deliver",
                format!(
                    "{} ({} sink), batches of {} memories, {} in flight, health-checked before anything is read, \
                     refused if over {}% of the memories are predicted lost",
                    d.target, d.sink, d.batch_rows, d.parallel, 100.0 * d.max_predicted_loss
                ),
            ),
            None => line("deliver", "no live target: the bundle is the target".into()),
        }
        match &self.validate {
            Some(v) => line(
                "validate",
                format!(
                    "built-in checks{}, sample of {} rows (seed {}), ids unique {}",
                    v.checks
                        .as_ref()
                        .map(|c| format!(" + {}", c.display()))
                        .unwrap_or_default(),
                    v.sample_size,
                    v.sample_seed,
                    match v.id_scope {
                        IdScope::PerSpace => "per space",
                        IdScope::Global => "across spaces",
                    }
                ),
            ),
            None => line("validate", "off (--validate false)".into()),
        }
        let l = &self.limits;
        line(
            "limits",
            format!(
                "batches of {} rows, {} workers, SQL memory {} MiB, files up to {} MiB{}",
                l.batch_rows,
                l.workers,
                l.memory_limit_mb,
                l.max_file_mb,
                l.max_file_rows
                    .map(|r| format!(" / {r} rows"))
                    .unwrap_or_default()
            ),
        );
        line(
            "engine",
            match &self.engine {
                crate::engine::EngineSpec::Local => "local (this process)".to_string(),
                e => format!("{e}: transform, validation and embedding on the cluster"),
            },
        );
        if self.fresh {
            line(
                "fresh",
                "earlier state of the work directory is thrown away first".into(),
            );
        }
        out
    }
}

impl MappingPlan {
    pub fn describe(&self) -> String {
        // Serialised directly (not through serde_json::Value), so an f32 knob reads as given: 0.9, not 0.8999999761581421.
        fn knobs<T: Serialize>(t: &T) -> String {
            serde_json::to_string(t).unwrap_or_default()
        }
        match self {
            MappingPlan::File { path } => format!("{} (--sql)", path.display()),
            MappingPlan::Generic(m) => format!("generated from the catalog; {}", knobs(m)),
            MappingPlan::Graph(g) => format!("sql/neo4j.sql; {}", knobs(g)),
            MappingPlan::Redis(r) => format!("sql/redis.sql; {}", knobs(r)),
            MappingPlan::Engram => {
                "generated: each Engram space back into a space of the same id".to_string()
            }
        }
    }
}

/// The source a `--source` value names, without opening it: its kind (and for a snapshot, what it was taken of).
fn source_plan(o: &Options, spec: &str) -> Result<SourcePlan> {
    let kind = source::factory_for(spec)?.kind();
    let origin = if kind == SourceKind::Snapshot {
        crate::snapshot::Manifest::load(Path::new(spec))
            .ok()
            .and_then(|m| SourceKind::of_description(&m.source))
            .unwrap_or(SourceKind::Snapshot)
    } else {
        kind
    };
    if o.incremental && kind == SourceKind::Snapshot {
        return Err(Error::usage(format!(
            "--incremental diffs a new snapshot of a source against the last one; {spec} is a snapshot \
             directory, which cannot change: give the database it was taken from"
        )));
    }
    Ok(SourcePlan {
        kind,
        location: if spec.contains("://") {
            source::redact_url(spec)
        } else {
            spec.to_string()
        },
        origin,
        include: comma_list(&o.include),
        exclude: comma_list(&o.exclude),
        column_types: config::parse_column_types(&o.column_type)?,
        partition_rows: o.partition_rows,
        redis_db: o.source_db,
        keep_expired: o.expired.as_deref() == Some("keep"),
        fetch_size: o.fetch_size,
        reuse_snapshot: o.reuse_snapshot,
        incremental: o.incremental,
        allow_schema_drift: o.allow_schema_drift,
    })
}

/// The mapping of a source of this kind, with the flags' knobs checked.
pub fn mapping_plan(o: &Options, origin: SourceKind) -> Result<MappingPlan> {
    if let Some(path) = &o.sql {
        if !path.is_file() {
            return Err(Error::usage(format!(
                "--sql {}: no such file",
                path.display()
            )));
        }
        return Ok(MappingPlan::File { path: path.clone() });
    }
    if let Some(s) = &o.memory_space {
        space_id("--memory-space", s)?;
    }
    // The shipped mappings read every table their source stages: leaving one out breaks them (a planner error
    // about a missing table), so say what to do instead.
    let (include, exclude) = (comma_list(&o.include), comma_list(&o.exclude));
    let needed: &[(&str, &str)] = match origin {
        SourceKind::Neo4j => &[
            (
                "nodes",
                "--label-to-space or a mapping of your own (--sql) chooses which nodes go where",
            ),
            ("relationships", "--skip-edges leaves the edges out"),
        ],
        SourceKind::Redis => &[
            ("keys", "--source-db chooses databases"),
            (
                "members",
                "a mapping of your own (--sql) can leave collections' members out",
            ),
        ],
        _ => &[],
    };
    for (table, instead) in needed {
        if !source::is_included(table, &include, &exclude) {
            return Err(Error::usage(format!(
                "--include/--exclude leave out the table {table:?}, which the shipped mapping of a {} source \
                 needs; {instead}",
                origin.name()
            )));
        }
    }
    Ok(match origin {
        SourceKind::Engram => MappingPlan::Engram,
        SourceKind::Redis => MappingPlan::Redis(RedisMapping {
            memory_space: o.memory_space.clone(),
            ttl_as_decay: o.ttl_as_decay.unwrap_or(true),
            hash_field_memories: o.hash_field_memories,
            confidence: unit_interval("--confidence", o.confidence, 0.7)?,
            skip_edges: o.skip_edges,
        }),
        SourceKind::Neo4j => {
            let mut g = GraphMapping::default();
            if let Some(spec) = &o.id_property {
                g.id_key = GraphKey::parse(spec).map_err(Error::usage)?;
            }
            g.memory_space = o.memory_space.clone();
            for item in o
                .label_to_space
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
            {
                let (label, space) = item.split_once(':').ok_or_else(|| {
                    Error::usage(format!(
                        "--label-to-space: {item:?} is not LABEL:SPACE (e.g. \"Person:people,Company:companies\")"
                    ))
                })?;
                space_id(&format!("--label-to-space {label}:"), space.trim())?;
                g.label_to_space
                    .push((label.trim().to_string(), space.trim().to_string()));
            }
            if let Some(p) = &o.memory_space_prefix {
                if !p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
                    || p.len() > 60
                {
                    return Err(Error::usage(format!(
                        "--memory-space-prefix {p:?}: use a-z, 0-9, _ and - (at most 60)"
                    )));
                }
                g.space_prefix = p.clone();
            }
            g.text_properties = comma_list(&o.text_properties);
            g.time_property = o.timestamp_column.clone();
            g.weight_property = o.weight_property.clone();
            g.confidence = unit_interval("--confidence", o.confidence, g.confidence)?;
            g.activation = unit_interval("--activation", o.activation, g.activation)?;
            g.bidirectional = o.bidirectional;
            g.skip_edges = o.skip_edges;
            MappingPlan::Graph(g)
        }
        _ => {
            let mut m = MappingOptions::default();
            m.memory_space = o.memory_space.clone();
            m.table_to_space = config::parse_pairs("table-to-space", o.table_to_space.as_deref())?;
            for (t, s) in &m.table_to_space {
                space_id(&format!("--table-to-space {t}:"), s)?;
            }
            m.text_columns = config::parse_table_lists("text-columns", o.text_columns.as_deref())?;
            m.timestamp_column = o.timestamp_column.clone();
            m.confidence = unit_interval("--confidence", o.confidence, m.confidence)?;
            m.activation = unit_interval("--activation", o.activation, m.activation)?;
            m.skip_edges = o.skip_edges;
            MappingPlan::Generic(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    /// The `[default: N]` of a flag's help, as `--help` prints it.
    fn help_default(flag: &str) -> String {
        let cmd = Options::augment_args(clap::Command::new("t"));
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .unwrap_or_else(|| panic!("--{flag}"));
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let at = help
            .find("[default: ")
            .unwrap_or_else(|| panic!("--{flag} states no default: {help}"));
        help[at + 10..]
            .split([']', ';'])
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    /// One source of truth for defaults: what --help says is what a plan made without flags uses, and what the
    /// shipped mappings use.
    #[test]
    fn help_defaults_are_the_defaults_that_run() {
        let plan = |o: Options| RunPlan::from_options(&o).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        std::fs::write(&db, b"").unwrap();
        let o = Options {
            source: Some(db.display().to_string()),
            target: Some(dir.path().join("b").display().to_string()),
            ..Default::default()
        };
        let p = plan(o.clone());
        let v = p.validate.clone().unwrap();
        for (flag, used) in [
            ("batch-size", p.limits.batch_rows.to_string()),
            ("sample-size", v.sample_size.to_string()),
            ("sample-seed", v.sample_seed.to_string()),
            ("memory-limit-mb", p.limits.memory_limit_mb.to_string()),
            ("max-file-mb", p.limits.max_file_mb.to_string()),
            ("max-predicted-loss", DEFAULT_MAX_PREDICTED_LOSS.to_string()),
            ("target-batch-size", DEFAULT_TARGET_BATCH_ROWS.to_string()),
            ("target-parallel", DEFAULT_TARGET_PARALLEL.to_string()),
            ("embedding-provider", p.embedding.provider.clone()),
            (
                "embedding-request-size",
                p.embedding.request_size.to_string(),
            ),
        ] {
            assert_eq!(help_default(flag), used, "--{flag}");
        }
        let MappingPlan::Generic(m) = &p.mapping.as_ref().unwrap() else {
            panic!("a SQLite file maps generically")
        };
        assert_eq!(help_default("confidence"), m.confidence.to_string());
        assert_eq!(help_default("activation"), m.activation.to_string());
        let g = GraphMapping::default();
        assert_eq!(g.activation.to_string(), help_default("activation"));
        let cmd = Options::augment_args(clap::Command::new("t"));
        let confidence = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("confidence"))
            .unwrap();
        assert!(
            confidence
                .get_help()
                .unwrap()
                .to_string()
                .contains(&format!("graph (Bolt) sources: {}", g.confidence)),
            "the graph default in --help is the graph mapping's"
        );
    }
}
