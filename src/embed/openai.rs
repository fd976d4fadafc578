//! OpenAI-compatible embeddings over HTTP (`--embedding-provider openai:URL`): `POST URL/v1/embeddings`, the
//! shape OpenAI, Ollama, vLLM and text-embeddings-inference all serve.
//!
//! Request: `{"model": M, "input": [texts...], "encoding_format": "float"}` (plus `"dimensions": 768` when the
//! model's own vectors are longer than Engram's 768 and the server can shorten them, as OpenAI's text-embedding-3
//! models do). Answer: `{"data": [{"index": i, "embedding": [floats...]}, ...]}`, put back in `index` order.
//!
//! - Batches: at most `request_size` texts per request (`--embedding-request-size`, default 128). A 413 (payload
//!   too large) splits the request in half, recursively, and lowers the request size for the rest of the run; a
//!   single text that is still too large is an error saying so.
//! - Retries: 429 and 5xx answers and connection errors/timeouts are retried with the tool's one backoff policy
//!   (`crate::retry::Backoff`: doubling, capped, with jitter; 6 retries from 0.5 s by default), or after the
//!   server's `Retry-After` seconds when it sends one (also capped). Other 4xx answers are errors at once, with the
//!   server's message: they need a change of key, model or URL.
//! - Checks: every vector must have the dimension learnt from the first answer (a probe request when the provider
//!   is created) and finite values; each is re-normalised to unit length in f64 (servers return "normalised"
//!   vectors in f16 or not normalised at all), and a zero vector is an error.
//! - The API key is sent as `Authorization: Bearer` and never appears in a message, log, name or report. The
//!   provider's name (provenance, cache key) is `openai:<endpoint without user info or query>:<model>:<dim>`.
//!
//! The HTTP client is reqwest's blocking client, which cannot run on a tokio runtime thread (the pipeline's load
//! stage is one): each call runs its requests on a short-lived plain thread of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::EmbeddingProvider;
use crate::error::{Error, Result};
use crate::retry::Backoff;

#[derive(Clone)]
pub struct OpenAiOptions {
    /// Base URL (`http://host:port`, with or without `/v1`), or the full `.../embeddings` endpoint.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Most texts per request.
    pub request_size: usize,
    /// Retries of 429, 5xx and transport errors (the tool's one policy, `crate::retry`).
    pub backoff: Backoff,
    /// The longest vectors wanted: a model that answers longer ones is asked to shorten them (OpenAI's
    /// text-embedding-3 models do on request). Engram's 768 by default, the bundle's usual destination; None
    /// keeps the model's own dimension (for a target that stores any size).
    pub max_dimensions: Option<usize>,
    /// Per request.
    pub timeout: Duration,
}

impl std::fmt::Debug for OpenAiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("url", &redact_url(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("request_size", &self.request_size)
            .finish()
    }
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            url: String::new(),
            model: String::new(),
            api_key: None,
            request_size: 128,
            // Embedding servers recover slowly (a model reloading): longer waits than for Engram.
            backoff: Backoff {
                attempts: 7,
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
            },
            max_dimensions: Some(crate::sink::engram::ENGRAM_DIM),
            timeout: Duration::from_secs(120),
        }
    }
}

/// Counters of an [`OpenAiProvider`] (for the tests and the report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    pub requests: usize,
    pub retries: usize,
    pub splits: usize,
}

pub struct OpenAiProvider {
    opts: OpenAiOptions,
    endpoint: String,
    dim: usize,
    /// Ask the server for 768 dimensions (its model's own are more).
    ask_dimensions: bool,
    /// Current most texts per request (lowered by 413 answers).
    request_size: AtomicUsize,
    requests: AtomicUsize,
    retries: AtomicUsize,
    splits: AtomicUsize,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name())
            .field("opts", &self.opts)
            .finish()
    }
}

