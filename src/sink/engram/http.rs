//! Engram's HTTP API as the sink uses it: `POST /api/v1/memories/remember` (one request per memory, many in
//! flight), spaces, counts and the read-back listing. Retries connection errors, timeouts and 5xx with backoff;
//! never retries a 4xx: a 401/403 stops the load (wrong key), any other 4xx is that memory's rejection.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Backoff, Memory, Outcome};
use crate::error::{Error, Result};

/// What the sink does with an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Ok,
    /// Transient: send again after a backoff.
    Retry,
    /// This memory was refused: report it, do not send it again.
    Reject,
    /// The credentials were refused: stop the load.
    Fatal,
}

/// Status ranges and what they mean, first match wins.
pub const STATUS_TABLE: &[(u16, u16, StatusClass)] = &[
    (200, 299, StatusClass::Ok),
    (401, 401, StatusClass::Fatal),
    (403, 403, StatusClass::Fatal),
    // "Too many requests" and "request timeout" are about the pace, not the memory: back off and send it again.
    (408, 408, StatusClass::Retry),
    (429, 429, StatusClass::Retry),
    (400, 499, StatusClass::Reject),
    (500, 599, StatusClass::Retry),
];

pub fn classify(status: u16) -> StatusClass {
    STATUS_TABLE
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&status))
        .map(|(_, _, c)| *c)
        // 1xx/3xx are not answers Engram gives; treat them like a refusal rather than loop on them.
        .unwrap_or(StatusClass::Reject)
}

/// A well-formed Engram health answer: `/health` (`{"status","service":"engram",...}`) or
/// `/api/v1/system/health` (`{"status","checks":[{"name","status","message",...}],"spaces":[...]}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// "healthy", "degraded" or "unhealthy".
    pub status: String,
    /// The checks that are not healthy, as "name: status (message)".
    pub failing: Vec<String>,
}

impl Health {
    pub fn parse(body: &[u8]) -> Option<Health> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let status = v.get("status")?.as_str()?.to_string();
        let engram = v.get("service").and_then(|s| s.as_str()) == Some("engram")
            || (v.get("checks").is_some_and(|c| c.is_array())
                && v.get("spaces").is_some_and(|s| s.is_array()));
        if !engram {
            return None;
        }
        let failing = v["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"].as_str() != Some("healthy"))
            .map(|c| {
                format!(
                    "{}: {} ({})",
                    c["name"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?"),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        Some(Health { status, failing })
    }

    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}

/// The JSON body of `POST /api/v1/memories/remember` (flat). The space goes in the `X-Memory-Space` header.
#[derive(Debug, Serialize)]
pub struct RememberBody<'a> {
    pub id: &'a str,
    pub content: &'a str,
    pub embedding: &'a [f32],
    pub confidence: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    pub memory_type: &'a str,
}

impl<'a> RememberBody<'a> {
    pub fn new(m: &'a Memory) -> Self {
        RememberBody {
            id: &m.id,
            content: &m.content,
            embedding: &m.embedding,
            confidence: m.confidence,
            timestamp: m.timestamp_rfc3339(),
            memory_type: &m.memory_type,
        }
    }
}

/// The serialised request body of one memory (also what the benchmark measures).
pub fn remember_body(m: &Memory) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&RememberBody::new(m))?)
}

/// What the server did with a delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    Deleted,
    /// Not there (any more).
    Absent,
    /// Still held; why, as the server said it.
    Kept(String),
}

/// One memory of the read-back listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    pub id: String,
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
}

/// A page of `GET /api/v1/memories`: the memories as `T` reads them (the read-back takes id and embedding only,
/// the Engram source every field), and the server's count.
#[derive(Debug, Deserialize)]
pub struct ListPage<T> {
    pub memories: Vec<T>,
    #[serde(default)]
    pub tier_counts: Option<TierCounts>,
}

#[derive(Debug, Deserialize)]
pub struct TierCounts {
    pub total: u64,
}

