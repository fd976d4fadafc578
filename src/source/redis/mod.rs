//! Redis sources: an RDB dump file (`--source dump.rdb`, or `--use-rdb FILE`) and a live server
//! (`--source redis://[:PASSWORD@]HOST:PORT[/DB]`). Both stage the same two tables, so a dump and the server it
//! came from give identical rows (the test oracle checks exactly that):
//!
//! - `keys`: one row per key: db, key, type, encoding (dumps only), the whole value as typed JSON, its length,
//!   its absolute expiry (Unix ms) and its TTL in ms against the snapshot's "as of" time.
//! - `members`: one row per element of a list, set, sorted set or hash, in a canonical order (lists in list
//!   order, sets by member bytes, sorted sets by score then member, hashes by field bytes).
//!
//! Keys and values are bytes: text that is valid UTF-8 is staged as is, anything else as base64 with a flag
//! column (`key_base64`, ...) or, inside value JSON, as `{"base64": "..."}`. Nothing is replaced.
//!
//! The "as of" time is one instant per snapshot, recorded in the manifest: a dump's `ctime` aux field, or the
//! server's clock (TIME) when a live snapshot starts. Keys (and hash fields) already expired at that instant are
//! not staged, as Redis itself would not return them; streams and module values are skipped and listed per key.

pub mod live;
pub mod rdb;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::Engine;
use serde_json::{json, Map, Value as Json};

use super::{Catalog, ColumnInfo, Emit, Fingerprint, ReadEnd, Source, TableInfo};
use crate::error::{Error, Result};
pub use rdb::{HashField, Value};

pub const KEYS_TABLE: &str = "keys";
pub const MEMBERS_TABLE: &str = "members";

/// Staged columns of `keys`: name, Arrow type, nullable, what it holds. `ttl_ms` is derived by the tool from the
/// snapshot's as-of time (marked synthetic: a later re-read has another as-of time).
pub const KEY_COLUMNS: &[(&str, DataType, bool, &str)] = &[
    ("db", DataType::Int64, false, "database number"),
    (
        "key",
        DataType::Utf8,
        false,
        "the key: UTF-8 text, or base64 when key_base64",
    ),
    (
        "key_base64",
        DataType::Boolean,
        false,
        "the key's bytes are not UTF-8 and `key` is their base64",
    ),
    (
        "type",
        DataType::Utf8,
        false,
        "string, list, set, zset, hash, stream or module",
    ),
    (
        "encoding",
        DataType::Utf8,
        true,
        "encoding in the dump (RDB only; NULL for a live read)",
    ),
    (
        "length",
        DataType::Int64,
        false,
        "bytes of a string, elements of a collection",
    ),
    ("value", DataType::Utf8, false, "the value as typed JSON"),
    (
        "expire_at_ms",
        DataType::Int64,
        true,
        "absolute expiry, Unix ms; NULL without TTL",
    ),
    (
        "ttl_ms",
        DataType::Int64,
        true,
        "expire_at_ms minus the snapshot's as-of time",
    ),
];

/// Staged columns of `members`.
pub const MEMBER_COLUMNS: &[(&str, DataType, bool, &str)] = &[
    ("db", DataType::Int64, false, "database number"),
    ("key", DataType::Utf8, false, "the key, as in `keys`"),
    ("key_base64", DataType::Boolean, false, "as in `keys`"),
    (
        "type",
        DataType::Utf8,
        false,
        "list, set, zset, hash or stream",
    ),
    (
        "idx",
        DataType::Int64,
        false,
        "position in the canonical order, from 0",
    ),
    (
        "member",
        DataType::Utf8,
        false,
        "list element, set or zset member, hash field",
    ),
    (
        "member_base64",
        DataType::Boolean,
        false,
        "member is base64 of non-UTF-8 bytes",
    ),
    ("score", DataType::Float64, true, "zset score"),
    ("field_value", DataType::Utf8, true, "hash field value"),
    (
        "field_value_base64",
        DataType::Boolean,
        true,
        "field_value is base64 of non-UTF-8 bytes",
    ),
    (
        "field_expire_at_ms",
        DataType::Int64,
        true,
        "hash field expiry (Redis 7.4+), Unix ms",
    ),
    (
        "entry_fields",
        DataType::Utf8,
        true,
        "stream entry's fields as typed JSON [[field, value], ...]; member is the entry id",
    ),
];