/// `scheme://host:port/path` without user info, query or fragment: safe to print and to record.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// The embeddings endpoint of a base URL.
fn endpoint(url: &str) -> Result<String> {
    let u = url::Url::parse(url).map_err(|e| {
        Error::usage(format!(
            "--embedding-provider openai:{}: not a URL ({e}); e.g. openai:http://127.0.0.1:11434",
            redact_url(url)
        ))
    })?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(Error::usage(format!(
            "--embedding-provider openai:{}: the URL must be http:// or https://",
            redact_url(url)
        )));
    }
    let base = url.trim_end_matches('/');
    Ok(if base.ends_with("/embeddings") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/embeddings")
    } else {
        format!("{base}/v1/embeddings")
    })
}

/// What one request came to.
enum Outcome {
    Vectors(Vec<Vec<f32>>),
    /// 413: the request is too large.
    TooLarge,
}

impl OpenAiProvider {
    /// Checks the options and learns the model's dimension with one small request.
    pub fn connect(opts: OpenAiOptions) -> Result<Self> {
        let endpoint = endpoint(&opts.url)?;
        if opts.model.trim().is_empty() {
            return Err(Error::usage(
                "--embedding-provider openai:URL needs --embedding-model (or ENGRAM_EMBEDDING_MODEL)",
            ));
        }
        let mut p = OpenAiProvider {
            request_size: AtomicUsize::new(opts.request_size.max(1)),
            opts,
            endpoint,
            dim: 0,
            ask_dimensions: false,
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            splits: AtomicUsize::new(0),
        };
        let probe = ["dimension probe"];
        let mut v = p.on_own_thread(|client| p.request_with_retries(client, &probe))?;
        let mut dim = v.pop().map_or(0, |v| v.len());
        let cap = p.opts.max_dimensions;
        if let Some(cap) = cap.filter(|&c| dim > c) {
            // Ask for `cap` (OpenAI's text-embedding-3 models shorten their vectors on request).
            p.ask_dimensions = true;
            let mut v = p.on_own_thread(|client| p.request_with_retries(client, &probe))?;
            dim = v.pop().map_or(0, |v| v.len());
            if dim != cap {
                return Err(Error::usage(format!(
                    "embedding model {:?} at {} returns vectors longer than {cap} floats (the most the target takes) and \
                     the server does not shorten them on request; choose a model of at most {cap} dimensions",
                    p.opts.model,
                    redact_url(&p.endpoint)
                )));
            }
        }
        if dim == 0 {
            return Err(p.server_err("answered with an empty embedding"));
        }
        p.dim = dim;
        Ok(p)
    }

