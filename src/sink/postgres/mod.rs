//! PostgreSQL + pgvector as a target: a finished bundle becomes rows of `<schema>.memories` (the embedding a
//! `vector(N)` of the bundle's own dimension, an HNSW or IVFFlat cosine index built after the data),
//! `<schema>.edges` (foreign keys to the memories at both ends) and `<schema>.orphans`.
//!
//! All or nothing, resumable, reversible:
//! - The loader's units are COPYed (binary, pgvector's binary `vector`) into staging tables named after the load
//!   (`memories__load_<key>`, ...), which survive a kill: a resumed load appends to them, and a unit sent twice is
//!   collapsed when merged (`DISTINCT ON` the key).
//! - `finish` merges the staging tables into the real ones in **one transaction**: a reader sees the state
//!   before or the state after, never a half-loaded target. Before merging, the rows the load will overwrite are
//!   copied into before-image tables (`memories__before_<key>`, with which keys are new), and the load is
//!   recorded in `<schema>.engram_loads`.
//! - The same bundle loaded again changes nothing (its load is recorded: nothing is merged twice).
//! - `rollback` restores the before-images and deletes what the load added, in one transaction.
//!
//! The target's password comes from the URL, `ENGRAM_MIGRATE_TARGET_PASSWORD` or `PGPASSWORD`; it is never
//! printed nor written into the work directory.

mod copy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, TimestampMicrosecondType};
use postgres::Client;
use serde::Serialize;

use self::copy::{json_fits_jsonb, CopyBuf};
use super::{
    DeleteOutcome, DeliverLimits, Explanation, HeldMemory, LoadScope, ReadBack, Rejection,
    RowOutcome, Sink, SinkFactory, SinkOptions, WriteUnit,
};
use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::schema::{edge, memory};

/// pgvector's largest `vector` and the largest it can index (HNSW and IVFFlat).
const MAX_VECTOR_DIM: usize = 16_000;
const MAX_INDEXED_DIM: usize = 2_000;

/// The vector index built after the data (`--target-index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorIndex {
    Hnsw,
    Ivfflat,
    None,
}

impl VectorIndex {
    pub fn parse(s: &str) -> Result<VectorIndex> {
        match s {
            "hnsw" => Ok(VectorIndex::Hnsw),
            "ivfflat" => Ok(VectorIndex::Ivfflat),
            "none" => Ok(VectorIndex::None),
            other => Err(Error::usage(format!(
                "--target-index {other:?}: one of hnsw (default), ivfflat, none"
            ))),
        }
    }
}

pub struct PostgresFactory;

impl SinkFactory for PostgresFactory {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["postgres://", "postgresql://"]
    }
    fn open(&self, spec: &str, opts: &SinkOptions) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink::new(spec, opts)?))
    }
    /// pgvector indexes vectors of at most 2,000 floats; without an index it stores up to 16,000.
    fn embedding_dim_limit(&self, opts: &SinkOptions) -> Option<usize> {
        match opts.index.as_deref() {
            Some("none") => Some(MAX_VECTOR_DIM),
            _ => Some(MAX_INDEXED_DIM),
        }
    }
}

pub struct PostgresSink {
    config: postgres::Config,
    /// The URL without its password, for messages and the load's identity.
    shown: String,
    schema: String,
    index: VectorIndex,
    /// Open connections, reused by the loader's units in flight.
    pool: Mutex<Vec<Client>>,
    /// Set by `prepare` when this bundle's load is already recorded: nothing is sent or merged again.
    already_loaded: AtomicBool,
    /// Staging and before-image table suffix, from the bundle (set by `prepare`).
    key: Mutex<String>,
}

