//! The transformation: DataFusion SQL over the snapshot. The snapshot's tables are registered as `source."<table>"`,
//! the mapping SQL (generated, or the user's `--sql FILE`) creates the views `memories`, `edges`, `orphans` and
//! `expected_counts`, and their rows are conformed to the one memory/edge schema and staged per space as Parquet
//! parts in the work directory. Staging (rather than streaming straight into the sink) makes `transform` a
//! stage of its own and gives the load stage fixed parts to checkpoint against.

pub mod engram;
pub mod generic;
pub mod json_fn;
pub mod neo4j;
pub mod redis;
pub mod udf;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::TableReference;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::parquet_io::{self, PartFile, PartLimits, RollingWriter};
use crate::schema::{self, memory_schema, EDGE_SCHEMA};
use crate::snapshot::{self, Manifest};

/// Registers every snapshot table as `source."<table>"`.
pub async fn register_snapshot(
    ctx: &SessionContext,
    dir: &Path,
    manifest: &Manifest,
) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Internal("DataFusion session without its default catalog".into()))?;
    catalog
        .register_schema("source", Arc::new(MemorySchemaProvider::new()))
        .map_err(|e| Error::Internal(e.to_string()))?;
    for t in &manifest.tables {
        let path = snapshot::Manifest::table_dir(dir, t);
        let url = format!("{}/", path.display());
        ctx.register_parquet(
            TableReference::partial("source", t.info.name.as_str()),
            &url,
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| {
            Error::source_err(
                path.display().to_string(),
                format!("cannot register table {}: {e}", t.info.name),
            )
        })?;
    }
    let tables: Vec<(String, u64)> = manifest
        .tables
        .iter()
        .map(|t| (format!("source.{}", generic::ident(&t.info.name)), t.rows))
        .collect();
    crate::engine::verify_visible(ctx, &tables, "the snapshot").await
}

/// An incremental run's added and changed rows of each snapshot table (every table, empty where none), as
/// `changed."<table>"` (see `generic::generate_in`).
pub type ChangedRows = BTreeMap<String, Vec<RecordBatch>>;