    pub fn stats(&self) -> HttpStats {
        HttpStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            splits: self.splits.load(Ordering::Relaxed),
        }
    }

    /// The current most texts per request.
    pub fn request_size(&self) -> usize {
        self.request_size.load(Ordering::Relaxed)
    }

    fn server_err(&self, msg: impl std::fmt::Display) -> Error {
        Error::source_err(
            format!("embedding server {}", redact_url(&self.endpoint)),
            format!("model {:?}: {msg}", self.opts.model),
        )
    }

    /// Runs `f` with a fresh blocking client on a plain thread (see the module docs).
    fn on_own_thread<T: Send>(
        &self,
        f: impl FnOnce(&reqwest::blocking::Client) -> Result<T> + Send,
    ) -> Result<T> {
        let timeout = self.opts.timeout;
        std::thread::scope(|s| {
            s.spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| Error::Internal(format!("HTTP client: {}", e.without_url())))?;
                f(&client)
            })
            .join()
            .map_err(|_| {
                Error::Internal("the HTTP thread of the embedding provider panicked".into())
            })?
        })
    }

    /// Embeds `texts`, splitting on 413, retrying 429/5xx.
    fn request_with_retries(
        &self,
        client: &reqwest::blocking::Client,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        let mut attempt = 0u32;
        loop {
            match self.request_once(client, texts) {
                Ok(Outcome::Vectors(v)) => return Ok(v),
                Ok(Outcome::TooLarge) => {
                    if texts.len() == 1 {
                        return Err(self.server_err(
                            "answered 413 (payload too large) to a request with a single text; shorten the \
                             texts (--text-columns) or raise the server's request limit",
                        ));
                    }
                    self.splits.fetch_add(1, Ordering::Relaxed);
                    let half = texts.len().div_ceil(2);
                    // Later requests start from the size that fits.
                    self.request_size.fetch_min(half, Ordering::Relaxed);
                    let mut a = self.request_with_retries(client, &texts[..half])?;
                    a.extend(self.request_with_retries(client, &texts[half..])?);
                    return Ok(a);
                }
                Err(Retry { wait, why }) => {
                    if !self.opts.backoff.allows(attempt) {
                        return Err(
                            self.server_err(format!("{why}; gave up after {attempt} retries"))
                        );
                    }
                    let backoff = self.opts.backoff.delay(attempt, &texts.len().to_string());
                    // A server's Retry-After wins, within the policy's cap.
                    let wait = wait.map_or(backoff, |w| w.min(self.opts.backoff.cap));
                    tracing::warn!(endpoint = %redact_url(&self.endpoint), %why, wait_ms = wait.as_millis() as u64, "embedding request failed; retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(Fatal(e)) => return Err(e),
            }
        }
    }

    fn request_once(
        &self,
        client: &reqwest::blocking::Client,
        texts: &[&str],
    ) -> std::result::Result<Outcome, Failure> {
        // Some servers reject empty strings; the pipeline never sends one (it falls back to the content), but a
        // direct caller might.
        let input: Vec<&str> = texts
            .iter()
            .map(|t| if t.is_empty() { " " } else { *t })
            .collect();
        let mut body = serde_json::json!({
            "model": self.opts.model,
            "input": input,
            "encoding_format": "float",
        });
        if let Some(cap) = self.opts.max_dimensions.filter(|_| self.ask_dimensions) {
            body["dimensions"] = cap.into();
        }
        let body = serde_json::to_vec(&body).map_err(|e| Fatal(e.into()))?;
        let mut req = client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.opts.api_key {
            req = req.bearer_auth(key);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send() {
            Ok(r) => r,
            Err(e) => {
                return Err(Retry {
                    wait: None,
                    why: format!("request failed: {}", e.without_url()),
                })
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = match resp.bytes() {
            Ok(b) => b,
            Err(e) => {
                return Err(Retry {
                    wait: None,
                    why: format!("reading the answer failed: {}", e.without_url()),
                })
            }
        };
        let code = status.as_u16();
        if code == 413 {
            return Ok(Outcome::TooLarge);
        }
        if code == 429 || status.is_server_error() {
            return Err(Retry {
                wait: retry_after,
                why: format!("answered {status}"),
            });
        }
        if !status.is_success() {
            let msg = error_message(&bytes);
            let hint = match code {
                401 | 403 => "; check the API key (ENGRAM_EMBEDDING_API_KEY)",
                404 => "; check the URL and the model name",
                _ => "",
            };
            return Err(Fatal(Error::usage(format!(
                "embedding server {} answered {status} for model {:?}: {msg}{hint}",
                redact_url(&self.endpoint),
                self.opts.model
            ))));
        }
        self.parse(&bytes, texts.len())
            .map(Outcome::Vectors)
            .map_err(Fatal)
    }

    /// Reads the answer: `data[*].embedding` in `index` order, checked and re-normalised.
    fn parse(&self, bytes: &[u8], n: usize) -> Result<Vec<Vec<f32>>> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| self.server_err(format!("answered with JSON that cannot be read: {e}")))?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| self.server_err("answered without a \"data\" array"))?;
        if data.len() != n {
            return Err(
                self.server_err(format!("answered {} embeddings for {n} texts", data.len()))
            );
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
        for (pos, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            let emb = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    self.server_err(format!(
                        "item {pos} has no \"embedding\" array (base64 answers are not supported)"
                    ))
                })?;
            let mut vec = Vec::with_capacity(emb.len());
            for x in emb {
                let f = x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                    self.server_err(format!(
                        "item {pos} has a value that is not a finite number: {x}"
                    ))
                })?;
                vec.push(f);
            }
            if self.dim != 0 && vec.len() != self.dim {
                return Err(self.server_err(format!(
                    "answered a vector of {} dimensions where the model gave {} before; the model behind the \
                     URL changed, or the server mixes models",
                    vec.len(),
                    self.dim
                )));
            }
            let norm = vec.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return Err(self.server_err(format!("answered the zero vector for text {index}")));
            }
            let slot = out
                .get_mut(index)
                .ok_or_else(|| self.server_err(format!("answered index {index} for {n} texts")))?;
            if slot.is_some() {
                return Err(self.server_err(format!("answered index {index} twice")));
            }
            *slot = Some(vec.iter().map(|x| (x / norm) as f32).collect());
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| self.server_err(format!("answered no embedding for text {i}")))
            })
            .collect()
    }
}

