//! An in-process stand-in for the Engram server, for tests and the benchmark only (never in the product).
//!
//! It implements exactly the HTTP + gRPC subset of shared/ENGRAM.md, with what the real server silently loses:
//! - a memory whose embedding has cosine >= 0.95 with one the space holds is skipped, or replaces it when its
//!   confidence is higher; either way the write is answered 201 / OK;
//! - embeddings are exactly 768 floats (400 INVALID_MEMORY_INPUT / InvalidArgument otherwise); a write without
//!   one gets a constant vector (so such writes collapse into one memory);
//! - a space holds at most `space_limit` memories (Engram: 100,000); beyond, the least active is evicted
//!   (activation is not settable, so: the oldest);
//! - space ids are 3 to 64 characters of [a-z0-9_-]; writing to an unknown space creates it;
//! - over gRPC the space comes only from the request field and `created_at` is replaced by the server's clock;
//!   over HTTP the remember handler takes the space from `X-Memory-Space`, else the body, never the query;
//! - a write with an id the space already holds replaces that memory (one memory per id).
//!
//! Knobs for fault tests: a bearer token, a number of remember requests to answer 503 / Unavailable first, a
//! delay per write, and StreamingRemember switched off (Unimplemented).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub mod pb {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/standin/engram.v1.rs"));
}
use pb::engram_service_server::{EngramService, EngramServiceServer};

pub const DIM: usize = 768;
pub const DUP_COSINE: f32 = 0.95;
pub const MAX_CONTENT: usize = 100 * 1024;

#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub content: String,
    pub embedding: Vec<f32>,
    pub confidence: f32,
    pub timestamp: String,
    seq: u64,
}

#[derive(Default)]
pub struct Space {
    /// In insertion order; linear scans, as small and obvious as possible.
    pub memories: Vec<Stored>,
    created_at: String,
}

pub struct Config {
    pub space_limit: usize,
    pub token: Option<String>,
    /// Remember requests still to answer with 503 / Unavailable (transient faults).
    pub fail_next: AtomicUsize,
    /// Injected faults answer as a rate limiter does (429 / ResourceExhausted) instead of 503 / Unavailable.
    pub rate_limited: AtomicBool,
    /// Health endpoints answer 503 with a well-formed body ("unhealthy" / "degraded", the "spreading" check
    /// failing) while every other API works: what a real server on a busy machine did for minutes.
    pub unhealthy: AtomicBool,
    /// How long creating a space takes (a real server: ~14 s).
    pub space_creation: Duration,
    pub delay: Duration,
    pub streaming: AtomicBool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            space_limit: 100_000,
            token: None,
            fail_next: AtomicUsize::new(0),
            rate_limited: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            space_creation: Duration::ZERO,
            delay: Duration::ZERO,
            streaming: AtomicBool::new(true),
        }
    }
}

