//! Neo4j (and any Bolt 4.x + Cypher server, e.g. ArcadeDB) as a source, read with the neo4rs driver.
//!
//! The graph is staged as two tables:
//! - `nodes`: `id` (Int64, `id(n)`), `element_id` (Utf8, `elementId(n)`), `labels` (List<Utf8>, sorted),
//!   `properties` (Utf8: the property map as typed JSON, keys sorted);
//! - `relationships`: `id`, `element_id`, `type`, `start_id`, `end_id`, `start_element_id`, `end_element_id`,
//!   `properties`.
//!
//! Each table is read by ONE Cypher query whose result is streamed with a fetch size (Bolt PULL n), never by
//! SKIP/LIMIT pages (quadratic) nor by id ranges (ArcadeDB's ids are huge and sparse); the client holds one
//! fetch window plus one Arrow batch, whatever the graph size. A killed snapshot restarts the table.
//!
//! Property values keep their Bolt type in the typed JSON of `properties` (the table is `TYPE_TABLE` below):
//! JSON has integers, floats, strings, booleans, lists and maps; every other Bolt type becomes an object tagged
//! with `"$type"`. A value the tool cannot render exactly (a date beyond chrono's ±262,143 years) keeps its raw
//! Bolt fields and is flagged with `"$fallback"`, and the snapshot logs a warning naming the node and property.
//!
//! neo4rs is async; the pipeline calls sources synchronously from inside its own Tokio runtime, where a nested
//! `block_on` is forbidden. So the driver lives on a private one-thread runtime and answers over std channels.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::Engine;
use neo4rs::{BoltType, ConfigBuilder, Graph};
use serde::de::IntoDeserializer;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Catalog, ColumnInfo, Emit, Fingerprint, ReadEnd, Source, TableInfo};
use crate::error::{Error, Result};

pub const NODES: &str = "nodes";
pub const RELATIONSHIPS: &str = "relationships";

/// Bolt type -> typed JSON, one row per type (each has a test in neo4j/tests.rs and a value in
/// fixtures/neo4j/types.cypher read back from the real server).
pub const TYPE_TABLE: &[(&str, &str)] = &[
    ("Null", "null"),
    ("Boolean", "true / false"),
    ("Integer", "number (64-bit, exact)"),
    (
        "Float (finite)",
        "number, always with a fraction or exponent (1.0), so it reads back as a float",
    ),
    (
        "Float (NaN, ±Infinity)",
        r#"{"$type":"float","value":"NaN" | "Infinity" | "-Infinity"}"#,
    ),
    ("String", "string"),
    ("List", "array of typed values"),
    (
        "Map",
        r#"object of typed values, keys sorted; a map that has a "$type" key is wrapped: {"$type":"map","value":{...}}"#,
    ),
    ("Bytes", r#"{"$type":"bytes","base64":"..."}"#),
    ("Date", r#"{"$type":"date","value":"2024-02-29"}"#),
    (
        "Time (with offset)",
        r#"{"$type":"time","value":"12:34:56.789+01:00"}"#,
    ),
    (
        "LocalTime",
        r#"{"$type":"local_time","value":"12:34:56.789"}"#,
    ),
    (
        "DateTime (with offset)",
        r#"{"$type":"datetime","value":"2024-02-29T12:34:56.789+01:00"}"#,
    ),
    (
        "DateTime (with zone id)",
        r#"{"$type":"datetime","value":"2024-02-29T12:34:56+01:00[Europe/Paris]"}"#,
    ),
    (
        "LocalDateTime",
        r#"{"$type":"local_datetime","value":"2024-02-29T12:34:56.789"}"#,
    ),
    (
        "Duration",
        r#"{"$type":"duration","months":14,"days":3,"seconds":3723,"nanoseconds":0,"value":"P14M3DT3723S"}"#,
    ),
    (
        "Point (2D)",
        r#"{"$type":"point","srid":4326,"x":2.35,"y":48.85}"#,
    ),
    (
        "Point (3D)",
        r#"{"$type":"point","srid":9157,"x":1.0,"y":2.0,"z":3.0}"#,
    ),
    (
        "Node, Relationship, Path (not property values)",
        r#"{"$type":"node" | ..., "$fallback":"..."} (cannot occur in properties)"#,
    ),
];

pub fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("element_id", DataType::Utf8, false),
        Field::new(
            "labels",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("properties", DataType::Utf8, false),
    ]))
}

pub fn relationships_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("element_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("start_id", DataType::Int64, false),
        Field::new("end_id", DataType::Int64, false),
        Field::new("start_element_id", DataType::Utf8, false),
        Field::new("end_element_id", DataType::Utf8, false),
        Field::new("properties", DataType::Utf8, false),
    ]))
}