/// The blocking client owns a runtime, which may not be dropped on a thread of the async runtime: the pooled
/// connections are closed on a thread of their own.
impl Drop for PostgresSink {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().map(std::mem::take).unwrap_or_default();
        if !pool.is_empty() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// A plain SQL identifier (schema names from a flag): letters, digits and `_`, so it needs no quoting anywhere.
fn check_ident(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{what} {s:?}: use 1 to 48 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

impl PostgresSink {
    pub fn new(spec: &str, opts: &SinkOptions) -> Result<PostgresSink> {
        let shown = crate::source::redact_url(spec);
        let mut config: postgres::Config = spec.parse().map_err(|e| {
            Error::usage(format!(
                "--target {shown}: not a PostgreSQL URL ({e}); expected postgres://USER[:PASSWORD]@HOST:PORT/DB"
            ))
        })?;
        if config.get_password().is_none() {
            let pw = opts
                .password
                .clone()
                .or_else(|| std::env::var("ENGRAM_MIGRATE_TARGET_PASSWORD").ok())
                .or_else(|| std::env::var("PGPASSWORD").ok());
            if let Some(pw) = pw {
                config.password(pw);
            }
        }
        config.application_name("engram-migrate");
        config.connect_timeout(std::time::Duration::from_secs(10));
        let schema = opts.schema.clone().unwrap_or_else(|| "engram".into());
        check_ident("--target-schema", &schema)?;
        let index = match &opts.index {
            Some(i) => VectorIndex::parse(i)?,
            None => VectorIndex::Hnsw,
        };
        Ok(PostgresSink {
            config,
            shown,
            schema,
            index,
            pool: Mutex::new(vec![]),
            already_loaded: AtomicBool::new(false),
            key: Mutex::new(String::new()),
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::target_err(self.shown.clone(), format!("{what}: {e}"))
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    fn key(&self) -> String {
        self.key.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// Runs `f` on a pooled connection, off the async runtime (the client is blocking). A connection that saw an
    /// error is dropped, not returned to the pool.
    async fn with_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let config = self.config.clone();
        let shown = self.shown.clone();
        // A plain thread, not tokio's blocking pool: the blocking client runs a runtime of its own, which cannot
        // be started from a thread that belongs to one.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r = (|| {
                let mut client = match pooled {
                    Some(c) if !c.is_closed() => c,
                    _ => crate::source::postgres::connect(&config)
                        .map_err(|e| connect_error(&shown, &e))?,
                };
                let out = f(&mut client);
                // A connection that saw an error is closed here, on this thread (see `Drop`).
                let keep = out.is_ok().then_some(client);
                Ok::<_, Error>((keep, out))
            })();
            let _ = tx.send(r);
        });
        let (client, out) = rx.await.map_err(|_| {
            Error::Internal("PostgreSQL worker thread ended without an answer".into())
        })??;
        match out {
            Ok(v) => {
                if let (Some(c), Ok(mut p)) = (client, self.pool.lock()) {
                    p.push(c);
                }
                Ok(v)
            }
            Err(e) => Err(self.err("statement failed", db_message(&e))),
        }
    }

    /// The DDL of the real tables for vectors of `dim`.
    fn create_sql(&self, dim: usize) -> String {
        let s = &self.schema;
        format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.memories (
               space text NOT NULL, id text NOT NULL, content jsonb NOT NULL, text text, embedding vector({dim}),
               confidence real NOT NULL, activation real NOT NULL, decay_rate real NOT NULL,
               created_at timestamptz, memory_type text NOT NULL, source_kind text NOT NULL,
               source_name text NOT NULL, source_key jsonb NOT NULL,
               PRIMARY KEY (space, id));
             CREATE INDEX IF NOT EXISTS memories_id ON {s}.memories (id);
             CREATE TABLE IF NOT EXISTS {s}.edges (
               space text NOT NULL, source_id text NOT NULL, target_space text NOT NULL, target_id text NOT NULL,
               edge_type text NOT NULL, weight real NOT NULL, properties jsonb, source_name text NOT NULL,
               source_key jsonb NOT NULL,
               PRIMARY KEY (space, source_id, target_space, target_id, edge_type, source_key),
               FOREIGN KEY (space, source_id) REFERENCES {s}.memories (space, id) DEFERRABLE INITIALLY DEFERRED,
               FOREIGN KEY (target_space, target_id) REFERENCES {s}.memories (space, id)
                 DEFERRABLE INITIALLY DEFERRED);
             CREATE INDEX IF NOT EXISTS edges_target ON {s}.edges (target_space, target_id);
             CREATE TABLE IF NOT EXISTS {s}.orphans (
               space text NOT NULL, source_id text NOT NULL, target_id text NOT NULL, edge_type text NOT NULL,
               weight real NOT NULL, properties jsonb, source_name text NOT NULL, source_key jsonb NOT NULL,
               PRIMARY KEY (space, source_id, target_id, edge_type, source_key));
             CREATE TABLE IF NOT EXISTS {s}.engram_loads (
               load_key text PRIMARY KEY, bundle_run_id text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(),
               memories bigint NOT NULL, edges bigint NOT NULL, orphans bigint NOT NULL);"
        )
    }
}

/// The tables this sink owns, with their columns as `format_type` names them: an existing table of another shape
/// is an error naming the column, never altered.
fn expected_columns(dim: usize) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let t = |s: &str| s.to_string();
    let edges = vec![
        ("space", t("text")),
        ("source_id", t("text")),
        ("target_space", t("text")),
        ("target_id", t("text")),
        ("edge_type", t("text")),
        ("weight", t("real")),
        ("properties", t("jsonb")),
        ("source_name", t("text")),
        ("source_key", t("jsonb")),
    ];
    // Orphans are edges whose target is not in the target: no target space.
    let orphans = edges
        .iter()
        .filter(|(c, _)| *c != "target_space")
        .cloned()
        .collect();
    vec![
        (
            "memories",
            vec![
                ("space", t("text")),
                ("id", t("text")),
                ("content", t("jsonb")),
                ("text", t("text")),
                ("embedding", format!("vector({dim})")),
                ("confidence", t("real")),
                ("activation", t("real")),
                ("decay_rate", t("real")),
                ("created_at", t("timestamp with time zone")),
                ("memory_type", t("text")),
                ("source_kind", t("text")),
                ("source_name", t("text")),
                ("source_key", t("jsonb")),
            ],
        ),
        ("edges", edges),
        ("orphans", orphans),
    ]
}

/// What differs, table by table, between the tables found (table, column, type) and this sink's.
fn shape_problems(found: &[(String, String, String)], dim: usize) -> Vec<String> {
    let mut problems = vec![];
    for (table, want) in expected_columns(dim) {
        let have: Vec<(String, String)> = found
            .iter()
            .filter(|(t, _, _)| t == table)
            .map(|(_, n, ty)| (n.clone(), ty.clone()))
            .collect();
        if !have.is_empty() {
            problems.extend(shape_differences(table, &have, &want));
        }
    }
    problems
}

/// What differs between a table's columns and the expected ones, in words; empty when they agree.
fn shape_differences(
    table: &str,
    have: &[(String, String)],
    want: &[(&str, String)],
) -> Vec<String> {
    let mut out = vec![];
    for (name, ty) in want {
        match have.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{table}.{name}: missing (expected {ty})")),
            Some((_, t)) if t != ty => out.push(format!("{table}.{name}: is {t}, expected {ty}")),
            Some(_) => {}
        }
    }
    for (name, ty) in have {
        if !want.iter().any(|(n, _)| n == name) {
            out.push(format!("{table}.{name}: not expected ({ty})"));
        }
    }
    out
}

fn connect_error(shown: &str, e: &postgres::Error) -> Error {
    Error::target_err(
        shown.to_string(),
        format!(
            "cannot connect: {} (check host, port, database, user and the password: in the URL, \
             ENGRAM_MIGRATE_TARGET_PASSWORD or PGPASSWORD)",
            db_message(e)
        ),
    )
}

