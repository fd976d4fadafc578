//! The live Engram sink: loads a finished bundle into a running Engram server over HTTP (`engram+http://`) or
//! gRPC (`engram+grpc://`), then reads back what the server kept and explains every memory it did not keep.
//!
//! Engram accepts less than its docs say (shared/ENGRAM.md, docs/targets/engram.md): it answers 201 for memories
//! its near-duplicate filter then drops, keeps 100,000 memories per space, replaces `created_at` over gRPC and has
//! no API for edges, decay rates or activation. So the bundle stays the full truth and the sink verifies.
//!
//! Resume: after every acknowledged batch the rows done per bundle part go to a checkpoint file; a killed load
//! started again skips them. Memory ids are sent with every write, so a batch sent twice lands once.

pub mod grpc;
pub mod http;
pub mod predict;
pub mod proto;
pub mod verify;

use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, TimestampMicrosecondType};
use serde::Serialize;

use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::schema::{is_valid_space_id, memory};

/// Engram stores exactly this many floats per embedding. Shorter bundle vectors are zero-padded when sent (cosine
/// similarity is unchanged); longer ones are refused before anything is sent.
pub const ENGRAM_DIM: usize = 768;

/// Environment variable that holds the API key (`engram_key_<id>_<secret>`) when the server has auth on.
pub const DEFAULT_TOKEN_ENV: &str = "ENGRAM_API_KEY";
/// Memories Engram keeps per space; beyond it the least active are evicted.
pub const DEFAULT_SPACE_LIMIT: u64 = 100_000;
/// Engram skips a memory whose embedding has at least this cosine with one it already holds.
pub const DUPLICATE_COSINE: f32 = 0.95;
/// Engram's HTTP port when none is given (also where a gRPC target is read back from by default).
pub const DEFAULT_HTTP_PORT: u16 = 7432;
pub const DEFAULT_GRPC_PORT: u16 = 50051;
/// The largest `content` Engram accepts.
pub const MAX_CONTENT_BYTES: usize = 100 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
}

/// `engram+http://HOST:PORT` or `engram+grpc://HOST:PORT`, with optional query settings:
/// `http_port=N` (gRPC only: the HTTP port for spaces and read-back, default 7432), `space_limit=N` (the server's
/// per-space limit, used to explain drops, default 100000), `token_env=VAR` (default ENGRAM_API_KEY).
#[derive(Debug, Clone)]
pub struct EngramTarget {
    pub protocol: Protocol,
    /// `host:port` the memories are sent to.
    pub authority: String,
    /// `http://host:port`: spaces, counts and read-back go there for both protocols.
    pub http_base: String,
    pub space_limit: u64,
    pub token_env: String,
    spec: String,
}

impl EngramTarget {
    pub fn parse(spec: &str) -> Result<EngramTarget> {
        let bad = |why: &str| {
            Error::usage(format!(
                "--target {spec}: {why}; expected engram+http://HOST:PORT or engram+grpc://HOST:PORT[?http_port=N]"
            ))
        };
        let protocol = if spec.starts_with("engram+http://") {
            Protocol::Http
        } else if spec.starts_with("engram+grpc://") {
            Protocol::Grpc
        } else {
            return Err(bad("unknown scheme"));
        };
        let url = url::Url::parse(spec).map_err(|e| bad(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            // A key in the URL would end up in logs and reports.
            return Err(Error::usage(format!(
                "--target: put no credentials in the URL; set the API key in the environment variable {DEFAULT_TOKEN_ENV} instead"
            )));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_string();
        if !(url.path().is_empty() || url.path() == "/") {
            return Err(bad("a path is not expected"));
        }
        let default_port = match protocol {
            Protocol::Http => DEFAULT_HTTP_PORT,
            Protocol::Grpc => DEFAULT_GRPC_PORT,
        };
        let port = url.port().unwrap_or(default_port);
        let mut http_port = match protocol {
            Protocol::Http => port,
            Protocol::Grpc => DEFAULT_HTTP_PORT,
        };
        let mut space_limit = DEFAULT_SPACE_LIMIT;
        let mut token_env = DEFAULT_TOKEN_ENV.to_string();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "http_port" if protocol == Protocol::Grpc => {
                    http_port = v
                        .parse()
                        .map_err(|_| bad("http_port is not a port number"))?
                }
                "space_limit" => {
                    space_limit = v.parse().map_err(|_| bad("space_limit is not a number"))?
                }
                "token_env" => token_env = v.to_string(),
                other => return Err(bad(&format!("unknown setting {other:?}"))),
            }
        }
        // IPv6 hosts come back from `url` in brackets already.
        let authority = format!("{host}:{port}");
        Ok(EngramTarget {
            protocol,
            http_base: format!("http://{host}:{http_port}"),
            authority,
            space_limit,
            token_env,
            spec: spec.to_string(),
        })
    }