/// The staged columns that hold typed JSON.
const JSON_COLUMNS: &[&str] = &["value", "entry_fields"];

fn columns(table: &str) -> &'static [(&'static str, DataType, bool, &'static str)] {
    if table == MEMBERS_TABLE {
        MEMBER_COLUMNS
    } else {
        KEY_COLUMNS
    }
}

fn schema_of(table: &str) -> SchemaRef {
    Arc::new(Schema::new(
        columns(table)
            .iter()
            .map(|(n, t, null, _)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    ))
}

/// `expiry_exact`: false for a live server before Redis 7, which has no PEXPIRETIME: its `expire_at_ms` is PTTL
/// plus the server's clock at the read, a few ms off from one read to the next, so it is marked synthetic (not
/// compared by validation's sampled values, like `ttl_ms`).
fn table_info(table: &str, estimate: Option<u64>, expiry_exact: bool) -> TableInfo {
    let mut pk = vec![
        "db".to_string(),
        "key".to_string(),
        "key_base64".to_string(),
    ];
    if table == MEMBERS_TABLE {
        pk.push("idx".into());
    }
    TableInfo {
        name: table.into(),
        columns: columns(table)
            .iter()
            .map(|(n, t, _, doc)| ColumnInfo {
                name: n.to_string(),
                source_type: doc.to_string(),
                arrow_type: t.to_string(),
                // JSON text columns say so, so mappings nest them and validation compares them as JSON.
                mapped_as: if JSON_COLUMNS.contains(n) {
                    "json".to_string()
                } else {
                    n.to_string()
                },
                fidelity: "exact".into(),
                synthetic: *n == "ttl_ms" || (*n == "expire_at_ms" && !expiry_exact),
            })
            .collect(),
        primary_key: pk,
        foreign_keys: vec![],
        row_estimate: estimate,
    }
}

/// One key as both backends hand it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub db: u64,
    pub key: Vec<u8>,
    pub expire_at_ms: Option<i64>,
    /// RDB encoding; None for a live read.
    pub encoding: Option<&'static str>,
    pub value: Value,
}

impl Item {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Hash(_) => "hash",
            Value::Stream(_) => "stream",
            Value::Module(_) => "module",
        }
    }

    /// Puts the members in the canonical order (see the module doc) and, unless `keep_expired`, drops hash
    /// fields expired at `as_of`; returns how many were dropped.
    pub fn canonicalize(&mut self, as_of_ms: i64, keep_expired: bool) -> u64 {
        match &mut self.value {
            Value::Set(v) => v.sort(),
            Value::ZSet(v) => v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0))),
            Value::Hash(v) => {
                let before = v.len();
                if !keep_expired {
                    v.retain(|f| f.expire_at_ms.is_none_or(|t| t > as_of_ms));
                }
                v.sort_by(|a, b| a.field.cmp(&b.field));
                return (before - v.len()) as u64;
            }
            Value::Stream(st) => {
                st.entries.sort_by_key(|e| e.id);
                st.groups.sort_by(|a, b| a.name.cmp(&b.name));
                for g in &mut st.groups {
                    g.consumers.sort();
                }
            }
            _ => {}
        }
        0
    }

    fn len(&self) -> usize {
        match &self.value {
            Value::String(s) => s.len(),
            Value::List(v) | Value::Set(v) => v.len(),
            Value::ZSet(v) => v.len(),
            Value::Hash(v) => v.len(),
            Value::Stream(st) => st.entries.len(),
            Value::Module(m) => m.raw.len(),
        }
    }
}

/// Bytes as text: (UTF-8 text or base64, is_base64).
pub fn text(b: &[u8]) -> (String, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(b), true),
    }
}

/// Bytes inside value JSON: a string when UTF-8, else `{"base64": "..."}`.
pub fn bin_json(b: &[u8]) -> Json {
    match text(b) {
        (s, false) => Json::String(s),
        (s, true) => json!({ "base64": s }),
    }
}