/// The server's own message where there is one (with its detail), else the client's.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        // The client's message with its causes ("error connecting to server: Connection refused ...").
        None => crate::source::postgres::pg_message(e),
    }
}

/// The memory rows of a unit as COPY bytes; rows whose JSON jsonb cannot hold are refused by name instead.
fn memory_copy(unit: &WriteUnit) -> Result<(Vec<u8>, Vec<RowOutcome>)> {
    let b = &unit.batch;
    let s = |name: &str| -> Result<arrow::array::StringArray> {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>().cloned())
            .ok_or_else(|| Error::Internal(format!("{}: no {name} column", unit.file.display())))
    };
    let f = |name: &str| -> Result<arrow::array::Float32Array> {
        b.column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Float32Type>().cloned())
            .ok_or_else(|| Error::Internal(format!("{}: no {name} column", unit.file.display())))
    };
    let (space, id, content, text) = (
        s(memory::SPACE)?,
        s(memory::ID)?,
        s(memory::CONTENT)?,
        s(memory::TEXT)?,
    );
    let (confidence, activation, decay) = (
        f(memory::CONFIDENCE)?,
        f(memory::ACTIVATION)?,
        f(memory::DECAY_RATE)?,
    );
    let (memory_type, source_kind, source_name, source_key) = (
        s(memory::MEMORY_TYPE)?,
        s(memory::SOURCE_KIND)?,
        s(memory::SOURCE_NAME)?,
        s(memory::SOURCE_KEY)?,
    );
    let created = b
        .column_by_name(memory::CREATED_AT)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
    let emb = b
        .column_by_name(memory::EMBEDDING)
        .and_then(|c| c.as_fixed_size_list_opt().cloned())
        .ok_or_else(|| Error::Internal(format!("{}: no embedding column", unit.file.display())))?;
    let values = emb.values().as_primitive::<Float32Type>().clone();
    let dim = emb.value_length() as usize;
    let mut buf = CopyBuf::default();
    let mut outcomes = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let bad = json_fits_jsonb(content.value(i))
            .map(|w| ("content", w))
            .or_else(|| json_fits_jsonb(source_key.value(i)).map(|w| ("source_key", w)));
        if let Some((field, why)) = bad {
            outcomes.push(RowOutcome::Rejected {
                id: id.value(i).to_string(),
                status: "invalid_json".into(),
                message: format!("its {field} {why}; the bundle keeps it"),
            });
            continue;
        }
        buf.row(13);
        buf.text(space.value(i));
        buf.text(id.value(i));
        buf.jsonb(content.value(i));
        buf.opt_text((!text.is_null(i)).then(|| text.value(i)));
        buf.vector((!emb.is_null(i)).then(|| &values.values()[i * dim..(i + 1) * dim]));
        buf.real(confidence.value(i));
        buf.real(activation.value(i));
        buf.real(decay.value(i));
        buf.timestamptz(
            created
                .as_ref()
                .filter(|c| !c.is_null(i))
                .map(|c| c.value(i)),
        );
        buf.text(memory_type.value(i));
        buf.text(source_kind.value(i));
        buf.text(source_name.value(i));
        buf.jsonb(source_key.value(i));
        outcomes.push(RowOutcome::Accepted);
    }
    Ok((buf.finish(), outcomes))
}

/// Every edge (or orphan) part of the bundle as COPY bytes for the staging table (target space resolved later).
fn edge_copy(files: &[PathBuf]) -> Result<(Vec<u8>, u64)> {
    let mut buf = CopyBuf::default();
    for path in files {
        for b in parquet_io::open_reader(path, 8192)? {
            let b: RecordBatch =
                b.map_err(|e| Error::source_err(path.display().to_string(), e.to_string()))?;
            let s = |name: &str| -> Result<arrow::array::StringArray> {
                b.column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
                    .ok_or_else(|| {
                        Error::source_err(path.display().to_string(), format!("no {name} column"))
                    })
            };
            let (space, src, dst, ty, props, sname, skey) = (
                s(edge::SPACE)?,
                s(edge::SOURCE_ID)?,
                s(edge::TARGET_ID)?,
                s(edge::EDGE_TYPE)?,
                s(edge::PROPERTIES)?,
                s(edge::SOURCE_NAME)?,
                s(edge::SOURCE_KEY)?,
            );
            let weight = b
                .column_by_name(edge::WEIGHT)
                .and_then(|c| c.as_primitive_opt::<Float32Type>().cloned())
                .ok_or_else(|| Error::source_err(path.display().to_string(), "no weight column"))?;
            for i in 0..b.num_rows() {
                for (field, v) in [
                    ("properties", props.is_valid(i).then(|| props.value(i))),
                    ("source_key", Some(skey.value(i))),
                ] {
                    if let Some(why) = v.and_then(json_fits_jsonb) {
                        return Err(Error::source_err(
                            path.display().to_string(),
                            format!(
                                "edge {} -> {} ({}): its {field} {why}; fix the mapping and rebuild the bundle",
                                src.value(i),
                                dst.value(i),
                                ty.value(i)
                            ),
                        ));
                    }
                }
                buf.row(8);
                buf.text(space.value(i));
                buf.text(src.value(i));
                buf.text(dst.value(i));
                buf.text(ty.value(i));
                buf.real(weight.value(i));
                buf.opt_jsonb(props.is_valid(i).then(|| props.value(i)));
                buf.text(sname.value(i));
                buf.jsonb(skey.value(i));
            }
        }
    }
    let rows = buf.rows() as u64;
    Ok((buf.finish(), rows))
}

