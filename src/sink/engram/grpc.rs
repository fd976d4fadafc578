//! Engram's gRPC API as the sink uses it: `StreamingRemember` (one stream per slice of a batch, several streams
//! in flight over one HTTP/2 connection), and unary `Remember` when the server does not implement streaming.
//! Same retry rules as HTTP: transient codes are retried with backoff, a refused key stops the load, an invalid
//! request is that memory's rejection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::http::StatusClass;
use super::proto::{self, engram_service_client::EngramServiceClient, remember_request};
use super::{confidence_category, memory_type, Backoff, Memory, Outcome};
use crate::error::{Error, Result};

/// gRPC codes and what the sink does with them (the gRPC side of the HTTP status table).
pub const CODE_TABLE: &[(Code, StatusClass)] = &[
    (Code::Ok, StatusClass::Ok),
    (Code::Unavailable, StatusClass::Retry),
    (Code::DeadlineExceeded, StatusClass::Retry),
    (Code::Aborted, StatusClass::Retry),
    (Code::Internal, StatusClass::Retry),
    (Code::Unknown, StatusClass::Retry),
    (Code::Cancelled, StatusClass::Retry),
    (Code::DataLoss, StatusClass::Retry),
    (Code::Unauthenticated, StatusClass::Fatal),
    (Code::PermissionDenied, StatusClass::Fatal),
    (Code::Unimplemented, StatusClass::Fatal),
    (Code::InvalidArgument, StatusClass::Reject),
    (Code::NotFound, StatusClass::Reject),
    (Code::AlreadyExists, StatusClass::Reject),
    (Code::FailedPrecondition, StatusClass::Reject),
    (Code::OutOfRange, StatusClass::Reject),
    // A server (or a proxy before it) shedding load: the memory was not refused, the pace was.
    (Code::ResourceExhausted, StatusClass::Retry),
];

pub fn classify(code: Code) -> StatusClass {
    CODE_TABLE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, s)| *s)
        .unwrap_or(StatusClass::Reject)
}

/// The request for one memory (also what the benchmark measures, with its encoding).
pub fn remember_request(space: &str, m: &Memory) -> proto::RememberRequest {
    proto::RememberRequest {
        memory_space_id: space.to_string(),
        memory_type: Some(remember_request::MemoryType::Memory(proto::Memory {
            id: m.id.clone(),
            embedding: m.embedding.clone(),
            confidence: Some(proto::Confidence {
                value: m.confidence,
                category: confidence_category(m.confidence) as i32,
                reasoning: String::new(),
            }),
            // The server replaces created_at with its own clock; sent anyway, the bundle keeps the truth.
            created_at: m
                .created_at
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: t.timestamp_subsec_nanos() as i32,
                }),
            content: m.content.clone(),
            memory_type: memory_type(&m.memory_type) as i32,
            ..Default::default()
        })),
        auto_link: false,
        link_threshold: 0.0,
    }
}

pub struct GrpcApi {
    client: EngramServiceClient<Channel>,
    authority: String,
    /// `Bearer <key>` as metadata; never printed.
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    backoff: Backoff,
    /// Set once the server answered Unimplemented to StreamingRemember.
    unary_only: AtomicBool,
}

/// Why a slice could not go on as it was.
enum Stop {
    /// The memory at this index (within the slice) was refused.
    Rejected(usize, String, String),
    Transient(String),
    Fatal(Error),
    Unimplemented,
}