/// Why a request did not give vectors.
enum Failure {
    /// Worth another try (after `wait`, when the server said how long).
    Retry {
        wait: Option<Duration>,
        why: String,
    },
    Fatal(Error),
}
use Failure::{Fatal, Retry};

/// The server's error message (`{"error": {"message": ...}}` or `{"error": "..."}`), else the body's start.
fn error_message(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let e = &v["error"];
        if let Some(m) = e.get("message").and_then(Value::as_str).or(e.as_str()) {
            return m.chars().take(300).collect();
        }
    }
    String::from_utf8_lossy(bytes).chars().take(300).collect()
}

impl EmbeddingProvider for OpenAiProvider {
    fn name(&self) -> String {
        format!(
            "openai:{}:{}:{}",
            redact_url(&self.endpoint),
            self.opts.model,
            self.dim
        )
    }

    fn dimension(&self) -> usize {
        self.dim
    }

    fn model(&self) -> Option<String> {
        Some(format!(
            "{} at {}",
            self.opts.model,
            redact_url(&self.endpoint)
        ))
    }

    fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        if out.len() != texts.len() * dim {
            return Err(Error::Internal(format!(
                "{}: output buffer has {} floats, expected {} texts x {dim}",
                self.name(),
                out.len(),
                texts.len()
            )));
        }
        self.on_own_thread(|client| {
            let mut done = 0;
            while done < texts.len() {
                let size = self.request_size().max(1);
                let chunk = &texts[done..(done + size).min(texts.len())];
                let vectors = self.request_with_retries(client, chunk)?;
                for (v, row) in vectors.iter().zip(out[done * dim..].chunks_exact_mut(dim)) {
                    row.copy_from_slice(v);
                }
                done += chunk.len();
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_redaction() {
        assert_eq!(
            endpoint("http://127.0.0.1:11434").unwrap(),
            "http://127.0.0.1:11434/v1/embeddings"
        );
        assert_eq!(
            endpoint("https://api.example/v1/").unwrap(),
            "https://api.example/v1/embeddings"
        );
        assert_eq!(
            endpoint("http://h/v1/embeddings").unwrap(),
            "http://h/v1/embeddings"
        );
        assert!(endpoint("ftp://h").is_err());
        assert!(endpoint("not a url").is_err());
        let r = redact_url("https://user:sekret@h:8080/v1/embeddings?key=sekret2#x");
        assert_eq!(r, "https://h:8080/v1/embeddings");
        let o = OpenAiOptions {
            url: "http://u:pw@h".into(),
            api_key: Some("sk-sekret".into()),
            ..Default::default()
        };
        let d = format!("{o:?}");
        assert!(!d.contains("sekret") && !d.contains("pw"), "{d}");
    }

    #[test]
    fn server_error_messages() {
        assert_eq!(
            error_message(br#"{"error": {"message": "bad model", "type": "x"}}"#),
            "bad model"
        );
        assert_eq!(error_message(br#"{"error": "nope"}"#), "nope");
        assert_eq!(error_message(b"plain"), "plain");
    }

    #[test]
    fn connect_refuses_bad_options_without_network() {
        let e = OpenAiProvider::connect(OpenAiOptions {
            url: "http://127.0.0.1:9".into(),
            model: " ".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--embedding-model"), "{e}");
    }
}