/// Why a write was refused: (HTTP status, error code, message).
type Refusal = (u16, &'static str, String);

pub struct State {
    pub config: Config,
    pub spaces: Mutex<BTreeMap<String, Space>>,
    /// Remember requests that reached the store, per (space, id): shows what a client sent twice.
    pub writes: Mutex<HashMap<(String, String), u32>>,
    /// Remember requests received, including refused and failed ones.
    pub requests: AtomicU64,
    /// Ids of DELETE requests received (Engram keeps the memories; see `delete_memory`).
    pub deletes: Mutex<Vec<String>>,
    seq: AtomicU64,
    /// Space creations in progress now, and the most there were at once.
    creating: AtomicU64,
    pub max_creating_at_once: AtomicU64,
}

fn valid_space(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (false, false) => dot / (na * nb),
        _ => 0.0,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub struct Write {
    pub space: String,
    pub id: Option<String>,
    pub content: String,
    pub embedding: Option<Vec<f32>>,
    pub confidence: Option<f32>,
    pub timestamp: Option<String>,
}

impl State {
    fn new(config: Config) -> Self {
        State {
            config,
            spaces: Mutex::new(BTreeMap::new()),
            writes: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            deletes: Mutex::new(vec![]),
            creating: AtomicU64::new(0),
            max_creating_at_once: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }
    }

    /// The one write path of both protocols. Ok(id) is what the server answers, kept or not.
    pub fn remember(&self, w: Write) -> Result<String, Refusal> {
        let bad = |m: String| (400, "INVALID_MEMORY_INPUT", m);
        if !valid_space(&w.space) {
            return Err((
                400,
                "INVALID_MEMORY_SPACE",
                format!("invalid memory space id {:?}", w.space),
            ));
        }
        if w.content.is_empty() {
            return Err(bad("content must not be empty".into()));
        }
        if w.content.len() > MAX_CONTENT {
            return Err(bad(format!(
                "content is {} bytes, at most {MAX_CONTENT}",
                w.content.len()
            )));
        }
        let embedding = match w.embedding {
            Some(e) if e.len() != DIM => {
                return Err(bad(format!(
                    "embedding must have {DIM} dimensions, got {}",
                    e.len()
                )))
            }
            Some(e) => e,
            None => vec![0.5; DIM],
        };
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let id =
            w.id.filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("mem_{seq}"));
        let new = Stored {
            id: id.clone(),
            content: w.content,
            embedding,
            confidence: w.confidence.unwrap_or(0.7).clamp(0.0, 1.0),
            timestamp: w.timestamp.unwrap_or_else(now),
            seq,
        };
        *self
            .writes
            .lock()
            .unwrap()
            .entry((w.space.clone(), id.clone()))
            .or_default() += 1;
        let mut spaces = self.spaces.lock().unwrap();
        let space = spaces.entry(w.space).or_insert_with(|| Space {
            memories: vec![],
            created_at: now(),
        });
        if let Some(same) = space.memories.iter_mut().find(|m| m.id == id) {
            *same = new;
            return Ok(id);
        }
        if let Some(i) = space
            .memories
            .iter()
            .position(|m| cos(&m.embedding, &new.embedding) >= DUP_COSINE)
        {
            if new.confidence > space.memories[i].confidence {
                space.memories.remove(i);
                space.memories.push(new);
            }
            return Ok(id); // 201 either way
        }
        if space.memories.len() >= self.config.space_limit {
            // All memories have the same activation here: the least active is the oldest.
            let oldest = (0..space.memories.len())
                .min_by_key(|&i| space.memories[i].seq)
                .expect("a full space is not empty");
            space.memories.remove(oldest);
        }
        space.memories.push(new);
        Ok(id)
    }

    pub fn ids(&self, space: &str) -> Vec<String> {
        self.spaces
            .lock()
            .unwrap()
            .get(space)
            .map(|s| s.memories.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.spaces
            .lock()
            .unwrap()
            .values()
            .map(|s| s.memories.len())
            .sum()
    }

    /// The gRPC status of an injected fault.
    fn fault_status(&self) -> tonic::Status {
        if self.config.rate_limited.load(Ordering::SeqCst) {
            tonic::Status::resource_exhausted("injected fault: rate limited")
        } else {
            tonic::Status::unavailable("injected fault")
        }
    }

    /// Consumes one injected fault, if any is left.
    fn take_fault(&self) -> bool {
        self.config
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

// ---------------------------------------------------------------- HTTP

/// A JSON answer. (axum's `json` feature is not used: it turns on a serde_json feature for the whole build,
/// which rebuilds Arrow and DataFusion.)
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

fn query_map(q: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

type Shared = Arc<State>;

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn authorized(st: &State, headers: &HeaderMap) -> bool {
    match &st.config.token {
        None => true,
        Some(t) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == format!("Bearer {t}"))
            .unwrap_or(false),
    }
}

macro_rules! auth {
    ($st:expr, $h:expr) => {
        if !authorized(&$st, &$h) {
            return error(401, "UNAUTHORIZED", "missing or invalid API key");
        }
    };
}

/// `GET /health` as the real server answers it: 200 when healthy or degraded, 503 when a probe fails, always
/// with this body.
async fn health(AxState(st): AxState<Shared>) -> Response {
    let unhealthy = st.config.unhealthy.load(Ordering::SeqCst);
    let body = Json(
        json!({"status": if unhealthy { "unhealthy" } else { "healthy" }, "service": "engram",
                           "version": "0.1.0", "timestamp": now()}),
    );
    if unhealthy {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        body.into_response()
    }
}

async fn list_spaces(AxState(st): AxState<Shared>, h: HeaderMap) -> Response {
    auth!(st, h);
    let spaces = st.spaces.lock().unwrap();
    let list: Vec<Value> = spaces
        .iter()
        .map(|(id, s)| json!({"id": id, "persistence_root": format!("/data/{id}"), "created_at": s.created_at}))
        .collect();
    Json(json!({ "spaces": list })).into_response()
}

async fn create_space(
    AxState(st): AxState<Shared>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    auth!(st, h);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = body["id"].as_str().unwrap_or("").to_string();
    if !valid_space(&id) {
        return error(400, "INVALID_MEMORY_SPACE", "invalid memory space id");
    }
    let now_creating = st.creating.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_creating_at_once
        .fetch_max(now_creating, Ordering::SeqCst);
    tokio::time::sleep(st.config.space_creation).await;
    st.creating.fetch_sub(1, Ordering::SeqCst);
    st.spaces
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_insert_with(|| Space {
            memories: vec![],
            created_at: now(),
        });
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn remember_http(
    AxState(st): AxState<Shared>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    st.requests.fetch_add(1, Ordering::SeqCst);
    auth!(st, h);
    if !st.config.delay.is_zero() {
        tokio::time::sleep(st.config.delay).await;
    }
    if st.take_fault() {
        if st.config.rate_limited.load(Ordering::SeqCst) {
            return error(429, "RATE_LIMITED", "injected fault: too many requests");
        }
        return error(503, "SERVICE_UNAVAILABLE", "injected fault");
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "INVALID_MEMORY_INPUT", "body is not JSON");
    };
    let space = h
        .get("x-memory-space")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| b["memory_space_id"].as_str().map(String::from))
        .unwrap_or_else(|| "default".into());
    let Some(content) = b["content"].as_str() else {
        return error(400, "INVALID_MEMORY_INPUT", "content is required");
    };
    let embedding = match &b["embedding"] {
        Value::Null => None,
        Value::Array(a) => {
            let v: Option<Vec<f32>> = a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
            match v {
                Some(v) => Some(v),
                None => return error(400, "INVALID_MEMORY_INPUT", "embedding must be numbers"),
            }
        }
        _ => return error(400, "INVALID_MEMORY_INPUT", "embedding must be an array"),
    };
    let w = Write {
        space,
        id: b["id"].as_str().map(String::from),
        content: content.to_string(),
        embedding,
        confidence: b["confidence"].as_f64().map(|c| c as f32),
        timestamp: b["timestamp"].as_str().map(String::from),
    };
    match st.remember(w) {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({
                "memory_id": id,
                "storage_confidence": {"value": 0.9, "category": "High", "reasoning": "stored"},
                "consolidation_state": "Recent",
                "observed_at": now(),
                "stored_at": now(),
            })),
        )
            .into_response(),
        Err((s, code, m)) => error(s, code, &m),
    }
}

fn space_of(h: &HeaderMap, q: &HashMap<String, String>) -> String {
    h.get("x-memory-space")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| q.get("space").cloned())
        .unwrap_or_else(|| "default".into())
}

