//! Engram as a source (`engram+http://HOST:PORT`): the memories of a live server read back into a snapshot, one
//! table per memory space, with their embeddings, so a bundle can be rebuilt from a server and sent to another
//! target (Engram -> Neo4j or PostgreSQL). Edges cannot come back: Engram stores none.
//!
//! Reads: `GET /api/v1/spaces` (the tables), `GET /api/v1/memories?space=S&tier=all&offset=&limit=1000&
//! include_embeddings=true` (the rows, paged), `GET /api/v1/memories/{id}` (validation's re-read of sampled
//! rows; the server answers it from its in-memory tier only). Engram has no snapshot isolation and no change
//! counter: a space written to during the read may page inconsistently, which the read detects (a repeated id,
//! or a count that differs from the server's total) and refuses, and the fingerprint is the count per space.
//!
//! The HTTP client is reqwest's blocking one on a short-lived thread per request: the snapshot stage is called
//! from inside the pipeline's async runtime, where a blocking client may not run (as in `embed::openai`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float32Builder, Float64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Catalog, ColumnInfo, Emit, Fingerprint, ReadEnd, Source, TableInfo};
use crate::error::{Error, Result};
use crate::sink::engram::http::{list_path, memory_path, ListPage, PAGE};
use crate::sink::engram::{EngramTarget, ENGRAM_DIM};

/// The staged columns of every space's table, as a type-mapping table: (name, Engram's JSON field, Arrow type).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("id", "string", "Utf8"),
    ("content", "string", "Utf8"),
    ("confidence", "number", "Float64"),
    ("timestamp", "string (RFC 3339)", "Utf8"),
    ("embedding", "768 numbers", "FixedSizeList(768 x Float32)"),
];

pub struct EngramSource {
    target: EngramTarget,
    token: Option<String>,
    timeout: Duration,
}

/// A memory as the listing gives it, every field.
#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
}

impl EngramSource {
    /// `engram+http://HOST:PORT[?token_env=VAR]`; the API key, when the server wants one, from the environment.
    pub fn open(spec: &str) -> Result<EngramSource> {
        if !spec.starts_with("engram+http://") {
            return Err(Error::usage(format!(
                "--source {spec}: Engram is read over HTTP; use engram+http://HOST:PORT"
            )));
        }
        let target = EngramTarget::parse(spec)
            .map_err(|e| Error::usage(e.to_string().replace("--target", "--source")))?;
        let token = target.token();
        Ok(EngramSource {
            target,
            token,
            timeout: Duration::from_secs(60),
        })
    }

    fn location(&self) -> String {
        format!("Engram at {}", self.target.http_base)
    }

    /// One GET, on a thread of its own (see the module docs), retried a few times on transport errors and 5xx.
    fn get(&self, path: &str, space: Option<&str>) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.target.http_base);
        let (token, timeout) = (self.token.clone(), self.timeout);
        let space = space.map(String::from);
        let location = self.location();
        std::thread::scope(|s| {
            s.spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .no_proxy()
                    .build()
                    .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
                let mut last = String::new();
                for attempt in 0..4u32 {
                    if attempt > 0 {
                        std::thread::sleep(Duration::from_millis(200 << attempt));
                    }
                    let mut rb = client.get(&url);
                    if let Some(t) = &token {
                        rb = rb.bearer_auth(t);
                    }
                    if let Some(sp) = &space {
                        rb = rb.header("x-memory-space", sp);
                    }
                    match rb.send() {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
                            if status >= 500 || status == 429 || status == 408 {
                                last = format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
                                continue;
                            }
                            return Ok((status, body));
                        }
                        Err(e) => last = format!("{}", e.without_url()),
                    }
                }
                Err(Error::source_err(
                    location,
                    format!("GET {url} failed 4 times, last: {last}; check that Engram is running at this address"),
                ))
            })
            .join()
            .map_err(|_| Error::Internal("the HTTP thread of the Engram source panicked".into()))?
        })
    }

    /// A GET answered 200 with JSON, or an error naming what was asked.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        space: Option<&str>,
    ) -> Result<T> {
        let (status, body) = self.get(path, space)?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| {
                Error::source_err(
                    self.location(),
                    format!("GET {path}: not the answer Engram gives ({e})"),
                )
            }),
            401 | 403 => Err(Error::source_err(
                self.location(),
                format!(
                    "the server refused the credentials (HTTP {status}); set {} to a valid key",
                    self.target.token_env
                ),
            )),
            _ => Err(Error::source_err(
                self.location(),
                format!(
                    "GET {path} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ),
            )),
        }
    }

    fn spaces(&self) -> Result<Vec<String>> {
        let v: Value = self.get_json("/api/v1/spaces", None)?;
        let mut spaces: Vec<String> = v["spaces"]
            .as_array()
            .ok_or_else(|| {
                Error::source_err(self.location(), "GET /api/v1/spaces: no \"spaces\" list")
            })?
            .iter()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
        spaces.sort();
        Ok(spaces)
    }

    fn page(&self, space: &str, offset: usize, limit: usize) -> Result<ListPage<Listed>> {
        self.get_json(&list_path(space, offset, limit), Some(space))
    }

    fn total(&self, space: &str) -> Result<u64> {
        let p = self.page(space, 0, 1)?;
        Ok(p.tier_counts
            .map(|t| t.total)
            .unwrap_or(p.memories.len() as u64))
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, true),
        Field::new("confidence", DataType::Float64, true),
        Field::new("timestamp", DataType::Utf8, true),
        Field::new("embedding", vector_type(), true),
    ]))
}

/// 768 floats, items nullable as every staged vector column (the pgvector source's too), so mappings cast them
/// the same way.
fn vector_type() -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        ENGRAM_DIM as i32,
    )
}