fn copy_in(
    client: &mut Client,
    sql: &str,
    bytes: &[u8],
) -> std::result::Result<u64, postgres::Error> {
    use std::io::Write;
    let mut w = client.copy_in(sql)?;
    // The writer's io errors carry the server's answer only at finish; a failed write is reported there.
    let _ = w.write_all(bytes);
    w.finish()
}

const MEMORY_COLUMNS: &str =
    "space, id, content, text, embedding, confidence, activation, decay_rate, created_at, \
                              memory_type, source_kind, source_name, source_key";
const EDGE_COLUMNS: &str =
    "space, source_id, target_id, edge_type, weight, properties, source_name, source_key";

#[async_trait::async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn identity(&self) -> String {
        format!("{} schema {}", self.shown, self.schema)
    }

    async fn healthcheck(&self) -> Result<()> {
        let shown = self.shown.clone();
        let has_vector = self
            .with_client(|c| {
                c.query_opt(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
                    &[],
                )
                .map(|r| r.is_some())
            })
            .await?;
        if !has_vector {
            return Err(Error::target_err(
                shown,
                "the pgvector extension is not installed on this server (pg_available_extensions has no \
                 `vector`); install it (e.g. the postgresql-NN-pgvector package) and run again",
            ));
        }
        Ok(())
    }

    fn accepts(&self, bundle: &Path, manifest: &BundleManifest) -> Result<()> {
        let dim = manifest.embedding.dimension;
        if dim == 0 || dim > MAX_VECTOR_DIM {
            return Err(Error::target_err(
                self.shown.clone(),
                format!(
                    "the bundle {} has {dim}-float embeddings; pgvector's vector holds 1 to {MAX_VECTOR_DIM}",
                    bundle.display()
                ),
            ));
        }
        if dim > MAX_INDEXED_DIM && self.index != VectorIndex::None {
            return Err(Error::target_err(
                self.shown.clone(),
                format!(
                    "{dim}-float embeddings: pgvector indexes vectors of at most {MAX_INDEXED_DIM} dimensions; \
                     pass --target-index none (exact search, no index), or use a provider of fewer dimensions"
                ),
            ));
        }
        Ok(())
    }

    async fn prepare(&self, manifest: &BundleManifest) -> Result<()> {
        let key = super::bundle_load_key(manifest);
        if let Ok(mut k) = self.key.lock() {
            *k = key.clone();
        }
        let dim = manifest.embedding.dimension;
        let ddl = self.create_sql(dim);
        let schema = self.schema.clone();
        let (shapes, done) = self
            .with_client(move |c| {
                c.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")?;
                // Read the shapes first: CREATE TABLE IF NOT EXISTS leaves a table of another shape as it is.
                let rows = c.query(
                    "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
                     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname IN ('memories', 'edges', 'orphans')
                       AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY c.relname, a.attnum",
                    &[&schema],
                )?;
                let shapes: Vec<(String, String, String)> = rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                if !shape_problems(&shapes, dim).is_empty() {
                    return Ok((shapes, false));
                }
                c.batch_execute(&ddl)?;
                let done = c
                    .query_opt(
                        &format!("SELECT 1 FROM {schema}.engram_loads WHERE load_key = $1"),
                        &[&key],
                    )?
                    .is_some();
                let s = &schema;
                if done {
                    return Ok((shapes, done));
                }
                c.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {s}.memories__load_{key} (LIKE {s}.memories);
                     CREATE TABLE IF NOT EXISTS {s}.edges__load_{key} ({EDGE_STAGING_DDL});
                     CREATE TABLE IF NOT EXISTS {s}.orphans__load_{key} ({EDGE_STAGING_DDL});
                     CREATE TABLE IF NOT EXISTS {s}.deletes__load_{key} (space text NOT NULL, id text NOT NULL);"
                ))?;
                Ok((shapes, done))
            })
            .await?;
        let problems = shape_problems(&shapes, dim);
        if !problems.is_empty() {
            return Err(Error::target_err(
                self.shown.clone(),
                format!(
                    "schema {} holds tables of another shape: {}; nothing was changed. Use another \
                     --target-schema, or move those tables away",
                    self.schema,
                    problems.join("; ")
                ),
            ));
        }
        self.already_loaded.store(done, Ordering::SeqCst);
        Ok(())
    }

    fn unit_rows(&self, limits: &DeliverLimits) -> usize {
        limits.batch_rows.max(1)
    }

    fn already_loaded(&self) -> bool {
        self.already_loaded.load(Ordering::SeqCst)
    }

    async fn write(&self, unit: &WriteUnit) -> Result<Vec<RowOutcome>> {
        if self.already_loaded.load(Ordering::SeqCst) {
            return Ok(vec![RowOutcome::Accepted; unit.batch.num_rows()]);
        }
        let (bytes, outcomes) = memory_copy(unit)?;
        let sql = format!(
            "COPY {} ({MEMORY_COLUMNS}) FROM STDIN (FORMAT binary)",
            self.table(&format!("memories__load_{}", self.key()))
        );
        let file = unit.file.display().to_string();
        self.with_client(move |c| copy_in(c, &sql, &bytes))
            .await
            .map_err(|e| match e {
                Error::Target { location, message } => Error::Target {
                    location,
                    message: format!("{message} (COPY of {file})"),
                },
                other => other,
            })?;
        Ok(outcomes)
    }

    fn accepts_delta(&self) -> bool {
        true
    }

    /// Staged in `deletes__load_<key>` and applied by the merge in `finish`, in its transaction, with
    /// before-images (a rollback puts them back) and their edges.
    async fn delete(&self, space: &str, ids: &[String]) -> Result<DeleteOutcome> {
        if !self.already_loaded.load(Ordering::SeqCst) {
            let sql = format!(
                "INSERT INTO {} (space, id) SELECT $1, unnest($2::text[])",
                self.table(&format!("deletes__load_{}", self.key()))
            );
            let (space, ids) = (space.to_string(), ids.to_vec());
            self.with_client(move |c| c.execute(&sql, &[&space, &ids]).map(|_| ()))
                .await?;
        }
        Ok(DeleteOutcome::all_deleted(ids.len()))
    }

    async fn finish(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        scope: LoadScope,
    ) -> Result<()> {
        if self.already_loaded.load(Ordering::SeqCst) {
            crate::progress::warn(&format!(
                "{}: this bundle's load is already recorded in {}.engram_loads; nothing was changed",
                self.shown, self.schema
            ));
            return self.build_index(manifest).await;
        }
        let key = self.key();
        let s = self.schema.clone();
        let edge_files: Vec<PathBuf> = manifest
            .spaces
            .iter()
            .flat_map(|sp| {
                sp.edges.files.iter().map(move |f| {
                    bundle
                        .join("spaces")
                        .join(&sp.space)
                        .join("edges")
                        .join(&f.file)
                })
            })
            .collect();
        let orphan_files: Vec<PathBuf> = manifest
            .orphans
            .files
            .iter()
            .map(|f| bundle.join("orphans").join(&f.file))
            .collect();
        let (edges, n_edges) = edge_copy(&edge_files)?;
        let (orphans, n_orphans) = edge_copy(&orphan_files)?;
        let run_id = manifest.run_id.clone();
        let n_memories = manifest.spaces.iter().map(|s| s.memories.rows).sum::<u64>() as i64;
        // A delta load leaves the target's edges and orphans of the bundle's spaces equal to the bundle's.
        let spaces: Vec<String> = manifest.spaces.iter().map(|s| s.space.clone()).collect();
        let merge = merge_sql(
            &s,
            &key,
            (scope == LoadScope::Delta).then_some(spaces.as_slice()),
        );
        self.with_client(move |c| {
            // Edges are staged whole each time (a resumed load starts them over), then everything is merged.
            c.batch_execute(&format!(
                "TRUNCATE {s}.edges__load_{key}, {s}.orphans__load_{key}"
            ))?;
            copy_in(c, &format!("COPY {s}.edges__load_{key} ({EDGE_COLUMNS}) FROM STDIN (FORMAT binary)"), &edges)?;
            copy_in(c, &format!("COPY {s}.orphans__load_{key} ({EDGE_COLUMNS}) FROM STDIN (FORMAT binary)"), &orphans)?;
            let mut tx = c.transaction()?;
            tx.batch_execute(&merge)?;
            tx.execute(
                &format!(
                    "INSERT INTO {s}.engram_loads (load_key, bundle_run_id, memories, edges, orphans)
                     VALUES ($1, $2, $3, $4, $5)"
                ),
                &[&key, &run_id, &n_memories, &(n_edges as i64), &(n_orphans as i64)],
            )?;
            tx.batch_execute(&format!(
                "DROP TABLE {s}.memories__load_{key}, {s}.edges__load_{key}, {s}.orphans__load_{key}, \
                 {s}.deletes__load_{key}"
            ))?;
            tx.commit()
        })
        .await?;
        self.build_index(manifest).await
    }

    async fn rollback(&self, _bundle: &Path, manifest: &BundleManifest) -> Result<u64> {
        let key = super::bundle_load_key(manifest);
        let s = self.schema.clone();
        let shown = self.shown.clone();
        let removed = self
            .with_client(move |c| {
                let known = c
                    .query_opt(
                        "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'engram_loads'",
                        &[&s],
                    )?
                    .is_some()
                    && c
                        .query_opt(
                            &format!("SELECT 1 FROM {s}.engram_loads WHERE load_key = $1"),
                            &[&key],
                        )?
                        .is_some();
                if !known {
                    return Ok(None);
                }
                let mut tx = c.transaction()?;
                let removed = tx
                    .query_one(
                        &format!("SELECT count(*) FROM {s}.memories__before_{key} WHERE NOT existed"),
                        &[],
                    )?
                    .get::<_, i64>(0);
                tx.batch_execute(&rollback_sql(&s, &key))?;
                tx.commit()?;
                Ok(Some(removed as u64))
            })
            .await?;
        removed.ok_or_else(|| {
            Error::usage(format!(
                "{shown}: no load of this bundle is recorded in {}.engram_loads (never loaded, or rolled back \
                 already); nothing was changed",
                self.schema
            ))
        })
    }

    async fn read_back(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        rejected: &[Rejection],
    ) -> Result<ReadBack> {
        let want = super::bundle_digests(bundle, manifest)?;
        let spaces: Vec<String> = manifest.spaces.iter().map(|s| s.space.clone()).collect();
        let mut per_space: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
        for sp in &manifest.spaces {
            per_space.insert(sp.space.clone(), (sp.memories.rows, 0, 0, 0));
        }
        let s = self.schema.clone();
        // Streamed (a million rows of 768 floats do not fit in memory at once) and compared row by row on the
        // worker thread; only the verdicts come back.
        let (held, per_space, edge_counts) = self
            .with_client(move |c| {
                use postgres::fallible_iterator::FallibleIterator;
                let mut held = vec![];
                let sql = format!(
                    "SELECT space, id, embedding::real[], content::text FROM {s}.memories WHERE space = ANY($1)"
                );
                let mut rows = c.query_raw(sql.as_str(), [&spaces])?;
                while let Some(r) = rows.next()? {
                    let (space, id): (String, String) = (r.get(0), r.get(1));
                    let Some((emb, digest)) = want.get(&(space.clone(), id.clone())) else {
                        continue; // held from another load: not this bundle's to judge
                    };
                    let got: Option<Vec<f32>> = r.get(2);
                    let got: Option<u64> = got.map(super::vector_digest);
                    let emb_ok = &got == emb;
                    let content: String = r.get(3);
                    let content_ok = serde_json::from_str(&content)
                        .map(|j| crate::json::json_digest(&j) == *digest)
                        .unwrap_or(false);
                    let e = per_space.entry(space.clone()).or_default();
                    e.1 += 1;
                    e.2 += u64::from(!emb_ok);
                    e.3 += u64::from(!content_ok);
                    held.push(HeldMemory {
                        space,
                        id,
                        embedding_matches: Some(emb_ok),
                        content_matches: Some(content_ok),
                    });
                }
                drop(rows);
                let e = c.query(
                    &format!(
                        "SELECT space, edge_type, count(*) FROM {s}.edges WHERE space = ANY($1) GROUP BY 1, 2 ORDER BY 1, 2"
                    ),
                    &[&spaces],
                )?;
                let edges: Vec<(String, String, i64)> = e.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
                Ok((held, per_space, edges))
            })
            .await?;
        let explained: Vec<Explanation> = rejected
            .iter()
            .map(|r| Explanation {
                space: r.space.clone(),
                id: r.id.clone(),
                reason: "rejected".into(),
                detail: format!("{}: {}", r.status, r.message),
            })
            .collect();
        let mut rendered = format!(
            "{:<32} {:>9} {:>9} {:>9} {:>9}\n",
            "space", "bundle", "target", "emb diff", "json diff"
        );
        for (space, (b, t, d, j)) in &per_space {
            rendered.push_str(&format!("{space:<32} {b:>9} {t:>9} {d:>9} {j:>9}\n"));
        }
        let edge_total: i64 = edge_counts.iter().map(|e| e.2).sum();
        rendered.push_str(&format!(
            "edges in the target for these spaces: {edge_total} (bundle: {})\n",
            manifest.spaces.iter().map(|s| s.edges.rows).sum::<u64>()
        ));
        let details = serde_json::json!({
            "schema": self.schema,
            "index": self.index,
            "spaces": per_space.iter().map(|(s, (b, t, d, j))| serde_json::json!({
                "space": s, "bundle": b, "target": t, "embedding_differs": d, "content_differs": j
            })).collect::<Vec<_>>(),
            "edges_per_type": edge_counts.iter().map(|(s, t, n)| serde_json::json!({
                "space": s, "edge_type": t, "edges": n
            })).collect::<Vec<_>>(),
        });
        Ok(ReadBack {
            held,
            explained,
            details,
            rendered,
        })
    }
}