async fn list_memories(
    AxState(st): AxState<Shared>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    auth!(st, h);
    let q = query_map(q);
    let space = space_of(&h, &q);
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(1000);
    let emb = q
        .get("include_embeddings")
        .map(|v| v == "true")
        .unwrap_or(false);
    let spaces = st.spaces.lock().unwrap();
    let all: &[Stored] = spaces
        .get(&space)
        .map(|s| s.memories.as_slice())
        .unwrap_or(&[]);
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| {
            let mut v = json!({"id": m.id, "content": m.content, "confidence": m.confidence, "timestamp": m.timestamp});
            if emb {
                v["embedding"] = json!(m.embedding);
            }
            v
        })
        .collect();
    let n = all.len();
    Json(json!({
        "memories": page,
        "count": page.len(),
        "pagination": {"offset": offset, "limit": limit, "total": n},
        "tier_counts": {"hot": n, "warm": 0, "cold": 0, "total": n},
    }))
    .into_response()
}

/// Engram deletes nothing: its handler answers 200 `"status": "not_supported"` for any id and keeps the memory
/// (engram-cli/src/api.rs, delete_memory_by_id). Counted, so a test can see the request was made.
async fn delete_memory(
    AxState(st): AxState<Shared>,
    h: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    auth!(st, h);
    st.deletes.lock().unwrap().push(id.clone());
    Json(json!({
        "status": "not_supported",
        "message": "Memory deletion is not supported in Engram due to cognitive design principles",
        "memory_id": id,
    }))
    .into_response()
}