/// Credentials and connection settings. User and password come from the flags, else the URL, else the
/// environment.
#[derive(Clone, Default)]
pub struct Neo4jOptions {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Records per Bolt PULL (the driver's fetch size) [default: 8192].
    pub fetch_size: Option<usize>,
}

impl std::fmt::Debug for Neo4jOptions {
    // Written by hand so that the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jOptions")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("fetch_size", &self.fetch_size)
            .finish()
    }
}

/// One node or relationship as read, before it becomes Arrow.
struct Rec {
    id: i64,
    element_id: String,
    /// Labels (nodes) or [type] (relationships).
    names: Vec<String>,
    start: Option<(i64, String)>,
    end: Option<(i64, String)>,
    properties: String,
}

pub struct Neo4jSource {
    location: String,
    database: Option<String>,
    user: String,
    password: String,
    /// The client runtime, owned so that it lives as long as the source; shut down in the background on drop,
    /// since a runtime may not be dropped (blocking) inside the pipeline's async context.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    graph: Graph,
    /// `elementId(x)` where the server has it (Neo4j 5, ArcadeDB), else `toString(id(x))` (Neo4j 4).
    has_element_id: bool,
}

impl Neo4jSource {
    /// Connects to `url` (`bolt://[user[:password]@]host:port[/database]`, also bolt+s, bolt+ssc, neo4j, neo4j+s,
    /// neo4j+ssc). User and password: `creds` (flags) first, then the URL, then NEO4J_USERNAME / NEO4J_PASSWORD.
    pub fn open(url: &str, creds: &Neo4jOptions) -> Result<Neo4jSource> {
        let location = super::redact_url(url);
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::usage(format!(
                "--source {location}: not a valid URL ({e}); expected bolt://HOST:PORT[/DATABASE]"
            ))
        })?;
        let host = parsed.host_str().unwrap_or("").to_string();
        if host.is_empty() {
            return Err(Error::usage(format!(
                "--source {location}: no host; expected bolt://HOST:PORT[/DATABASE]"
            )));
        }
        let port = parsed.port().unwrap_or(7687);
        let decode = percent_decode;
        let url_user = Some(decode(parsed.username())).filter(|u| !u.is_empty());
        let url_password = parsed.password().map(decode);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = creds
            .user
            .clone()
            .or(url_user)
            .or_else(|| env("NEO4J_USERNAME"))
            .unwrap_or_else(|| "neo4j".into());
        let password = creds
            .password
            .clone()
            .or(url_password)
            .or_else(|| env("NEO4J_PASSWORD"))
            .ok_or_else(|| {
                Error::usage(format!(
                    "--source {location}: no password; give it in the URL, with --source-password, or in \
                     ENGRAM_MIGRATE_SOURCE_PASSWORD or NEO4J_PASSWORD"
                ))
            })?;
        let database = Some(parsed.path().trim_matches('/').to_string()).filter(|d| !d.is_empty());
        let uri = format!("{}://{host}:{port}", parsed.scheme());
        let mut cfg = ConfigBuilder::new()
            .uri(uri)
            .user(user.clone())
            .password(password.clone())
            .fetch_size(creds.fetch_size.unwrap_or(8192).max(1))
            .max_connections(2)
            .connection_timeout(Duration::from_secs(15));
        if let Some(db) = &database {
            cfg = cfg.db(db.as_str());
        }
        let cfg = cfg
            .build()
            .map_err(|e| Error::usage(format!("--source {location}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("neo4j-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the Bolt client runtime: {e}")))?;
        let graph = {
            let _enter = rt.enter();
            Graph::connect(cfg)
        };
        let graph = match graph {
            Ok(g) => g,
            Err(e) => {
                rt.shutdown_background();
                return Err(Error::source_err(
                    &location,
                    scrub(&e.to_string(), &password),
                ));
            }
        };
        let handle = rt.handle().clone();
        let mut src = Neo4jSource {
            location,
            database,
            user,
            password,
            rt: Some(rt),
            handle,
            graph,
            has_element_id: false,
        };
        // The first query connects and authenticates; its error says which of the two failed.
        src.single_i64("RETURN 1 AS x", "x")?;
        src.has_element_id = src
            .single_i64(
                "MATCH (n) WITH n LIMIT 1 RETURN count(elementId(n)) AS x",
                "x",
            )
            .is_ok();
        Ok(src)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::source_err(&self.location, scrub(&e.to_string(), &self.password))
    }

    /// A neo4rs error as a message that says what to do; the password never appears in it.
    fn driver_err(&self, e: neo4rs::Error, what: &str) -> Error {
        let text = scrub(&e.to_string(), &self.password);
        let lower = text.to_lowercase();
        let msg = match &e {
            neo4rs::Error::AuthenticationError(_) => format!(
                "authentication failed for user {:?} ({text}); check --source-user/--source-password (or the URL, \
                 ENGRAM_MIGRATE_SOURCE_USER/_PASSWORD, NEO4J_USERNAME/NEO4J_PASSWORD)",
                self.user
            ),
            neo4rs::Error::IOError { .. }
            | neo4rs::Error::ConnectionError
            | neo4rs::Error::ConnectionTimedOut
            | neo4rs::Error::ServerUnavailableError(_) => format!(
                "cannot connect ({text}); check the host and port in --source and that the server is running"
            ),
            neo4rs::Error::ProtocolMismatch(_) | neo4rs::Error::UnsupportedVersion(..) => format!(
                "the server does not speak Bolt 4.x ({text}); is this the Bolt port (not HTTP)? Neo4j 4.x/5.x and \
                 ArcadeDB's Bolt plugin are supported"
            ),
            _ if lower.contains("unauthorized") || lower.contains("authentication") || lower.contains("credentials") => {
                format!(
                    "authentication failed for user {:?} ({text}); check --source-user/--source-password",
                    self.user
                )
            }
            _ if lower.contains("database") && (lower.contains("not found") || lower.contains("does not exist") || lower.contains("not exist")) => {
                format!(
                    "database {:?} does not exist ({text}); check the database name in the URL path",
                    self.database.as_deref().unwrap_or("(default)")
                )
            }
            _ => format!("{what}: {text}"),
        };
        Error::source_err(&self.location, msg)
    }

    /// Runs a future on the client runtime and waits for it from this (non-runtime) context.
    fn call<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Internal("the Bolt client task ended without an answer".into()))
    }

    /// Rows of a query, all collected (only for small results: counts, catalogs, sampled re-reads).
    fn rows(&self, q: neo4rs::Query) -> Result<Vec<neo4rs::Row>> {
        let graph = self.graph.clone();
        self.call(async move {
            let mut s = graph.execute_read(q).await?;
            let mut out = vec![];
            while let Some(r) = s.next().await? {
                out.push(r);
            }
            Ok::<_, neo4rs::Error>(out)
        })?
        .map_err(|e| self.driver_err(e, "query failed"))
    }

    fn single_i64(&self, q: &str, col: &str) -> Result<i64> {
        let rows = self.rows(neo4rs::query(q))?;
        let row = rows
            .first()
            .ok_or_else(|| self.err(format!("{q}: no row returned")))?;
        row.get::<i64>(col)
            .map_err(|e| self.err(format!("{q}: {e}")))
    }

    fn eid(&self, var: &str) -> String {
        if self.has_element_id {
            format!("elementId({var})")
        } else {
            format!("toString(id({var}))")
        }
    }

    fn table_query(&self, table: &str) -> Result<String> {
        match table {
            NODES => Ok(format!(
                "MATCH (n) RETURN id(n) AS id, {} AS eid, labels(n) AS names, properties(n) AS props",
                self.eid("n")
            )),
            RELATIONSHIPS => Ok(format!(
                "MATCH (a)-[r]->(b) RETURN id(r) AS id, {} AS eid, [type(r)] AS names, id(a) AS sid, {} AS seid, \
                 id(b) AS tid, {} AS teid, properties(r) AS props",
                self.eid("r"),
                self.eid("a"),
                self.eid("b")
            )),
            other => Err(self.err(format!("no table {other:?} in a graph source (tables: nodes, relationships)"))),
        }
    }

    /// Counts per label (nodes) and per relationship type, from the server.
    pub fn label_and_type_counts(&self) -> Result<(Vec<(String, u64)>, Vec<(String, u64)>)> {
        let labels = self.count_by_name(
            "CALL db.labels() YIELD label RETURN label AS name",
            |l| format!("MATCH (n:{}) RETURN count(n) AS c", quote(l)),
            "MATCH (n) UNWIND labels(n) AS name RETURN name, count(*) AS c",
        )?;
        let types = self.count_by_name(
            "CALL db.relationshipTypes() YIELD relationshipType RETURN relationshipType AS name",
            |t| format!("MATCH ()-[r:{}]->() RETURN count(r) AS c", quote(t)),
            "MATCH ()-[r]->() RETURN type(r) AS name, count(*) AS c",
        )?;
        Ok((labels, types))
    }

    /// Names from a catalog procedure, each counted with its own (index- or count-store-backed) query; servers
    /// without the procedure are counted with one scan. Names with no element left (ArcadeDB keeps labels whose
    /// nodes were deleted) are left out.
    fn count_by_name(
        &self,
        list: &str,
        count_one: impl Fn(&str) -> String,
        scan: &str,
    ) -> Result<Vec<(String, u64)>> {
        let mut out = vec![];
        match self.rows(neo4rs::query(list)) {
            Ok(rows) => {
                for r in rows {
                    let name: String = r
                        .get("name")
                        .map_err(|e| self.err(format!("{list}: {e}")))?;
                    let c = self.single_i64(&count_one(&name), "c")?;
                    if c > 0 {
                        out.push((name, c as u64));
                    }
                }
            }
            Err(_) => {
                for r in self.rows(neo4rs::query(scan))? {
                    let name: String = r
                        .get("name")
                        .map_err(|e| self.err(format!("{scan}: {e}")))?;
                    let c: i64 = r.get("c").map_err(|e| self.err(format!("{scan}: {e}")))?;
                    out.push((name, c as u64));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn rec_from_row(row: &neo4rs::Row, rels: bool) -> std::result::Result<Rec, String> {
        let id: i64 = row.get("id").map_err(|e| format!("id: {e}"))?;
        let element_id: String = row
            .get("eid")
            .map_err(|e| format!("element id of {id}: {e}"))?;
        let mut names: Vec<String> = row
            .get("names")
            .map_err(|e| format!("labels of {id}: {e}"))?;
        names.sort();
        let props: BoltType = row
            .get("props")
            .map_err(|e| format!("properties of {id}: {e}"))?;
        let mut flagged = vec![];
        let value = match &props {
            BoltType::Map(m) => map_to_json(m, &mut flagged),
            BoltType::Null(_) => Value::Object(Map::new()),
            other => to_json(other, &mut flagged),
        };
        for f in &flagged {
            tracing::warn!(id, property = %f, "a property value was kept as raw Bolt fields (flagged $fallback)");
        }
        let (start, end) = if rels {
            (
                Some((
                    row.get("sid").map_err(|e| format!("start of {id}: {e}"))?,
                    row.get("seid").map_err(|e| format!("start of {id}: {e}"))?,
                )),
                Some((
                    row.get("tid").map_err(|e| format!("end of {id}: {e}"))?,
                    row.get("teid").map_err(|e| format!("end of {id}: {e}"))?,
                )),
            )
        } else {
            (None, None)
        };
        Ok(Rec {
            id,
            element_id,
            names,
            start,
            end,
            properties: value.to_string(),
        })
    }

    fn batch(table: &str, recs: &[Rec]) -> Result<RecordBatch> {
        let mut id = Int64Builder::with_capacity(recs.len());
        let mut eid = StringBuilder::with_capacity(recs.len(), recs.len() * 8);
        let mut props = StringBuilder::with_capacity(recs.len(), recs.len() * 64);
        for r in recs {
            id.append_value(r.id);
            eid.append_value(&r.element_id);
            props.append_value(&r.properties);
        }
        let cols: Vec<ArrayRef> = if table == NODES {
            let mut labels = ListBuilder::new(StringBuilder::new());
            for r in recs {
                for l in &r.names {
                    labels.values().append_value(l);
                }
                labels.append(true);
            }
            let labels = labels.finish();
            // The builder's item field is nullable "item", as the schema says.
            vec![
                Arc::new(id.finish()),
                Arc::new(eid.finish()),
                Arc::new(labels),
                Arc::new(props.finish()),
            ]
        } else {
            let mut typ = StringBuilder::new();
            let (mut sid, mut tid) = (Int64Builder::new(), Int64Builder::new());
            let (mut seid, mut teid) = (StringBuilder::new(), StringBuilder::new());
            for r in recs {
                typ.append_value(r.names.first().map(String::as_str).unwrap_or(""));
                let (s, t) = (
                    r.start.clone().unwrap_or_default(),
                    r.end.clone().unwrap_or_default(),
                );
                sid.append_value(s.0);
                seid.append_value(&s.1);
                tid.append_value(t.0);
                teid.append_value(&t.1);
            }
            vec![
                Arc::new(id.finish()),
                Arc::new(eid.finish()),
                Arc::new(typ.finish()),
                Arc::new(sid.finish()),
                Arc::new(tid.finish()),
                Arc::new(seid.finish()),
                Arc::new(teid.finish()),
                Arc::new(props.finish()),
            ]
        };
        let schema = if table == NODES {
            nodes_schema()
        } else {
            relationships_schema()
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn rec_json(table: &str, r: &Rec) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(r.id));
        m.insert("element_id".into(), json!(r.element_id));
        if table == NODES {
            m.insert("labels".into(), json!(r.names));
        } else {
            m.insert("type".into(), json!(r.names.first()));
            let (s, t) = (
                r.start.clone().unwrap_or_default(),
                r.end.clone().unwrap_or_default(),
            );
            m.insert("start_id".into(), json!(s.0));
            m.insert("end_id".into(), json!(t.0));
            m.insert("start_element_id".into(), json!(s.1));
            m.insert("end_element_id".into(), json!(t.1));
        }
        let props: Value = serde_json::from_str(&r.properties).unwrap_or(Value::Null);
        m.insert("properties".into(), props);
        m
    }
}

/// `%XX` escapes of a URL's user info decoded (a password may hold any character).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Neo4jSource {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A label or type as a Cypher identifier.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn scrub(text: &str, password: &str) -> String {
    if password.is_empty() {
        text.to_string()
    } else {
        text.replace(password, "***")
    }
}

fn column(
    name: &str,
    source_type: &str,
    arrow: &str,
    mapped_as: &str,
    fidelity: &str,
) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        source_type: source_type.into(),
        arrow_type: arrow.into(),
        mapped_as: mapped_as.into(),
        fidelity: fidelity.into(),
        synthetic: false,
    }
}