/// Staging edges: the bundle's edge columns, nothing resolved yet.
const EDGE_STAGING_DDL: &str =
    "space text NOT NULL, source_id text NOT NULL, target_id text NOT NULL, \
    edge_type text NOT NULL, weight real NOT NULL, properties jsonb, source_name text NOT NULL, \
    source_key jsonb NOT NULL";

/// The merge of a load's staging tables into the real ones, run in one transaction: before-images first (which
/// keys are new, and the rows about to be overwritten or removed), then upserts, then removals. A unit sent twice
/// by a resumed load is collapsed here (`DISTINCT ON` the key). An edge's target space is the target memory's:
/// the source's own space when it holds that id, else the space that does.
///
/// Removed: the memories staged in `deletes__load` with every edge at either end, and with `delta_spaces` (a
/// delta load) the edges and orphans of those spaces that the bundle no longer has. Their before-images have
/// `removed` set, so a rollback inserts them again.
fn merge_sql(s: &str, k: &str, delta_spaces: Option<&[String]>) -> String {
    let set_memory: Vec<String> = MEMORY_COLUMNS
        .split(", ")
        .filter(|c| *c != "space" && *c != "id")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let set_memory = set_memory.join(", ");
    // Spaces are Engram space ids (a-z, 0-9, _ and -: checked by the transform), safe as literals.
    let stale = match delta_spaces {
        Some(spaces) => {
            let list = spaces
                .iter()
                .map(|sp| format!("'{}'", sp.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            let list = if list.is_empty() {
                "NULL".to_string()
            } else {
                list
            };
            format!(
                "INSERT INTO {s}.edges__before_{k}
                   SELECT x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key, true,
                          x.weight, x.properties, x.source_name, true
                   FROM {s}.edges x
                   WHERE x.space IN ({list}) AND NOT EXISTS (
                     SELECT 1 FROM edges_ready r
                     WHERE (r.space, r.source_id, r.target_space, r.target_id, r.edge_type, r.source_key)
                         = (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key));
                 INSERT INTO {s}.orphans__before_{k}
                   SELECT x.space, x.source_id, x.target_id, x.edge_type, x.source_key, true, x.weight,
                          x.properties, x.source_name, true
                   FROM {s}.orphans x
                   WHERE x.space IN ({list}) AND NOT EXISTS (
                     SELECT 1 FROM {s}.orphans__load_{k} r
                     WHERE (r.space, r.source_id, r.target_id, r.edge_type, r.source_key)
                         = (x.space, x.source_id, x.target_id, x.edge_type, x.source_key));"
            )
        }
        None => String::new(),
    };
    format!(
        "SET CONSTRAINTS ALL DEFERRED;
         CREATE TABLE {s}.memories__before_{k} AS
           SELECT n.space, n.id, m.id IS NOT NULL AS existed, m.content, m.text, m.embedding, m.confidence,
                  m.activation, m.decay_rate, m.created_at, m.memory_type, m.source_kind, m.source_name,
                  m.source_key, false AS removed
           FROM (SELECT DISTINCT space, id FROM {s}.memories__load_{k}) n
           LEFT JOIN {s}.memories m ON m.space = n.space AND m.id = n.id;
         INSERT INTO {s}.memories__before_{k}
           SELECT m.space, m.id, true, m.content, m.text, m.embedding, m.confidence, m.activation,
                  m.decay_rate, m.created_at, m.memory_type, m.source_kind, m.source_name, m.source_key, true
           FROM {s}.memories m
           WHERE (m.space, m.id) IN (SELECT space, id FROM {s}.deletes__load_{k})
             AND (m.space, m.id) NOT IN (SELECT space, id FROM {s}.memories__load_{k});
         INSERT INTO {s}.memories ({MEMORY_COLUMNS})
           SELECT DISTINCT ON (space, id) {MEMORY_COLUMNS} FROM {s}.memories__load_{k} ORDER BY space, id
           ON CONFLICT (space, id) DO UPDATE SET {set_memory};
         CREATE TEMP TABLE edges_ready ON COMMIT DROP AS
           SELECT DISTINCT ON (e.space, e.source_id, t.space, e.target_id, e.edge_type, e.source_key)
                  e.space, e.source_id, t.space AS target_space, e.target_id, e.edge_type, e.weight,
                  e.properties, e.source_name, e.source_key
           FROM {s}.edges__load_{k} e
           JOIN LATERAL (SELECT m.space FROM {s}.memories m WHERE m.id = e.target_id
                         ORDER BY m.space <> e.space, m.space LIMIT 1) t ON true;
         CREATE TABLE {s}.edges__before_{k} AS
           SELECT r.space, r.source_id, r.target_space, r.target_id, r.edge_type, r.source_key,
                  x.space IS NOT NULL AS existed, x.weight, x.properties, x.source_name, false AS removed
           FROM edges_ready r
           LEFT JOIN {s}.edges x ON (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key)
                                  = (r.space, r.source_id, r.target_space, r.target_id, r.edge_type, r.source_key);
         INSERT INTO {s}.edges SELECT * FROM edges_ready
           ON CONFLICT (space, source_id, target_space, target_id, edge_type, source_key)
           DO UPDATE SET weight = EXCLUDED.weight, properties = EXCLUDED.properties,
                         source_name = EXCLUDED.source_name;
         CREATE TABLE {s}.orphans__before_{k} AS
           SELECT DISTINCT r.space, r.source_id, r.target_id, r.edge_type, r.source_key,
                  x.space IS NOT NULL AS existed, x.weight, x.properties, x.source_name, false AS removed
           FROM {s}.orphans__load_{k} r
           LEFT JOIN {s}.orphans x ON (x.space, x.source_id, x.target_id, x.edge_type, x.source_key)
                                    = (r.space, r.source_id, r.target_id, r.edge_type, r.source_key);
         INSERT INTO {s}.orphans ({EDGE_COLUMNS})
           SELECT DISTINCT ON (space, source_id, target_id, edge_type, source_key) {EDGE_COLUMNS}
           FROM {s}.orphans__load_{k}
           ON CONFLICT (space, source_id, target_id, edge_type, source_key)
           DO UPDATE SET weight = EXCLUDED.weight, properties = EXCLUDED.properties,
                         source_name = EXCLUDED.source_name;
         {stale}
         INSERT INTO {s}.edges__before_{k}
           SELECT x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key, true, x.weight,
                  x.properties, x.source_name, true
           FROM {s}.edges x
           WHERE ((x.space, x.source_id) IN (SELECT space, id FROM {s}.memories__before_{k} WHERE removed)
              OR (x.target_space, x.target_id) IN (SELECT space, id FROM {s}.memories__before_{k} WHERE removed))
             AND NOT EXISTS (
               SELECT 1 FROM {s}.edges__before_{k} b
               WHERE (b.space, b.source_id, b.target_space, b.target_id, b.edge_type, b.source_key)
                   = (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key) AND b.removed);
         DELETE FROM {s}.edges x USING {s}.edges__before_{k} b
           WHERE b.removed AND (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_space, b.target_id, b.edge_type, b.source_key);
         DELETE FROM {s}.orphans x USING {s}.orphans__before_{k} b
           WHERE b.removed AND (x.space, x.source_id, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_id, b.edge_type, b.source_key);
         DELETE FROM {s}.memories x USING {s}.memories__before_{k} b
           WHERE b.removed AND x.space = b.space AND x.id = b.id;"
    )
}

/// Undoes a load from its before-images, in one transaction (the caller's): what it added is deleted, what it
/// overwrote is put back, and its record and before-images go.
fn rollback_sql(s: &str, k: &str) -> String {
    let restore_memory: Vec<String> = MEMORY_COLUMNS
        .split(", ")
        .filter(|c| *c != "space" && *c != "id")
        .map(|c| format!("{c} = b.{c}"))
        .collect();
    let restore_memory = restore_memory.join(", ");
    format!(
        "SET CONSTRAINTS ALL DEFERRED;
         INSERT INTO {s}.memories ({MEMORY_COLUMNS})
           SELECT {MEMORY_COLUMNS} FROM {s}.memories__before_{k} WHERE removed;
         INSERT INTO {s}.edges
           SELECT space, source_id, target_space, target_id, edge_type, weight, properties, source_name, source_key
           FROM {s}.edges__before_{k} WHERE removed;
         INSERT INTO {s}.orphans ({EDGE_COLUMNS})
           SELECT space, source_id, target_id, edge_type, weight, properties, source_name, source_key
           FROM {s}.orphans__before_{k} WHERE removed;
         DELETE FROM {s}.edges x USING {s}.edges__before_{k} b
           WHERE NOT b.existed AND (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_space, b.target_id, b.edge_type, b.source_key);
         UPDATE {s}.edges x SET weight = b.weight, properties = b.properties, source_name = b.source_name
           FROM {s}.edges__before_{k} b
           WHERE b.existed AND NOT b.removed AND (x.space, x.source_id, x.target_space, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_space, b.target_id, b.edge_type, b.source_key);
         DELETE FROM {s}.orphans x USING {s}.orphans__before_{k} b
           WHERE NOT b.existed AND (x.space, x.source_id, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_id, b.edge_type, b.source_key);
         UPDATE {s}.orphans x SET weight = b.weight, properties = b.properties, source_name = b.source_name
           FROM {s}.orphans__before_{k} b
           WHERE b.existed AND NOT b.removed AND (x.space, x.source_id, x.target_id, x.edge_type, x.source_key)
                 = (b.space, b.source_id, b.target_id, b.edge_type, b.source_key);
         DELETE FROM {s}.memories x USING {s}.memories__before_{k} b
           WHERE NOT b.existed AND x.space = b.space AND x.id = b.id;
         UPDATE {s}.memories x SET {restore_memory}
           FROM {s}.memories__before_{k} b
           WHERE b.existed AND NOT b.removed AND x.space = b.space AND x.id = b.id;
         DELETE FROM {s}.engram_loads WHERE load_key = '{k}';
         DROP TABLE {s}.memories__before_{k}, {s}.edges__before_{k}, {s}.orphans__before_{k};"
    )
}

impl PostgresSink {
    /// The vector index, after the data (building it once is far cheaper than maintaining it row by row), with
    /// the session's maintenance memory and parallel workers raised for the build; progress from
    /// `pg_stat_progress_create_index`. An index already there (an earlier load) was kept up to date by the
    /// merge and is left as it is.
    async fn build_index(&self, manifest: &BundleManifest) -> Result<()> {
        let (method, ops) = match self.index {
            VectorIndex::None => return Ok(()),
            VectorIndex::Hnsw => ("hnsw", "vector_cosine_ops"),
            VectorIndex::Ivfflat => ("ivfflat", "vector_cosine_ops"),
        };
        let s = self.schema.clone();
        let rows = manifest.spaces.iter().map(|s| s.memories.rows).sum::<u64>();
        // IVFFlat's rule of thumb: lists = rows / 1000 (at least 1) up to 1M rows.
        let with = match self.index {
            VectorIndex::Ivfflat => format!(" WITH (lists = {})", (rows / 1000).clamp(1, 1000)),
            _ => String::new(),
        };
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let sql = format!(
            "SET maintenance_work_mem = '1GB';
             SET max_parallel_maintenance_workers = {};
             CREATE INDEX IF NOT EXISTS memories_embedding_{method} ON {s}.memories
               USING {method} (embedding {ops}){with};
             ANALYZE {s}.memories; ANALYZE {s}.edges;",
            workers.saturating_sub(1)
        );
        let pb = crate::progress::spinner("vector index");
        let watch = {
            let pb = pb.clone();
            let config = self.config.clone();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let h = std::thread::spawn(move || {
                let Ok(mut c) = crate::source::postgres::connect(&config) else {
                    return;
                };
                while !stop2.load(Ordering::SeqCst) {
                    if let Ok(Some(r)) = c.query_opt(
                        "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total
                         FROM pg_stat_progress_create_index LIMIT 1",
                        &[],
                    ) {
                        let (phase, bd, bt, td, tt): (String, i64, i64, i64, i64) =
                            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                        pb.set_message(format!("{phase}: blocks {bd}/{bt}, tuples {td}/{tt}"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            });
            (stop, h)
        };
        let t = std::time::Instant::now();
        let r = self.with_client(move |c| c.batch_execute(&sql)).await;
        watch.0.store(true, Ordering::SeqCst);
        let _ = watch.1.join();
        pb.finish_and_clear();
        r?;
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            method,
            "vector index ready"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_another_shape_is_named_column_by_column() {
        let want = &expected_columns(768)[0].1;
        let mut have: Vec<(String, String)> = want
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        assert!(shape_differences("memories", &have, want).is_empty());
        have[4].1 = "vector(1536)".into();
        have.push(("extra".into(), "integer".into()));
        have.remove(0);
        let d = shape_differences("memories", &have, want);
        assert_eq!(
            d,
            vec![
                "memories.space: missing (expected text)".to_string(),
                "memories.embedding: is vector(1536), expected vector(768)".to_string(),
                "memories.extra: not expected (integer)".to_string(),
            ]
        );
    }

    #[test]
    fn identifiers_and_index_kinds_are_checked() {
        assert!(check_ident("--target-schema", "engram").is_ok());
        for bad in ["", "Engram", "a-b", "1x", "x;drop"] {
            assert!(check_ident("--target-schema", bad).is_err(), "{bad}");
        }
        assert_eq!(VectorIndex::parse("ivfflat").unwrap(), VectorIndex::Ivfflat);
        assert!(VectorIndex::parse("btree").is_err());
    }

    #[test]
    fn target_index_chooses_the_vector_index() {
        for (given, want) in [
            (None, VectorIndex::Hnsw),
            (Some("ivfflat"), VectorIndex::Ivfflat),
            (Some("none"), VectorIndex::None),
        ] {
            let s = PostgresSink::new(
                "postgres://u@127.0.0.1:5/db",
                &SinkOptions {
                    index: given.map(String::from),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(s.index, want, "{given:?}");
        }
        assert!(PostgresSink::new(
            "postgres://u@127.0.0.1:5/db",
            &SinkOptions {
                index: Some("btree".into()),
                ..Default::default()
            },
        )
        .is_err());
    }

    #[test]
    fn the_password_never_shows() {
        let s = PostgresSink::new(
            "postgres://u:s3cret@127.0.0.1:5/db",
            &SinkOptions::default(),
        )
        .unwrap();
        assert!(!s.identity().contains("s3cret"), "{}", s.identity());
        assert!(!s.err("x", "y").to_string().contains("s3cret"));
    }
}