async fn get_memory(
    AxState(st): AxState<Shared>,
    h: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    auth!(st, h);
    let space = space_of(&h, &HashMap::new());
    let spaces = st.spaces.lock().unwrap();
    match spaces
        .get(&space)
        .and_then(|s| s.memories.iter().find(|m| m.id == id))
    {
        Some(m) => Json(
            json!({"id": m.id, "content": m.content, "confidence": m.confidence,
                               "timestamp": m.timestamp, "memory_type": "semantic"}),
        )
        .into_response(),
        None => error(404, "MEMORY_NOT_FOUND", "no such memory"),
    }
}

async fn system_health(AxState(st): AxState<Shared>, h: HeaderMap) -> Response {
    auth!(st, h);
    let spaces = st.spaces.lock().unwrap();
    let list: Vec<Value> = spaces
        .iter()
        .map(|(id, s)| {
            json!({"space": id, "memories": s.memories.len(), "pressure": 0.0,
                             "wal_lag_ms": 0.0, "consolidation_rate": 0.0})
        })
        .collect();
    // A failing probe: 503 with the full body, "degraded" in it, as a real server on a busy machine answered.
    if st.config.unhealthy.load(Ordering::SeqCst) {
        let checks = json!([{"name": "spreading", "type": "cognitive", "status": "unhealthy",
                             "message": "spreading probe exceeded its latency budget"}]);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "timestamp": now(), "checks": checks, "spaces": list, "cluster": null})),
        )
            .into_response();
    }
    Json(json!({"status": "healthy", "timestamp": now(), "checks": [], "spaces": list, "cluster": null}))
        .into_response()
}

fn router(st: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/spaces", get(list_spaces).post(create_space))
        .route("/api/v1/memories/remember", post(remember_http))
        .route("/api/v1/memories", get(list_memories))
        .route(
            "/api/v1/memories/{id}",
            get(get_memory).delete(delete_memory),
        )
        .route("/api/v1/system/health", get(system_health))
        .with_state(st)
}

// ---------------------------------------------------------------- gRPC

struct Grpc(Shared);

fn status_of((_, code, m): Refusal) -> tonic::Status {
    tonic::Status::invalid_argument(format!("{code}: {m}"))
}