/// A score in JSON: a number, or "inf"/"-inf" (JSON has no infinities).
pub fn score_json(s: f64) -> Json {
    if s.is_finite() {
        json!(s)
    } else if s > 0.0 {
        json!("inf")
    } else if s < 0.0 {
        json!("-inf")
    } else {
        json!("nan")
    }
}

/// The typed JSON of a value (see docs/sources/redis.md for the forms).
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) => bin_json(s),
        Value::List(v) | Value::Set(v) => Json::Array(v.iter().map(|x| bin_json(x)).collect()),
        Value::ZSet(v) => Json::Array(
            v.iter()
                .map(|(m, s)| json!([bin_json(m), score_json(*s)]))
                .collect(),
        ),
        Value::Hash(v) => Json::Array(
            v.iter()
                .map(|f| match f.expire_at_ms {
                    None => json!([bin_json(&f.field), bin_json(&f.value)]),
                    Some(t) => json!([bin_json(&f.field), bin_json(&f.value), t]),
                })
                .collect(),
        ),
        // The entries are rows of `members` (memories of their own); the key keeps what the stream is.
        Value::Stream(st) => json!({
            "entries": st.entries.len(),
            "last_id": rdb::stream_id_text(st.last_id),
            "groups": st.groups.iter().map(|g| json!({
                "name": bin_json(&g.name),
                "last_delivered_id": rdb::stream_id_text(g.last_delivered_id),
                "pending": g.pending,
                "consumers": g.consumers.iter().map(|(n, p)| json!({"name": bin_json(n), "pending": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Value::Module(m) => json!({
            "module": m.name,
            "module_version": m.version,
            "encoding": "rdb-module",
            "raw_base64": base64::engine::general_purpose::STANDARD.encode(&m.raw),
        }),
    }
}

/// A stream entry's fields as typed JSON: `[[field, value], ...]` in the entry's order.
pub fn entry_fields_json(fields: &[(Vec<u8>, Vec<u8>)]) -> Json {
    Json::Array(
        fields
            .iter()
            .map(|(f, v)| json!([bin_json(f), bin_json(v)]))
            .collect(),
    )
}

/// Builds the batches of one table from items.
struct Rows {
    members: bool,
    as_of_ms: i64,
    cols: Vec<Col>,
    rows: usize,
}

enum Col {
    I(Int64Builder),
    S(StringBuilder),
    B(BooleanBuilder),
    F(Float64Builder),
}

impl Rows {
    fn new(table: &str, as_of_ms: i64) -> Rows {
        let cols = columns(table)
            .iter()
            .map(|(_, t, _, _)| match t {
                DataType::Int64 => Col::I(Int64Builder::new()),
                DataType::Boolean => Col::B(BooleanBuilder::new()),
                DataType::Float64 => Col::F(Float64Builder::new()),
                _ => Col::S(StringBuilder::new()),
            })
            .collect();
        Rows {
            members: table == MEMBERS_TABLE,
            as_of_ms,
            cols,
            rows: 0,
        }
    }

    fn i(&mut self, c: usize, v: Option<i64>) {
        if let Col::I(b) = &mut self.cols[c] {
            b.append_option(v)
        }
    }
    fn s(&mut self, c: usize, v: Option<&str>) {
        if let Col::S(b) = &mut self.cols[c] {
            b.append_option(v)
        }
    }
    fn b(&mut self, c: usize, v: Option<bool>) {
        if let Col::B(b) = &mut self.cols[c] {
            b.append_option(v)
        }
    }
    fn f(&mut self, c: usize, v: Option<f64>) {
        if let Col::F(b) = &mut self.cols[c] {
            b.append_option(v)
        }
    }

    /// Adds the rows of one (canonical) item: one for `keys`, one per member for `members`.
    fn push(&mut self, it: &Item) {
        let (key, key_b64) = text(&it.key);
        let ty = it.type_name();
        if !self.members {
            self.i(0, Some(it.db as i64));
            self.s(1, Some(&key));
            self.b(2, Some(key_b64));
            self.s(3, Some(ty));
            self.s(4, it.encoding);
            self.i(5, Some(it.len() as i64));
            self.s(6, Some(&value_json(&it.value).to_string()));
            self.i(7, it.expire_at_ms);
            self.i(8, it.expire_at_ms.map(|t| t - self.as_of_ms));
            self.rows += 1;
            return;
        }
        let member = |r: &mut Rows,
                      idx: usize,
                      m: &[u8],
                      score: Option<f64>,
                      fv: Option<&[u8]>,
                      fexp: Option<i64>,
                      entry: Option<&str>| {
            let (m, mb) = text(m);
            r.i(0, Some(it.db as i64));
            r.s(1, Some(&key));
            r.b(2, Some(key_b64));
            r.s(3, Some(ty));
            r.i(4, Some(idx as i64));
            r.s(5, Some(&m));
            r.b(6, Some(mb));
            r.f(7, score);
            let fv = fv.map(text);
            r.s(8, fv.as_ref().map(|x| x.0.as_str()));
            r.b(9, fv.as_ref().map(|x| x.1));
            r.i(10, fexp);
            r.s(11, entry);
            r.rows += 1;
        };
        match &it.value {
            Value::List(v) | Value::Set(v) => {
                for (i, m) in v.iter().enumerate() {
                    member(self, i, m, None, None, None, None);
                }
            }
            Value::ZSet(v) => {
                for (i, (m, s)) in v.iter().enumerate() {
                    member(self, i, m, Some(*s), None, None, None);
                }
            }
            Value::Hash(v) => {
                for (i, f) in v.iter().enumerate() {
                    member(
                        self,
                        i,
                        &f.field,
                        None,
                        Some(&f.value),
                        f.expire_at_ms,
                        None,
                    );
                }
            }
            Value::Stream(st) => {
                for (i, e) in st.entries.iter().enumerate() {
                    let id = rdb::stream_id_text(e.id);
                    let fields = entry_fields_json(&e.fields).to_string();
                    member(self, i, id.as_bytes(), None, None, None, Some(&fields));
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, table: &str) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Col::I(b) => Arc::new(b.finish()),
                    Col::S(b) => Arc::new(b.finish()),
                    Col::B(b) => Arc::new(b.finish()),
                    Col::F(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(schema_of(table), arrays)?)
    }
}

/// What a pass over the keys found besides staged rows.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub keys: u64,
    pub other_db: u64,
    /// Keys expired at the as-of time: dropped (`--expired drop`) or kept; the first few as `db:key`.
    pub expired_at_as_of: u64,
    pub expired_examples: Vec<String>,
    /// Hash fields expired at the as-of time (Redis 7.4+ field expiry), dropped or kept like keys.
    pub expired_fields: u64,
    /// Module values staged raw, per module type name, and the first few keys.
    pub module_values: std::collections::BTreeMap<String, u64>,
    pub module_examples: Vec<String>,
}

/// How many example keys a report names.
const EXAMPLES: usize = 5;

/// A key for people: `db0:"name"` (base64 keys marked).
fn key_label(db: u64, key: &[u8]) -> String {
    match text(key) {
        (k, false) => format!("db{db}:{k:?}"),
        (k, true) => format!("db{db}:base64:{k}"),
    }
}

/// Where keys come from.
enum Backend {
    Rdb(PathBuf),
    Live(live::Live),
}

pub struct RedisSource {
    backend: Backend,
    /// `--source-db`: read only this database.
    only_db: Option<u64>,
    as_of_ms: Option<i64>,
    as_of_from: &'static str,
    last_report: PassReport,
    /// `--expired keep`: keys and hash fields expired at the as-of time are staged too (negative `ttl_ms`).
    keep_expired: bool,
    /// RDB: header facts (version, redis-ver, checksum), for the manifest.
    rdb_facts: Json,
    /// What the last pass found and could not stage: function libraries (a dump's or the server's), module aux
    /// data (dumps).
    rdb_skipped: rdb::Skipped,
}

impl RedisSource {
    pub fn open_rdb(path: &Path, only_db: Option<u64>) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| {
            Error::source_err(
                path.display().to_string(),
                format!("cannot open: {e}; check --source / --use-rdb"),
            )
        })?;
        // Header check now, so a wrong file fails before any work.
        rdb::RdbReader::new(std::io::BufReader::new(f)).map_err(|e| rdb_err(path, e))?;
        Ok(RedisSource {
            backend: Backend::Rdb(path.to_path_buf()),
            only_db,
            as_of_ms: None,
            as_of_from: "",
            last_report: PassReport::default(),
            keep_expired: false,
            rdb_facts: Json::Null,
            rdb_skipped: rdb::Skipped::default(),
        })
    }

    pub fn open_live(url: &str, only_db: Option<u64>) -> Result<Self> {
        let live = live::Live::connect(url)?;
        let only_db = only_db.or(live.url_db());
        Ok(RedisSource {
            backend: Backend::Live(live),
            only_db,
            as_of_ms: None,
            as_of_from: "",
            last_report: PassReport::default(),
            keep_expired: false,
            rdb_facts: Json::Null,
            rdb_skipped: rdb::Skipped::default(),
        })
    }

    /// `--expired keep`: stage keys and hash fields expired at the as-of time too.
    pub fn keep_expired(mut self, keep: bool) -> Self {
        self.keep_expired = keep;
        self
    }

    /// The snapshot's as-of instant, fixed on first use.
    fn as_of(&mut self) -> Result<i64> {
        if let Some(t) = self.as_of_ms {
            return Ok(t);
        }
        let (t, from) = match &mut self.backend {
            Backend::Rdb(p) => {
                let f = std::fs::File::open(&*p).map_err(Error::io("open", &*p))?;
                let mut r =
                    rdb::RdbReader::new(std::io::BufReader::new(f)).map_err(|e| rdb_err(p, e))?;
                // AUX fields precede the first key.
                let _ = r.next_entry().map_err(|e| rdb_err(p, e))?;
                match r.aux_field("ctime").and_then(|s| s.parse::<i64>().ok()) {
                    Some(s) => (s * 1000, "ctime aux field of the dump"),
                    None => {
                        let m = std::fs::metadata(&*p).map_err(Error::io("stat", &*p))?;
                        let t = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0);
                        (
                            t,
                            "modification time of the dump file (it has no ctime aux field)",
                        )
                    }
                }
            }
            Backend::Live(l) => (l.server_time_ms()?, "server TIME when the snapshot started"),
        };
        self.as_of_ms = Some(t);
        self.as_of_from = from;
        Ok(t)
    }

    /// One pass over every key: canonical items, filtered (db, expired, skipped types), to `f`.
    fn pass(&mut self, f: &mut dyn FnMut(&Item) -> Result<()>) -> Result<PassReport> {
        let as_of = self.as_of()?;
        let only_db = self.only_db;
        let keep_expired = self.keep_expired;
        let mut rep = PassReport::default();
        let mut handle = |mut it: Item, rep: &mut PassReport| -> Result<()> {
            rep.keys += 1;
            if only_db.is_some_and(|d| d != it.db) {
                rep.other_db += 1;
                return Ok(());
            }
            if it.expire_at_ms.is_some_and(|t| t <= as_of) {
                rep.expired_at_as_of += 1;
                if rep.expired_examples.len() < EXAMPLES {
                    rep.expired_examples.push(key_label(it.db, &it.key));
                }
                if !keep_expired {
                    return Ok(());
                }
            }
            rep.expired_fields += it.canonicalize(as_of, keep_expired);
            if let Value::Module(m) = &it.value {
                *rep.module_values.entry(m.name.clone()).or_default() += 1;
                if rep.module_examples.len() < EXAMPLES {
                    rep.module_examples.push(key_label(it.db, &it.key));
                }
            }
            f(&it)
        };
        match &mut self.backend {
            Backend::Rdb(p) => {
                let file = std::fs::File::open(&*p).map_err(Error::io("open", &*p))?;
                let mut r = rdb::RdbReader::new(std::io::BufReader::with_capacity(1 << 20, file))
                    .map_err(|e| rdb_err(p, e))?;
                while let Some(e) = r.next_entry().map_err(|e| rdb_err(p, e))? {
                    let it = Item {
                        db: e.db,
                        key: e.key,
                        expire_at_ms: e.expire_at_ms,
                        encoding: Some(e.encoding),
                        value: e.value,
                    };
                    handle(it, &mut rep)?;
                }
                self.rdb_facts = json!({
                    "rdb_version": r.version,
                    "redis_version": r.aux_field("redis-ver"),
                    "checksum": match r.checksum {
                        rdb::Checksum::Verified(c) => format!("verified crc64 {c:016x}"),
                        rdb::Checksum::Disabled => "not written (rdbchecksum no)".into(),
                        rdb::Checksum::Absent => "none in this RDB version".into(),
                        rdb::Checksum::Pending => "not reached".into(),
                    },
                    "skipped_function_libraries": r.skipped.function_libraries,
                    "skipped_module_aux": r.skipped.module_aux,
                });
                self.rdb_skipped = r.skipped.clone();
            }
            Backend::Live(l) => {
                l.for_each(only_db, &mut |it| handle(it, &mut rep))?;
                self.rdb_skipped = rdb::Skipped {
                    function_libraries: l.function_libraries()?,
                    ..Default::default()
                };
            }
        }
        self.last_report = rep.clone();
        Ok(rep)
    }

    fn report_json(&self, rep: &PassReport) -> Json {
        json!({
            "as_of_ms": self.as_of_ms,
            "as_of": self.as_of_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
            "as_of_from": self.as_of_from,
            "keys_seen": rep.keys,
            "keys_in_other_dbs": rep.other_db,
            "keys_expired_at_as_of": rep.expired_at_as_of,
            "expired_keys_first": rep.expired_examples,
            "hash_fields_expired_at_as_of": rep.expired_fields,
            "expired": if self.keep_expired { "kept" } else { "dropped" },
            "rdb": self.rdb_facts,
        })
    }
}

fn rdb_err(path: &Path, e: rdb::RdbError) -> Error {
    Error::source_err(
        path.display().to_string(),
        format!("{e}; the dump cannot be read (re-create it with SAVE or `redis-cli --rdb FILE`)"),
    )
}

impl Source for RedisSource {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> Json {
        match &self.backend {
            Backend::Rdb(p) => {
                json!({ "kind": "redis", "mode": "rdb", "path": p.display().to_string(), "db": self.only_db })
            }
            Backend::Live(l) => {
                json!({ "kind": "redis", "mode": "live", "path": l.redacted_url(), "db": self.only_db })
            }
        }
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        match &mut self.backend {
            // A dump's content, not its size and time: a copied dump is the same data.
            Backend::Rdb(p) => Ok(Fingerprint::default().whole(
                "content of the dump",
                crate::catalog::file_digest(&[p.as_path()]).map_err(Error::io("read", &*p))?,
            )),
            Backend::Live(l) => Ok(l
                .change_signals(self.only_db)?
                .into_iter()
                .fold(Fingerprint::default(), |fp, (k, v)| fp.whole(&k, v))),
        }
    }

    fn catalog(&mut self) -> Result<Catalog> {
        self.as_of()?;
        let (estimate, expiry_exact) = match &mut self.backend {
            Backend::Live(l) => (Some(l.dbsize(self.only_db)?), l.expiry_is_exact()),
            Backend::Rdb(_) => (None, true),
        };
        Ok(Catalog {
            tables: vec![
                table_info(KEYS_TABLE, estimate, expiry_exact),
                table_info(MEMBERS_TABLE, None, expiry_exact),
            ],
            cycles: vec![],
            skipped: vec![],
        })
    }

    fn schema(&self, table: &TableInfo) -> Result<SchemaRef> {
        Ok(schema_of(&table.name))
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        let members = table.name == MEMBERS_TABLE;
        let mut n = 0u64;
        self.pass(&mut |it| {
            n += if members {
                if matches!(it.value, Value::String(_) | Value::Module(_)) {
                    0
                } else {
                    it.len() as u64
                }
            } else {
                1
            };
            Ok(())
        })?;
        Ok(n)
    }

    fn read_table(
        &mut self,
        table: &TableInfo,
        _after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        // No resume position: a Redis read restarts from its first key (SCAN cursors and dump offsets are not
        // stable positions across processes).
        let as_of = self.as_of()?;
        let name = table.name.clone();
        let mut rows = Rows::new(&name, as_of);
        let mut total = 0u64;
        let rep = self.pass(&mut |it| {
            rows.push(it);
            if rows.rows >= batch_size {
                total += rows.rows as u64;
                emit(rows.finish(&name)?, None)?;
            }
            Ok(())
        })?;
        if rows.rows > 0 {
            total += rows.rows as u64;
            emit(rows.finish(&name)?, None)?;
        }
        let mut up_to = self.report_json(&rep);
        up_to["rows"] = json!(total);
        Ok(ReadEnd::Done {
            rows: total,
            read_up_to: up_to,
        })
    }

    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Json>],
    ) -> Result<Vec<Option<Map<String, Json>>>> {
        // The keys asked for, then one pass (a dump) or direct reads (a server) to find them.
        let wanted: HashSet<(i64, String, bool)> = keys
            .iter()
            .map(|k| {
                (
                    k.get("db").and_then(|v| v.as_i64()).unwrap_or(-1),
                    k.get("key")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string(),
                    k.get("key_base64")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                )
            })
            .collect();
        let as_of = self.as_of()?;
        let mut rows = Rows::new(&table.name, as_of);
        let mut found = |it: &Item| -> Result<()> {
            let (k, b) = text(&it.key);
            if wanted.contains(&(it.db as i64, k, b)) {
                rows.push(it);
            }
            Ok(())
        };
        match &mut self.backend {
            Backend::Live(l) => {
                let list: Vec<(u64, Vec<u8>)> = wanted
                    .iter()
                    .filter_map(|(db, k, b)| {
                        let bytes = if *b {
                            base64::engine::general_purpose::STANDARD.decode(k).ok()?
                        } else {
                            k.as_bytes().to_vec()
                        };
                        Some((*db as u64, bytes))
                    })
                    .collect();
                for mut it in l.fetch(&list)? {
                    if it.expire_at_ms.is_some_and(|t| t <= as_of) && !self.keep_expired {
                        continue;
                    }
                    it.canonicalize(as_of, self.keep_expired);
                    found(&it)?;
                }
            }
            Backend::Rdb(_) => {
                self.pass(&mut found)?;
            }
        }
        let batch = rows.finish(&table.name)?;
        let mut objects = vec![];
        for r in 0..batch.num_rows() {
            objects.push(crate::json::row_object(&batch, r)?);
        }
        let pk = &table.primary_key;
        Ok(keys
            .iter()
            .map(|k| {
                objects
                    .iter()
                    .find(|o| pk.iter().all(|c| o.get(c) == k.get(c)))
                    .cloned()
            })
            .collect())
    }

    fn not_staged(&self, table: &TableInfo) -> Vec<crate::catalog::NotStaged> {
        use crate::catalog::NotStaged;
        let rep = &self.last_report;
        // With --expired keep they are staged rows (ttl_ms <= 0), not records left out.
        let expired = |n: u64| n > 0 && !self.keep_expired;
        let as_of = self
            .as_of_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let mut out = vec![];
        if table.name == KEYS_TABLE {
            if expired(rep.expired_at_as_of) {
                out.push(NotStaged {
                    kind: "expired".into(),
                    count: rep.expired_at_as_of,
                    what: format!(
                        "keys whose TTL had run out at the snapshot's as-of time {as_of} ({}): dropped; --expired keep stages them",
                        self.as_of_from
                    ),
                    first: rep.expired_examples.clone(),
                });
            }
            // Kept, but not decoded: said, so nobody mistakes the raw bytes for the value itself.
            let modules: u64 = rep.module_values.values().sum();
            if modules > 0 {
                out.push(NotStaged {
                    kind: "raw".into(),
                    count: modules,
                    what: format!(
                        "module values kept raw, the bytes their module wrote in base64 ({}): only the module can decode them",
                        rep.module_values
                            .iter()
                            .map(|(n, c)| format!("{n} {c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    first: rep.module_examples.clone(),
                });
            }
            let sk = &self.rdb_skipped;
            for (n, what) in [
                (sk.function_libraries, "function libraries (code, not keys; FUNCTION DUMP / RESTORE moves them): not migrated"),
                (sk.module_aux, "module auxiliary data in the dump (a module's own state, not keys): not migrated"),
            ] {
                if n > 0 {
                    out.push(NotStaged {
                        kind: "skipped".into(),
                        count: n,
                        what: what.into(),
                        first: vec![],
                    });
                }
            }
        } else if expired(rep.expired_fields) {
            out.push(NotStaged {
                kind: "expired".into(),
                count: rep.expired_fields,
                what: format!("hash fields whose own TTL had run out at the snapshot's as-of time {as_of}: dropped; --expired keep stages them"),
                first: vec![],
            });
        }
        out
    }

    fn end_snapshot(&mut self) -> Json {
        let rep = self.last_report.clone();
        self.report_json(&rep)
    }
}

/// Whether a file starts like an RDB dump.
pub fn is_rdb_file(path: &Path) -> bool {
    let mut head = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"REDIS"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_safe_text_and_json() {
        assert_eq!(text(b"caf\xc3\xa9"), ("café".to_string(), false));
        assert_eq!(text(b"\xff\x00"), ("/wA=".to_string(), true));
        assert_eq!(bin_json(b"\xff\x00"), json!({"base64": "/wA="}));
        assert_eq!(score_json(f64::INFINITY), json!("inf"));
        assert_eq!(score_json(-2.5), json!(-2.5));
    }

    #[test]
    fn canonical_order() {
        let mut it = Item {
            db: 0,
            key: b"z".to_vec(),
            expire_at_ms: None,
            encoding: None,
            value: Value::ZSet(vec![
                (b"b".to_vec(), 1.0),
                (b"a".to_vec(), 1.0),
                (b"c".to_vec(), f64::NEG_INFINITY),
            ]),
        };
        it.canonicalize(0, false);
        assert_eq!(
            value_json(&it.value),
            json!([["c", "-inf"], ["a", 1.0], ["b", 1.0]])
        );
        let mut h = Item {
            value: Value::Hash(vec![
                HashField {
                    field: b"y".to_vec(),
                    value: b"1".to_vec(),
                    expire_at_ms: Some(5),
                },
                HashField {
                    field: b"x".to_vec(),
                    value: b"2".to_vec(),
                    expire_at_ms: Some(50),
                },
            ]),
            ..it
        };
        assert_eq!(h.canonicalize(10, false), 1);
        assert_eq!(value_json(&h.value), json!([["x", "2", 50]]));
    }

    #[test]
    fn every_staged_column_is_in_the_schema_once() {
        for t in [KEYS_TABLE, MEMBERS_TABLE] {
            let s = schema_of(t);
            let info = table_info(t, None, true);
            assert_eq!(s.fields().len(), info.columns.len());
            for k in &info.primary_key {
                assert!(s.field_with_name(k).is_ok(), "{t}.{k}");
            }
        }
        let mut r = Rows::new(MEMBERS_TABLE, 0);
        r.push(&Item {
            db: 1,
            key: b"\xfe".to_vec(),
            expire_at_ms: None,
            encoding: None,
            value: Value::Hash(vec![HashField {
                field: b"f".to_vec(),
                value: b"\x80".to_vec(),
                expire_at_ms: Some(9),
            }]),
        });
        let b = r.finish(MEMBERS_TABLE).unwrap();
        let row = crate::json::row_object(&b, 0).unwrap();
        assert_eq!(row["key"], json!("/g=="));
        assert_eq!(row["key_base64"], json!(true));
        assert_eq!(row["field_value"], json!("gA=="));
        assert_eq!(row["field_value_base64"], json!(true));
        assert_eq!(row["field_expire_at_ms"], json!(9));
    }
}