const PROPS_FIDELITY: &str = "exact: typed JSON, every Bolt type tagged (docs/sources/neo4j.md)";

impl Source for Neo4jSource {
    fn kind(&self) -> &'static str {
        "neo4j"
    }

    fn describe(&self) -> Value {
        json!({
            "kind": "neo4j",
            // `path` is the identity a resumed snapshot is compared by (scheme, host, port, database; no password).
            "path": self.location,
            "database": self.database,
            "user": self.user,
            "element_id": if self.has_element_id { "elementId()" } else { "toString(id()) (server has no elementId)" },
        })
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        // Bolt servers expose no cheap change marker: nodes per label set and relationships per type catch
        // inserts and deletes (and relabelling), not a property update that leaves every count as it was; the
        // docs say so.
        let mut fp = Fingerprint::default();
        let q = "MATCH (n) RETURN labels(n) AS ls, count(*) AS c";
        for r in self.rows(neo4rs::query(q))? {
            let mut labels: Vec<String> = r.get("ls").map_err(|e| self.err(format!("{q}: {e}")))?;
            labels.sort();
            let c: i64 = r.get("c").map_err(|e| self.err(format!("{q}: {e}")))?;
            fp = fp.table(NODES, &format!("nodes labelled [{}]", labels.join(", ")), c);
        }
        let q = "MATCH ()-[r]->() RETURN type(r) AS t, count(*) AS c";
        for r in self.rows(neo4rs::query(q))? {
            let t: String = r.get("t").map_err(|e| self.err(format!("{q}: {e}")))?;
            let c: i64 = r.get("c").map_err(|e| self.err(format!("{q}: {e}")))?;
            fp = fp.table(RELATIONSHIPS, &format!("relationships of type {t}"), c);
        }
        Ok(fp)
    }

    fn catalog(&mut self) -> Result<Catalog> {
        let nodes = self.single_i64("MATCH (n) RETURN count(n) AS c", "c")?;
        let rels = self.single_i64("MATCH ()-[r]->() RETURN count(r) AS c", "c")?;
        let eid_type = if self.has_element_id {
            "STRING (elementId)"
        } else {
            "STRING (toString(id))"
        };
        let ids = "exact (ArcadeDB: large sparse integers)";
        Ok(Catalog {
            tables: vec![
                TableInfo {
                    name: NODES.into(),
                    columns: vec![
                        column("id", "INTEGER (id(n))", "Int64", "integer", ids),
                        column("element_id", eid_type, "Utf8", "text", "exact"),
                        column(
                            "labels",
                            "LIST<STRING> (labels(n))",
                            "List(Utf8)",
                            "labels",
                            "exact (sorted)",
                        ),
                        column(
                            "properties",
                            "MAP (properties(n))",
                            "Utf8",
                            "typed_json",
                            PROPS_FIDELITY,
                        ),
                    ],
                    primary_key: vec!["id".into()],
                    foreign_keys: vec![],
                    row_estimate: Some(nodes.max(0) as u64),
                },
                TableInfo {
                    name: RELATIONSHIPS.into(),
                    columns: vec![
                        column("id", "INTEGER (id(r))", "Int64", "integer", ids),
                        column("element_id", eid_type, "Utf8", "text", "exact"),
                        column("type", "STRING (type(r))", "Utf8", "text", "exact"),
                        column(
                            "start_id",
                            "INTEGER (id(startNode(r)))",
                            "Int64",
                            "integer",
                            ids,
                        ),
                        column(
                            "end_id",
                            "INTEGER (id(endNode(r)))",
                            "Int64",
                            "integer",
                            ids,
                        ),
                        column("start_element_id", eid_type, "Utf8", "text", "exact"),
                        column("end_element_id", eid_type, "Utf8", "text", "exact"),
                        column(
                            "properties",
                            "MAP (properties(r))",
                            "Utf8",
                            "typed_json",
                            PROPS_FIDELITY,
                        ),
                    ],
                    primary_key: vec!["id".into()],
                    foreign_keys: vec![],
                    row_estimate: Some(rels.max(0) as u64),
                },
            ],
            cycles: vec![],
            skipped: vec![],
        })
    }

    fn schema(&self, table: &TableInfo) -> Result<SchemaRef> {
        match table.name.as_str() {
            NODES => Ok(nodes_schema()),
            RELATIONSHIPS => Ok(relationships_schema()),
            other => Err(self.err(format!("no table {other:?} in a graph source"))),
        }
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        let q = match table.name.as_str() {
            NODES => "MATCH (n) RETURN count(n) AS c",
            RELATIONSHIPS => "MATCH ()-[r]->() RETURN count(r) AS c",
            other => return Err(self.err(format!("no table {other:?} in a graph source"))),
        };
        Ok(self.single_i64(q, "c")?.max(0) as u64)
    }

    fn read_table(
        &mut self,
        table: &TableInfo,
        _after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        let q = self.table_query(&table.name)?;
        let rels = table.name == RELATIONSHIPS;
        let batch_size = batch_size.max(1);
        // At most two batches in flight between the client task and this thread: memory stays bounded.
        let (tx, rx) = mpsc::sync_channel::<std::result::Result<Vec<Rec>, String>>(2);
        let graph = self.graph.clone();
        let password = self.password.clone();
        self.handle.spawn(async move {
            let run = async {
                let q = neo4rs::query(&q);
                let mut stream = graph
                    .execute_read(q)
                    .await
                    .map_err(|e| scrub(&e.to_string(), &password))?;
                let mut chunk = Vec::with_capacity(batch_size);
                while let Some(row) = stream
                    .next()
                    .await
                    .map_err(|e| scrub(&e.to_string(), &password))?
                {
                    chunk.push(Self::rec_from_row(&row, rels)?);
                    if chunk.len() >= batch_size {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(batch_size));
                        if tx.send(Ok(full)).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk));
                }
                Ok::<(), String>(())
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e));
            }
        });
        let mut rows = 0u64;
        for msg in rx {
            let recs = msg.map_err(|e| self.err(format!("reading {}: {e}", table.name)))?;
            rows += recs.len() as u64;
            emit(Self::batch(&table.name, &recs)?, None)?;
        }
        Ok(ReadEnd::Done {
            rows,
            read_up_to: json!({ "rows": rows }),
        })
    }

    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        let ids: Vec<i64> = keys
            .iter()
            .map(|k| k.get("id").and_then(Value::as_i64).unwrap_or(i64::MIN))
            .collect();
        let rels = table.name == RELATIONSHIPS;
        let base = self.table_query(&table.name)?;
        // Re-read by id: the same RETURN clause as the snapshot, so values go through the same conversion.
        let q = if rels {
            base.replacen(
                "MATCH (a)-[r]->(b)",
                "UNWIND $ids AS i MATCH (a)-[r]->(b) WHERE id(r) = i",
                1,
            )
        } else {
            base.replacen("MATCH (n)", "UNWIND $ids AS i MATCH (n) WHERE id(n) = i", 1)
        };
        let mut found: std::collections::HashMap<i64, Map<String, Value>> = Default::default();
        for chunk in ids.chunks(200) {
            let rows = self.rows(neo4rs::query(&q).param("ids", chunk.to_vec()))?;
            for row in rows {
                let rec = Self::rec_from_row(&row, rels).map_err(|e| self.err(e))?;
                found.insert(rec.id, Self::rec_json(&table.name, &rec));
            }
        }
        Ok(ids.iter().map(|i| found.remove(i)).collect())
    }

    fn group_counts(&mut self) -> Result<Vec<super::GroupCount>> {
        let (labels, types) = self.label_and_type_counts()?;
        let mut out = vec![];
        for (name, n) in labels {
            out.push(super::GroupCount {
                table: NODES.into(),
                column: "labels".into(),
                value: name,
                rows: n,
            });
        }
        for (name, n) in types {
            out.push(super::GroupCount {
                table: RELATIONSHIPS.into(),
                column: "type".into(),
                value: name,
                rows: n,
            });
        }
        Ok(out)
    }
}

