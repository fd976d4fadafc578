//! Validation, in SQL. The tool prepares tables (the bundle, the snapshot, counts re-read from the source,
//! recomputed checksums, sampled source rows); each check is a query in `sql/validate/` that returns the
//! offending rows, so empty means pass. Users add their own checks with `--checks DIR`.
//!
//! After a live load, `check_target` runs `sql/validate/target_*.sql` over the sink's read-back (`target_memories`,
//! `target_explained`) and `bundle_memories`: one verdict in SQL for every sink.
//!
//! Tables a check can use: `bundle_memories`, `bundle_edges`, `bundle_orphans`, `source."<table>"` (snapshot),
//! the mapping's views (`memories`, `edges`, `orphans`, `expected_counts`), `bundle_counts`, `derived_counts`,
//! `source_counts`, `integrity`, `sample_values`, `sample_coverage`, `not_staged`, `target_rules`; functions
//! `vector_dim`, `vector_norm`, `to_json`, `text_hash`, the JSON functions.

use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::schema::{memory_schema, EDGE_SCHEMA};
use crate::snapshot::{self, Manifest};
use crate::source::Source;
use crate::transform;

/// The built-in checks, in the order they run. The files in sql/validate/ are these same files.
pub const BUILTIN_CHECKS: &[(&str, &str)] = &[
    (
        "counts_source",
        include_str!("../sql/validate/counts_source.sql"),
    ),
    (
        "counts_bundle",
        include_str!("../sql/validate/counts_bundle.sql"),
    ),
    (
        "counts_groups",
        include_str!("../sql/validate/counts_groups.sql"),
    ),
    (
        "counts_derived",
        include_str!("../sql/validate/counts_derived.sql"),
    ),
    (
        "sample_values",
        include_str!("../sql/validate/sample_values.sql"),
    ),
    (
        "sample_coverage",
        include_str!("../sql/validate/sample_coverage.sql"),
    ),
    (
        "orphan_edges",
        include_str!("../sql/validate/orphan_edges.sql"),
    ),
    (
        "duplicate_ids",
        include_str!("../sql/validate/duplicate_ids.sql"),
    ),
    (
        "embedding_quality",
        include_str!("../sql/validate/embedding_quality.sql"),
    ),
    ("checksums", include_str!("../sql/validate/checksums.sql")),
    (
        "skipped_items",
        include_str!("../sql/validate/skipped_items.sql"),
    ),
    (
        "sorted_set_order",
        include_str!("../sql/validate/sorted_set_order.sql"),
    ),
];

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    /// The first comment line of the check's SQL.
    pub description: String,
    pub passed: bool,
    pub offending_rows: u64,
    pub seconds: f64,
    /// Up to 10 offending rows, as JSON objects.
    pub examples: Vec<Map<String, Value>>,
    /// What the check looked at, when that is not obvious (`sample_values`: how many rows it compared).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// How the target identifies a memory, which decides what `duplicate_ids` calls a duplicate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdScope {
    /// Engram, the bundle and the live server alike: an id is unique within its space.
    #[default]
    PerSpace,
    /// A target that keys every memory by its id alone (a graph database's nodes): one id across all spaces.
    Global,
}

pub struct ValidateOptions {
    /// The target's id rule, given to the checks as the one-row table `target_rules`.
    pub id_scope: IdScope,
    pub sample_size: usize,
    pub sample_seed: u64,
    pub extra_checks: Option<PathBuf>,
    /// `--allow-skipped`: skipped records pass `skipped_items`.
    pub allow_skipped: bool,
    /// For the generated and shipped mappings: a query over `source.*` giving what the mapping must produce
    /// (source_name, kind, name, derived), written by the tool, not read from the mapping (`counts_derived`).
    pub derived_counts: Option<String>,
    /// Where the checks' SQL runs (`--engine`).
    pub engine: crate::engine::Engine,
    /// An incremental run that extended the bundle: memory parts of layers below this one were verified by the
    /// runs that wrote them and are immutable since (hard links): their checksums and vectors are not read
    /// again, only their presence and sizes; the sample is drawn from the memories this run wrote. 0: every
    /// part is read (a full run, `validate`).
    pub verified_below_layer: u32,
}