impl GrpcApi {
    pub async fn connect(
        authority: &str,
        token: Option<&str>,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<GrpcApi> {
        let target_err = |m: String| Error::target_err(format!("Engram gRPC at {authority}"), m);
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| target_err(format!("not a valid address: {e}")))?
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout);
        let auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = match token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                target_err(
                    "the API key holds characters a gRPC header cannot carry; check ENGRAM_API_KEY"
                        .into(),
                )
            })?),
            None => None,
        };
        let mut attempt = 0;
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if attempt + 1 < backoff.attempts => {
                    tracing::debug!(attempt, error = %e, "gRPC connect failed; retrying");
                    tokio::time::sleep(backoff.delay(attempt, authority)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    return Err(target_err(format!(
                        "cannot connect after {} attempts ({msg}); check that Engram is running and its --grpc-port",
                        backoff.attempts
                    )));
                }
            }
        };
        Ok(GrpcApi {
            client: EngramServiceClient::new(channel),
            authority: authority.to_string(),
            auth,
            backoff,
            unary_only: AtomicBool::new(false),
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    fn refused(&self, status: &tonic::Status) -> Error {
        Error::target_err(
            format!("Engram gRPC at {}", self.authority),
            format!(
                "the server refused the credentials ({:?}: {}); set ENGRAM_API_KEY (or the variable named by ?token_env=) to a valid key",
                status.code(),
                status.message()
            ),
        )
    }

    fn gave_up(&self, why: &str) -> Error {
        Error::target_err(
            format!("Engram gRPC at {}", self.authority),
            format!(
                "failed {} times, last: {why}; check that Engram is running (run the same command again: the load resumes after the last acknowledged batch)",
                self.backoff.attempts
            ),
        )
    }

    /// Sends a batch: `parallel` slices, each over its own stream; outcomes in input order.
    pub async fn remember_batch(
        &self,
        space: &str,
        mems: Vec<Memory>,
        parallel: usize,
    ) -> Result<Vec<Outcome>> {
        let per = mems.len().div_ceil(parallel.max(1)).max(1);
        let results: Vec<Result<Vec<Outcome>>> = stream::iter(mems.chunks(per))
            .map(|slice| self.remember_slice(space, slice))
            .buffered(parallel.max(1))
            .collect()
            .await;
        let mut out = Vec::with_capacity(mems.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Sends one slice over one StreamingRemember stream (unary Remember, one by one, once the server has
    /// answered Unimplemented to streaming); outcomes in input order.
    pub async fn remember_slice(&self, space: &str, slice: &[Memory]) -> Result<Vec<Outcome>> {
        if !self.unary_only.load(Ordering::Relaxed) {
            if let Some(out) = self.stream_slice(space, slice).await? {
                return Ok(out);
            }
            if !self.unary_only.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "StreamingRemember is not implemented by the server; using unary Remember"
                );
            }
        }
        let mut out = Vec::with_capacity(slice.len());
        for m in slice {
            out.push(self.remember(space, m).await?);
        }
        Ok(out)
    }

    /// One slice over StreamingRemember. On a refused memory the stream ends; the rest goes on a new stream.
    /// None: the server does not implement streaming.
    async fn stream_slice(&self, space: &str, slice: &[Memory]) -> Result<Option<Vec<Outcome>>> {
        let mut out: Vec<Outcome> = Vec::with_capacity(slice.len());
        let mut attempt = 0;
        while out.len() < slice.len() {
            let rest = &slice[out.len()..];
            let before = out.len();
            let stop = self.stream_once(space, rest, &mut out).await;
            match stop {
                None => {}
                Some(Stop::Rejected(i, status, message)) => {
                    // `i` is relative to `rest`; everything before it was acknowledged.
                    debug_assert_eq!(before + i, out.len());
                    out.push(Outcome::Rejected { status, message });
                }
                Some(Stop::Fatal(e)) => return Err(e),
                Some(Stop::Unimplemented) => return Ok(None),
                Some(Stop::Transient(why)) => {
                    if out.len() > before {
                        attempt = 0; // progress was made: the server is up
                    }
                    if attempt + 1 >= self.backoff.attempts {
                        return Err(self.gave_up(&why));
                    }
                    tokio::time::sleep(self.backoff.delay(attempt, &rest[0].id)).await;
                    attempt += 1;
                }
            }
        }
        Ok(Some(out))
    }

    /// Sends `rest` on one stream, appending an Accepted per acknowledged memory; says why it stopped early.
    async fn stream_once(
        &self,
        space: &str,
        rest: &[Memory],
        out: &mut Vec<Outcome>,
    ) -> Option<Stop> {
        let start = out.len();
        let reqs: Vec<proto::RememberRequest> =
            rest.iter().map(|m| remember_request(space, m)).collect();
        let mut client = self.client.clone();
        let resp = client
            .streaming_remember(self.request(stream::iter(reqs)))
            .await;
        let mut answers = match resp {
            Ok(r) => r.into_inner(),
            Err(s) => return Some(self.stop(s, 0)),
        };
        loop {
            match answers.message().await {
                Ok(Some(r)) => out.push(Outcome::Accepted(r.memory_id)),
                Ok(None) if out.len() - start >= rest.len() => return None,
                Ok(None) => {
                    return Some(Stop::Transient(format!(
                        "the stream ended after {} of {} answers",
                        out.len() - start,
                        rest.len()
                    )))
                }
                Err(s) => return Some(self.stop(s, out.len() - start)),
            }
        }
    }

    fn stop(&self, s: tonic::Status, index: usize) -> Stop {
        match classify(s.code()) {
            StatusClass::Ok => Stop::Transient("OK status without an answer".into()),
            StatusClass::Retry => Stop::Transient(format!("{:?}: {}", s.code(), s.message())),
            StatusClass::Fatal if s.code() == Code::Unimplemented => Stop::Unimplemented,
            StatusClass::Fatal => Stop::Fatal(self.refused(&s)),
            StatusClass::Reject => Stop::Rejected(
                index,
                format!("gRPC {:?}", s.code()),
                s.message().to_string(),
            ),
        }
    }

    /// Unary Remember for one memory, retried on transient codes.
    pub async fn remember(&self, space: &str, m: &Memory) -> Result<Outcome> {
        let mut attempt = 0;
        loop {
            let mut client = self.client.clone();
            let s = match client
                .remember(self.request(remember_request(space, m)))
                .await
            {
                Ok(r) => return Ok(Outcome::Accepted(r.into_inner().memory_id)),
                Err(s) => s,
            };
            match classify(s.code()) {
                StatusClass::Reject => {
                    return Ok(Outcome::Rejected {
                        status: format!("gRPC {:?}", s.code()),
                        message: s.message().to_string(),
                    })
                }
                StatusClass::Fatal if s.code() == Code::Unimplemented => {
                    return Err(Error::target_err(
                        format!("Engram gRPC at {}", self.authority),
                        "the server implements neither StreamingRemember nor Remember; is this an Engram gRPC port?",
                    ))
                }
                StatusClass::Fatal => return Err(self.refused(&s)),
                StatusClass::Retry | StatusClass::Ok => {
                    if attempt + 1 >= self.backoff.attempts {
                        return Err(self.gave_up(&format!("{:?}: {}", s.code(), s.message())));
                    }
                    tokio::time::sleep(self.backoff.delay(attempt, &m.id)).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn code_table_rows() {
        // What each code means for a load, stated here independently of the table: a changed row fails.
        use StatusClass as S;
        let want = [
            (Code::Ok, S::Ok),
            (Code::Cancelled, S::Retry),
            (Code::Unknown, S::Retry),
            (Code::InvalidArgument, S::Reject),
            (Code::DeadlineExceeded, S::Retry),
            (Code::NotFound, S::Reject),
            (Code::AlreadyExists, S::Reject),
            (Code::PermissionDenied, S::Fatal),
            (Code::ResourceExhausted, S::Retry),
            (Code::FailedPrecondition, S::Reject),
            (Code::Aborted, S::Retry),
            (Code::OutOfRange, S::Reject),
            (Code::Unimplemented, S::Fatal),
            (Code::Internal, S::Retry),
            (Code::Unavailable, S::Retry),
            (Code::DataLoss, S::Retry),
            (Code::Unauthenticated, S::Fatal),
        ];
        for (code, class) in want {
            assert_eq!(classify(code), class, "{code:?}");
        }
        // One row per code of the gRPC spec (0 to 16), none twice.
        let codes: std::collections::BTreeSet<i32> =
            CODE_TABLE.iter().map(|(c, _)| *c as i32).collect();
        assert_eq!(codes, (0..=16).collect());
        assert_eq!(CODE_TABLE.len(), 17);
    }

    /// The wire tags of the fields the server reads, as ENGRAM.md numbers them: (field number << 3) | wire type.
    #[test]
    fn field_numbers_match_engram() {
        let m = Memory {
            id: "i".into(),
            content: "c".into(),
            embedding: vec![1.0; 768],
            confidence: 0.9,
            created_at: Some(1_000_000),
            memory_type: "episodic".into(),
        };
        let req = remember_request("space_a", &m);
        let bytes = req.encode_to_vec();
        // memory_space_id = 1 (length-delimited), memory = 2 (length-delimited).
        assert_eq!(bytes[0], (1 << 3) | 2);
        assert_eq!(&bytes[2..9], b"space_a");
        assert_eq!(bytes[9], (2 << 3) | 2);
        let Some(remember_request::MemoryType::Memory(mem)) = &req.memory_type else {
            panic!("memory")
        };
        let mb = mem.encode_to_vec();
        // Each (field, wire type) the Memory must carry, found as a tag byte sequence in order of field number.
        let tag = |field: u32, wire: u32| {
            let mut v: Vec<u8> = vec![];
            prost::encoding::encode_varint(((field << 3) | wire) as u64, &mut v);
            v
        };
        let rows: &[(u32, u32, &str)] = &[
            (1, 2, "id"),
            (2, 2, "embedding (packed floats)"),
            (4, 2, "confidence"),
            (6, 2, "created_at"),
            (10, 2, "content"),
            (21, 0, "memory_type"),
        ];
        let mut pos = 0;
        for (field, wire, name) in rows {
            let t = tag(*field, *wire);
            let found = mb[pos..].windows(t.len()).position(|w| w == t.as_slice());
            let at = found.unwrap_or_else(|| panic!("{name}: tag {t:?} not found"));
            pos += at + t.len();
        }
        // Confidence: value = 1 (fixed32), category = 2 (varint).
        let c = proto::Confidence {
            value: 0.9,
            category: proto::ConfidenceCategory::High as i32,
            reasoning: String::new(),
        }
        .encode_to_vec();
        assert_eq!(c[0], (1 << 3) | 5);
        assert_eq!(c[5], 2 << 3);
        assert_eq!(c[6], 4);
        // Response: memory_id = 1.
        let r = proto::RememberResponse {
            memory_id: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(r, vec![(1 << 3) | 2, 1, b'x']);
        assert_eq!(proto::MemoryType::Episodic as i32, 1);
        assert_eq!(proto::MemoryType::Working as i32, 4);
        assert_eq!(proto::ConfidenceCategory::Certain as i32, 5);
    }
}
