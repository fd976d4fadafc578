//! The SQL engine seam. Every DataFusion session of the tool (transform, validation, the generic mapping's text
//! choice) comes from [`Engine::session`]; what the engine is decides where the SQL runs:
//! - `local` (the default): DataFusion in this process, its memory bounded, spilling to `<work>/spill`.
//! - `ballista://HOST:PORT` (feature `distributed`): an Apache Ballista cluster started from this binary
//!   (`engram-migrate scheduler`, `engram-migrate executor`), reading the snapshot and the staged files from storage
//!   every executor can read. The session is a DataFusion `SessionContext` all the same, so the callers run the
//!   same SQL and read the same record batches either way; only two things differ and both are handled here:
//!   tables the tool computes in memory must be files the executors can read ([`register_batches`]), and the
//!   report records the cluster's jobs and tasks ([`Engine::jobs`]).

#[cfg(feature = "distributed")]
pub mod ballista;
pub mod memory;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::TrackConsumersPool;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the SQL stages run (`--engine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EngineSpec {
    Local,
    Ballista { host: String, port: u16 },
}

impl EngineSpec {
    pub fn parse(s: &str) -> Result<EngineSpec> {
        let s = s.trim();
        if s.is_empty() || s == "local" {
            return Ok(EngineSpec::Local);
        }
        let bad = |why: &str| {
            Error::usage(format!(
                "--engine {s:?}: {why}; use `local` or `ballista://HOST:PORT` (a scheduler started with \
                 `engram-migrate scheduler`)"
            ))
        };
        let Some(rest) = s.strip_prefix("ballista://") else {
            return Err(bad("unknown engine"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("the scheduler's port is missing"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the scheduler's port is not a number"))?;
        if host.is_empty() || port == 0 {
            return Err(bad("the scheduler's host or port is missing"));
        }
        if !cfg!(feature = "distributed") {
            return Err(Error::usage(format!(
                "--engine {s}: this build has no Ballista engine; build with `cargo install --features distributed`"
            )));
        }
        Ok(EngineSpec::Ballista {
            host: host.to_string(),
            port,
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, EngineSpec::Local)
    }
}

impl std::fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineSpec::Local => write!(f, "local"),
            EngineSpec::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
        }
    }
}

/// Rows per Parquet file on a cluster when `--max-file-rows` is not given. Ballista runs one task per file of a
/// scan, so a table in one file is read by one executor; 65,536 rows (a few MB for typical rows) gives a
/// 1M-row table 16 files, enough for a handful of executors, while the per-file overhead stays small.
pub const CLUSTER_FILE_ROWS: u64 = 65_536;

/// Memory DataFusion may use for joins, aggregations and sorts, and where it spills beyond that.
#[derive(Debug, Clone)]
pub struct SqlMemory {
    pub limit_bytes: usize,
    pub spill_dir: PathBuf,
}

/// An engine with the settings every session of a run gets.
#[derive(Debug, Clone)]
pub struct Engine {
    pub spec: EngineSpec,
    pub workers: usize,
    pub batch_size: usize,
    pub memory: SqlMemory,
    /// Where the tool writes tables it computed in memory for a cluster to read (`<work>/engine`); unused by the
    /// local engine.
    pub shared_dir: PathBuf,
    /// The Ballista job name of every query of this run, by which the report finds the run's jobs.
    pub job_name: String,
}

impl Engine {
    /// The local engine (tests and one-off sessions).
    pub fn local(workers: usize, batch_size: usize, memory: SqlMemory) -> Engine {
        let shared_dir = memory.spill_dir.join("engine");
        Engine {
            spec: EngineSpec::Local,
            workers,
            batch_size,
            memory,
            shared_dir,
            job_name: String::new(),
        }
    }

    /// A session with the tool's SQL functions registered.
    pub async fn session(&self) -> Result<SessionContext> {
        match &self.spec {
            EngineSpec::Local => local_session(self.workers, self.batch_size, &self.memory),
            #[cfg(feature = "distributed")]
            EngineSpec::Ballista { .. } => ballista::session(self).await,
            #[cfg(not(feature = "distributed"))]
            EngineSpec::Ballista { .. } => Err(Error::usage(
                "--engine ballista://: this build has no Ballista engine (feature `distributed`)",
            )),
        }
    }