/// Runs every check. `source` is the live source to re-count and re-read (None when the run's source is the
/// snapshot itself; the snapshot then stands in for it).
pub async fn run(
    source: Option<&mut dyn Source>,
    snapshot_dir: &Path,
    manifest: &Manifest,
    mapping_sql: &str,
    mapping_origin: &str,
    bundle_dir: &Path,
    opts: &ValidateOptions,
) -> Result<Vec<CheckResult>> {
    let bundle = BundleManifest::load(bundle_dir)?;
    let ctx = opts.engine.session().await?;
    crate::engine::prefer_hash_joins(&ctx);
    transform::register_snapshot(&ctx, snapshot_dir, manifest).await?;
    transform::run_statements(&ctx, mapping_sql, mapping_origin).await?;

    register_bundle_memories(&ctx, bundle_dir, &bundle).await?;
    register_id_candidates(&ctx, &bundle, opts.verified_below_layer).await?;
    register_files(
        &ctx,
        "bundle_edges",
        &bundle.edge_files(bundle_dir),
        EDGE_SCHEMA.clone(),
    )
    .await?;
    register_files(
        &ctx,
        "bundle_orphans",
        &bundle.orphan_files(bundle_dir),
        EDGE_SCHEMA.clone(),
    )
    .await?;

    let total = |k: &str| bundle.totals.get(k).copied().unwrap_or(0);
    crate::engine::verify_visible(
        &ctx,
        &[
            ("bundle_memories".into(), total("memories")),
            ("bundle_edges".into(), total("edges")),
            ("bundle_orphans".into(), total("orphans")),
        ],
        "the bundle",
    )
    .await?;
    register_target_rules(&ctx, opts.id_scope, bundle.embedding.dimension)?;
    // What the bundle holds per source table, counted once for the checks that compare it (counts_bundle,
    // counts_derived): a table of a few rows, not a view each of them would count again. Edges count with
    // orphans: a reference whose parent is missing is kept, not lost.
    let counts = transform::collect(
        &ctx,
        "SELECT source_name, 'memories' AS kind, '' AS name, count(*) AS actual
         FROM bundle_memories GROUP BY source_name
         UNION ALL
         SELECT source_name, 'edges' AS kind, edge_type AS name, count(*) AS actual
         FROM (SELECT source_name, edge_type FROM bundle_edges
               UNION ALL SELECT source_name, edge_type FROM bundle_orphans) e
         GROUP BY source_name, edge_type",
        "the bundle's counts",
    )
    .await?;
    // The branches of the union differ in which columns may be NULL, and so do their batches: one schema with
    // every column nullable holds them all.
    let counts_schema = Arc::new(Schema::new(match counts.first() {
        Some(b) => b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
        None => vec![
            Field::new("source_name", DataType::Utf8, true),
            Field::new("kind", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("actual", DataType::Int64, true),
        ],
    }));
    let counts = counts
        .into_iter()
        .map(|b| RecordBatch::try_new(counts_schema.clone(), b.columns().to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    crate::engine::register_batches(&ctx, "bundle_counts", counts_schema, counts)?;
    let derived = opts.derived_counts.clone().unwrap_or_else(|| {
        "SELECT CAST(NULL AS VARCHAR) AS source_name, CAST(NULL AS VARCHAR) AS kind, \
         CAST(NULL AS VARCHAR) AS name, CAST(NULL AS BIGINT) AS derived WHERE false"
            .into()
    });
    transform::run_statements(
        &ctx,
        &format!("CREATE VIEW derived_counts AS {derived};"),
        "the counts derived from the snapshot",
    )
    .await?;

    let pb = crate::progress::spinner("validate");
    let prep = std::time::Instant::now();
    pb.set_message("counting");
    let mut snapshot_src;
    let source: &mut dyn Source = match source {
        Some(s) => s,
        None => {
            snapshot_src = crate::source::snapshot_dir::SnapshotSource::open(snapshot_dir)?;
            &mut snapshot_src
        }
    };
    let live = source.kind() != "snapshot";
    if live {
        // The live source must stage values exactly as the snapshot did (widened columns included).
        source.catalog()?;
        for t in &manifest.tables {
            source.set_table(&t.info);
        }
    }
    register_source_counts(
        &ctx,
        if live { Some(&mut *source) } else { None },
        snapshot_dir,
        manifest,
    )?;
    tracing::info!(
        seconds = prep.elapsed().as_secs_f64(),
        "validate: source counts"
    );
    pb.set_message("counts per label and type");
    register_group_counts(&ctx, if live { Some(&mut *source) } else { None }, manifest).await?;
    tracing::info!(
        seconds = prep.elapsed().as_secs_f64(),
        "validate: group counts"
    );
    pb.set_message("checksums");
    register_integrity(
        &ctx,
        snapshot_dir,
        manifest,
        bundle_dir,
        &bundle,
        opts.verified_below_layer,
    )?;
    tracing::info!(
        seconds = prep.elapsed().as_secs_f64(),
        "validate: checksums and vectors"
    );
    register_not_staged(&ctx, manifest, opts.allow_skipped)?;
    pb.set_message("sampling");
    let coverage = register_sample(&ctx, source, manifest, &bundle, bundle_dir, opts)?;
    tracing::info!(
        seconds = prep.elapsed().as_secs_f64(),
        "validation tables prepared (counts, checksums, sample)"
    );

    let mut checks: Vec<(String, String)> = BUILTIN_CHECKS
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    if let Some(dir) = &opts.extra_checks {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(Error::io("list", dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        for f in files {
            let sql = std::fs::read_to_string(&f).map_err(Error::io("read", &f))?;
            checks.push((
                f.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                sql,
            ));
        }
    }
    let results = run_checks(&ctx, checks, &pb).await;
    // The tables written for a cluster hold sampled source values: gone once the checks have read them.
    crate::engine::remove_shared_tables(&ctx);
    let mut results = results?;
    pb.finish_and_clear();
    if let Some(r) = results.iter_mut().find(|r| r.name == "sample_values") {
        r.note = coverage.note();
    }
    Ok(results)
}

/// Runs each (name, SQL) check in `ctx`: a check's rows are its offending rows, none means it passed.
async fn run_checks(
    ctx: &SessionContext,
    checks: Vec<(String, String)>,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<CheckResult>> {
    // On a cluster a check is a job whose time is mostly waiting (scheduling, the executors' polls, shuffles
    // between stages): several at once overlap those waits. Locally one at a time, so the checks' memory does not
    // add up and each one's seconds are its own.
    let at_once = if crate::engine::is_cluster(ctx) { 4 } else { 1 };
    // The first failing check stops the rest (try_collect), as one at a time did.
    let outcomes: Vec<(String, String, Vec<RecordBatch>, f64, String)> =
        futures::stream::iter(checks.into_iter().map(|(name, sql)| async move {
            pb.set_message(name.clone());
            let started = std::time::Instant::now();
            let origin = format!("validation check {name}");
            if let Some(cond) = only_if(&sql) {
                let applies = transform::collect(ctx, cond.trim_end_matches(';'), &origin).await?;
                if applies.iter().all(|b| b.num_rows() == 0) {
                    let note = format!("not applicable: nothing to check here ({cond} is empty)");
                    return Ok((name, sql, vec![], started.elapsed().as_secs_f64(), note));
                }
            }
            let query = sql.trim().trim_end_matches(';').to_string();
            let batches = transform::collect(ctx, &query, &origin).await?;
            crate::engine::memory::return_freed_memory();
            let seconds = started.elapsed().as_secs_f64();
            Ok::<_, Error>((name, sql, batches, seconds, String::new()))
        }))
        .buffered(at_once)
        .try_collect()
        .await?;
    let mut results = vec![];
    for (name, sql, batches, seconds, note) in outcomes {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut examples = vec![];
        'outer: for b in &batches {
            for r in 0..b.num_rows() {
                if examples.len() >= 10 {
                    break 'outer;
                }
                examples.push(crate::json::row_object(b, r)?);
            }
        }
        let description = description_of(&sql);
        results.push(CheckResult {
            name,
            description,
            passed: rows == 0,
            offending_rows: rows,
            seconds,
            examples,
            note,
        });
    }
    Ok(results)
}

/// The checks of what a live target holds, after a load; the same files for every sink.
pub const TARGET_CHECKS: &[(&str, &str)] = &[
    (
        "target_kept",
        include_str!("../sql/validate/target_kept.sql"),
    ),
    (
        "target_embeddings",
        include_str!("../sql/validate/target_embeddings.sql"),
    ),
    (
        "target_content",
        include_str!("../sql/validate/target_content.sql"),
    ),
];

/// Checks a live target's read-back against the bundle in SQL: the sink gives what it holds
/// (`target_memories`: space, id, embedding_matches) and why it lacks what it lacks (`target_explained`: space, id,
/// reason, detail); `bundle_memories` is the bundle. Users' own checks can join the same tables.
pub async fn check_target(
    bundle_dir: &Path,
    rb: &crate::sink::ReadBack,
    opts: &ValidateOptions,
) -> Result<Vec<CheckResult>> {
    let bundle = BundleManifest::load(bundle_dir)?;
    let ctx = opts.engine.session().await?;
    register_bundle_memories(&ctx, bundle_dir, &bundle).await?;
    let held = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("space", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("embedding_matches", DataType::Boolean, true),
            Field::new("content_matches", DataType::Boolean, true),
        ])),
        vec![
            utf8(rb.held.iter().map(|h| Some(h.space.clone())).collect()),
            utf8(rb.held.iter().map(|h| Some(h.id.clone())).collect()),
            Arc::new(arrow::array::BooleanArray::from(
                rb.held
                    .iter()
                    .map(|h| h.embedding_matches)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(arrow::array::BooleanArray::from(
                rb.held
                    .iter()
                    .map(|h| h.content_matches)
                    .collect::<Vec<_>>(),
            )),
        ],
    )?;
    mem_table(&ctx, "target_memories", held)?;
    let explained = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("space", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("detail", DataType::Utf8, false),
        ])),
        vec![
            utf8(rb.explained.iter().map(|e| Some(e.space.clone())).collect()),
            utf8(rb.explained.iter().map(|e| Some(e.id.clone())).collect()),
            utf8(
                rb.explained
                    .iter()
                    .map(|e| Some(e.reason.clone()))
                    .collect(),
            ),
            utf8(
                rb.explained
                    .iter()
                    .map(|e| Some(e.detail.clone()))
                    .collect(),
            ),
        ],
    )?;
    mem_table(&ctx, "target_explained", explained)?;
    let checks = TARGET_CHECKS
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    let pb = crate::progress::spinner("check the target");
    let results = run_checks(&ctx, checks, &pb).await;
    crate::engine::remove_shared_tables(&ctx);
    pb.finish_and_clear();
    results
}

/// `bundle_id_candidates` (space, id): the live memories whose ids `duplicate_ids` must count. Every memory,
/// unless the layers below `verified_below` were validated by the runs that wrote them (an incremental run's
/// validation): their live memories had unique ids then, and a later layer only takes memories away from them,
/// so a duplicate now has a copy in a layer this run wrote; the memories whose id is among those layers' ids
/// are the candidates (by id alone, which covers the per-space rule and the one across spaces). At 1.1M
/// memories and a 1% layer this counts 20,000 ids instead of 1.1M.
async fn register_id_candidates(
    ctx: &SessionContext,
    bundle: &BundleManifest,
    verified_below: u32,
) -> Result<()> {
    let sql = if verified_below == 0 || !bundle.is_layered() {
        "SELECT space, id FROM bundle_memories".to_string()
    } else {
        let new: std::collections::BTreeSet<u32> = bundle
            .spaces
            .iter()
            .flat_map(|s| s.memories.files.iter().map(|f| f.layer))
            .filter(|l| *l >= verified_below)
            .collect();
        if new.is_empty() {
            "SELECT space, id FROM bundle_memories WHERE false".to_string()
        } else {
            let ids: Vec<String> = new
                .iter()
                .map(|l| format!("SELECT id FROM bundle_memories_layer_{l}"))
                .collect();
            format!(
                "SELECT space, id FROM bundle_memories WHERE id IN ({})",
                ids.join(" UNION ALL ")
            )
        }
    };
    transform::run_statements(
        ctx,
        &format!("CREATE VIEW bundle_id_candidates AS {sql};"),
        "the ids duplicate_ids counts",
    )
    .await
}

/// `bundle_memories`: the bundle's live memories. A layered bundle (an incremental run's) is a view: the
/// parts of each layer, without the (space, id) a layer above removed.
async fn register_bundle_memories(
    ctx: &SessionContext,
    bundle_dir: &Path,
    bundle: &BundleManifest,
) -> Result<()> {
    let schema = memory_schema(bundle.embedding.dimension);
    if !bundle.is_layered() {
        return register_files(
            ctx,
            "bundle_memories",
            &bundle.memory_files(bundle_dir),
            schema,
        )
        .await;
    }
    let parts = bundle.memory_parts(bundle_dir);
    let layers: std::collections::BTreeSet<u32> = parts.iter().map(|p| p.file.layer).collect();
    // One row per removed (space, id), with the highest layer that removed it: a row of layer l is live unless
    // that layer is above l (see `bundle::Removed`).
    let gone = crate::bundle::Removed::load(bundle_dir, bundle)?;
    let (mut spaces, mut ids, mut by) = (vec![], vec![], vec![]);
    for (space, id, layer) in gone.iter() {
        spaces.push(Some(space.to_string()));
        ids.push(Some(id.to_string()));
        by.push(layer as i64);
    }
    let removed_schema = Arc::new(Schema::new(vec![
        Field::new("space", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("layer", DataType::Int64, false),
    ]));
    let removed = RecordBatch::try_new(
        removed_schema.clone(),
        vec![
            utf8(spaces),
            utf8(ids),
            Arc::new(arrow::array::Int64Array::from(by)),
        ],
    )?;
    crate::engine::register_batches(ctx, "bundle_removed", removed_schema, vec![removed])?;
    let mut selects = vec![];
    for layer in layers {
        let name = format!("bundle_memories_layer_{layer}");
        let files: Vec<PathBuf> = parts
            .iter()
            .filter(|p| p.file.layer == layer)
            .map(|p| p.path.clone())
            .collect();
        register_files(ctx, &name, &files, schema.clone()).await?;
        selects.push(format!(
            "SELECT m.* FROM {name} m WHERE NOT EXISTS (SELECT 1 FROM bundle_removed r \
             WHERE r.space = m.space AND r.id = m.id AND r.layer > {layer})"
        ));
    }
    let view = ctx
        .sql(&selects.join(" UNION ALL "))
        .await
        .map_err(|e| Error::Internal(format!("the bundle's live memories: {e}")))?;
    ctx.register_table("bundle_memories", view.into_view())
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(())
}

async fn register_files(
    ctx: &SessionContext,
    name: &str,
    files: &[PathBuf],
    schema: SchemaRef,
) -> Result<()> {
    if files.is_empty() {
        return crate::engine::register_batches(ctx, name, schema, vec![]);
    }
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let df = ctx
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .map_err(|e| Error::target_err(name, format!("cannot read the bundle's files: {e}")))?;
    ctx.register_table(name, df.into_view())
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(())
}

/// `target_rules`: what the target requires of the bundle, as a one-row table the checks join: whether ids
/// must be unique across spaces, and the embedding dimension every memory must have (the bundle's own).
fn register_target_rules(
    ctx: &SessionContext,
    id_scope: IdScope,
    embedding_dim: usize,
) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ids_unique_across_spaces", DataType::Boolean, false),
        Field::new("embedding_dim", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(arrow::array::BooleanArray::from(vec![
            id_scope == IdScope::Global,
        ])),
        Arc::new(arrow::array::Int64Array::from(vec![embedding_dim as i64])),
    ];
    mem_table(ctx, "target_rules", RecordBatch::try_new(schema, cols)?)
}

/// A table the checks join, computed here (on a cluster, written where the executors can read it).
fn mem_table(ctx: &SessionContext, name: &str, batch: RecordBatch) -> Result<()> {
    crate::engine::register_batches(ctx, name, batch.schema(), vec![batch])
}

fn utf8(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn u64s(v: Vec<Option<u64>>) -> ArrayRef {
    Arc::new(UInt64Array::from(v))
}

fn register_source_counts(
    ctx: &SessionContext,
    mut source: Option<&mut dyn Source>,
    dir: &Path,
    manifest: &Manifest,
) -> Result<()> {
    let (mut names, mut live, mut recorded, mut actual) = (vec![], vec![], vec![], vec![]);
    for t in &manifest.tables {
        names.push(Some(t.info.name.clone()));
        live.push(match source.as_deref_mut() {
            Some(s) => Some(s.count(&t.info)?),
            None => None,
        });
        recorded.push(Some(t.rows));
        let mut rows = 0u64;
        for f in snapshot::table_files(dir, t) {
            rows += parquet_io::row_count(&f)?;
        }
        actual.push(Some(rows));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_name", DataType::Utf8, true),
        Field::new("source_rows", DataType::UInt64, true),
        Field::new("snapshot_recorded_rows", DataType::UInt64, true),
        Field::new("snapshot_actual_rows", DataType::UInt64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![utf8(names), u64s(live), u64s(recorded), u64s(actual)],
    )?;
    mem_table(ctx, "source_counts", batch)
}

/// `group_counts(source_name, column_name, value, source_rows, snapshot_rows)`: rows per value of a grouping
/// column (a graph's labels and relationship types) as the live source counts them now and as the snapshot
/// holds them (a List column counts each element). Empty for sources without groups.
async fn register_group_counts(
    ctx: &SessionContext,
    source: Option<&mut dyn Source>,
    manifest: &Manifest,
) -> Result<()> {
    let groups = match source {
        Some(s) => s.group_counts()?,
        None => vec![],
    };
    // (table, column, value) -> (source rows, snapshot rows)
    let mut rows: BTreeMap<(String, String, String), (Option<u64>, Option<u64>)> = BTreeMap::new();
    let mut columns: Vec<(String, String)> = vec![];
    for g in &groups {
        rows.entry((g.table.clone(), g.column.clone(), g.value.clone()))
            .or_default()
            .0 = Some(g.rows);
        if !columns.contains(&(g.table.clone(), g.column.clone())) {
            columns.push((g.table.clone(), g.column.clone()));
        }
    }
    for (table, column) in &columns {
        let Some(entry) = manifest.table(table) else {
            continue;
        };
        let is_list = entry
            .schema
            .iter()
            .any(|f| &f.name == column && f.data_type.contains("List"));
        let (t, c) = (
            transform::generic::ident(table),
            transform::generic::ident(column),
        );
        let q = if is_list {
            format!("SELECT CAST(v AS VARCHAR) AS v, count(*) AS n FROM (SELECT unnest({c}) AS v FROM source.{t}) GROUP BY v")
        } else {
            format!("SELECT CAST({c} AS VARCHAR) AS v, count(*) AS n FROM source.{t} GROUP BY {c}")
        };
        for b in transform::collect(ctx, &q, "validation (counts per group)").await? {
            let v = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let v = v.as_string::<i32>();
            let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                let key = (
                    table.clone(),
                    column.clone(),
                    if v.is_null(i) {
                        String::new()
                    } else {
                        v.value(i).to_string()
                    },
                );
                rows.entry(key).or_default().1 = Some(n.value(i) as u64);
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_name", DataType::Utf8, true),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("source_rows", DataType::UInt64, true),
        Field::new("snapshot_rows", DataType::UInt64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            utf8(rows.keys().map(|k| Some(k.0.clone())).collect()),
            utf8(rows.keys().map(|k| Some(k.1.clone())).collect()),
            utf8(rows.keys().map(|k| Some(k.2.clone())).collect()),
            u64s(rows.values().map(|v| v.0).collect()),
            u64s(rows.values().map(|v| Some(v.1.unwrap_or(0))).collect()),
        ],
    )?;
    mem_table(ctx, "group_counts", batch)
}

/// `integrity` (recorded against recomputed checksums, for the snapshot's tables and the bundle's parts) and
/// `bundle_vectors` (space, id, missing, dimension, norm of each bundle memory whose embedding is missing, not of
/// the bundle's dimension, zero, or not of unit norm within 1e-3; every other memory passes `embedding_quality`,
/// and a row for each would be most of validation's memory at 10M memories): one read of each file. The memory
/// parts are read once for both, so the embeddings (most of a bundle's bytes) are decoded once for the whole
/// validation.
fn register_integrity(
    ctx: &SessionContext,
    snap_dir: &Path,
    manifest: &Manifest,
    bundle_dir: &Path,
    bundle: &BundleManifest,
    verified_below: u32,
) -> Result<()> {
    let mut rows: Vec<(String, u64, String, u64, String)> = vec![];
    // Rows for the earlier layers' parts: what their presence and sizes say (see `verify_layers`).
    let mut verified_rows: Vec<(String, u64, String, u64, String)> = vec![];
    let mut vectors: Vec<RecordBatch> = vec![];
    let removed = crate::bundle::Removed::load(bundle_dir, bundle)?;
    let none_removed = crate::bundle::Removed::default();
    let parts = bundle.memory_parts(bundle_dir);
    let mut check = |object: String,
                     recorded_rows: u64,
                     recorded: &str,
                     files: Vec<PathBuf>|
     -> Result<()> {
        let existing: Vec<PathBuf> = files.iter().filter(|f| f.is_file()).cloned().collect();
        // A space's memories are its live rows; the parts a run wrote, their rows as written.
        let removed = if object.ends_with("written by this run") {
            &none_removed
        } else {
            &removed
        };
        // Space ids have no spaces: "bundle <space> memories[ written by this run]" names memories only.
        let memories = object.starts_with("bundle ")
            && (object.ends_with(" memories") || object.ends_with(" memories written by this run"));
        // The live rows of the space's parts (a layered bundle's checksum sums those).
        let live: Vec<&crate::bundle::MemoryPart> = parts
            .iter()
            .filter(|p| existing.contains(&p.path))
            .collect();
        let dim = bundle.embedding.dimension;
        let mut actual = if memories {
            let (sum, stats) = memory_parts_pass(&live, removed, dim, crate::checksum::SCHEME)?;
            vectors.extend(stats);
            sum
        } else {
            parquet_io::checksum_parts(&existing)?
        };
        // Files written before manifests recorded their checksum scheme may be under an older one: a
        // mismatch there is checked again under it before it is reported (a false alarm otherwise).
        let recorded_scheme = if object.starts_with("snapshot ") {
            manifest.checksum_scheme
        } else {
            bundle.checksum_scheme
        };
        if actual.to_hex() != recorded && !existing.is_empty() {
            let schema = parquet_io::read_schema(&existing[0])?;
            if let Some(old) = crate::checksum::legacy_scheme(recorded_scheme, &schema) {
                let again = if memories {
                    memory_parts_pass(&live, removed, dim, old)?.0
                } else {
                    parquet_io::checksum_parts_with(&existing, old)?
                };
                if again.to_hex() == recorded {
                    tracing::info!(
                            "{object}: checksummed under scheme {old} (written before engram-migrate recorded its checksum scheme)"
                        );
                    actual = again;
                }
            }
        }
        let actual_sum = if existing.len() == files.len() {
            actual.to_hex()
        } else {
            format!("{} file(s) missing", files.len() - existing.len())
        };
        rows.push((
            object,
            recorded_rows,
            recorded.to_string(),
            actual.rows,
            actual_sum,
        ));
        Ok(())
    };
    for t in &manifest.tables {
        check(
            format!("snapshot table {}", t.info.name),
            t.rows,
            &t.checksum,
            snapshot::table_files(snap_dir, t),
        )?;
    }
    for s in &bundle.spaces {
        let mem = s
            .memories
            .files
            .iter()
            .map(|f| {
                bundle_dir
                    .join("spaces")
                    .join(&s.space)
                    .join("memories")
                    .join(&f.file)
            })
            .collect();
        if verified_below == 0 {
            check(
                format!("bundle {} memories", s.space),
                s.memories.rows,
                &s.memories.checksum,
                mem,
            )?;
        } else {
            verified_rows.extend(verify_layers(bundle_dir, s, verified_below, &mut check)?);
        }
        let edges = s
            .edges
            .files
            .iter()
            .map(|f| {
                bundle_dir
                    .join("spaces")
                    .join(&s.space)
                    .join("edges")
                    .join(&f.file)
            })
            .collect();
        check(
            format!("bundle {} edges", s.space),
            s.edges.rows,
            &s.edges.checksum,
            edges,
        )?;
    }
    check(
        "bundle orphans".into(),
        bundle.orphans.rows,
        &bundle.orphans.checksum,
        bundle.orphan_files(bundle_dir),
    )?;
    rows.extend(verified_rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("object", DataType::Utf8, false),
        Field::new("recorded_rows", DataType::UInt64, false),
        Field::new("recorded_checksum", DataType::Utf8, false),
        Field::new("actual_rows", DataType::UInt64, false),
        Field::new("actual_checksum", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            utf8(rows.iter().map(|r| Some(r.0.clone())).collect()),
            u64s(rows.iter().map(|r| Some(r.1)).collect()),
            utf8(rows.iter().map(|r| Some(r.2.clone())).collect()),
            u64s(rows.iter().map(|r| Some(r.3)).collect()),
            utf8(rows.iter().map(|r| Some(r.4.clone())).collect()),
        ],
    )?;
    mem_table(ctx, "integrity", batch)?;
    crate::engine::register_batches(ctx, "bundle_vectors", vector_stats_schema(), vectors)
}

fn vector_stats_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("space", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("missing", DataType::Boolean, false),
        Field::new("dimension", DataType::Int64, true),
        Field::new("norm", DataType::Float64, true),
    ]))
}

/// The checksum of bundle memory parts and the embedding figures of every memory in them, files in parallel.
fn memory_parts_pass(
    parts: &[&crate::bundle::MemoryPart],
    removed: &crate::bundle::Removed,
    dim: usize,
    scheme: u32,
) -> Result<(crate::checksum::Checksum, Vec<RecordBatch>)> {
    use rayon::prelude::*;
    let per_file: Vec<(crate::checksum::Checksum, Vec<RecordBatch>)> = parts
        .par_iter()
        .map(|p| memory_file_pass(p, removed, dim, scheme))
        .collect::<Result<_>>()?;
    let mut total = crate::checksum::Checksum::default();
    let mut stats = vec![];
    for (sum, s) in per_file {
        total.combine(sum);
        stats.extend(s);
    }
    Ok((total, stats))
}

fn memory_file_pass(
    part: &crate::bundle::MemoryPart,
    removed: &crate::bundle::Removed,
    dim: usize,
    scheme: u32,
) -> Result<(crate::checksum::Checksum, Vec<RecordBatch>)> {
    use arrow::array::{BooleanArray, Float64Array, Int64Array};
    let mut hasher: Option<crate::checksum::Hasher> = None;
    let mut stats = vec![];
    let p = &part.path;
    let bad = |m: String| Error::Internal(format!("reading {}: {m}", p.display()));
    // Small batches: each holds 3 KB a memory in decoded vectors, on every thread at once.
    for b in crate::bundle::read_live(part, removed, crate::bundle::writer::EMBED_BATCH_ROWS)? {
        let b = b?;
        let h = match &mut hasher {
            Some(h) => h,
            None => hasher.insert(crate::checksum::Hasher::with_scheme(&b.schema(), scheme)?),
        };
        h.update(&b)?;
        let (Some(space), Some(id), Some(emb)) = (
            b.column_by_name(crate::schema::memory::SPACE),
            b.column_by_name(crate::schema::memory::ID),
            b.column_by_name(crate::schema::memory::EMBEDDING),
        ) else {
            return Err(bad("not a bundle memory part".into()));
        };
        let n = b.num_rows();
        let (mut dims, mut norms) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for r in 0..n {
            if emb.is_null(r) {
                dims.push(None);
                norms.push(None);
            } else {
                let (dim, sum) =
                    transform::udf::slot_stats(emb.as_ref(), r).map_err(|e| bad(e.to_string()))?;
                dims.push(Some(dim as i64));
                norms.push(Some(sum.sqrt()));
            }
        }
        // Only the rows that may fail the check (NaN norms included: `!(x <= y)`).
        let keep: BooleanArray = (0..n)
            .map(|r| {
                Some(match (dims[r], norms[r]) {
                    (Some(d), Some(norm)) => {
                        d != dim as i64 || norm == 0.0 || !((norm - 1.0).abs() <= 1e-3)
                    }
                    _ => true,
                })
            })
            .collect();
        if keep.true_count() == 0 {
            continue;
        }
        let missing: BooleanArray = (0..n).map(|r| Some(emb.is_null(r))).collect();
        let all = RecordBatch::try_new(
            vector_stats_schema(),
            vec![
                space.clone(),
                id.clone(),
                Arc::new(missing),
                Arc::new(Int64Array::from(dims)),
                Arc::new(Float64Array::from(norms)),
            ],
        )?;
        stats.push(arrow::compute::filter_record_batch(&all, &keep)?);
    }
    Ok((hasher.map(|h| h.finish()).unwrap_or_default(), stats))
}

/// The integrity of one space's memories in an incremental run's validation: the parts of the layers this run
/// wrote (`>= verified_below`) are read and checksummed (their own recorded checksums, rows as written); the
/// parts of earlier layers, which the runs that wrote them validated and nothing rewrites, by their presence
/// and byte sizes. Returns the rows for the earlier parts; the others go through `check`.
fn verify_layers(
    bundle_dir: &Path,
    s: &crate::bundle::SpaceEntry,
    verified_below: u32,
    check: &mut dyn FnMut(String, u64, &str, Vec<PathBuf>) -> Result<()>,
) -> Result<Vec<(String, u64, String, u64, String)>> {
    let dir = bundle_dir.join("spaces").join(&s.space).join("memories");
    let (old, new): (Vec<_>, Vec<_>) = s
        .memories
        .files
        .iter()
        .partition(|f| f.layer < verified_below);
    if !new.is_empty() {
        let mut sum = crate::checksum::Checksum::default();
        for f in &new {
            sum.combine(f.checksum()?);
        }
        check(
            format!("bundle {} memories written by this run", s.space),
            sum.rows,
            &sum.to_hex(),
            new.iter().map(|f| dir.join(&f.file)).collect(),
        )?;
    }
    if old.is_empty() {
        return Ok(vec![]);
    }
    let recorded_bytes: u64 = old.iter().map(|f| f.bytes).sum();
    let (mut present, mut bytes) = (0usize, 0u64);
    for f in &old {
        if let Ok(m) = std::fs::metadata(dir.join(&f.file)) {
            present += 1;
            bytes += m.len();
        }
    }
    let rows: u64 = old.iter().map(|f| f.rows).sum();
    let said = |files: usize, bytes: u64| format!("{files} files, {bytes} bytes (sizes only)");
    Ok(vec![(
        format!("bundle {} memories of earlier runs", s.space),
        rows,
        said(old.len(), recorded_bytes),
        if present == old.len() { rows } else { 0 },
        said(present, bytes),
    )])
}

/// `not_staged`: what the snapshot's tables recorded as not staged (see `catalog::NotStaged`), one row each, with
/// whether `--allow-skipped` excuses it.
fn register_not_staged(
    ctx: &SessionContext,
    manifest: &Manifest,
    allow_skipped: bool,
) -> Result<()> {
    let rows: Vec<(&str, &crate::catalog::NotStaged)> = manifest
        .tables
        .iter()
        .flat_map(|t| t.not_staged.iter().map(move |n| (t.info.name.as_str(), n)))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("what", DataType::Utf8, false),
        Field::new("first_keys", DataType::Utf8, false),
        Field::new("allowed", DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            utf8(rows.iter().map(|r| Some(r.0.to_string())).collect()),
            utf8(rows.iter().map(|r| Some(r.1.kind.clone())).collect()),
            u64s(rows.iter().map(|r| Some(r.1.count)).collect()),
            utf8(rows.iter().map(|r| Some(r.1.what.clone())).collect()),
            utf8(rows.iter().map(|r| Some(r.1.first.join(", "))).collect()),
            Arc::new(arrow::array::BooleanArray::from(vec![
                allow_skipped;
                rows.len()
            ])),
        ],
    )?;
    mem_table(ctx, "not_staged", batch)
}