    pub fn describe(&self) -> String {
        self.spec.clone()
    }

    /// The API key from the environment, if set. Never printed.
    pub fn token(&self) -> Option<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
    }
}

/// One memory as sent to Engram: what the server stores. Edges, decay rate and activation stay in the bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: String,
    pub content: String,
    pub embedding: Vec<f32>,
    pub confidence: f32,
    /// Microseconds since the epoch, UTC.
    pub created_at: Option<i64>,
    pub memory_type: String,
}

impl Memory {
    pub fn timestamp_rfc3339(&self) -> Option<String> {
        self.created_at
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }
}

/// What the server answered for one memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx / OK, with the id the server reports.
    Accepted(String),
    /// A 4xx / invalid request: not retried, reported per memory.
    Rejected { status: String, message: String },
}

/// A memory the server refused (the loader keeps them in its checkpoint).
pub use crate::sink::load::Rejection;

/// The one retry policy of the tool (also the embedder's).
pub use crate::retry::Backoff;

/// The memory_type names of the bundle and their Engram gRPC enum values (HTTP takes the name).
pub const MEMORY_TYPES: &[(&str, proto::MemoryType)] = &[
    ("episodic", proto::MemoryType::Episodic),
    ("semantic", proto::MemoryType::Semantic),
    ("procedural", proto::MemoryType::Procedural),
    ("working", proto::MemoryType::Working),
];

pub fn memory_type(name: &str) -> proto::MemoryType {
    MEMORY_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| *t)
        .unwrap_or(proto::MemoryType::Unspecified)
}

/// Confidence value -> Engram's category (gRPC): upper bounds, first match wins.
pub const CONFIDENCE_CATEGORIES: &[(f32, proto::ConfidenceCategory)] = &[
    (0.0, proto::ConfidenceCategory::None),
    (0.4, proto::ConfidenceCategory::Low),
    (0.7, proto::ConfidenceCategory::Medium),
    (0.99, proto::ConfidenceCategory::High),
    (1.0, proto::ConfidenceCategory::Certain),
];

pub fn confidence_category(value: f32) -> proto::ConfidenceCategory {
    CONFIDENCE_CATEGORIES
        .iter()
        .find(|(upper, _)| value <= *upper)
        .map(|(_, c)| *c)
        .unwrap_or(proto::ConfidenceCategory::Certain)
}

/// Cosine similarity as Engram's duplicate filter sees it; two zero vectors are the same (they collapse).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Checks that a bundle part can be sent: the embedding column is 768 floats (Engram rejects anything else).
fn check_part_schema(path: &Path) -> Result<()> {
    let schema = parquet_io::read_schema(path)?;
    for col in [memory::ID, memory::CONTENT, memory::CONFIDENCE] {
        if schema.field_with_name(col).is_err() {
            return Err(Error::source_err(
                path.display().to_string(),
                format!("bundle part has no {col} column; is this an Engram bundle? Rebuild it with `engram-migrate run`"),
            ));
        }
    }
    let f = schema.field_with_name(memory::EMBEDDING).map_err(|_| {
        Error::source_err(
            path.display().to_string(),
            "bundle part has no embedding column; rebuild the bundle with `engram-migrate run`",
        )
    })?;
    match f.data_type() {
        DataType::FixedSizeList(item, n)
            if (1..=ENGRAM_DIM).contains(&(*n as usize)) && item.data_type() == &DataType::Float32 =>
        {
            Ok(())
        }
        other => Err(Error::source_err(
            path.display().to_string(),
            format!(
                "embeddings are {other}, but Engram stores {ENGRAM_DIM} floats per memory (shorter vectors are \
                 zero-padded); rebuild the bundle with an embedding of at most {ENGRAM_DIM} dimensions (nothing was sent)"
            ),
        )),
    }
}

