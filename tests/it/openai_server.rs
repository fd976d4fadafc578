//! A small local HTTP server that answers `POST /v1/embeddings` in the published OpenAI request/response shape
//! (`{"model", "input": [...]}` in, `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//! "model", "usage"}` out), with faults on demand: 413 above a number of inputs, 429 / 503 for the first requests,
//! a required bearer key, a dimension change. The only stand-in of these tests: it is the public API's shape, not
//! a model. Its vectors are deterministic functions of the words of the text, deliberately not normalised.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub dim: usize,
    /// 413 for requests with more inputs than this.
    pub max_inputs: usize,
    /// Answer 429 (with `Retry-After: 0`) to this many requests first.
    pub fail_429: usize,
    /// Then 503 (no Retry-After) to this many.
    pub fail_503: usize,
    /// 401 unless `Authorization: Bearer <key>`.
    pub key: Option<String>,
    /// After this many successful answers, vectors get one more dimension.
    pub change_dim_after: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            dim: 384,
            max_inputs: usize::MAX,
            fail_429: 0,
            fail_503: 0,
            key: None,
            change_dim_after: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub status: u16,
    pub inputs: usize,
    pub authorization: Option<String>,
    pub model: String,
}

pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Server {
    pub fn start(b: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        let state = Arc::new(Mutex::new((b, 0usize, 0usize)));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (l3, st) = (l2.clone(), state.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &st, &l3);
                });
            }
        });
        Server {
            url: format!("http://{addr}"),
            log,
            stop,
            addr,
        }
    }

    pub fn statuses(&self) -> Vec<u16> {
        self.log.lock().unwrap().iter().map(|l| l.status).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A vector of `dim` floats for `text`: 0.5 in component 0, plus 1 per word in the word's hashed component, all
/// times 3 (so not unit length).
pub fn vector(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    v[0] = 0.5;
    for w in text.split_whitespace() {
        let h = xxhash_rust::xxh3::xxh3_64(w.to_lowercase().as_bytes());
        v[(h % dim as u64) as usize] += 1.0;
    }
    v.iter().map(|x| x * 3.0).collect()
}

type State = Mutex<(Behaviour, usize, usize)>; // behaviour, requests seen, successes

fn handle(conn: TcpStream, state: &State, log: &Mutex<Vec<Logged>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut len = 0usize;
    let mut auth = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let inputs: Vec<String> = req["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("").to_string();

    let (status, extra, answer) = {
        let mut st = state.lock().unwrap();
        let (b, seen, ok) = &mut *st;
        *seen += 1;
        if !line.starts_with("POST /v1/embeddings ") {
            (
                404,
                "",
                serde_json::json!({"error": {"message": "not found"}}),
            )
        } else if b
            .key
            .as_ref()
            .is_some_and(|k| auth.as_deref() != Some(&format!("Bearer {k}")))
        {
            (
                401,
                "",
                serde_json::json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
            )
        } else if inputs.is_empty() || model.is_empty() {
            (
                400,
                "",
                serde_json::json!({"error": {"message": "model and input are required"}}),
            )
        } else if b.fail_429 > 0 {
            b.fail_429 -= 1;
            (
                429,
                "Retry-After: 0\r\n",
                serde_json::json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
            )
        } else if b.fail_503 > 0 {
            b.fail_503 -= 1;
            (
                503,
                "",
                serde_json::json!({"error": {"message": "overloaded"}}),
            )
        } else if inputs.len() > b.max_inputs {
            (
                413,
                "",
                serde_json::json!({"error": {"message": "payload too large"}}),
            )
        } else {
            *ok += 1;
            let dim = match b.change_dim_after {
                Some(n) if *ok > n => b.dim + 1,
                _ => b.dim,
            };
            // OpenAI's text-embedding-3 models shorten their vectors on request.
            let dim = req["dimensions"]
                .as_u64()
                .map_or(dim, |d| (d as usize).min(dim));
            // Answered in reverse order: clients must use `index`.
            let data: Vec<serde_json::Value> = inputs
                .iter()
                .enumerate()
                .rev()
                .map(|(i, t)| serde_json::json!({"object": "embedding", "index": i, "embedding": vector(t, dim)}))
                .collect();
            (
                200,
                "",
                serde_json::json!({"object": "list", "data": data, "model": model,
                                          "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
            )
        }
    };
    log.lock().unwrap().push(Logged {
        status,
        inputs: inputs.len(),
        authorization: auth,
        model,
    });
    let body = answer.to_string();
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}