/// How much of the sample `sample_values` could compare, and why the rest could not.
#[derive(Debug, Default)]
struct Coverage {
    sampled: u64,
    compared: u64,
    /// reason -> (rows, first example key)
    not_compared: BTreeMap<&'static str, (u64, String)>,
}

impl Coverage {
    fn skip(&mut self, reason: &'static str, key: &str) {
        let e = self
            .not_compared
            .entry(reason)
            .or_insert((0, key.to_string()));
        e.0 += 1;
    }

    fn note(&self) -> String {
        let mut s = format!(
            "compared {} of {} sampled memories with their source rows",
            self.compared, self.sampled
        );
        for (why, (n, _)) in &self.not_compared {
            s.push_str(&format!("; {n} not: {why}"));
        }
        s
    }
}

/// A small deterministic PRNG (splitmix64) so the sample is reproducible from its seed.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn register_sample(
    ctx: &SessionContext,
    source: &mut dyn Source,
    manifest: &Manifest,
    bundle: &BundleManifest,
    bundle_dir: &Path,
    opts: &ValidateOptions,
) -> Result<Coverage> {
    // Reservoir sample of (source_name, source_key, content) over every memory of the bundle.
    let mut rng = SplitMix(opts.sample_seed);
    let mut reservoir: Vec<(String, String, String)> = vec![];
    let mut seen = 0u64;
    let removed = crate::bundle::Removed::load(bundle_dir, bundle)?;
    // An incremental run samples the memories it wrote: the earlier ones were sampled by their own runs.
    let parts: Vec<_> = bundle
        .memory_parts(bundle_dir)
        .into_iter()
        .filter(|p| p.file.layer >= opts.verified_below_layer)
        .collect();
    for part in parts {
        let f = &part.path;
        let file = std::fs::File::open(f).map_err(Error::io("open", f))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::Internal(format!("reading {}: {e}", f.display())))?;
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            ["space", "id", "content", "source_name", "source_key"],
        );
        for b in builder
            .with_projection(mask)
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?
        {
            let b = b.map_err(|e| Error::Internal(format!("reading {}: {e}", f.display())))?;
            let b = removed.live(b, part.file.layer)?;
            let col = |n: &str| b.column_by_name(n).map(|c| c.as_string::<i32>().clone());
            let (Some(content), Some(name), Some(key)) =
                (col("content"), col("source_name"), col("source_key"))
            else {
                return Err(Error::Internal(format!(
                    "{} lacks memory columns",
                    f.display()
                )));
            };
            for i in 0..b.num_rows() {
                seen += 1;
                let item = || {
                    (
                        name.value(i).to_string(),
                        key.value(i).to_string(),
                        content.value(i).to_string(),
                    )
                };
                if reservoir.len() < opts.sample_size {
                    reservoir.push(item());
                } else {
                    let j = rng.next() % seen;
                    if (j as usize) < opts.sample_size {
                        reservoir[j as usize] = item();
                    }
                }
            }
        }
    }
    // table -> (key object, key text, content object) of each sampled memory
    type Sampled = (Map<String, Value>, String, Map<String, Value>);
    let mut by_table: BTreeMap<String, Vec<Sampled>> = BTreeMap::new();
    let mut coverage = Coverage {
        sampled: reservoir.len() as u64,
        ..Default::default()
    };
    for (name, key, content) in reservoir {
        // Memories that do not come from one row of a snapshot table (a custom mapping may derive them) have no
        // row to compare with: counted and named, not skipped in silence.
        if manifest.table(&name).is_none() {
            coverage.skip(
                "its source_name is not a snapshot table (a memory the mapping derives)",
                &key,
            );
            continue;
        }
        let (Ok(Value::Object(k)), Ok(Value::Object(c))) =
            (serde_json::from_str(&key), serde_json::from_str(&content))
        else {
            coverage.skip(
                "its source_key or content is not a JSON object (the mapping breaks the memory contract)",
                &key,
            );
            continue;
        };
        coverage.compared += 1;
        by_table.entry(name).or_default().push((k, key, c));
    }
    let (mut t_col, mut k_col, mut c_col, mut s_col, mut b_col) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (table, items) in by_table {
        let entry = manifest.table(&table).expect("filtered above");
        let keys: Vec<Map<String, Value>> = items.iter().map(|i| i.0.clone()).collect();
        let rows = source.fetch_rows(&entry.info, &keys)?;
        for ((_, key_text, content), row) in items.iter().zip(rows) {
            for c in entry.info.columns.iter().filter(|c| !c.synthetic) {
                // A column the source cannot re-read by key (Engram's embedding): nothing to compare it with.
                if row.as_ref().is_some_and(|r| !r.contains_key(&c.name)) {
                    continue;
                }
                let mut src_v = row
                    .as_ref()
                    .map(|r| r.get(&c.name).cloned().unwrap_or(Value::Null));
                let bun_v = content.get(&c.name);
                // A JSON column's text may be nested in the content (the shipped mappings do) or kept as text
                // (an older or hand-written mapping): both hold it whole, so the nested form compares as parsed.
                // (A graph's property map is typed JSON text in the snapshot, an object in the content.)
                if matches!(c.mapped_as.as_str(), "json" | "typed_json") {
                    if let (Some(Value::String(s)), Some(b)) = (&src_v, bun_v) {
                        match serde_json::from_str::<Value>(s) {
                            Ok(parsed) if parsed == *b || !b.is_string() => src_v = Some(parsed),
                            _ => {}
                        }
                    }
                }
                // Two objects (a graph's property map) are compared key by key, so a failure names the property.
                if let (Some(Value::Object(sm)), Some(Value::Object(bm))) = (&src_v, bun_v) {
                    let keys: std::collections::BTreeSet<&String> =
                        sm.keys().chain(bm.keys()).collect();
                    for k in keys {
                        t_col.push(Some(table.clone()));
                        k_col.push(Some(key_text.clone()));
                        c_col.push(Some(format!("{}.{k}", c.name)));
                        s_col.push(sm.get(k).map(|v| v.to_string()));
                        b_col.push(bm.get(k).map(|v| v.to_string()));
                    }
                    continue;
                }
                t_col.push(Some(table.clone()));
                k_col.push(Some(key_text.clone()));
                c_col.push(Some(c.name.clone()));
                s_col.push(src_v.map(|v| v.to_string()));
                b_col.push(bun_v.map(|v| v.to_string()));
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_name", DataType::Utf8, true),
        Field::new("source_key", DataType::Utf8, true),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("source_value", DataType::Utf8, true),
        Field::new("bundle_value", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            utf8(t_col),
            utf8(k_col),
            utf8(c_col),
            utf8(s_col),
            utf8(b_col),
        ],
    )?;
    mem_table(ctx, "sample_values", batch)?;
    let rows: Vec<(&str, u64, String)> =
        std::iter::once(("compared", coverage.compared, String::new()))
            .chain(
                coverage
                    .not_compared
                    .iter()
                    .map(|(why, (n, k))| (*why, *n, k.clone())),
            )
            .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("example_key", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            utf8(rows.iter().map(|r| Some(r.0.to_string())).collect()),
            u64s(rows.iter().map(|r| Some(r.1)).collect()),
            utf8(rows.iter().map(|r| Some(r.2.clone())).collect()),
        ],
    )?;
    mem_table(ctx, "sample_coverage", batch)?;
    Ok(coverage)
}