/// Registers `changed."<table>"` with the very schema DataFusion gave `source."<table>"` (it reads Parquet text
/// as views, for one), so the mapping's expressions see the same types either way.
async fn register_changed(ctx: &SessionContext, changed: &ChangedRows) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Internal("DataFusion session without its default catalog".into()))?;
    let schema = Arc::new(MemorySchemaProvider::new());
    catalog
        .register_schema(generic::CHANGED_SCHEMA, schema.clone())
        .map_err(|e| Error::Internal(e.to_string()))?;
    for (table, batches) in changed {
        let source = ctx
            .table_provider(TableReference::partial("source", table.as_str()))
            .await
            .map_err(|e| Error::Internal(format!("snapshot table {table}: {e}")))?;
        let s = source.schema();
        let batches = batches
            .iter()
            .map(|b| {
                let cols = s
                    .fields()
                    .iter()
                    .map(|f| {
                        let c = b.column_by_name(f.name()).ok_or_else(|| {
                            Error::Internal(format!(
                                "changed rows of {table}: no column {}",
                                f.name()
                            ))
                        })?;
                        Ok(arrow::compute::cast(c, f.data_type())?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(RecordBatch::try_new(s.clone(), cols)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let t = datafusion::datasource::MemTable::try_new(s.clone(), vec![batches])
            .map_err(|e| Error::Internal(format!("changed rows of {table}: {e}")))?;
        datafusion::catalog::SchemaProvider::register_table(&*schema, table.clone(), Arc::new(t))
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(())
}

/// Runs every statement of a SQL file (CREATE VIEW ... mostly). `origin` names the file in errors.
pub async fn run_statements(ctx: &SessionContext, sql: &str, origin: &str) -> Result<()> {
    let statements = DFParser::parse_sql(sql).map_err(|e| Error::sql(origin, e))?;
    for st in statements {
        let text = match &st {
            Statement::Statement(s) => s.to_string(),
            other => other.to_string(),
        };
        let plan =
            ctx.state().statement_to_plan(st).await.map_err(|e| {
                Error::sql_in(origin, &format!("statement `{}`", shorten(&text)), e)
            })?;
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| Error::sql(origin, e))?;
        df.collect().await.map_err(|e| Error::sql(origin, e))?;
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

pub async fn stream(
    ctx: &SessionContext,
    sql: &str,
    origin: &str,
) -> Result<SendableRecordBatchStream> {
    let df = ctx.sql(sql).await.map_err(|e| Error::sql(origin, e))?;
    df.execute_stream().await.map_err(|e| Error::sql(origin, e))
}

pub async fn collect(ctx: &SessionContext, sql: &str, origin: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(|e| Error::sql(origin, e))?;
    df.collect().await.map_err(|e| Error::sql(origin, e))
}

/// Checks a mapping's output against the schema it must have: names, types (cast where Arrow can do so
/// without loss of validity, erroring otherwise), nulls in required columns and Engram's space id rules.
pub fn conform(batch: &RecordBatch, target: &SchemaRef, view: &str) -> Result<RecordBatch> {
    let src = batch.schema();
    let expected = || {
        target
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for f in src.fields() {
        if target.field_with_name(f.name()).is_err() {
            return Err(Error::usage(format!(
                "mapping view {view} has a column {:?} that the {view} schema does not have; its columns are: {}",
                f.name(),
                expected()
            )));
        }
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut cols = Vec::with_capacity(target.fields().len());
    for f in target.fields() {
        let arr = match src.index_of(f.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) if f.name() == schema::memory::EMBEDDING => {
                arrow::array::new_null_array(f.data_type(), batch.num_rows())
            }
            Err(_) => {
                return Err(Error::usage(format!(
                    "mapping view {view} lacks column {:?}; its columns must be: {}",
                    f.name(),
                    expected()
                )))
            }
        };
        let arr = if arr.data_type() != f.data_type() {
            cast_with_options(&arr, f.data_type(), &opts).map_err(|e| {
                Error::usage(format!(
                    "mapping view {view}, column {}: cannot convert {} to {}: {e}",
                    f.name(),
                    arr.data_type(),
                    f.data_type()
                ))
            })?
        } else {
            arr
        };
        if !f.is_nullable() && arr.null_count() > 0 {
            let row = (0..arr.len()).find(|i| arr.is_null(*i)).unwrap_or(0);
            let key = src
                .index_of("source_key")
                .ok()
                .and_then(|i| {
                    cast_with_options(batch.column(i), &arrow::datatypes::DataType::Utf8, &opts)
                        .ok()
                })
                .map(|a| a.as_string::<i32>().value(row).to_string())
                .unwrap_or_default();
            return Err(Error::usage(format!(
                "mapping view {view}, column {}: NULL in a required column (row with source_key {key}); fix the mapping SQL",
                f.name()
            )));
        }
        cols.push(arr);
    }
    let out = RecordBatch::try_new(target.clone(), cols)?;
    let space = out.column(0).as_string::<i32>();
    for i in 0..space.len() {
        if !schema::is_valid_space_id(space.value(i)) {
            return Err(Error::usage(format!(
                "mapping view {view}: space {:?} is not a valid Engram space id (3 to 64 characters of a-z, 0-9, _ and -)",
                space.value(i)
            )));
        }
    }
    Ok(out)
}

/// Rows per staged memory part at most (about 100 MB of bundle part with 768-float embeddings).
pub const MEMORY_PART_ROWS: u64 = 131_072;

/// What the transform stage staged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransformSummary {
    /// Identity of the input (mapping SQL + snapshot checksums): staged output is reused only for the same key.
    pub key: String,
    pub memories: BTreeMap<String, Vec<PartFile>>,
    pub edges: BTreeMap<String, Vec<PartFile>>,
    pub orphans: Vec<PartFile>,
    /// The mapping's `space_labels` view, if it defines one: a graph label per space (for graph targets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// An incremental layer's staged output: the memories of the changed rows only, which make a bundle only on
    /// top of the one they extend (`load` alone must not write them as a bundle of their own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer: bool,
}

impl TransformSummary {
    pub const FILE: &'static str = "transform.json";

    pub fn load(dir: &Path) -> Result<TransformSummary> {
        let p = dir.join(Self::FILE);
        let bytes = fs::read(&p).map_err(Error::io("read", &p))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub fn memory_rows(&self) -> u64 {
        self.memories.values().flatten().map(|p| p.rows).sum()
    }
    pub fn edge_rows(&self) -> u64 {
        self.edges.values().flatten().map(|p| p.rows).sum()
    }
    pub fn orphan_rows(&self) -> u64 {
        self.orphans.iter().map(|p| p.rows).sum()
    }
}

/// The key of a transform: the mapping text and the snapshot's table checksums.
/// The optional `space_labels(space, label)` view of a mapping: how a graph target labels each space's nodes.
async fn space_labels(ctx: &SessionContext, origin: &str) -> Result<BTreeMap<String, String>> {
    if !ctx
        .table_exist("space_labels")
        .map_err(|e| Error::sql(origin, e))?
    {
        return Ok(BTreeMap::new());
    }
    let mut out = BTreeMap::new();
    for b in collect(
        ctx,
        "SELECT CAST(space AS VARCHAR) AS s, CAST(label AS VARCHAR) AS l FROM space_labels",
        origin,
    )
    .await?
    {
        let (Some(s), Some(l)) = (
            b.column(0).as_string_opt::<i32>(),
            b.column(1).as_string_opt::<i32>(),
        ) else {
            return Err(Error::usage(format!(
                "{origin}: the view space_labels must have two text columns, space and label"
            )));
        };
        for i in 0..b.num_rows() {
            if s.is_valid(i) && l.is_valid(i) {
                out.insert(s.value(i).to_string(), l.value(i).to_string());
            }
        }
    }
    Ok(out)
}

pub fn transform_key(sql: &str, manifest: &Manifest, embedding_dim: usize) -> String {
    // The staged memories' embedding column has the run's dimension: another provider's size stages again.
    let mut text = format!("{sql}\nembedding_dim:{embedding_dim}");
    for t in &manifest.tables {
        text.push_str(&format!("\n{}:{}:{}", t.info.name, t.rows, t.checksum));
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// Runs `sql` over the snapshot in `snapshot_dir` and stages its output into `out` (replaced atomically).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    key: &str,
    snapshot_dir: &Path,
    manifest: &Manifest,
    sql: &str,
    origin: &str,
    out: &Path,
    limits: PartLimits,
    engine: &crate::engine::Engine,
    embedding_dim: usize,
    changed: Option<&ChangedRows>,
) -> Result<TransformSummary> {
    let ctx = engine.session().await?;
    register_snapshot(&ctx, snapshot_dir, manifest).await?;
    if let Some(changed) = changed {
        register_changed(&ctx, changed).await?;
    }
    run_statements(&ctx, sql, origin).await?;
    for view in ["memories", "edges", "orphans", "expected_counts"] {
        if ctx.table_exist(view).map_err(|e| Error::sql(origin, e))? {
            continue;
        }
        return Err(Error::usage(format!(
            "mapping {origin} does not define the view {view}; a mapping defines memories, edges, orphans and expected_counts \
             (see sql/codegraph.sql)"
        )));
    }
    check_mapping_errors(&ctx, origin).await?;

    let partial = out.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(Error::io("remove", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(Error::io("create directory", &partial))?;
    let mut summary = TransformSummary {
        key: key.to_string(),
        labels: space_labels(&ctx, origin).await?,
        layer: changed.is_some(),
        ..Default::default()
    };

    let pb = crate::progress::bar(manifest.total_rows(), "transform", "rows");
    // A staged memory part becomes one bundle part, embeddings and all: bounded by rows too, so a large space
    // makes several parts that the bundle's writers, checks and readers handle in parallel.
    let memory_limits = PartLimits {
        max_file_rows: limits.max_file_rows.min(MEMORY_PART_ROWS),
        ..limits
    };
    summary.memories = stage_by_space(
        &ctx,
        "memories",
        origin,
        &memory_schema(embedding_dim),
        &partial.join("memories"),
        memory_limits,
        |n| pb.inc(n),
    )
    .await?;
    crate::engine::memory::return_freed_memory();
    summary.edges = stage_by_space(
        &ctx,
        "edges",
        origin,
        &EDGE_SCHEMA,
        &partial.join("edges"),
        limits,
        |_| {},
    )
    .await?;
    crate::engine::memory::return_freed_memory();
    summary.orphans = stage(
        &ctx,
        "SELECT * FROM orphans",
        origin,
        "orphans",
        &EDGE_SCHEMA,
        &partial.join("orphans"),
        limits,
        |_| {},
    )
    .await?;
    pb.finish_and_clear();

    parquet_io::write_atomic(
        &partial.join(TransformSummary::FILE),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    if out.exists() {
        fs::remove_dir_all(out).map_err(Error::io("remove", out))?;
    }
    fs::rename(&partial, out).map_err(Error::io("rename into place", out))?;
    if let Some(parent) = out.parent() {
        parquet_io::sync_dir(parent)?;
    }
    Ok(summary)
}

/// A mapping may define the view `mapping_errors` (one text column `message`): rows the data has that the mapping
/// refuses to map (the graph mapping: nodes without their `--id-property` key). Checked before anything is staged,
/// so such a run stops with every message instead of giving those rows NULL ids, or ids merged by a default.
pub async fn check_mapping_errors(ctx: &SessionContext, origin: &str) -> Result<()> {
    const VIEW: &str = "mapping_errors";
    if !ctx.table_exist(VIEW).map_err(|e| Error::sql(origin, e))? {
        return Ok(());
    }
    let batches = collect(
        ctx,
        &format!("SELECT CAST(message AS VARCHAR) AS message FROM {VIEW} ORDER BY 1"),
        origin,
    )
    .await?;
    let mut messages = vec![];
    for b in &batches {
        let col = b.column(0).as_string::<i32>();
        for i in 0..col.len() {
            messages.push(if col.is_null(i) {
                "(a row of mapping_errors without a message)".to_string()
            } else {
                col.value(i).to_string()
            });
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    Err(Error::usage(format!(
        "mapping {origin}: the data has rows it cannot map (view {VIEW}):\n  {}",
        messages.join("\n  ")
    )))
}

/// Stages a view's rows under `dir/<space>/`, in one pass over the view (a view is evaluated once, not once
/// to find its spaces and once per space: an edge view is a join of whole tables).
#[allow(clippy::too_many_arguments)]
async fn stage_by_space(
    ctx: &SessionContext,
    view: &str,
    origin: &str,
    target: &SchemaRef,
    dir: &Path,
    limits: PartLimits,
    progress: impl Fn(u64),
) -> Result<BTreeMap<String, Vec<PartFile>>> {
    let mut s = stream(ctx, &format!("SELECT * FROM {view}"), origin).await?;
    let mut writers: BTreeMap<String, RollingWriter> = BTreeMap::new();
    let mut parts: BTreeMap<String, Vec<PartFile>> = BTreeMap::new();
    while let Some(b) = s.next().await {
        let b = b.map_err(|e| Error::sql_in(origin, &format!("view {view}"), e))?;
        let b = conform(&b, target, view)?;
        progress(b.num_rows() as u64);
        for (space, rows) in split_by_space(&b, view)? {
            let w = match writers.get_mut(&space) {
                Some(w) => w,
                None => {
                    let w = RollingWriter::new(&dir.join(&space), target.clone(), limits, 0)?;
                    writers.entry(space.clone()).or_insert(w)
                }
            };
            parts.entry(space).or_default().extend(w.write(&rows)?);
        }
    }
    for (space, w) in writers {
        parts.entry(space).or_default().extend(w.finish(true)?);
    }
    Ok(parts)
}

/// A conformed batch's rows per space (in order within each space).
fn split_by_space(b: &RecordBatch, view: &str) -> Result<Vec<(String, RecordBatch)>> {
    let spaces = b
        .column_by_name(schema::memory::SPACE)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal(format!("view {view}: a batch without its space column")))?;
    if spaces.null_count() > 0 {
        return Err(Error::usage(format!(
            "mapping view {view}: a row has a NULL space; every memory and edge needs one"
        )));
    }
    if b.num_rows() == 0 {
        return Ok(vec![]);
    }
    // Most batches hold one space (a generated mapping's branches each have theirs).
    let first = spaces.value(0);
    if (1..spaces.len()).all(|i| spaces.value(i) == first) {
        return Ok(vec![(first.to_string(), b.clone())]);
    }
    let mut names: Vec<&str> = (0..spaces.len()).map(|i| spaces.value(i)).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = vec![];
    for name in names {
        let mask: arrow::array::BooleanArray = (0..spaces.len())
            .map(|i| Some(spaces.value(i) == name))
            .collect();
        out.push((
            name.to_string(),
            arrow::compute::filter_record_batch(b, &mask)?,
        ));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn stage(
    ctx: &SessionContext,
    query: &str,
    origin: &str,
    view: &str,
    target: &SchemaRef,
    dir: &Path,
    limits: PartLimits,
    progress: impl Fn(u64),
) -> Result<Vec<PartFile>> {
    let mut s = stream(ctx, query, origin).await?;
    let mut w = RollingWriter::new(dir, target.clone(), limits, 0)?;
    let mut parts = vec![];
    while let Some(b) = s.next().await {
        let b = b.map_err(|e| Error::sql_in(origin, &format!("view {view}"), e))?;
        let b = conform(&b, target, view)?;
        progress(b.num_rows() as u64);
        parts.extend(w.write(&b)?);
    }
    parts.extend(w.finish(true)?);
    Ok(parts)
}