    /// Checks that the engine can run queries (a cluster's scheduler answers and has executors): called before the
    /// snapshot, so a run with an unreachable cluster stops before it reads anything.
    pub async fn check(&self) -> Result<()> {
        match &self.spec {
            EngineSpec::Local => Ok(()),
            #[cfg(feature = "distributed")]
            EngineSpec::Ballista { .. } => ballista::check(self).await.map(|_| ()),
            #[cfg(not(feature = "distributed"))]
            EngineSpec::Ballista { .. } => Err(Error::usage(
                "--engine ballista://: this build has no Ballista engine (feature `distributed`)",
            )),
        }
    }

    /// What ran where for this run: the cluster's jobs of this run, their stages and tasks per executor. None for
    /// the local engine.
    pub async fn jobs(&self) -> Result<Option<EngineJobs>> {
        match &self.spec {
            EngineSpec::Local => Ok(None),
            #[cfg(feature = "distributed")]
            EngineSpec::Ballista { .. } => ballista::jobs(self).await.map(Some),
            #[cfg(not(feature = "distributed"))]
            EngineSpec::Ballista { .. } => Ok(None),
        }
    }
}

/// The report's record of a cluster's work for one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineJobs {
    /// The executors registered with the scheduler when the report was made.
    pub executors: Vec<ExecutorLine>,
    pub jobs: Vec<JobLine>,
    /// Successful tasks per executor id, over all the run's jobs.
    pub tasks_per_executor: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecutorLine {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub task_slots: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobLine {
    pub job_id: String,
    pub job_name: String,
    /// `successful`, `failed`, `running`, `queued`.
    pub status: String,
    pub stages: u64,
    /// Successful tasks per executor id.
    pub tasks_per_executor: std::collections::BTreeMap<String, u64>,
    /// Milliseconds since the epoch, for ordering.
    pub queued_at: u64,
}

/// The Ballista job name of every query of this process: the report finds this run's jobs among a shared
/// scheduler's by it.
pub fn process_job_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("engram-migrate:{}:{ms}", std::process::id())
    })
    .clone()
}

/// A local DataFusion session with the tool's functions registered and its memory bounded: aggregations, sorts
/// and the sort-merge joins spill to `spill_dir` past their part of the limit (`memory::HeadroomPool`: half of it
/// is kept for what cannot spill); a query that needs more than the limit anyway fails with a message naming the
/// limit flag.
pub fn local_session(
    target_partitions: usize,
    batch_size: usize,
    memory: &SqlMemory,
) -> Result<SessionContext> {
    let config = session_config(target_partitions, batch_size);
    fs::create_dir_all(&memory.spill_dir)
        .map_err(Error::io("create directory", &memory.spill_dir))?;
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(TrackConsumersPool::new(
            memory::HeadroomPool::new(memory.limit_bytes),
            std::num::NonZeroUsize::new(5).expect("5 is not zero"),
        )))
        .with_temp_file_path(&memory.spill_dir)
        .build_arc()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    crate::transform::udf::register_all(&ctx);
    Ok(ctx)
}

/// Switches `ctx` to hash joins, for queries whose joins have a small side (validation's: the bundle's removed
/// memories, the sample, the counts), where sorting the large side for a sort-merge join cost more than the join
/// (validation after an incremental layer: 1.5 -> 2.9 s at 1.1M memories). The large aggregations there spill
/// either way; the mapping's joins over whole source tables stay sort-merge joins.
pub fn prefer_hash_joins(ctx: &SessionContext) {
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .optimizer
        .prefer_hash_join = true;
}

/// The options every session has, local or on a cluster (a cluster's scheduler receives them with each query).
pub(crate) fn session_config(target_partitions: usize, batch_size: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_batch_size(batch_size.max(1))
        .with_information_schema(true);
    with_tool_options(&mut config);
    config
}