/// The memories of one bundle batch, checked row by row: an embedding Engram would refuse stops the load.
pub fn memories_of(batch: &RecordBatch, file: &Path) -> Result<Vec<Memory>> {
    let col = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            Error::source_err(file.display().to_string(), format!("no {name} column"))
        })
    };
    let ids = col(memory::ID)?.as_string::<i32>();
    let contents = col(memory::CONTENT)?.as_string::<i32>();
    let confidence = col(memory::CONFIDENCE)?.as_primitive::<Float32Type>();
    let embeddings = col(memory::EMBEDDING)?.as_fixed_size_list();
    let created = batch
        .column_by_name(memory::CREATED_AT)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
    let types = batch
        .column_by_name(memory::MEMORY_TYPE)
        .and_then(|c| c.as_string_opt::<i32>());
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let id = ids.value(i);
        if embeddings.is_null(i) || embeddings.value_length() as usize > ENGRAM_DIM {
            return Err(Error::source_err(
                file.display().to_string(),
                format!("memory {id:?} has no embedding of at most {ENGRAM_DIM} floats; Engram would replace it with a constant vector (and collapse such memories); rebuild the bundle"),
            ));
        }
        let emb = embeddings.value(i);
        let emb = emb.as_primitive::<Float32Type>();
        if emb.null_count() > 0 || emb.values().iter().any(|v| !v.is_finite()) {
            return Err(Error::source_err(
                file.display().to_string(),
                format!("memory {id:?} has a NULL, NaN or infinite value in its embedding; rebuild the bundle"),
            ));
        }
        out.push(Memory {
            id: id.to_string(),
            content: contents.value(i).to_string(),
            // Zero-padded to Engram's size: cosine similarity (the server's duplicate rule) is unchanged.
            embedding: {
                let mut v = emb.values().to_vec();
                v.resize(ENGRAM_DIM, 0.0);
                v
            },
            confidence: confidence.value(i).clamp(0.0, 1.0),
            created_at: created.filter(|c| c.is_valid(i)).map(|c| c.value(i)),
            memory_type: types
                .map(|t| t.value(i).to_string())
                .unwrap_or_else(|| "semantic".into()),
        });
    }
    Ok(out)
}

/// Request settings of the live sink.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub backoff: Backoff,
    /// Per-request timeout. The first write to a new Engram space takes ~15 s (space creation).
    pub request_timeout: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The health check must answer within seconds (it runs before the long stages of `run`): two quick attempts.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTHCHECK_BACKOFF: Backoff = Backoff {
    attempts: 2,
    base: Duration::from_millis(200),
    cap: Duration::from_millis(500),
};

/// Either protocol, behind one `send`.
pub enum Client {
    Http(http::HttpApi),
    Grpc(grpc::GrpcApi),
}

impl Client {
    /// Sends one unit: one memory per request over HTTP, one stream per slice over gRPC.
    async fn send(&self, space: &str, mems: &[Memory]) -> Result<Vec<Outcome>> {
        match self {
            Client::Http(c) => {
                let mut out = Vec::with_capacity(mems.len());
                for m in mems {
                    out.push(c.remember(space, m).await?);
                }
                Ok(out)
            }
            Client::Grpc(c) => c.remember_slice(space, mems).await,
        }
    }
}

/// `engram+http://` and `engram+grpc://` in the sink registry.
pub struct EngramFactory;