/// A page of a space's memories with their embeddings, all tiers (Engram caps `limit` at 1000).
pub fn list_path(space: &str, offset: usize, limit: usize) -> String {
    format!(
        "/api/v1/memories?space={}&tier=all&offset={offset}&limit={limit}&include_embeddings=true",
        url::form_urlencoded::byte_serialize(space.as_bytes()).collect::<String>()
    )
}

/// `/api/v1/memories/{id}`, the id percent-encoded as one path segment (ids may hold `/`, `?`, spaces).
pub fn memory_path(id: &str) -> String {
    let mut url = url::Url::parse("http://x/api/v1/memories/").expect("a valid base");
    url.path_segments_mut()
        .expect("a base with a path")
        .pop_if_empty()
        .push(id);
    url.path().to_string()
}

#[derive(Clone)]
pub struct HttpApi {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    backoff: Backoff,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is never printed, not even in debug output.
        f.debug_struct("HttpApi").field("base", &self.base).finish()
    }
}

/// Spaces created at once before a load.
const SPACES_AT_ONCE: usize = 8;

/// A page of the listing: Engram caps `limit` at 1000.
pub const PAGE: usize = 1000;

impl HttpApi {
    pub fn new(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Engram listens on loopback or a private network; a proxy from the environment would only get in the way.
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(HttpApi {
            client,
            base: base.trim_end_matches('/').to_string(),
            token,
            backoff,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn target_err(&self, message: impl Into<String>) -> Error {
        Error::target_err(format!("Engram at {}", self.base), message)
    }

    fn refused(&self, status: u16) -> Error {
        self.target_err(format!(
            "the server refused the credentials (HTTP {status}); set the environment variable ENGRAM_API_KEY \
             (or the one named by ?token_env=) to a valid key, engram_key_<id>_<secret>"
        ))
    }

    /// Sends a request built by `build`, retrying transport errors, 5xx, 408 and 429. Returns the final status and body.
    async fn send(
        &self,
        what: &str,
        salt: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>)> {
        self.send_until(what, salt, build, |status, _| {
            classify(status) != StatusClass::Retry
        })
        .await
    }

    /// A health endpoint: any well-formed Engram health answer is an answer, whatever its status code (a real
    /// server answers 503 with a full body while one internal probe is failing and every API works).
    async fn send_health(&self, path: &'static str) -> Result<(u16, Vec<u8>)> {
        self.send_until(
            &format!("GET {path}"),
            "health",
            || self.request(reqwest::Method::GET, path),
            |status, body| classify(status) != StatusClass::Retry || Health::parse(body).is_some(),
        )
        .await
    }

    /// `send`, with `answered(status, body)` deciding which answers end the retries.
    async fn send_until(
        &self,
        what: &str,
        salt: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        answered: impl Fn(u16, &[u8]) -> bool,
    ) -> Result<(u16, Vec<u8>)> {
        let mut attempt = 0;
        loop {
            let why = match build().send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(body) if answered(status, &body) => return Ok((status, body.to_vec())),
                        Ok(body) => format!(
                            "HTTP {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                        Err(e) => format!("reading the answer: {e}"),
                    }
                }
                Err(e) if e.is_builder() => {
                    return Err(Error::Internal(format!("building {what}: {e}")))
                }
                // Connection refused or reset, timeouts: transient.
                Err(e) => describe_transport(&e),
            };
            if attempt + 1 >= self.backoff.attempts {
                return Err(self.target_err(format!(
                    "{what} failed {} times, last: {why}; check that Engram is running at this address \
                     (run the same command again: the load resumes after the last acknowledged batch)",
                    self.backoff.attempts
                )));
            }
            let d = self.backoff.delay(attempt, salt);
            tracing::debug!(%what, attempt, ?d, %why, "retrying");
            tokio::time::sleep(d).await;
            attempt += 1;
        }
    }

    /// `GET /health`, retried: fails with a clear message when nothing answers, when the answer is not Engram's,
    /// or when the credentials are refused. A degraded or unhealthy server that answers is reachable: its failing
    /// checks are returned (and logged as a warning) and the load goes on, as its APIs decide.
    pub async fn check_reachable(&self) -> Result<Health> {
        let (status, body) = self.send_health("/health").await?;
        if classify(status) == StatusClass::Fatal {
            return Err(self.refused(status));
        }
        let Some(mut health) = Health::parse(&body) else {
            return Err(self.target_err(format!(
                "GET /health answered HTTP {status} without Engram's health JSON ({}); is this an Engram server's \
                 HTTP port?",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        };
        if !health.is_healthy() {
            // /health names no checks; the system health answer does (and is as degraded, or not).
            if let Ok((_, body)) = self.send_health("/api/v1/system/health").await {
                if let Some(system) = Health::parse(&body) {
                    health.failing.extend(system.failing);
                }
            }
            tracing::warn!(
                server = %self.base,
                status = %health.status,
                http_status = status,
                failing = %health.failing.join("; "),
                "Engram reports itself {}, but answers; going on (a failing API still stops the load)",
                health.status
            );
        }
        Ok(health)
    }

    /// `GET /api/v1/spaces`: is the key accepted (when the server has auth on)?
    pub async fn check_credentials(&self) -> Result<()> {
        let (status, body) = self
            .send("GET /api/v1/spaces", "spaces", || {
                self.request(reqwest::Method::GET, "/api/v1/spaces")
            })
            .await?;
        match classify(status) {
            StatusClass::Ok => Ok(()),
            StatusClass::Fatal => Err(self.refused(status)),
            _ => Err(self.target_err(format!(
                "GET /api/v1/spaces answered HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ))),
        }
    }

    /// Creates the spaces that do not exist yet, one by one: creating a space takes Engram ~15 s, better once
    /// here than in many parallel first writes. Also where a wrong key is found, before any memory is sent.
    pub async fn ensure_spaces(&self, spaces: &[String]) -> Result<()> {
        let (status, body) = self
            .send("GET /api/v1/spaces", "spaces", || {
                self.request(reqwest::Method::GET, "/api/v1/spaces")
            })
            .await?;
        match classify(status) {
            StatusClass::Ok => {}
            StatusClass::Fatal => return Err(self.refused(status)),
            _ => {
                return Err(self.target_err(format!(
                    "GET /api/v1/spaces answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )))
            }
        }
        let have: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            self.target_err(format!(
                "GET /api/v1/spaces: not the JSON Engram answers ({e}); is this an Engram server?"
            ))
        })?;
        let have: std::collections::HashSet<&str> = have["spaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str())
            .collect();
        // Every missing space first, several at once: Engram takes ~14 s to create one, so a bundle of 8 small
        // spaces spent almost all its load time there one after the other (docs/targets/engram.md).
        let missing: Vec<String> = spaces
            .iter()
            .filter(|s| !have.contains(s.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let pb = crate::progress::bar(missing.len() as u64, "create spaces", "spaces");
        for chunk in missing.chunks(SPACES_AT_ONCE) {
            let mut creations = Vec::with_capacity(chunk.len());
            for space in chunk {
                creations.push(self.create_space(space));
            }
            for r in futures::future::join_all(creations).await {
                r?;
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// `POST /api/v1/spaces`; 409 (created meanwhile by someone else) is fine.
    async fn create_space(&self, space: &str) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({ "id": space }))?;
        let (status, answer) = self
            .send("POST /api/v1/spaces", space, || {
                self.request(reqwest::Method::POST, "/api/v1/spaces")
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        if classify(status) == StatusClass::Fatal {
            return Err(self.refused(status));
        }
        if classify(status) != StatusClass::Ok && status != 409 {
            return Err(self.target_err(format!(
                "creating space {space:?} answered HTTP {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            )));
        }
        Ok(())
    }

    /// Sends one memory. Err only for what stops the load (unreachable after retries, refused credentials).
    pub async fn remember(&self, space: &str, m: &Memory) -> Result<Outcome> {
        let body = remember_body(m)?;
        let (status, answer) = self
            .send("POST /api/v1/memories/remember", &m.id, || {
                self.request(reqwest::Method::POST, "/api/v1/memories/remember")
                    .header("x-memory-space", space)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        match classify(status) {
            StatusClass::Ok => {
                let id = serde_json::from_slice::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["memory_id"].as_str().map(String::from))
                    .unwrap_or_else(|| m.id.clone());
                Ok(Outcome::Accepted(id))
            }
            StatusClass::Fatal => Err(self.refused(status)),
            _ => Ok(rejection(status, &answer)),
        }
    }

    /// Sends the memories of one batch with up to `parallel` requests in flight; outcomes in input order.
    pub async fn remember_batch(
        &self,
        space: &str,
        mems: Vec<Memory>,
        parallel: usize,
    ) -> Result<Vec<Outcome>> {
        stream::iter(mems.iter().map(|m| self.remember(space, m)))
            .buffered(parallel.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// `DELETE /api/v1/memories/{id}` in a space. Engram (as of this writing) answers 200 with
    /// `"status": "not_supported"` and keeps the memory: that is `Deleted::Kept`, never counted as deleted.
    pub async fn delete(&self, space: &str, id: &str) -> Result<Deleted> {
        let path = memory_path(id);
        let (status, body) = self
            .send("DELETE /api/v1/memories/ID", id, || {
                self.request(reqwest::Method::DELETE, &path)
                    .header("x-memory-space", space)
            })
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match classify(status) {
            StatusClass::Fatal => Err(self.refused(status)),
            _ if status == 404 => Ok(Deleted::Absent),
            StatusClass::Ok if v["status"].as_str() == Some("not_supported") => Ok(Deleted::Kept(
                v["message"]
                    .as_str()
                    .unwrap_or("the server answered \"not_supported\"")
                    .to_string(),
            )),
            StatusClass::Ok => Ok(Deleted::Deleted),
            _ => Ok(Deleted::Kept(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }

    /// The server's count per space: `spaces[].memories` of `GET /api/v1/system/health`.
    pub async fn counts(&self) -> Result<std::collections::HashMap<String, u64>> {
        // The counts are in the body whatever the status code (503 while a probe fails, see send_health).
        let (status, body) = self.send_health("/api/v1/system/health").await?;
        if classify(status) == StatusClass::Fatal {
            return Err(self.refused(status));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !v["spaces"].is_array() {
            // Without the list every space would look empty and every memory missing: say so instead.
            return Err(self.target_err(format!(
                "GET /api/v1/system/health answered HTTP {status} without the per-space counts ({}); the \
                 read-back cannot count what the server kept",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(v["spaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["space"].as_str()?.to_string(), s["memories"].as_u64()?)))
            .collect())
    }

    /// Every memory of a space, with embeddings, page by page; also returns `tier_counts.total`.
    pub async fn list(&self, space: &str) -> Result<(Vec<Listed>, Option<u64>)> {
        let mut out = vec![];
        let mut total = None;
        loop {
            let path = list_path(space, out.len(), PAGE);
            let (status, body) = self
                .send("GET /api/v1/memories", space, || {
                    self.request(reqwest::Method::GET, &path)
                        .header("x-memory-space", space)
                })
                .await?;
            match classify(status) {
                StatusClass::Ok => {}
                StatusClass::Fatal => return Err(self.refused(status)),
                _ => {
                    return Err(self.target_err(format!(
                        "listing space {space:?} answered HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )))
                }
            }
            let page: ListPage<Listed> = serde_json::from_slice(&body).map_err(|e| {
                self.target_err(format!("listing space {space:?}: unexpected answer ({e})"))
            })?;
            if total.is_none() {
                total = page.tier_counts.map(|t| t.total);
            }
            let n = page.memories.len();
            out.extend(page.memories);
            if n < PAGE {
                return Ok((out, total));
            }
        }
    }
}

fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "transport error"
    };
    // The chain holds the useful part ("Connection refused"); URLs carry no secrets (rejected in the target).
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// `{"error":{"code","message"}}` -> a per-memory rejection.
fn rejection(status: u16, body: &[u8]) -> Outcome {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["error"]["code"].as_str().unwrap_or("");
    let message = v["error"]["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).to_string());
    Outcome::Rejected {
        status: format!("HTTP {status} {code}").trim().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies a real server sends (read from its code, seen with status 503 on a busy machine).
    #[test]
    fn health_answers_are_read_whatever_the_status() {
        let simple = br#"{"status":"unhealthy","service":"engram","version":"0.1.0","timestamp":"2026-11-24T00:00:00Z"}"#;
        let h = Health::parse(simple).unwrap();
        assert_eq!(h.status, "unhealthy");
        assert!(!h.is_healthy());
        let system = br#"{"status":"degraded","timestamp":"t","checks":[
            {"name":"spreading","type":"cognitive","status":"unhealthy","message":"probe timed out"},
            {"name":"memory","type":"memory","status":"healthy","message":"ok"}],
            "spaces":[{"space":"default","memories":3,"pressure":0.0,"wal_lag_ms":0.0,"consolidation_rate":0.0}],
            "cluster":null}"#;
        let h = Health::parse(system).unwrap();
        assert_eq!(
            h.failing,
            vec!["spreading: unhealthy (probe timed out)".to_string()]
        );
        // Not Engram: a JSON status alone, HTML, nothing.
        assert_eq!(Health::parse(br#"{"status":"ok"}"#), None);
        assert_eq!(Health::parse(b"<html>503 Service Unavailable</html>"), None);
        assert_eq!(Health::parse(b""), None);
    }

    #[test]
    fn status_table_rows() {
        assert_eq!(classify(201), StatusClass::Ok);
        assert_eq!(classify(200), StatusClass::Ok);
        assert_eq!(classify(401), StatusClass::Fatal);
        assert_eq!(classify(403), StatusClass::Fatal);
        assert_eq!(classify(400), StatusClass::Reject);
        assert_eq!(classify(404), StatusClass::Reject);
        assert_eq!(classify(429), StatusClass::Retry);
        assert_eq!(classify(408), StatusClass::Retry);
        assert_eq!(classify(422), StatusClass::Reject);
        assert_eq!(classify(500), StatusClass::Retry);
        assert_eq!(classify(503), StatusClass::Retry);
        assert_eq!(classify(302), StatusClass::Reject);
    }

    #[test]
    fn body_is_flat_json_with_768_floats() {
        let m = Memory {
            id: "t_1".into(),
            content: "{\"a\":1}".into(),
            embedding: vec![0.5; 768],
            confidence: 0.7,
            created_at: Some(1_700_000_000_000_000),
            memory_type: "semantic".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&remember_body(&m).unwrap()).unwrap();
        assert_eq!(v["id"], "t_1");
        assert_eq!(v["content"], "{\"a\":1}");
        assert_eq!(v["embedding"].as_array().unwrap().len(), 768);
        assert!((v["confidence"].as_f64().unwrap() - 0.7).abs() < 1e-6);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["memory_type"], "semantic");
        assert!(
            v.get("memory_space_id").is_none(),
            "space goes in the header"
        );
    }

    #[test]
    fn rejections_carry_code_and_message() {
        let o = rejection(
            400,
            br#"{"error":{"code":"INVALID_MEMORY_INPUT","message":"content too large"}}"#,
        );
        assert_eq!(
            o,
            Outcome::Rejected {
                status: "HTTP 400 INVALID_MEMORY_INPUT".into(),
                message: "content too large".into()
            }
        );
        let o = rejection(404, b"nope");
        assert_eq!(
            o,
            Outcome::Rejected {
                status: "HTTP 404".into(),
                message: "nope".into()
            }
        );
    }
}