/// Plain Utf8/Binary rather than the view types: the memory and edge schemas use them, and user mappings should
/// not need casts to get there.
pub(crate) fn with_tool_options(config: &mut SessionConfig) {
    // Joins by sorting both sides rather than hashing one: a hash join holds its build side in memory and cannot
    // spill, and which side it builds is chosen from whole-table sizes (all columns, not the joined ones): at 10M
    // rows the generated mapping's orphans built the 10M-row child table (880 MB). A sort-merge join's sorts
    // and buffers spill under the memory limit, whatever the tables' sizes or the join's order.
    config.options_mut().optimizer.prefer_hash_join = false;
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
}

/// Marks a session whose queries run on a cluster: tables the tool computes are written under `dir`.
#[derive(Debug)]
pub(crate) struct SharedTables {
    pub dir: PathBuf,
}

/// On a cluster, checks that the cluster sees the rows this machine wrote: `tables` are (SQL table reference, rows
/// written here). Ballista lists a table's files on the scheduler and reads them on the executors; a work
/// directory that is not the same storage at the same path everywhere lists as empty, not as an error, and would
/// give an empty bundle whose checks, computed on the cluster too, all pass. One job counts every table. Locally
/// nothing to check.
pub async fn verify_visible(
    ctx: &SessionContext,
    tables: &[(String, u64)],
    what: &str,
) -> Result<()> {
    if !is_cluster(ctx) || tables.is_empty() {
        return Ok(());
    }
    let sql = tables
        .iter()
        .enumerate()
        .map(|(i, (t, _))| format!("SELECT CAST({i} AS BIGINT) AS i, count(*) AS n FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let batches = crate::transform::collect(ctx, &sql, what).await?;
    let mut seen = vec![None; tables.len()];
    for b in &batches {
        use arrow::array::AsArray;
        let i = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            if let Some(slot) = seen.get_mut(i.value(r) as usize) {
                *slot = Some(n.value(r) as u64);
            }
        }
    }
    let wrong: Vec<String> = tables
        .iter()
        .zip(&seen)
        .filter(|((_, rows), got)| **got != Some(*rows))
        .map(|((t, rows), got)| {
            format!(
                "{t}: {} rows on the cluster, {rows} written here",
                got.unwrap_or(0)
            )
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::Engine {
        location: format!("the cluster reading {what}"),
        message: format!(
            "{}; the work directory must be the same storage at the same path on the scheduler and every \
             executor (docs/distributed.md, Storage)",
            wrong.join("; ")
        ),
    })
}

/// Whether the session's queries run on a cluster.
pub fn is_cluster(ctx: &SessionContext) -> bool {
    ctx.state()
        .config()
        .get_extension::<SharedTables>()
        .is_some()
}

/// Registers batches the tool computed (counts, samples, rules) as the table `name`. Locally a memory table; on a
/// cluster, whose executors cannot read this process's memory, one Parquet file on the shared storage, written
/// first and registered like the snapshot's tables.
pub fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    let shared = ctx
        .state()
        .config()
        .get_extension::<SharedTables>()
        .map(|s| s.dir.clone());
    let table: Arc<dyn datafusion::catalog::TableProvider> = match shared {
        None => Arc::new(
            MemTable::try_new(schema, vec![batches])
                .map_err(|e| Error::Internal(format!("table {name}: {e}")))?,
        ),
        Some(dir) => {
            // A directory of its own per registration: a cached listing of a shared file system never serves
            // an earlier registration's file under the same name.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let file_dir = shared_table_dir(&dir, &format!("{name}-{}-{n}", std::process::id()));
            if file_dir.exists() {
                fs::remove_dir_all(&file_dir).map_err(Error::io("remove", &file_dir))?;
            }
            let mut w = crate::parquet_io::RollingWriter::new(
                &file_dir,
                schema.clone(),
                crate::parquet_io::PartLimits::default(),
                0,
            )?;
            for b in &batches {
                w.write(b)?;
            }
            // An empty table is still a file (with the schema): `finish(true)` writes it.
            w.finish(true)?;
            listing_table(&file_dir, schema, 1)?
        }
    };
    ctx.register_table(name, table)
        .map_err(|e| Error::Internal(format!("table {name}: {e}")))?;
    Ok(())
}

/// The Parquet files of `dir` as a table of a known schema (no schema inference, no async), its files read in
/// up to `partitions` parallel tasks (1 file per task on a cluster).
pub fn listing_table(
    dir: &Path,
    schema: SchemaRef,
    partitions: usize,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))
        .map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_target_partitions(partitions.max(1));
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config).map_err(|e| {
        Error::Internal(format!("{}: {e}", dir.display()))
    })?))
}