fn float_json(f: f64) -> Value {
    if f.is_finite() {
        // serde_json writes finite floats with a fraction or exponent ("1.0"), so they read back as floats.
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    } else {
        let v = if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        json!({"$type": "float", "value": v})
    }
}

fn map_to_json(m: &neo4rs::BoltMap, flagged: &mut Vec<String>) -> Value {
    let mut entries: Vec<(&str, &BoltType)> =
        m.value.iter().map(|(k, v)| (k.value.as_str(), v)).collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Map::with_capacity(entries.len());
    for (k, v) in entries {
        let before = flagged.len();
        out.insert(k.to_string(), to_json(v, flagged));
        for f in &mut flagged[before..] {
            *f = format!("{k}{}{f}", if f.is_empty() { "" } else { "." });
        }
    }
    if out.contains_key("$type") {
        json!({"$type": "map", "value": out})
    } else {
        Value::Object(out)
    }
}

fn fallback(kind: &str, raw: Value, why: &str, flagged: &mut Vec<String>) -> Value {
    flagged.push(String::new());
    json!({"$type": kind, "raw": raw, "$fallback": why})
}

fn iso_duration(months: i64, days: i64, seconds: i64, nanos: i64) -> String {
    let mut s = format!("P{months}M{days}DT{seconds}");
    if nanos != 0 {
        s.push_str(
            &format!(".{:09}", nanos.unsigned_abs())
                .trim_end_matches('0')
                .to_string(),
        );
    }
    s.push('S');
    s
}

