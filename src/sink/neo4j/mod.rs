//! Neo4j (any Bolt 4.x server: Neo4j 4/5, ArcadeDB) as a target: a memory becomes a node, an edge a
//! relationship.
//!
//! - A node has the base label `Node` and its space's label (`--target-labels "code_files:File,..."`, else the
//!   space in PascalCase), the property `id` (the memory id, unique: a constraint per label, made before any data),
//!   the content's top-level fields as properties (nested values as JSON text; a field named like one of the
//!   tool's own properties is kept as `content_<name>`), `embedding` (list of floats), confidence, activation,
//!   decay_rate, created_at (ISO 8601 text), memory_type, space, source_kind, source_name, source_key, and
//!   `engram_load` (the load that created it).
//! - A relationship has the edge's type (quoted with backticks when it is not a plain identifier, never changed),
//!   weight, properties (JSON text), source_name, source_key (its identity with the two ends) and `engram_load`.
//!   Orphan edges (an end missing) are not loaded; the bundle keeps them and the report counts them.
//! - Writes are `UNWIND $rows ... MERGE` on `id` (on `source_key` for relationships), one transaction per unit:
//!   a resumed or repeated load changes nothing. Relationships go after every node, type by type.
//! - Rollback deletes the nodes this load created (with their relationships) and the relationships it created
//!   between nodes that were there before. Nodes that were there before stay (their properties as the load set
//!   them: the load merges into them).
//!
//! Queries are written in the Cypher both Neo4j and ArcadeDB accept (ArcadeDB's has gaps: a property map in a
//! MATCH after UNWIND is written as `WHERE n.id = r.id`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, TimestampMicrosecondType};
use neo4rs::{BoltType, ConfigBuilder, Graph};
use serde_json::Value;

use super::{
    DeleteOutcome, DeliverLimits, Explanation, HeldMemory, LoadScope, ReadBack, Rejection,
    RowOutcome, Sink, SinkFactory, SinkOptions, WriteUnit,
};
use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::schema::{edge, memory};

/// Every node's label, so ids are unique across spaces and one constraint covers every node.
pub const BASE_LABEL: &str = "Node";

/// Property names the tool sets itself; a content field of the same name is kept as `content_<name>`.
const OWN: &[&str] = &[
    "id",
    "space",
    "embedding",
    "confidence",
    "activation",
    "decay_rate",
    "created_at",
    "memory_type",
    "source_kind",
    "source_name",
    "source_key",
    "engram_load",
];

pub struct Neo4jFactory;

impl SinkFactory for Neo4jFactory {
    fn name(&self) -> &'static str {
        "neo4j"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["bolt://", "neo4j://"]
    }
    fn open(&self, spec: &str, opts: &SinkOptions) -> Result<Box<dyn Sink>> {
        Ok(Box::new(Neo4jSink::new(spec, opts)?))
    }
    fn ids_unique_across_spaces(&self) -> bool {
        true
    }
}