/// Removes the tables [`register_batches`] wrote for a cluster session (they may hold sampled source values):
/// called when the session's queries are done. Nothing to do locally.
pub fn remove_shared_tables(ctx: &SessionContext) {
    let Some(dir) = ctx
        .state()
        .config()
        .get_extension::<SharedTables>()
        .map(|s| s.dir.join("tables"))
    else {
        return;
    };
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            crate::progress::warn(&format!("cannot remove {}: {e}", dir.display()));
        }
    }
}

/// One directory per table name under the shared directory; names are the tool's own (plain identifiers).
fn shared_table_dir(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join("tables").join(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        assert_eq!(EngineSpec::parse("local").unwrap(), EngineSpec::Local);
        assert_eq!(EngineSpec::parse("").unwrap(), EngineSpec::Local);
        for bad in [
            "spark://x:1",
            "ballista://",
            "ballista://host",
            "ballista://host:x",
            "ballista://:5",
        ] {
            let e = EngineSpec::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad}");
        }
        let r = EngineSpec::parse("ballista://10.0.0.5:50050/");
        if cfg!(feature = "distributed") {
            let s = r.unwrap();
            assert_eq!(s.to_string(), "ballista://10.0.0.5:50050");
        } else {
            assert!(r.unwrap_err().to_string().contains("features distributed"));
        }
    }

    fn first_i64(batches: &[RecordBatch], col: usize) -> i64 {
        use arrow::array::AsArray;
        batches[0]
            .column(col)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    }

    #[tokio::test]
    async fn computed_tables_are_files_on_a_cluster_and_memory_locally() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let mem = SqlMemory {
            limit_bytes: 64 << 20,
            spill_dir: dir.path().join("spill"),
        };
        // Locally: no file.
        let ctx = local_session(1, 1024, &mem).unwrap();
        register_batches(&ctx, "t", schema.clone(), vec![batch.clone()]).unwrap();
        let n = crate::transform::collect(&ctx, "SELECT sum(n) AS s FROM t", "test")
            .await
            .unwrap();
        assert_eq!(first_i64(&n, 0), 6);
        assert!(!dir.path().join("shared").exists());
        // Marked as a cluster session: a Parquet file holds the rows (also an empty table).
        let mut config = session_config(1, 1024);
        config = config.with_extension(Arc::new(SharedTables {
            dir: dir.path().join("shared"),
        }));
        let ctx = SessionContext::new_with_config(config);
        register_batches(&ctx, "t", schema.clone(), vec![batch]).unwrap();
        register_batches(&ctx, "empty", schema.clone(), vec![]).unwrap();
        let n = crate::transform::collect(
            &ctx,
            "SELECT (SELECT sum(n) FROM t) AS s, (SELECT count(*) FROM empty) AS e",
            "test",
        )
        .await
        .unwrap();
        assert_eq!(first_i64(&n, 0), 6);
        assert_eq!(first_i64(&n, 1), 0);
        // The rows the cluster sees must be the rows written here: a table that shows fewer (a work directory
        // the executors do not share) is an engine error, not an empty input.
        verify_visible(&ctx, &[("t".into(), 3)], "test tables")
            .await
            .unwrap();
        let e = verify_visible(&ctx, &[("t".into(), 3), ("empty".into(), 5)], "test tables")
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::TARGET);
        assert!(
            e.to_string()
                .contains("empty: 0 rows on the cluster, 5 written here"),
            "{e}"
        );
        assert!(std::fs::read_dir(dir.path().join("shared/tables"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("t_")));
    }
}