impl crate::sink::SinkFactory for EngramFactory {
    fn name(&self) -> &'static str {
        "engram"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["engram+http://", "engram+grpc://"]
    }
    fn embedding_dim_limit(&self, _opts: &crate::sink::SinkOptions) -> Option<usize> {
        Some(ENGRAM_DIM)
    }
    fn open(
        &self,
        spec: &str,
        _opts: &crate::sink::SinkOptions,
    ) -> Result<Box<dyn crate::sink::Sink>> {
        Ok(Box::new(EngramSink::new(
            EngramTarget::parse(spec)?,
            LiveOptions::default(),
        )?))
    }
}

/// A running Engram server as a sink. Spaces, counts and the read-back go over HTTP for both protocols.
/// Deletes in flight at once (an incremental run's deletes are few; the server answers each at once).
const DELETES_AT_ONCE: usize = 16;

pub struct EngramSink {
    target: EngramTarget,
    opts: LiveOptions,
    token: Option<String>,
    http: http::HttpApi,
    /// Made by `prepare` (gRPC connects then).
    client: tokio::sync::OnceCell<Client>,
}

impl EngramSink {
    pub fn new(target: EngramTarget, opts: LiveOptions) -> Result<EngramSink> {
        let token = target.token();
        let http = http::HttpApi::new(
            &target.http_base,
            token.clone(),
            opts.request_timeout,
            opts.backoff,
        )?;
        Ok(EngramSink {
            target,
            opts,
            token,
            http,
            client: tokio::sync::OnceCell::new(),
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.target.protocol
    }

    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                Ok(match self.target.protocol {
                    Protocol::Http => Client::Http(self.http.clone()),
                    Protocol::Grpc => Client::Grpc(
                        grpc::GrpcApi::connect(
                            &self.target.authority,
                            self.token.as_deref(),
                            self.opts.request_timeout,
                            self.opts.backoff,
                        )
                        .await?,
                    ),
                })
            })
            .await
    }
}