/// Prints one line per check and up to 3 offending rows of each failed one.
/// A check's description: its leading comment block, whole (a description cut at the first line's end stopped
/// mid-sentence).
/// A check's comment line `-- only if: <query>`: when the query returns no row, the check has nothing to look
/// at in this bundle (sorted-set edges in a bundle without any) and passes without running, said in its note.
const ONLY_IF: &str = "only if:";

fn only_if(sql: &str) -> Option<&str> {
    sql.lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .find_map(|l| l.trim().strip_prefix(ONLY_IF))
        .map(str::trim)
}

fn description_of(sql: &str) -> String {
    sql.lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .map_while(|l| l.strip_prefix("--"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(ONLY_IF))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

pub fn print_results(results: &[CheckResult]) {
    println!("validation:");
    for r in results {
        let status = if r.passed {
            "pass".to_string()
        } else {
            format!("FAIL ({} rows)", r.offending_rows)
        };
        // The description wraps under its column instead of being cut.
        let text = wrap(&r.description, 72);
        println!(
            "  {:<20} {:<14} {:>6.1}s  {}",
            r.name, status, r.seconds, text[0]
        );
        for more in &text[1..] {
            println!("  {:<20} {:<14} {:>6}   {more}", "", "", "");
        }
        if !r.note.is_empty() {
            println!("  {:<20} {:<14} {:>6}   {}", "", "", "", r.note);
        }
        for e in r.examples.iter().take(3) {
            println!("      {}", Value::Object(e.clone()));
        }
    }
}

pub fn count_failed(results: &[CheckResult]) -> usize {
    results.iter().filter(|r| !r.passed).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_whole_and_wrap() {
        for (name, sql) in BUILTIN_CHECKS.iter().chain(TARGET_CHECKS) {
            let d = description_of(sql);
            assert!(
                d.ends_with('.') || d.ends_with(')'),
                "{name}: description cut: {d:?}"
            );
            assert!(!d.contains("--"), "{name}: {d:?}");
            for line in wrap(&d, 72) {
                assert!(
                    line.chars().count() <= 72 || !line.contains(' '),
                    "{name}: {line:?}"
                );
            }
            assert_eq!(wrap(&d, 72).join(" "), d, "{name}: wrapping loses nothing");
        }
    }

    /// duplicate_ids over `bundle_id_candidates`: after a validated layer 0, only ids that layer 1 wrote are
    /// counted, and a copy layer 1 added of a live layer-0 memory is still found (per space and across spaces);
    /// a full validation counts every id.
    #[tokio::test]
    async fn duplicate_ids_counts_the_ids_of_the_new_layers_and_still_finds_their_copies() {
        let check = BUILTIN_CHECKS
            .iter()
            .find(|(n, _)| *n == "duplicate_ids")
            .unwrap()
            .1;
        let bundle: BundleManifest = serde_json::from_value(serde_json::json!({
            "format": "t", "run_id": "t", "created_at": "t", "source": {}, "mapping": "t", "transform_key": "t",
            "embedding": {"provider": "t", "dimension": 2, "native_dimension": 2},
            "spaces": [{"space": "s", "memories": {"rows": 0, "checksum": "0", "files": [
                {"file": "a", "rows": 0, "bytes": 0, "checksum": "0"},
                {"file": "b", "rows": 0, "bytes": 0, "checksum": "0", "layer": 1}]},
              "edges": {"rows": 0, "checksum": "0", "files": []}}],
            "orphans": {"rows": 0, "checksum": "0", "files": []}, "totals": {},
            "removed": [{"layer": 1, "file": "r", "rows": 0}],
        }))
        .unwrap();
        let rows = |ids: &[(&str, &str)]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("space", DataType::Utf8, false),
                    Field::new("id", DataType::Utf8, false),
                ])),
                vec![
                    utf8(ids.iter().map(|r| Some(r.0.to_string())).collect()),
                    utf8(ids.iter().map(|r| Some(r.1.to_string())).collect()),
                ],
            )
            .unwrap()
        };
        // Layer 0 holds a duplicate of its own ("old", validated then, so not counted again); layer 1 adds a
        // second "x" in space s and a "y" in space t that space s also has.
        let layer0 = rows(&[
            ("s", "x"),
            ("s", "y"),
            ("s", "old"),
            ("s", "old"),
            ("s", "z"),
        ]);
        let layer1 = rows(&[("s", "x"), ("t", "y"), ("s", "w")]);
        let found = |verified_below: u32, scope: IdScope| {
            let (check, bundle, layer0, layer1) = (check, &bundle, layer0.clone(), layer1.clone());
            async move {
                let ctx = SessionContext::new();
                mem_table(&ctx, "bundle_memories_layer_0", layer0.clone()).unwrap();
                mem_table(&ctx, "bundle_memories_layer_1", layer1.clone()).unwrap();
                transform::run_statements(
                    &ctx,
                    "CREATE VIEW bundle_memories AS SELECT * FROM bundle_memories_layer_0                      UNION ALL SELECT * FROM bundle_memories_layer_1;",
                    "test",
                )
                .await
                .unwrap();
                register_target_rules(&ctx, scope, 2).unwrap();
                register_id_candidates(&ctx, bundle, verified_below)
                    .await
                    .unwrap();
                let out = transform::collect(&ctx, check.trim().trim_end_matches(';'), "test")
                    .await
                    .unwrap();
                let mut ids = vec![];
                for b in &out {
                    let id = b.column_by_name("id").unwrap().as_string::<i32>();
                    ids.extend((0..b.num_rows()).map(|r| id.value(r).to_string()));
                }
                ids
            }
        };
        assert_eq!(found(1, IdScope::PerSpace).await, vec!["x"]);
        assert_eq!(found(1, IdScope::Global).await, vec!["x", "y"]);
        assert_eq!(found(0, IdScope::PerSpace).await, vec!["old", "x"]);
        assert_eq!(found(2, IdScope::PerSpace).await, Vec::<String>::new());
    }

    /// sorted_set_order passes a chain in score order and names each way a chain can break.
    #[tokio::test]
    async fn sorted_set_order_finds_broken_chains() {
        let check = BUILTIN_CHECKS
            .iter()
            .find(|(n, _)| *n == "sorted_set_order")
            .unwrap()
            .1;
        let member = |key: &str, m: &str, score: f64| {
            (
                format!("redis_{key}#{m}"),
                format!(r#"{{"db":0,"key":"{key}","member":"{m}","score":{score}}}"#),
            )
        };
        let mems = [
            member("z", "a", 1.0),
            member("z", "b", 2.0),
            member("z", "c", 3.0),
            member("y", "q", 5.0),
        ];
        let run = |edges: Vec<(&'static str, &'static str)>| {
            let mems = mems.clone();
            async move {
                let ctx = SessionContext::new();
                crate::transform::udf::register_all(&ctx);
                let ms = Arc::new(Schema::new(vec![
                    Field::new("space", DataType::Utf8, false),
                    Field::new("id", DataType::Utf8, false),
                    Field::new("content", DataType::Utf8, false),
                ]));
                let b = RecordBatch::try_new(
                    ms,
                    vec![
                        utf8(mems.iter().map(|_| Some("s".to_string())).collect()),
                        utf8(mems.iter().map(|m| Some(m.0.clone())).collect()),
                        utf8(mems.iter().map(|m| Some(m.1.clone())).collect()),
                    ],
                )
                .unwrap();
                mem_table(&ctx, "bundle_memories", b).unwrap();
                let es = Arc::new(Schema::new(vec![
                    Field::new("space", DataType::Utf8, false),
                    Field::new("source_id", DataType::Utf8, false),
                    Field::new("target_id", DataType::Utf8, false),
                    Field::new("edge_type", DataType::Utf8, false),
                ]));
                let b = RecordBatch::try_new(
                    es,
                    vec![
                        utf8(edges.iter().map(|_| Some("s".to_string())).collect()),
                        utf8(
                            edges
                                .iter()
                                .map(|e| Some(format!("redis_{}", e.0)))
                                .collect(),
                        ),
                        utf8(
                            edges
                                .iter()
                                .map(|e| Some(format!("redis_{}", e.1)))
                                .collect(),
                        ),
                        utf8(
                            edges
                                .iter()
                                .map(|_| Some("NEXT_BY_SCORE".to_string()))
                                .collect(),
                        ),
                    ],
                )
                .unwrap();
                mem_table(&ctx, "bundle_edges", b).unwrap();
                let out = transform::collect(
                    &ctx,
                    check.trim().trim_end_matches(';'),
                    "sorted_set_order",
                )
                .await
                .unwrap();
                let mut problems = vec![];
                for b in &out {
                    for r in 0..b.num_rows() {
                        problems.push(
                            crate::json::row_object(b, r).unwrap()["problem"]
                                .as_str()
                                .unwrap()
                                .to_string(),
                        );
                    }
                }
                problems
            }
        };
        assert!(run(vec![("z#a", "z#b"), ("z#b", "z#c")]).await.is_empty());
        assert_eq!(
            run(vec![("z#b", "z#a")]).await,
            ["the score decreases along the edge"]
        );
        assert_eq!(
            run(vec![("z#c", "y#q")]).await,
            ["joins two different sorted sets or a member that is not there"]
        );
        let mut two = run(vec![("z#a", "z#b"), ("z#a", "z#c")]).await;
        two.sort();
        assert_eq!(two, ["a member with two successors"]);
    }

    /// duplicate_ids follows the target's rule: the same id in two spaces is fine in Engram, a duplicate in a
    /// graph target; the same id twice in one space is a duplicate in both.
    #[tokio::test]
    async fn duplicate_ids_follow_the_target_rule() {
        let check = BUILTIN_CHECKS
            .iter()
            .find(|(n, _)| *n == "duplicate_ids")
            .unwrap()
            .1;
        let rows = [
            ("redis_db0", "redis_k"),
            ("redis_db3", "redis_k"),
            ("redis_db3", "redis_j"),
        ];
        for (scope, twice_in_one_space, want) in [
            (IdScope::PerSpace, false, 0usize),
            (IdScope::Global, false, 1),
            (IdScope::PerSpace, true, 1),
            (IdScope::Global, true, 2),
        ] {
            let mut rows = rows.to_vec();
            if twice_in_one_space {
                rows.push(("redis_db3", "redis_j"));
            }
            let ctx = SessionContext::new();
            let schema = Arc::new(Schema::new(vec![
                Field::new("space", DataType::Utf8, false),
                Field::new("id", DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    utf8(rows.iter().map(|r| Some(r.0.to_string())).collect()),
                    utf8(rows.iter().map(|r| Some(r.1.to_string())).collect()),
                ],
            )
            .unwrap();
            mem_table(&ctx, "bundle_memories", batch).unwrap();
            register_target_rules(&ctx, scope, 768).unwrap();
            transform::run_statements(
                &ctx,
                "CREATE VIEW bundle_id_candidates AS SELECT space, id FROM bundle_memories;",
                "test",
            )
            .await
            .unwrap();
            let out = transform::collect(&ctx, check.trim().trim_end_matches(';'), "duplicate_ids")
                .await
                .unwrap();
            let n: usize = out.iter().map(|b| b.num_rows()).sum();
            assert_eq!(
                n, want,
                "{scope:?}, twice in one space: {twice_in_one_space}"
            );
        }
    }
}