/// One Bolt value as typed JSON (TYPE_TABLE). `flagged` collects the paths of values kept as raw fields.
pub fn to_json(v: &BoltType, flagged: &mut Vec<String>) -> Value {
    use chrono::SecondsFormat;
    match v {
        BoltType::Null(_) => Value::Null,
        BoltType::Boolean(b) => Value::Bool(b.value),
        BoltType::Integer(i) => json!(i.value),
        BoltType::Float(f) => float_json(f.value),
        BoltType::String(s) => Value::String(s.value.clone()),
        BoltType::List(l) => Value::Array(
            l.value
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let before = flagged.len();
                    let out = to_json(x, flagged);
                    for f in &mut flagged[before..] {
                        *f = format!("[{i}]{f}");
                    }
                    out
                })
                .collect(),
        ),
        BoltType::Map(m) => map_to_json(m, flagged),
        BoltType::Bytes(b) => {
            json!({"$type": "bytes", "base64": base64::engine::general_purpose::STANDARD.encode(&b.value)})
        }
        BoltType::Date(d) => match chrono::NaiveDate::try_from(d) {
            Ok(d) => json!({"$type": "date", "value": d.format("%Y-%m-%d").to_string()}),
            Err(_) => fallback(
                "date",
                raw_fields(v),
                "outside the years chrono can render",
                flagged,
            ),
        },
        BoltType::Time(_) => match time_fields(v) {
            Ok((nanos, offset)) => match local_time(nanos) {
                Some(t) => {
                    let off = offset.unwrap_or(0);
                    match chrono::FixedOffset::east_opt(off as i32) {
                        Some(o) => {
                            json!({"$type": "time", "value": format!("{}{}", fmt_time(t), o)})
                        }
                        None => fallback(
                            "time",
                            json!({"nanoseconds": nanos, "tz_offset_seconds": off}),
                            "offset out of range",
                            flagged,
                        ),
                    }
                }
                None => fallback(
                    "time",
                    json!({"nanoseconds": nanos, "tz_offset_seconds": offset}),
                    "time of day out of range",
                    flagged,
                ),
            },
            Err(e) => fallback(
                "time",
                Value::String(e.to_string()),
                "unreadable Bolt time",
                flagged,
            ),
        },
        BoltType::LocalTime(_) => match time_fields(v) {
            Ok((nanos, _)) => match local_time(nanos) {
                Some(t) => json!({"$type": "local_time", "value": fmt_time(t)}),
                None => fallback(
                    "local_time",
                    json!({"nanoseconds": nanos}),
                    "time of day out of range",
                    flagged,
                ),
            },
            Err(e) => fallback(
                "local_time",
                Value::String(e.to_string()),
                "unreadable Bolt time",
                flagged,
            ),
        },
        BoltType::DateTime(dt) => match chrono::DateTime::<chrono::FixedOffset>::try_from(dt) {
            Ok(d) => {
                json!({"$type": "datetime", "value": d.to_rfc3339_opts(SecondsFormat::AutoSi, false)})
            }
            Err(_) => fallback(
                "datetime",
                raw_fields(v),
                "outside the years chrono can render",
                flagged,
            ),
        },
        BoltType::LocalDateTime(dt) => match chrono::NaiveDateTime::try_from(dt) {
            Ok(d) => {
                json!({"$type": "local_datetime", "value": d.format("%Y-%m-%dT%H:%M:%S%.f").to_string()})
            }
            Err(_) => fallback(
                "local_datetime",
                raw_fields(v),
                "outside the years chrono can render",
                flagged,
            ),
        },
        BoltType::DateTimeZoneId(dt) => {
            let zone = dt.tz_id().to_string();
            match chrono::DateTime::<chrono::FixedOffset>::try_from(dt) {
                Ok(d) => {
                    json!({"$type": "datetime", "value": format!("{}[{zone}]", d.to_rfc3339_opts(SecondsFormat::AutoSi, false))})
                }
                // Unknown zone name or a wall time that does not exist or is ambiguous in the zone: keep the wall
                // time and the zone, without offset.
                Err(_) => match chrono::NaiveDateTime::try_from(dt) {
                    Ok(local) => {
                        json!({"$type": "datetime", "value": format!("{}[{zone}]", local.format("%Y-%m-%dT%H:%M:%S%.f"))})
                    }
                    Err(_) => fallback(
                        "datetime",
                        raw_fields(v),
                        "outside the years chrono can render",
                        flagged,
                    ),
                },
            }
        }
        BoltType::Duration(_) => match <(i64, i64, i64, i64)>::deserialize(v.into_deserializer()) {
            Ok((months, days, seconds, nanos)) => json!({
                "$type": "duration", "months": months, "days": days, "seconds": seconds, "nanoseconds": nanos,
                "value": iso_duration(months, days, seconds, nanos),
            }),
            Err(e) => fallback(
                "duration",
                Value::String(e.to_string()),
                "unreadable Bolt duration",
                flagged,
            ),
        },
        BoltType::Point2D(p) => {
            json!({"$type": "point", "srid": p.sr_id.value, "x": float_json(p.x.value), "y": float_json(p.y.value)})
        }
        BoltType::Point3D(p) => {
            json!({"$type": "point", "srid": p.sr_id.value, "x": float_json(p.x.value), "y": float_json(p.y.value), "z": float_json(p.z.value)})
        }
        BoltType::Node(_) => fallback(
            "node",
            Value::Null,
            "a node is not a property value",
            flagged,
        ),
        BoltType::Relation(_) | BoltType::UnboundedRelation(_) => fallback(
            "relationship",
            Value::Null,
            "a relationship is not a property value",
            flagged,
        ),
        BoltType::Path(_) => fallback(
            "path",
            Value::Null,
            "a path is not a property value",
            flagged,
        ),
    }
}