fn grpc_write(st: &State, req: pb::RememberRequest) -> Result<pb::RememberResponse, tonic::Status> {
    let w = match req.memory_type {
        Some(pb::remember_request::MemoryType::Memory(m)) => Write {
            space: req.memory_space_id,
            id: Some(m.id),
            content: m.content,
            embedding: Some(m.embedding),
            confidence: m.confidence.map(|c| c.value),
            // created_at is replaced by the server's clock.
            timestamp: None,
        },
        Some(pb::remember_request::MemoryType::Episode(e)) => Write {
            space: req.memory_space_id,
            id: Some(e.id),
            content: e.what,
            embedding: Some(e.embedding),
            confidence: Some(if e.importance == 0.0 {
                0.5
            } else {
                e.importance
            }),
            timestamp: e.when.map(|t| {
                chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
                    .unwrap_or_default()
                    .to_rfc3339()
            }),
        },
        None => return Err(tonic::Status::invalid_argument("memory_type is required")),
    };
    let id = st.remember(w).map_err(status_of)?;
    Ok(pb::RememberResponse {
        memory_id: id,
        storage_confidence: Some(pb::Confidence {
            value: 0.9,
            category: pb::ConfidenceCategory::High as i32,
            reasoning: "stored".into(),
        }),
        linked_memories: vec![],
        initial_state: pb::ConsolidationState::Recent as i32,
    })
}

fn grpc_authorized<T>(st: &State, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match &st.config.token {
        None => Ok(()),
        Some(t) => {
            let ok = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(|v| v == format!("Bearer {t}"))
                .unwrap_or(false);
            if ok {
                Ok(())
            } else {
                Err(tonic::Status::unauthenticated("missing or invalid API key"))
            }
        }
    }
}

type ResponseStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::RememberResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl EngramService for Grpc {
    async fn remember(
        &self,
        req: tonic::Request<pb::RememberRequest>,
    ) -> Result<tonic::Response<pb::RememberResponse>, tonic::Status> {
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        grpc_authorized(&self.0, &req)?;
        if !self.0.config.delay.is_zero() {
            tokio::time::sleep(self.0.config.delay).await;
        }
        if self.0.take_fault() {
            return Err(self.0.fault_status());
        }
        grpc_write(&self.0, req.into_inner()).map(tonic::Response::new)
    }

    type StreamingRememberStream = ResponseStream;

    async fn streaming_remember(
        &self,
        req: tonic::Request<tonic::Streaming<pb::RememberRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        if !self.0.config.streaming.load(Ordering::SeqCst) {
            return Err(tonic::Status::unimplemented("StreamingRemember"));
        }
        grpc_authorized(&self.0, &req)?;
        let st = self.0.clone();
        // One answer per request, in order; the first error ends the stream.
        let out = futures::stream::unfold(
            (req.into_inner(), st, false),
            |(mut inbound, st, done)| async move {
                if done {
                    return None;
                }
                let item = match inbound.message().await {
                    Ok(Some(r)) => {
                        st.requests.fetch_add(1, Ordering::SeqCst);
                        if !st.config.delay.is_zero() {
                            tokio::time::sleep(st.config.delay).await;
                        }
                        if st.take_fault() {
                            Err(st.fault_status())
                        } else {
                            grpc_write(&st, r)
                        }
                    }
                    Ok(None) => return None,
                    Err(s) => Err(s),
                };
                let end = item.is_err();
                Some((item, (inbound, st, end)))
            },
        );
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

// ---------------------------------------------------------------- running it

/// A running stand-in on two loopback ports; stopped when dropped.
pub struct Standin {
    pub state: Shared,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Standin {
    pub fn start(config: Config) -> Standin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(State::new(config));
        let (http, grpc) = runtime.block_on(async {
            let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (ha, ga) = (h.local_addr().unwrap(), g.local_addr().unwrap());
            let app = router(state.clone());
            tokio::spawn(async move { axum::serve(h, app).await.unwrap() });
            let svc =
                EngramServiceServer::new(Grpc(state.clone())).max_decoding_message_size(16 << 20);
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(g))
                    .await
                    .unwrap()
            });
            (ha, ga)
        });
        Standin {
            state,
            http,
            grpc,
            runtime: Some(runtime),
        }
    }

    pub fn http_target(&self) -> String {
        format!("engram+http://{}", self.http)
    }

    pub fn grpc_target(&self) -> String {
        format!("engram+grpc://{}?http_port={}", self.grpc, self.http.port())
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