fn table_info(space: &str) -> TableInfo {
    TableInfo {
        name: space.to_string(),
        columns: COLUMNS
            .iter()
            .map(|(name, json, arrow)| ColumnInfo {
                name: name.to_string(),
                source_type: json.to_string(),
                arrow_type: arrow.to_string(),
                mapped_as: if *name == "embedding" {
                    "vector"
                } else {
                    "text"
                }
                .to_string(),
                fidelity: "exact".into(),
                synthetic: false,
            })
            .collect(),
        primary_key: vec!["id".into()],
        foreign_keys: vec![],
        row_estimate: None,
    }
}

/// One page as a batch; `space` and the memory's id name any value that does not fit.
fn batch_of(space: &str, rows: &[Listed]) -> Result<RecordBatch> {
    let mut id = StringBuilder::new();
    let mut content = StringBuilder::new();
    let mut confidence = Float64Builder::new();
    let mut timestamp = StringBuilder::new();
    let mut embedding = FixedSizeListBuilder::new(Float32Builder::new(), ENGRAM_DIM as i32)
        .with_field(Arc::new(Field::new_list_field(DataType::Float32, true)));
    for m in rows {
        id.append_value(&m.id);
        content.append_option(m.content.as_deref());
        confidence.append_option(m.confidence);
        timestamp.append_option(m.timestamp.as_deref());
        match &m.embedding {
            Some(v) if v.len() == ENGRAM_DIM => {
                embedding.values().append_slice(v);
                embedding.append(true);
            }
            Some(v) => {
                return Err(Error::source_err(
                    format!("Engram space {space}"),
                    format!(
                        "memory {:?} has an embedding of {} floats, not {ENGRAM_DIM}",
                        m.id,
                        v.len()
                    ),
                ))
            }
            None => {
                embedding.values().append_slice(&[0.0; ENGRAM_DIM]);
                embedding.append(false);
            }
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(content.finish()),
        Arc::new(confidence.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(embedding.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

impl Source for EngramSource {
    fn kind(&self) -> &'static str {
        "engram"
    }

    fn describe(&self) -> Value {
        serde_json::json!({ "kind": "engram", "path": self.target.describe(), "url": self.target.http_base })
    }

    /// The count per space: Engram has no change counter, so an update that keeps the count goes unseen here
    /// (an `--incremental` run diffs the rows themselves and sees it).
    fn fingerprint(&mut self) -> Result<Fingerprint> {
        let mut f = Fingerprint::default();
        for s in self.spaces()? {
            let n = self.total(&s)?;
            f = f.table(&s, "memories", n);
        }
        Ok(f)
    }

    fn catalog(&mut self) -> Result<Catalog> {
        Ok(Catalog {
            tables: self.spaces()?.iter().map(|s| table_info(s)).collect(),
            cycles: vec![],
            skipped: vec![],
        })
    }

    fn schema(&self, _table: &TableInfo) -> Result<SchemaRef> {
        Ok(schema())
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        self.total(&table.name)
    }

    /// The whole space, page by page (no resume position: offsets are not stable across server restarts). A
    /// repeated id or a row count other than the server's total means the space changed under the read.
    fn read_table(
        &mut self,
        table: &TableInfo,
        _after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        let space = &table.name;
        let mut seen: HashSet<String> = HashSet::new();
        let mut pending: Vec<Listed> = vec![];
        let mut total = None;
        let mut offset = 0usize;
        loop {
            let page = self.page(space, offset, PAGE)?;
            if total.is_none() {
                total = page.tier_counts.as_ref().map(|t| t.total);
            }
            let n = page.memories.len();
            offset += n;
            for m in page.memories {
                if !seen.insert(m.id.clone()) {
                    return Err(Error::source_err(
                        format!("Engram space {space}"),
                        format!(
                            "memory {:?} was listed twice: the space changed while it was read; run again when \
                             nothing writes to it",
                            m.id
                        ),
                    ));
                }
                pending.push(m);
                if pending.len() >= batch_size.max(1) {
                    emit(batch_of(space, &pending)?, None)?;
                    pending.clear();
                }
            }
            if n < PAGE {
                break;
            }
        }
        if !pending.is_empty() {
            emit(batch_of(space, &pending)?, None)?;
        }
        let rows = seen.len() as u64;
        if let Some(t) = total.filter(|t| *t != rows) {
            return Err(Error::source_err(
                format!("Engram space {space}"),
                format!(
                    "the listing gave {rows} memories but the server counts {t}: the space changed while it was \
                     read, or the server lists fewer than it holds; run again when nothing writes to it"
                ),
            ));
        }
        Ok(ReadEnd::Done {
            rows,
            read_up_to: serde_json::json!({ "memories": rows }),
        })
    }

    /// `GET /api/v1/memories/{id}`: the record without its embedding (the server's answer has none, so the
    /// embedding is left out of the map and not compared; the snapshot's checksums cover it). None when the
    /// server does not find it, which it answers from its in-memory tier only.
    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        let mut out = vec![];
        for k in keys {
            let Some(id) = k.get("id").and_then(|v| v.as_str()) else {
                out.push(None);
                continue;
            };
            let (status, body) = self.get(&memory_path(id), Some(&table.name))?;
            if status == 404 {
                out.push(None);
                continue;
            }
            if status != 200 {
                return Err(Error::source_err(
                    self.location(),
                    format!("GET memory {id:?} answered HTTP {status}"),
                ));
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut row = Map::new();
            for c in ["id", "content", "confidence", "timestamp"] {
                row.insert(c.to_string(), v.get(c).cloned().unwrap_or(Value::Null));
            }
            out.push(Some(row));
        }
        Ok(out)
    }
}