/// The raw fields of a temporal value (a map of integers), for the flagged fallback.
fn raw_fields(v: &BoltType) -> Value {
    match std::collections::BTreeMap::<String, i64>::deserialize(v.into_deserializer()) {
        Ok(m) => json!(m),
        Err(e) => Value::String(format!("{v:?} ({e})")),
    }
}

fn local_time(nanos: i64) -> Option<chrono::NaiveTime> {
    if !(0..86_400_000_000_000).contains(&nanos) {
        return None;
    }
    chrono::NaiveTime::from_num_seconds_from_midnight_opt(
        (nanos / 1_000_000_000) as u32,
        (nanos % 1_000_000_000) as u32,
    )
}

fn fmt_time(t: chrono::NaiveTime) -> String {
    t.format("%H:%M:%S%.f").to_string()
}

#[cfg(test)]
mod tests;

/// Nanoseconds since midnight and the offset of a Bolt Time or LocalTime. neo4rs keeps these fields private, and
/// its public conversions (chrono `From` impls, its serde view) panic on a value out of range, which a migration
/// must flag, not crash on. The derived `Debug` form is the one panic-free public view of the raw integers
/// (`BoltTime { nanoseconds: BoltInteger { value: N }, tz_offset_seconds: BoltInteger { value: S } }`); the
/// driver is pinned to an exact version and the type tests fail if that form ever changes.
fn time_fields(v: &BoltType) -> std::result::Result<(i64, Option<i64>), String> {
    let debug = match v {
        BoltType::Time(t) => format!("{t:?}"),
        BoltType::LocalTime(t) => format!("{t:?}"),
        other => return Err(format!("not a time: {other:?}")),
    };
    let mut numbers = debug.split("value: ").skip(1).map(|s| {
        s.split(|c: char| c != '-' && !c.is_ascii_digit())
            .next()
            .unwrap_or("")
            .parse::<i64>()
    });
    let nanos = match numbers.next() {
        Some(Ok(n)) => n,
        _ => return Err(format!("unreadable Bolt time {debug}")),
    };
    let offset = match numbers.next() {
        Some(Ok(o)) => Some(o),
        Some(Err(_)) => return Err(format!("unreadable Bolt time {debug}")),
        None => None,
    };
    Ok((nanos, offset))
}