#[async_trait::async_trait]
impl crate::sink::Sink for EngramSink {
    fn name(&self) -> &'static str {
        "engram"
    }

    fn identity(&self) -> String {
        self.target.describe()
    }

    /// `/health` (is Engram there, degraded or not) and `/api/v1/spaces` (is the key accepted); for gRPC also
    /// the gRPC port. Quick attempts only: an unreachable server fails in seconds, before any long stage.
    async fn healthcheck(&self) -> Result<()> {
        let quick = http::HttpApi::new(
            &self.target.http_base,
            self.token.clone(),
            HEALTHCHECK_TIMEOUT,
            HEALTHCHECK_BACKOFF,
        )?;
        quick.check_reachable().await?;
        quick.check_credentials().await?;
        if self.target.protocol == Protocol::Grpc {
            grpc::GrpcApi::connect(
                &self.target.authority,
                self.token.as_deref(),
                HEALTHCHECK_TIMEOUT,
                HEALTHCHECK_BACKOFF,
            )
            .await?;
        }
        Ok(())
    }

    /// Engram's own rules, checked before anything is sent: space ids of 3 to 64 of `[a-z0-9_-]`, 768-float
    /// embeddings (each row is checked again as it is sent).
    fn accepts(&self, bundle: &Path, manifest: &BundleManifest) -> Result<()> {
        for s in &manifest.spaces {
            if !is_valid_space_id(&s.space) {
                return Err(Error::source_err(
                    bundle.display().to_string(),
                    format!("space {:?} is not a valid Engram space id (3 to 64 characters of a-z, 0-9, _ and -); fix the mapping and rebuild the bundle", s.space),
                ));
            }
        }
        for path in manifest.memory_files(bundle) {
            check_part_schema(&path)?;
        }
        Ok(())
    }

    async fn prepare(&self, manifest: &BundleManifest) -> Result<()> {
        self.http.check_reachable().await?;
        let spaces: Vec<String> = manifest
            .spaces
            .iter()
            .filter(|s| s.memories.rows > 0)
            .map(|s| s.space.clone())
            .collect();
        self.http.ensure_spaces(&spaces).await?;
        self.client().await?;
        Ok(())
    }

    /// HTTP: one memory per request (Engram has no batch endpoint); gRPC: a batch split over the streams in flight.
    fn unit_rows(&self, limits: &crate::sink::DeliverLimits) -> usize {
        match self.target.protocol {
            Protocol::Http => 1,
            Protocol::Grpc => limits.batch_rows.div_ceil(limits.parallel.max(1)).max(1),
        }
    }

    async fn write(&self, unit: &crate::sink::WriteUnit) -> Result<Vec<crate::sink::RowOutcome>> {
        let mems = memories_of(&unit.batch, &unit.file)?;
        let outcomes = self.client().await?.send(&unit.space, &mems).await?;
        Ok(mems
            .into_iter()
            .zip(outcomes)
            .map(|(m, o)| match o {
                Outcome::Accepted(_) => crate::sink::RowOutcome::Accepted,
                Outcome::Rejected { status, message } => crate::sink::RowOutcome::Rejected {
                    id: m.id,
                    status,
                    message,
                },
            })
            .collect())
    }

    /// Replays Engram's near-duplicate filter and per-space limit over the bundle (and the HTTP size limit).
    fn predict_loss(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
    ) -> Result<Option<crate::sink::LossPrediction>> {
        let p = predict::predict(bundle, manifest, self.target.space_limit)?;
        let protocol = self.target.protocol;
        Ok(Some(crate::sink::LossPrediction {
            lost: p.lost(protocol),
            total: p.memories,
            rendered: p.render(protocol),
            worst: p
                .spaces
                .iter()
                .filter(|s| s.lost(protocol) > 0)
                .map(|s| {
                    format!(
                        "{}: {} of {} ({} near-duplicates, {} of them identical embeddings; {} over the limit{})",
                        s.space,
                        s.lost(protocol),
                        s.memories,
                        s.near_duplicates,
                        s.identical,
                        s.over_limit,
                        if protocol == Protocol::Http && s.too_large_for_http > 0 {
                            format!("; {} contents over 100 KB, which gRPC accepts", s.too_large_for_http)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect(),
        }))
    }

    fn can_roll_back(&self) -> bool {
        false
    }

    /// Every write is a remember keyed by id: a part of a bundle is as good a load as the whole.
    fn accepts_delta(&self) -> bool {
        true
    }

    /// One `DELETE /api/v1/memories/{id}` per memory (over HTTP for both protocols: the gRPC service has no
    /// delete). Engram keeps the memory and answers "not_supported": counted as kept, with its words.
    async fn delete(&self, space: &str, ids: &[String]) -> Result<crate::sink::DeleteOutcome> {
        use futures::stream::{self, StreamExt};
        // Owned values: a future that borrows the ids does not satisfy async_trait's bounds.
        let (http, space) = (self.http.clone(), space.to_string());
        let answers: Vec<Result<http::Deleted>> = stream::iter(ids.to_vec())
            .map(move |id| {
                let (http, space) = (http.clone(), space.clone());
                async move { http.delete(&space, &id).await }
            })
            .buffered(DELETES_AT_ONCE)
            .collect()
            .await;
        let mut out = crate::sink::DeleteOutcome {
            requested: ids.len() as u64,
            ..Default::default()
        };
        for a in answers {
            match a? {
                http::Deleted::Deleted | http::Deleted::Absent => out.deleted += 1,
                http::Deleted::Kept(why) => {
                    out.kept += 1;
                    if out.note.is_empty() {
                        out.note = format!("Engram kept them, answering: {why}");
                    }
                }
            }
        }
        Ok(out)
    }

    /// Engram deletes nothing: `DELETE /api/v1/memories/{id}` answers 200 with `"status": "not_supported"` and
    /// keeps the memory (its handler, read from the server's code). So a load is not undone here; it says how.
    async fn rollback(&self, bundle: &Path, _manifest: &BundleManifest) -> Result<u64> {
        Err(Error::usage(format!(
            "{}: Engram cannot delete memories (DELETE /api/v1/memories/ID answers 200 \"not_supported\" and keeps \
             the memory), so a load into it cannot be rolled back; nothing was changed. To start over, load {} into \
             fresh spaces (a mapping with other space names) or into a server with an empty data directory",
            self.target.describe(),
            bundle.display()
        )))
    }

    async fn read_back(
        &self,
        bundle: &Path,
        manifest: &BundleManifest,
        rejected: &[Rejection],
    ) -> Result<crate::sink::ReadBack> {
        let mut v = verify::run(&self.http, manifest, bundle, rejected, &self.target).await?;
        let explained = v
            .not_kept
            .iter()
            .map(|n| crate::sink::Explanation {
                space: n.space.clone(),
                id: n.id.clone(),
                reason: verify::reason_key(&n.reason).to_string(),
                detail: n.reason.to_string(),
            })
            .collect();
        let held = std::mem::take(&mut v.held);
        Ok(crate::sink::ReadBack {
            held,
            explained,
            rendered: v.render(50),
            details: serde_json::json!({ "protocol": self.target.protocol, "verification": v }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = EngramTarget::parse("engram+http://127.0.0.1:17432").unwrap();
        assert_eq!(t.protocol, Protocol::Http);
        assert_eq!(t.authority, "127.0.0.1:17432");
        assert_eq!(t.http_base, "http://127.0.0.1:17432");
        assert_eq!(t.space_limit, DEFAULT_SPACE_LIMIT);
        let t =
            EngramTarget::parse("engram+grpc://localhost?http_port=9000&space_limit=50").unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.authority, "localhost:50051");
        assert_eq!(t.http_base, "http://localhost:9000");
        assert_eq!(t.space_limit, 50);
        let t = EngramTarget::parse("engram+grpc://[::1]:1234").unwrap();
        assert_eq!(t.authority, "[::1]:1234");
        assert_eq!(t.http_base, "http://[::1]:7432");
        for bad in [
            "engram+http://u:secret@host:1",
            "engram+http://host:1/api",
            "engram+http://host:1?nope=1",
            "engram+http://host:1?http_port=5",
            "engram+ftp://host",
        ] {
            let e = EngramTarget::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn memory_type_table() {
        // Stated from proto/engram.proto independently of MEMORY_TYPES: name, enum value, wire number.
        for (name, t, wire) in [
            ("episodic", proto::MemoryType::Episodic, 1),
            ("semantic", proto::MemoryType::Semantic, 2),
            ("procedural", proto::MemoryType::Procedural, 3),
            ("working", proto::MemoryType::Working, 4),
        ] {
            assert_eq!(memory_type(name), t, "{name}");
            assert_eq!(memory_type(&name.to_uppercase()), t, "{name}");
            assert_eq!(memory_type(name) as i32, wire, "{name}");
        }
        assert_eq!(MEMORY_TYPES.len(), 4);
        assert_eq!(memory_type("other"), proto::MemoryType::Unspecified);
        assert_eq!(memory_type(""), proto::MemoryType::Unspecified);
    }

    #[test]
    fn confidence_category_table() {
        // One value inside each row's range.
        let rows = [
            (0.0, proto::ConfidenceCategory::None),
            (0.2, proto::ConfidenceCategory::Low),
            (0.5, proto::ConfidenceCategory::Medium),
            (0.7, proto::ConfidenceCategory::Medium),
            (0.9, proto::ConfidenceCategory::High),
            (1.0, proto::ConfidenceCategory::Certain),
        ];
        assert_eq!(rows.len(), CONFIDENCE_CATEGORIES.len() + 1);
        for (v, c) in rows {
            assert_eq!(confidence_category(v), c, "{v}");
        }
    }

    #[test]
    fn cosine_matches_the_duplicate_rule() {
        let a = vec![1.0, 0.0, 0.0];
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&a, &[0.0, 1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[0.0; 3], &[0.0; 3]), 1.0);
        assert_eq!(cosine(&a, &[0.0; 3]), 0.0);
        assert!(cosine(&a, &[1.0, 0.3, 0.0]) >= DUPLICATE_COSINE);
        assert!(cosine(&a, &[1.0, 0.4, 0.0]) < DUPLICATE_COSINE);
    }
}