pub struct Neo4jSink {
    shown: String,
    uri: String,
    user: String,
    password: String,
    database: Option<String>,
    /// Space -> label: `--target-labels`, then the bundle's (its mapping's `space_labels`), set by `prepare`.
    labels: std::sync::RwLock<BTreeMap<String, String>>,
    graph: tokio::sync::OnceCell<Graph>,
    load: std::sync::Mutex<String>,
    /// The bundle's embedding length (set by `prepare`): it sizes the units.
    dim: std::sync::atomic::AtomicUsize,
    /// One lock per label: nodes of one label are written one unit at a time, different labels in parallel (the
    /// issue's rule). Concurrent writes into one label's index conflict on ArcadeDB (optimistic transactions:
    /// "DeadlockDetected ... modified by a concurrent transaction"), and the driver's own retries then wait seconds
    /// (measured: the code graph took 57.5 s with 16 units in flight of one label, 9.7 s with one).
    label_locks:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// The most parameter bytes one `UNWIND` carries. ArcadeDB (26.10) answers success to a ~1.8 MB parameter list of
/// 259 nodes but applies the properties of only the first ~200, some to the wrong node (measured: the read-back
/// found 26 nodes without properties and 26 with another node's embedding); at 350 KB every row lands. Units
/// are cut to stay well under that.
const MAX_UNWIND_BYTES: usize = 256 * 1024;

/// Node properties that get an index of their own when a label's nodes have them (the seed's code graph: names
/// and repository ids are what its readers look nodes up by).
const LOOKUP_PROPERTIES: &[&str] = &["name", "repo_id"];

/// `code_files` -> `CodeFiles`: a space's default label.
pub fn label_of_space(space: &str) -> String {
    space
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// A label or relationship type in Cypher: as it is when it is a plain identifier, else in backticks (a backtick
/// doubled). Never mangled: `HAS-METHOD` stays `HAS-METHOD`.
pub fn quoted(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

fn json_to_bolt(v: &Value) -> BoltType {
    match v {
        Value::Null => BoltType::Null(neo4rs::BoltNull),
        Value::Bool(b) => BoltType::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => BoltType::from(i),
            None => BoltType::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => BoltType::from(s.as_str()),
        // Nested values as JSON text: a property holds scalars or lists of one scalar type.
        other => BoltType::from(other.to_string()),
    }
}

/// A memory's content as its node holds it: the top-level fields that are not null, renamed where they clash with
/// the tool's own properties, nested values as JSON text; content that is not a JSON object whole, as `content`.
/// The one place that says it: the write sends it, the read-back compares the node's properties with it.
pub fn node_view(content: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    match serde_json::from_str::<Value>(content) {
        Ok(Value::Object(fields)) => {
            for (k, v) in fields {
                let name = if OWN.contains(&k.as_str()) {
                    format!("content_{k}")
                } else {
                    k
                };
                match v {
                    Value::Null => {}
                    Value::Array(_) | Value::Object(_) => {
                        m.insert(name, Value::String(v.to_string()));
                    }
                    scalar => {
                        m.insert(name, scalar);
                    }
                }
            }
        }
        _ => {
            m.insert("content".into(), Value::String(content.to_string()));
        }
    }
    m
}

/// A memory's node properties (see the module doc).
fn node_properties(content: &str) -> neo4rs::BoltMap {
    let mut m = neo4rs::BoltMap::new();
    for (k, v) in node_view(content) {
        m.put(k.into(), json_to_bolt(&v));
    }
    m
}

/// The content part of a node's properties (every property but the tool's own), for the read-back.
fn content_of_node(props: serde_json::Map<String, Value>) -> Value {
    Value::Object(
        props
            .into_iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
            .collect(),
    )
}

impl Neo4jSink {
    pub fn new(spec: &str, opts: &SinkOptions) -> Result<Neo4jSink> {
        let shown = crate::source::redact_url(spec);
        let parsed = url::Url::parse(spec).map_err(|e| {
            Error::usage(format!(
                "--target {shown}: not a valid URL ({e}); expected bolt://HOST:PORT[/DATABASE]"
            ))
        })?;
        let host = parsed.host_str().unwrap_or("").to_string();
        if host.is_empty() {
            return Err(Error::usage(format!(
                "--target {shown}: no host; expected bolt://HOST:PORT[/DATABASE]"
            )));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = Some(parsed.username().to_string())
            .filter(|u| !u.is_empty())
            .or_else(|| opts.user.clone())
            .or_else(|| env("ENGRAM_MIGRATE_TARGET_USER"))
            .unwrap_or_else(|| "neo4j".into());
        let password = parsed
            .password()
            .map(str::to_string)
            .or_else(|| opts.password.clone())
            .or_else(|| env("ENGRAM_MIGRATE_TARGET_PASSWORD"))
            .ok_or_else(|| {
                Error::usage(format!(
                    "--target {shown}: no password; give it in the URL, with --target-password, or in \
                     ENGRAM_MIGRATE_TARGET_PASSWORD"
                ))
            })?;
        let mut labels = BTreeMap::new();
        for (space, label) in crate::config::parse_pairs("target-labels", opts.labels.as_deref())? {
            labels.insert(space, label);
        }
        Ok(Neo4jSink {
            uri: format!(
                "{}://{host}:{}",
                parsed.scheme(),
                parsed.port().unwrap_or(7687)
            ),
            database: Some(parsed.path().trim_matches('/').to_string()).filter(|d| !d.is_empty()),
            shown,
            user,
            password,
            labels: std::sync::RwLock::new(labels),
            graph: tokio::sync::OnceCell::new(),
            load: std::sync::Mutex::new(String::new()),
            dim: std::sync::atomic::AtomicUsize::new(768),
            label_locks: std::sync::Mutex::new(Default::default()),
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        let text = e.to_string().replace(&self.password, "***");
        let lower = text.to_lowercase();
        let hint = if lower.contains("auth")
            || lower.contains("credential")
            || lower.contains("unauthorized")
        {
            " (check the user and password: the URL, --target-user/--target-password or \
             ENGRAM_MIGRATE_TARGET_USER/_PASSWORD)"
        } else if lower.contains("connect")
            || lower.contains("io error")
            || lower.contains("refused")
        {
            " (check the host and port and that the server is running)"
        } else {
            ""
        };
        Error::target_err(self.shown.clone(), format!("{what}: {text}{hint}"))
    }

    async fn graph(&self) -> Result<&Graph> {
        self.graph
            .get_or_try_init(|| async {
                let mut cfg = ConfigBuilder::new()
                    .uri(self.uri.clone())
                    .user(self.user.clone())
                    .password(self.password.clone())
                    .max_connections(16)
                    .connection_timeout(Duration::from_secs(15));
                if let Some(db) = &self.database {
                    cfg = cfg.db(db.as_str());
                }
                let cfg = cfg.build().map_err(|e| self.err("bad settings", e))?;
                Graph::connect(cfg).map_err(|e| self.err("cannot connect", e))
            })
            .await
    }

    /// The code graph's lookup indexes (the seed's `name` and `repo_id`) on every label whose nodes have those
    /// properties, as the first memory of each space shows. After the data, not before: MERGE finds nodes by the
    /// `id` constraint, so these indexes serve readers only and are cheaper built once over the loaded nodes.
    async fn lookup_indexes(&self, bundle: &Path, manifest: &BundleManifest) -> Result<()> {
        for sp in &manifest.spaces {
            let Some(first) = sp.memories.files.first() else {
                continue;
            };
            let path = bundle
                .join("spaces")
                .join(&sp.space)
                .join("memories")
                .join(&first.file);
            let mut keys: Vec<String> = vec![];
            if let Some(b) = parquet_io::open_reader(&path, 1)?.next() {
                let b =
                    b.map_err(|e| Error::source_err(path.display().to_string(), e.to_string()))?;
                if let Some(c) = b
                    .column_by_name(memory::CONTENT)
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
                {
                    if c.len() > 0 && !c.is_null(0) {
                        keys = node_properties(c.value(0))
                            .value
                            .keys()
                            .map(|k| k.value.clone())
                            .collect();
                    }
                }
            }
            let label = self.label(&sp.space);
            for prop in LOOKUP_PROPERTIES
                .iter()
                .filter(|p| keys.iter().any(|k| k == *p))
            {
                let name: String = format!("engram_{label}_{prop}")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                self.run(
                    "create a lookup index",
                    neo4rs::query(&format!(
                        "CREATE INDEX {name} IF NOT EXISTS FOR (n:{}) ON (n.{})",
                        quoted(&label),
                        quoted(prop)
                    )),
                )
                .await?;
            }
        }
        Ok(())
    }

    fn label(&self, space: &str) -> String {
        self.labels
            .read()
            .ok()
            .and_then(|l| l.get(space).cloned())
            .unwrap_or_else(|| label_of_space(space))
    }

    /// Runs a write in its own transaction, retried with the tool's backoff on transient errors (MERGE makes a
    /// retried batch land once).
    async fn run(&self, what: &str, q: neo4rs::Query) -> Result<()> {
        let g = self.graph().await?;
        let backoff = crate::retry::Backoff::default();
        let mut attempt = 0;
        loop {
            // An explicit transaction, not an auto-commit `run`: ArcadeDB answers an auto-committed UNWIND ... MERGE
            // into new nodes with DeadlockDetected ("modified by a concurrent transaction") a dozen times in a row
            // with no other writer, which the driver's retries turned into seconds per load; in an explicit
            // transaction the same statement lands at once. Neo4j runs both the same way.
            let once = async {
                let mut txn = g.start_txn().await?;
                txn.run(q.clone()).await?;
                txn.commit().await
            };
            match once.await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && backoff.allows(attempt + 1) => {
                    attempt += 1;
                    tokio::time::sleep(backoff.delay(attempt, what)).await;
                }
                Err(e) => return Err(self.err(what, e)),
            }
        }
    }

    async fn rows(&self, what: &str, q: neo4rs::Query) -> Result<Vec<neo4rs::Row>> {
        let g = self.graph().await?;
        let mut s = g.execute(q).await.map_err(|e| self.err(what, e))?;
        let mut out = vec![];
        while let Some(r) = s.next().await.map_err(|e| self.err(what, e))? {
            out.push(r);
        }
        Ok(out)
    }

    fn load_key(&self) -> String {
        self.load.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

/// A relationship of the bundle (one edge): its ends, identity and properties.
#[derive(Debug, Clone)]
struct Relationship {
    s: String,
    t: String,
    k: String,
    w: f32,
    n: String,
    p: Option<String>,
}

impl Relationship {
    fn bolt(self) -> BoltType {
        let mut r = neo4rs::BoltMap::new();
        r.put("s".into(), BoltType::from(self.s));
        r.put("t".into(), BoltType::from(self.t));
        r.put("k".into(), BoltType::from(self.k));
        r.put("w".into(), BoltType::from(self.w as f64));
        r.put("n".into(), BoltType::from(self.n));
        r.put(
            "p".into(),
            match self.p {
                Some(p) => BoltType::from(p),
                None => BoltType::Null(neo4rs::BoltNull),
            },
        );
        BoltType::Map(r)
    }
}

/// Every edge of the bundle as a relationship, by type.
fn bundle_relationships(
    bundle: &Path,
    manifest: &BundleManifest,
) -> Result<BTreeMap<String, Vec<Relationship>>> {
    let files: Vec<PathBuf> = manifest
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
    let mut by_type: BTreeMap<String, Vec<Relationship>> = BTreeMap::new();
    for path in &files {
        for b in parquet_io::open_reader(path, 8192)? {
            let b = b.map_err(|e| Error::source_err(path.display().to_string(), e.to_string()))?;
            let s = |name: &str| {
                b.column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
                    .ok_or_else(|| {
                        Error::source_err(path.display().to_string(), format!("no {name}"))
                    })
            };
            let (src, dst, ty, props, sname, skey) = (
                s(edge::SOURCE_ID)?,
                s(edge::TARGET_ID)?,
                s(edge::EDGE_TYPE)?,
                s(edge::PROPERTIES)?,
                s(edge::SOURCE_NAME)?,
                s(edge::SOURCE_KEY)?,
            );
            let w = b
                .column_by_name(edge::WEIGHT)
                .and_then(|c| c.as_primitive_opt::<Float32Type>().cloned())
                .ok_or_else(|| Error::source_err(path.display().to_string(), "no weight"))?;
            for i in 0..b.num_rows() {
                by_type
                    .entry(ty.value(i).to_string())
                    .or_default()
                    .push(Relationship {
                        s: src.value(i).to_string(),
                        t: dst.value(i).to_string(),
                        k: skey.value(i).to_string(),
                        w: w.value(i),
                        n: sname.value(i).to_string(),
                        p: (!props.is_null(i)).then(|| props.value(i).to_string()),
                    });
            }
        }
    }
    Ok(by_type)
}

/// A relationship's identity in the target: (type, source id, source_key, target id).
type RelKey = (String, String, String, String);

impl Neo4jSink {
    /// The relationships the target has out of the nodes of the bundle's spaces, with their weight,
    /// properties and source_name, streamed.
    async fn held_relationships(
        &self,
        manifest: &BundleManifest,
    ) -> Result<std::collections::HashMap<RelKey, (f64, Option<String>, String)>> {
        let g = self.graph().await?;
        let mut out = std::collections::HashMap::new();
        for sp in &manifest.spaces {
            let what = format!("read the relationships of space {}", sp.space);
            let q = neo4rs::query(&format!(
                "MATCH (a:{BASE_LABEL})-[e]->(b:{BASE_LABEL}) WHERE a.space = $space
                 RETURN type(e) AS ty, a.id AS s, e.source_key AS k, b.id AS t, e.weight AS w,
                        e.properties AS p, e.source_name AS n"
            ))
            .param("space", sp.space.as_str());
            let mut rows = g.execute(q).await.map_err(|e| self.err(&what, e))?;
            while let Some(r) = rows.next().await.map_err(|e| self.err(&what, e))? {
                let text = |n: &str| {
                    r.get::<Option<String>>(n)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                };
                let key = (text("ty"), text("s"), text("k"), text("t"));
                let w = r.get::<f64>("w").unwrap_or(f64::NAN);
                out.insert(
                    key,
                    (w, r.get::<Option<String>>("p").ok().flatten(), text("n")),
                );
            }
        }
        Ok(out)
    }
}

/// Errors worth a retry: the server says so (deadlocks, leader switches) or the connection broke.
fn is_transient(e: &neo4rs::Error) -> bool {
    let t = e.to_string().to_lowercase();
    t.contains("transient") || t.contains("deadlock") || t.contains("connection")
}

fn unix_us_to_iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Sink for Neo4jSink {
    fn name(&self) -> &'static str {
        "neo4j"
    }

    fn identity(&self) -> String {
        self.shown.clone()
    }

    async fn healthcheck(&self) -> Result<()> {
        self.rows("connect", neo4rs::query("RETURN 1 AS x")).await?;
        Ok(())
    }

    fn accepts(&self, _bundle: &Path, manifest: &BundleManifest) -> Result<()> {
        for s in &manifest.spaces {
            if self.label(&s.space).is_empty() {
                return Err(Error::usage(format!(
                    "space {:?} gives no label; name one with --target-labels \"{}:Label\"",
                    s.space, s.space
                )));
            }
        }
        Ok(())
    }

    /// A uniqueness constraint on `id` for the base label and every label written, before any data.
    async fn prepare(&self, manifest: &BundleManifest) -> Result<()> {
        if let Ok(mut k) = self.load.lock() {
            *k = super::bundle_load_key(manifest);
        }
        if let Ok(mut l) = self.labels.write() {
            for s in &manifest.spaces {
                if let Some(label) = &s.label {
                    l.entry(s.space.clone()).or_insert_with(|| label.clone());
                }
            }
        }
        self.dim.store(
            manifest.embedding.dimension,
            std::sync::atomic::Ordering::SeqCst,
        );
        let mut labels: Vec<String> = vec![BASE_LABEL.to_string()];
        labels.extend(manifest.spaces.iter().map(|s| self.label(&s.space)));
        labels.sort();
        labels.dedup();
        for l in labels {
            // The constraint's name is derived from the label, so a second run finds it (IF NOT EXISTS).
            let name: String = format!("engram_{}_id", l)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            self.run(
                "create the id constraint",
                neo4rs::query(&format!(
                    "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (n:{}) REQUIRE n.id IS UNIQUE",
                    quoted(&l)
                )),
            )
            .await?;
        }
        // Neo4j builds constraints in the background; ArcadeDB has no such procedure and builds them at once.
        let _ = self
            .run(
                "wait for indexes",
                neo4rs::query("CALL db.awaitIndexes(300)"),
            )
            .await;
        Ok(())
    }

    /// Rows per `UNWIND`: the batch size, cut so one statement's parameters stay under `MAX_UNWIND_BYTES` (a float
    /// is 9 bytes on the wire, plus about 1 KB of other properties per node).
    fn unit_rows(&self, limits: &DeliverLimits) -> usize {
        let dim = self.dim.load(std::sync::atomic::Ordering::SeqCst);
        let per_row = dim * 9 + 1024;
        limits.batch_rows.min(MAX_UNWIND_BYTES / per_row).max(1)
    }

    async fn write(&self, unit: &WriteUnit) -> Result<Vec<RowOutcome>> {
        let b = &unit.batch;
        let s = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>().cloned())
                .ok_or_else(|| {
                    Error::Internal(format!("{}: no {name} column", unit.file.display()))
                })
        };
        let f = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float32Type>().cloned())
                .ok_or_else(|| {
                    Error::Internal(format!("{}: no {name} column", unit.file.display()))
                })
        };
        let (ids, content, mtype, skind, sname, skey) = (
            s(memory::ID)?,
            s(memory::CONTENT)?,
            s(memory::MEMORY_TYPE)?,
            s(memory::SOURCE_KIND)?,
            s(memory::SOURCE_NAME)?,
            s(memory::SOURCE_KEY)?,
        );
        let (conf, act, decay) = (
            f(memory::CONFIDENCE)?,
            f(memory::ACTIVATION)?,
            f(memory::DECAY_RATE)?,
        );
        let created = b
            .column_by_name(memory::CREATED_AT)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
        let emb = b
            .column_by_name(memory::EMBEDDING)
            .and_then(|c| c.as_fixed_size_list_opt().cloned())
            .ok_or_else(|| Error::Internal(format!("{}: no embedding", unit.file.display())))?;
        let values = emb.values().as_primitive::<Float32Type>().clone();
        let dim = emb.value_length() as usize;
        let mut rows: Vec<BoltType> = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let mut p = node_properties(content.value(i));
            if !emb.is_null(i) {
                let v: Vec<f64> = values.values()[i * dim..(i + 1) * dim]
                    .iter()
                    .map(|x| *x as f64)
                    .collect();
                p.put("embedding".into(), BoltType::from(v));
            }
            p.put("space".into(), BoltType::from(unit.space.as_str()));
            p.put("confidence".into(), BoltType::from(conf.value(i) as f64));
            p.put("activation".into(), BoltType::from(act.value(i) as f64));
            p.put("decay_rate".into(), BoltType::from(decay.value(i) as f64));
            if let Some(c) = created.as_ref().filter(|c| !c.is_null(i)) {
                p.put(
                    "created_at".into(),
                    BoltType::from(unix_us_to_iso(c.value(i))),
                );
            }
            p.put("memory_type".into(), BoltType::from(mtype.value(i)));
            p.put("source_kind".into(), BoltType::from(skind.value(i)));
            p.put("source_name".into(), BoltType::from(sname.value(i)));
            p.put("source_key".into(), BoltType::from(skey.value(i)));
            let mut row = neo4rs::BoltMap::new();
            row.put("id".into(), BoltType::from(ids.value(i)));
            row.put("props".into(), BoltType::Map(p));
            rows.push(BoltType::Map(row));
        }
        let label = self.label(&unit.space);
        let q = neo4rs::query(&format!(
            "UNWIND $rows AS r
             MERGE (n:{BASE_LABEL}:{} {{id: r.id}})
             ON CREATE SET n.engram_load = $load
             SET n += r.props",
            quoted(&label)
        ))
        .param("rows", BoltType::from(rows))
        .param("load", self.load_key());
        let what = format!("write the nodes of {}", unit.file.display());
        let lock = self
            .label_locks
            .lock()
            .map_err(|_| Error::Internal("neo4j sink: a writer panicked".into()))?
            .entry(label)
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        self.run(&what, q).await?;
        Ok(vec![RowOutcome::Accepted; b.num_rows()])
    }

    fn accepts_delta(&self) -> bool {
        true
    }

    /// `DETACH DELETE` by id (ids are unique across spaces here), 500 to a transaction; an id already gone
    /// counts as deleted.
    async fn delete(&self, _space: &str, ids: &[String]) -> Result<DeleteOutcome> {
        for chunk in ids.chunks(500) {
            let q = neo4rs::query(&format!(
                "UNWIND $ids AS i MATCH (n:{BASE_LABEL}) WHERE n.id = i DETACH DELETE n"
            ))
            .param("ids", chunk.to_vec());
            self.run("delete nodes", q).await?;
        }
        Ok(DeleteOutcome::all_deleted(ids.len()))
    }

    /// The relationships, after every node: type by type, in batches of 500 (a few hundred bytes each, under
    /// `MAX_UNWIND_BYTES`), each batch its own transaction. A delta load first reads the relationships the
    /// target has out of the bundle's spaces: only those missing or different are written, and those the bundle
    /// no longer has are deleted.
    async fn finish(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        scope: LoadScope,
    ) -> Result<()> {
        let mut by_type = bundle_relationships(bundle, manifest)?;
        let mut stale: BTreeMap<String, Vec<BoltType>> = BTreeMap::new();
        if scope == LoadScope::Delta {
            let mut held = self.held_relationships(manifest).await?;
            for (ty, rows) in by_type.iter_mut() {
                rows.retain(|r| {
                    let key = (ty.clone(), r.s.clone(), r.k.clone(), r.t.clone());
                    match held.remove(&key) {
                        Some(h) => h != (r.w as f64, r.p.clone(), r.n.clone()),
                        None => true,
                    }
                });
            }
            for ((ty, s, k, t), _) in held {
                let mut r = neo4rs::BoltMap::new();
                r.put("s".into(), BoltType::from(s));
                r.put("t".into(), BoltType::from(t));
                r.put("k".into(), BoltType::from(k));
                stale.entry(ty).or_default().push(BoltType::Map(r));
            }
        }
        let load = self.load_key();
        let total: usize = by_type.values().map(Vec::len).sum::<usize>()
            + stale.values().map(Vec::len).sum::<usize>();
        let pb = crate::progress::bar(total as u64, "relationships", "rels");
        for (ty, rows) in by_type {
            let rows: Vec<BoltType> = rows.into_iter().map(Relationship::bolt).collect();
            for chunk in rows.chunks(500) {
                let q = neo4rs::query(&format!(
                    "UNWIND $rows AS r
                     MATCH (a:{BASE_LABEL}) WHERE a.id = r.s
                     MATCH (b:{BASE_LABEL}) WHERE b.id = r.t
                     MERGE (a)-[e:{} {{source_key: r.k}}]->(b)
                     ON CREATE SET e.engram_load = $load
                     SET e.weight = r.w, e.properties = r.p, e.source_name = r.n",
                    quoted(&ty)
                ))
                .param("rows", BoltType::from(chunk.to_vec()))
                .param("load", load.as_str());
                self.run(&format!("write {ty} relationships"), q).await?;
                pb.inc(chunk.len() as u64);
            }
        }
        for (ty, rows) in stale {
            for chunk in rows.chunks(500) {
                let q = neo4rs::query(&format!(
                    "UNWIND $rows AS r
                     MATCH (a:{BASE_LABEL})-[e:{}]->(b:{BASE_LABEL})
                     WHERE a.id = r.s AND b.id = r.t AND e.source_key = r.k
                     DELETE e",
                    quoted(&ty)
                ))
                .param("rows", BoltType::from(chunk.to_vec()));
                self.run(&format!("delete {ty} relationships"), q).await?;
                pb.inc(chunk.len() as u64);
            }
        }
        pb.finish_and_clear();
        self.lookup_indexes(bundle, manifest).await
    }

    async fn rollback(&self, _bundle: &Path, manifest: &BundleManifest) -> Result<u64> {
        let load = super::bundle_load_key(manifest);
        // Relationships this load created between nodes that stay, then its nodes with theirs; in slices, so no
        // transaction holds the whole graph.
        let mut nodes = 0u64;
        loop {
            let q = neo4rs::query(
                "MATCH ()-[e]->() WHERE e.engram_load = $load WITH e LIMIT 10000 DELETE e RETURN count(*) AS c",
            )
            .param("load", load.as_str());
            let c: i64 = self
                .rows("delete relationships", q)
                .await?
                .first()
                .and_then(|r| r.get("c").ok())
                .unwrap_or(0);
            if c == 0 {
                break;
            }
        }
        loop {
            let q = neo4rs::query(&format!(
                "MATCH (n:{BASE_LABEL}) WHERE n.engram_load = $load WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c"
            ))
            .param("load", load.as_str());
            let c: i64 = self
                .rows("delete nodes", q)
                .await?
                .first()
                .and_then(|r| r.get("c").ok())
                .unwrap_or(0);
            if c == 0 {
                break;
            }
            nodes += c as u64;
        }
        Ok(nodes)
    }

    async fn read_back(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        rejected: &[Rejection],
    ) -> Result<ReadBack> {
        let spaces: Vec<String> = manifest.spaces.iter().map(|s| s.space.clone()).collect();
        let want = super::bundle_digests_as(bundle, manifest, |c| {
            crate::json::json_digest(&Value::Object(node_view(c)))
        })?;
        // One row per node with all its properties (the embedding among them: asked once, not twice), streamed
        // and judged row by row: collected first, 20,000 nodes of 768 floats as Bolt values took 3.8 GB.
        let q = neo4rs::query(&format!(
            "MATCH (n:{BASE_LABEL}) WHERE n.space IN $spaces RETURN properties(n) AS p"
        ))
        .param("spaces", spaces.clone());
        let mut held = vec![];
        let mut per_space: BTreeMap<String, (u64, u64, u64, u64)> = manifest
            .spaces
            .iter()
            .map(|s| (s.space.clone(), (s.memories.rows, 0, 0, 0)))
            .collect();
        let what = "read back the nodes";
        let mut stream = self
            .graph()
            .await?
            .execute(q)
            .await
            .map_err(|e| self.err(what, e))?;
        while let Some(r) = stream.next().await.map_err(|e| self.err(what, e))? {
            let Ok(mut props) = r.get::<serde_json::Map<String, Value>>("p") else {
                continue;
            };
            let text = |v: Option<&Value>| v.and_then(|v| v.as_str()).map(String::from);
            let (Some(space), Some(id)) = (text(props.get("space")), text(props.get("id"))) else {
                continue;
            };
            let Some((expected, content)) = want.get(&(space.clone(), id.clone())) else {
                continue;
            };
            let got: Option<u64> = match props.remove("embedding") {
                Some(Value::Array(v)) => Some(super::vector_digest(
                    v.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32),
                )),
                _ => None,
            };
            let ok = &got == expected;
            // Every content field, property by property, as one digest (json_digest: key order and number
            // spelling do not matter, a value, a missing or an extra property does).
            let content_ok = crate::json::json_digest(&content_of_node(props)) == *content;
            let e = per_space.entry(space.clone()).or_default();
            e.1 += 1;
            e.2 += u64::from(!ok);
            e.3 += u64::from(!content_ok);
            held.push(HeldMemory {
                space,
                id,
                embedding_matches: Some(ok),
                content_matches: Some(content_ok),
            });
        }
        let q = neo4rs::query(&format!(
            "MATCH (a:{BASE_LABEL})-[e]->() WHERE a.space IN $spaces RETURN type(e) AS t, count(*) AS c"
        ))
        .param("spaces", spaces);
        let mut types: BTreeMap<String, i64> = BTreeMap::new();
        for r in self.rows("count the relationships", q).await? {
            if let (Ok(t), Ok(c)) = (r.get::<String>("t"), r.get::<i64>("c")) {
                *types.entry(t).or_default() += c;
            }
        }
        let bundle_edges: u64 = manifest.spaces.iter().map(|s| s.edges.rows).sum();
        let mut rendered = format!(
            "{:<32} {:>9} {:>9} {:>9} {:>12}\n",
            "space (label)", "bundle", "target", "emb diff", "content diff"
        );
        for (s, (b, t, d, c)) in &per_space {
            rendered.push_str(&format!(
                "{:<32} {b:>9} {t:>9} {d:>9} {c:>12}\n",
                format!("{s} ({})", self.label(s))
            ));
        }
        for (t, c) in &types {
            rendered.push_str(&format!("relationships {t}: {c}\n"));
        }
        rendered.push_str(&format!(
            "relationships in the target from these spaces: {} (bundle: {bundle_edges}; orphans not loaded: {})\n",
            types.values().sum::<i64>(),
            manifest.orphans.rows
        ));
        let explained = rejected
            .iter()
            .map(|r| Explanation {
                space: r.space.clone(),
                id: r.id.clone(),
                reason: "rejected".into(),
                detail: format!("{}: {}", r.status, r.message),
            })
            .collect();
        let details = serde_json::json!({
            "labels": per_space.keys().map(|s| (s.clone(), self.label(s))).collect::<BTreeMap<_, _>>(),
            "spaces": per_space.iter().map(|(s, (b, t, d, c))| serde_json::json!({
                "space": s, "bundle": b, "target": t, "embedding_differs": d, "content_differs": c
            })).collect::<Vec<_>>(),
            "relationships_per_type": types,
            "relationships_in_bundle": bundle_edges,
            "orphans_not_loaded": manifest.orphans.rows,
        });
        Ok(ReadBack {
            held,
            explained,
            details,
            rendered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --target-labels names a space's label; a space it does not name gets the label made from its name.
    #[test]
    fn target_labels_name_the_label_of_a_space() {
        let s = Neo4jSink::new(
            "bolt://127.0.0.1:1/db",
            &SinkOptions {
                labels: Some("code_files:File, code_classes:Class".into()),
                password: Some("x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.label("code_files"), "File");
        assert_eq!(s.label("code_classes"), "Class");
        assert_eq!(s.label("code_functions"), "CodeFunctions");
    }

    #[test]
    fn labels_and_types_are_quoted_not_mangled() {
        assert_eq!(label_of_space("code_files"), "CodeFiles");
        assert_eq!(quoted("CALLS"), "CALLS");
        assert_eq!(quoted("HAS-METHOD"), "`HAS-METHOD`");
        assert_eq!(quoted("a`b"), "`a``b`");
        assert_eq!(quoted("1st"), "`1st`");
    }

    #[test]
    fn content_fields_become_properties_and_collisions_are_renamed() {
        let m = node_properties(r#"{"id": 7, "name": "x", "nested": {"a": [1, 2]}, "gone": null}"#);
        let keys: Vec<String> = m.value.keys().map(|k| k.value.clone()).collect();
        assert!(keys.contains(&"content_id".to_string()), "{keys:?}");
        assert!(keys.contains(&"name".to_string()));
        assert!(!keys.contains(&"gone".to_string()));
        assert_eq!(
            m.value.get(&neo4rs::BoltString::from("nested")),
            Some(&BoltType::from(r#"{"a":[1,2]}"#))
        );
    }
}
