//! PostgreSQL source: catalogs read with the `postgres` client, table data read as binary COPY decoded straight
//! into Arrow (`copy`), split into partitions read in parallel, all partitions inside one exported snapshot so the
//! staged tables are one consistent state of the database.
//!
//! Type fidelity is decided per column from the catalog, before any data is read (`TYPE_MAP`): a type with a binary
//! decoder here is selected as is and decoded into its staged Arrow type; every other type is selected as `::text`
//! in the query. `numeric(p,s)` travels as text and is parsed into Decimal128(p,s) exactly. A value that still does
//! not fit (NaN in a numeric, `infinity` in a timestamp, `24:00:00` in a time, a multi-dimensional array) widens its
//! column to text and the table is staged again; nothing is narrowed or nulled.
//!
//! (Table data went through ConnectorX until 2026-12-07: the decoder here reads the same table as fast within the
//! noise at about 70 % of the memory, finds misfit values while decoding, and dropping ConnectorX took 121 crates
//! out of the build; docs/benchmarks.md has the figures.)

mod copy;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use postgres::{Client, NoTls};
use serde_json::{json, Map, Value};

use super::{
    topological_order, Catalog, ColumnInfo, Emit, Fingerprint, ForeignKey, Partition,
    PartitionReader, ReadEnd, Source, TableInfo,
};
use crate::error::{Error, Result};

/// The synthetic key of a table without primary key or usable unique index: the tuple id (stable within a
/// snapshot; a later `VACUUM FULL` or update moves it).
pub const CTID_COLUMN: &str = "__pg_ctid";

/// Rows per partition when the table does not say otherwise (`--partition-rows`).
pub const DEFAULT_PARTITION_ROWS: u64 = 50_000;
/// A partition is also cut by size, so a table of wide rows does not hold a huge partition in memory.
const PARTITION_BYTES: u64 = 64 << 20;

/// How a column is staged.
#[derive(Debug, Clone, PartialEq)]
pub enum PgType {
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Bool,
    Text,
    Bytes,
    Uuid,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    /// numeric(p,s), p <= 38, 0 <= s <= p.
    Decimal(u8, i8),
    Json,
    Interval,
    /// pgvector `vector(n)`; None when the column has no fixed dimension.
    Vector(Option<i32>),
    HalfVec(Option<i32>),
    /// One-dimensional, 1-based arrays of the element types the decoder reads.
    Array(Box<PgType>),
    /// Selected as `::text`: the value's PostgreSQL text form.
    AsText,
}

impl PgType {
    /// The rule's name, recorded in the manifest as `mapped_as` so a resumed or validating read stages the same way.
    pub fn name(&self) -> String {
        match self {
            PgType::Int16 => "int16".into(),
            PgType::Int32 => "int32".into(),
            PgType::Int64 => "int64".into(),
            PgType::Float32 => "float32".into(),
            PgType::Float64 => "float64".into(),
            PgType::Bool => "boolean".into(),
            PgType::Text => "text".into(),
            PgType::Bytes => "bytes".into(),
            PgType::Uuid => "uuid".into(),
            PgType::Date => "date".into(),
            PgType::Time => "time".into(),
            PgType::Timestamp => "timestamp".into(),
            PgType::TimestampTz => "timestamptz".into(),
            PgType::Decimal(p, s) => format!("decimal({p},{s})"),
            PgType::Json => "json".into(),
            PgType::Interval => "interval".into(),
            PgType::Vector(Some(n)) => format!("vector({n})"),
            PgType::Vector(None) => "vector".into(),
            PgType::HalfVec(Some(n)) => format!("halfvec({n})"),
            PgType::HalfVec(None) => "halfvec".into(),
            PgType::Array(e) => format!("array<{}>", e.name()),
            PgType::AsText => "as_text".into(),
        }
    }

    pub fn from_name(s: &str) -> Option<PgType> {
        let simple = [
            PgType::Int16,
            PgType::Int32,
            PgType::Int64,
            PgType::Float32,
            PgType::Float64,
            PgType::Bool,
            PgType::Text,
            PgType::Bytes,
            PgType::Uuid,
            PgType::Date,
            PgType::Time,
            PgType::Timestamp,
            PgType::TimestampTz,
            PgType::Json,
            PgType::Interval,
            PgType::Vector(None),
            PgType::HalfVec(None),
            PgType::AsText,
        ];
        if let Some(t) = simple.into_iter().find(|t| t.name() == s) {
            return Some(t);
        }
        let args = |prefix: &str| -> Option<Vec<i64>> {
            let inner = s
                .strip_prefix(prefix)?
                .strip_prefix('(')?
                .strip_suffix(')')?;
            inner.split(',').map(|x| x.trim().parse().ok()).collect()
        };
        if let Some(a) = args("decimal") {
            if let [p, s] = a[..] {
                return Some(PgType::Decimal(
                    u8::try_from(p).ok()?,
                    i8::try_from(s).ok()?,
                ));
            }
        }
        if let Some(a) = args("vector") {
            return Some(PgType::Vector(Some(i32::try_from(*a.first()?).ok()?)));
        }
        if let Some(a) = args("halfvec") {
            return Some(PgType::HalfVec(Some(i32::try_from(*a.first()?).ok()?)));
        }
        let elem = s.strip_prefix("array<")?.strip_suffix('>')?;
        Some(PgType::Array(Box::new(PgType::from_name(elem)?)))
    }

    pub fn data_type(&self) -> DataType {
        match self {
            PgType::Int16 => DataType::Int16,
            PgType::Int32 => DataType::Int32,
            PgType::Int64 => DataType::Int64,
            PgType::Float32 => DataType::Float32,
            PgType::Float64 => DataType::Float64,
            PgType::Bool => DataType::Boolean,
            PgType::Text | PgType::Uuid | PgType::Json | PgType::Interval | PgType::AsText => {
                DataType::Utf8
            }
            PgType::Bytes => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Decimal(p, s) => DataType::Decimal128(*p, *s),
            PgType::Vector(Some(n)) | PgType::HalfVec(Some(n)) => DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                *n,
            ),
            PgType::Vector(None) | PgType::HalfVec(None) => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
            }
            PgType::Array(e) => {
                DataType::List(Arc::new(Field::new_list_field(e.data_type(), true)))
            }
        }
    }

    /// Whether the value travels as text in the query (selected as `::text`, decoded as a string).
    fn via_text(&self) -> bool {
        matches!(
            self,
            PgType::Decimal(..) | PgType::Json | PgType::Interval | PgType::AsText
        )
    }
}

/// How each PostgreSQL type (by `pg_type.typname`) is staged, and the fidelity note for the report.
/// `numeric`, `vector` and `halfvec` take their parameters from the column's type modifier; arrays, enums and
/// domains are resolved in `rule_for`. A type not listed here is read as text and flagged.
pub const TYPE_MAP: &[(&str, &str, &str)] = &[
    ("int2", "int16", "exact"),
    ("int4", "int32", "exact"),
    ("int8", "int64", "exact"),
    ("oid", "int64", "exact"),
    ("float4", "float32", "exact"),
    ("float8", "float64", "exact"),
    ("numeric", "decimal", "exact"),
    ("bool", "boolean", "exact"),
    ("text", "text", "exact"),
    ("varchar", "text", "exact"),
    ("bpchar", "text", "exact (blank-padded as stored)"),
    ("name", "text", "exact"),
    ("citext", "text", "exact"),
    ("bytea", "bytes", "exact"),
    ("uuid", "uuid", "exact (canonical text)"),
    ("date", "date", "exact"),
    ("time", "time", "exact (microseconds)"),
    ("timestamp", "timestamp", "exact (microseconds, no zone)"),
    ("timestamptz", "timestamptz", "exact (UTC, microseconds)"),
    ("interval", "interval", "exact (ISO 8601 duration text)"),
    ("json", "json", "exact (text as stored)"),
    ("jsonb", "json", "exact (jsonb text)"),
    ("vector", "vector", "exact"),
    (
        "halfvec",
        "halfvec",
        "widened: half floats as float32 (values exact)",
    ),
    ("inet", "as_text", "exact (text form)"),
    ("cidr", "as_text", "exact (text form)"),
    ("macaddr", "as_text", "exact (text form)"),
    ("macaddr8", "as_text", "exact (text form)"),
    ("xml", "as_text", "exact (text)"),
    ("bit", "as_text", "exact (bit string text)"),
    ("varbit", "as_text", "exact (bit string text)"),
    (
        "money",
        "as_text",
        "text fallback: money is formatted by lc_monetary",
    ),
    (
        "timetz",
        "as_text",
        "text fallback: time with time zone has no Arrow type",
    ),
    ("char", "as_text", "exact (text)"),
];

/// Array element types decoded into Arrow lists; other arrays travel as PostgreSQL array text.
const ARRAY_ELEMENTS: &[&str] = &[
    "int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar",
];

/// A column as the catalog describes it (domains already resolved to their base type).
#[derive(Debug, Clone)]
pub struct CatalogColumn {
    pub name: String,
    /// `format_type` of the declared type, e.g. `numeric(12,2)` or a domain's name.
    pub declared: String,
    pub typname: String,
    /// 'b' base, 'e' enum, 'c' composite, 'r' range, 'd' domain (resolved), ...
    pub typtype: String,
    /// Element type name of an array, else empty.
    pub elem: String,
    pub typmod: i32,
    /// The base type's `format_type`, set for a domain column (the value is cast to it).
    pub domain_base: Option<String>,
}

/// The staging rule of a column and the fidelity note.
pub fn rule_for(c: &CatalogColumn) -> (PgType, String) {
    let text = |why: String| (PgType::AsText, why);
    if !c.elem.is_empty() {
        if ARRAY_ELEMENTS.contains(&c.elem.as_str()) {
            let elem = TYPE_MAP
                .iter()
                .find(|(t, _, _)| *t == c.elem)
                .and_then(|(_, r, _)| PgType::from_name(r))
                .unwrap_or(PgType::Text);
            return (
                PgType::Array(Box::new(elem)),
                "exact (one-dimensional)".into(),
            );
        }
        return text(format!(
            "text fallback: array of {} as PostgreSQL array text",
            c.elem
        ));
    }
    if c.typtype == "e" {
        return (PgType::AsText, "exact (enum label)".into());
    }
    let Some((_, rule, note)) = TYPE_MAP.iter().find(|(t, _, _)| *t == c.typname) else {
        return text(format!(
            "text fallback: {} has no Arrow mapping",
            c.declared
        ));
    };
    let note = note.to_string();
    match *rule {
        "decimal" => {
            if c.typmod < 4 {
                return text("widened: numeric without precision kept exactly as text".into());
            }
            let m = c.typmod - 4;
            let p = (m >> 16) & 0xffff;
            let raw = m & 0x7ff;
            let s = if raw & 0x400 != 0 { raw - 0x800 } else { raw };
            if p > 38 {
                return text(format!(
                    "widened: numeric({p},{s}) is wider than Decimal128's 38 digits, kept exactly as text"
                ));
            }
            if s < 0 || s > p {
                return text(format!(
                    "widened: numeric({p},{s}) has a scale Decimal128 does not hold, kept exactly as text"
                ));
            }
            (PgType::Decimal(p as u8, s as i8), note)
        }
        "vector" => (PgType::Vector((c.typmod > 0).then_some(c.typmod)), note),
        "halfvec" => (PgType::HalfVec((c.typmod > 0).then_some(c.typmod)), note),
        r => (PgType::from_name(r).unwrap_or(PgType::AsText), note),
    }
}

/// What the source keeps per table between catalog and reads.
#[derive(Debug, Clone)]
struct TableState {
    /// `"schema"."table"`.
    qualified: String,
    relkind: String,
    types: Vec<PgType>,
    /// Per column, the base type a domain value is cast to.
    domain_base: Vec<Option<String>>,
    /// The single integer key column, for key-range partitions.
    int_key: Option<String>,
    bytes: u64,
    has_ctid_key: bool,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Session settings every read runs with, so text forms do not depend on the server's or the role's defaults.
const SESSION: &[&str] = &[
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'iso_8601'",
    "SET extra_float_digits = 3",
];

impl TableState {
    fn select_list(&self, table: &TableInfo) -> String {
        table
            .columns
            .iter()
            .zip(&self.types)
            .zip(&self.domain_base)
            .map(|((c, t), base)| {
                if c.synthetic && c.name == CTID_COLUMN {
                    return format!("ctid::text AS {}", quote(CTID_COLUMN));
                }
                let q = quote(&c.name);
                if c.source_type == "inet" && *t == PgType::AsText {
                    // inet's text() cast always prints the mask (`::1/128`); its output function, which
                    // format() uses, prints it only when it is not a host's.
                    format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END AS {q}")
                } else if t.via_text() {
                    format!("{q}::text AS {q}")
                } else if let Some(b) = base {
                    format!("{q}::{b} AS {q}")
                } else {
                    q
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn schema(&self, table: &TableInfo) -> SchemaRef {
        Arc::new(Schema::new(
            table
                .columns
                .iter()
                .zip(&self.types)
                .map(|(c, t)| Field::new(&c.name, t.data_type(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

pub use super::redact_url as redact;

pub struct PgSource {
    url: String,
    safe_url: String,
    password: Option<String>,
    /// The catalog connection, holding the snapshot transaction. An Option only so `Drop` can move it off the
    /// async runtime (the sync client owns a runtime of its own, which must not be dropped inside another).
    client: Option<Client>,
    /// The exported snapshot all partitions read in, while a snapshot is being taken.
    snapshot_id: Option<String>,
    wal_lsn: Option<String>,
    tables: HashMap<String, TableState>,
    overrides: Vec<(String, String)>,
    partition_rows: u64,
}

/// A message from the postgres client, with the server's detail and hint, and never the password.
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !m.contains(&t) {
            m.push_str(&format!(": {t}"));
        }
        src = s.source();
    }
    m
}

impl PgSource {
    pub fn open(url: &str) -> Result<PgSource> {
        Self::open_with_password(url, None)
    }

    /// `password` (from `--source-password` / `ENGRAM_MIGRATE_SOURCE_PASSWORD`, else `PGPASSWORD`) is used when
    /// the URL carries none; a password in the URL wins.
    pub fn open_with_password(url: &str, password: Option<&str>) -> Result<PgSource> {
        let safe_url = redact(url);
        let mut parsed = url::Url::parse(url)
            .map_err(|e| Error::usage(format!("--source {safe_url}: not a PostgreSQL URL: {e}")))?;
        let given = password
            .map(str::to_string)
            .or_else(|| std::env::var("PGPASSWORD").ok())
            .filter(|p| !p.is_empty());
        if parsed.password().is_none() {
            if let Some(p) = &given {
                // Into the URL (percent-encoded by the setter), which the partition readers connect with too.
                parsed.set_password(Some(p)).map_err(|_| {
                    Error::usage(format!(
                        "--source {safe_url}: a URL without a host cannot take a password"
                    ))
                })?;
            }
        }
        let password = parsed
            .password()
            .map(|p| {
                url::form_urlencoded::parse(format!("p={p}").as_bytes())
                    .next()
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| p.to_string())
            })
            .filter(|p| !p.is_empty());
        // ConnectorX's protocol option (URLs written for earlier versions) would reach the postgres client as an
        // unknown parameter.
        let mut clean = parsed.clone();
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "cxprotocol")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let has_timeout = pairs.iter().any(|(k, _)| k == "connect_timeout");
        clean.set_query(None);
        {
            let mut q = clean.query_pairs_mut();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
            if !has_timeout {
                q.append_pair("connect_timeout", "10");
            }
        }
        let url = clean.to_string();
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            Error::usage(format!("--source {safe_url}: {}", pg_message(&e)))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("engram-migrate");
        }
        let client = connect(&config).map_err(|e| {
            Error::source_err(
                &safe_url,
                format!(
                    "cannot connect: {}; check the host, port, database, user and password in the URL and that the server is running",
                    pg_message(&e)
                ),
            )
        })?;
        Ok(PgSource {
            url,
            safe_url,
            password,
            client: Some(client),
            snapshot_id: None,
            wal_lsn: None,
            tables: HashMap::new(),
            overrides: vec![],
            partition_rows: DEFAULT_PARTITION_ROWS,
        })
    }

    /// The URL printed is redacted; any error text that could echo the password is scrubbed as well.
    fn scrub(&self, msg: String) -> String {
        match &self.password {
            Some(p) if p.len() >= 3 => msg.replace(p.as_str(), "***"),
            _ => msg,
        }
    }

    fn err(&self, what: &str, e: &postgres::Error) -> Error {
        Error::source_err(
            &self.safe_url,
            self.scrub(format!("{what}: {}", pg_message(e))),
        )
    }

    pub fn set_overrides(&mut self, overrides: &[(String, String)]) -> Result<()> {
        for (col, ty) in overrides {
            if PgType::from_name(ty).is_none() {
                return Err(Error::usage(format!(
                    "--column-type {col}={ty}: unknown staging type; use one of int16, int32, int64, float32, float64, boolean, text, bytes, uuid, date, time, timestamp, timestamptz, decimal(P,S), json, interval, vector(N), as_text"
                )));
            }
        }
        self.overrides = overrides.to_vec();
        Ok(())
    }

    pub fn set_partition_rows(&mut self, rows: u64) {
        self.partition_rows = rows.max(1);
    }

    fn state(&self, table: &TableInfo) -> Result<&TableState> {
        self.tables
            .get(&table.name)
            .ok_or_else(|| Error::Internal(format!("table {} was not introspected", table.name)))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>> {
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| Error::Internal("the PostgreSQL catalog connection is closed".into()))?;
        match off_runtime(|| client.query(sql, params)) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.err("catalog query failed", &e)),
        }
    }

    /// Opens the snapshot transaction and exports its snapshot, so every partition reads the same state.
    fn begin_snapshot(&mut self) -> Result<()> {
        if self.snapshot_id.is_some() {
            return Ok(());
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| Error::Internal("the PostgreSQL catalog connection is closed".into()))?;
        let r =
            off_runtime(|| client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"));
        if let Err(e) = r {
            return Err(self.err("cannot start a read transaction", &e));
        }
        let rows = self.query(
            "SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text",
            &[],
        )?;
        self.snapshot_id = rows.first().map(|r| r.get(0));
        self.wal_lsn = rows.first().and_then(|r| r.get(1));
        Ok(())
    }

    fn introspect(&mut self) -> Result<(Vec<TableInfo>, Vec<(String, String)>)> {
        let rels = self.query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.reltuples::float8,
                    pg_table_size(c.oid)::int8, c.relispartition
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             ORDER BY n.nspname, c.relname",
            &[],
        )?;
        let mut names: HashMap<u32, String> = HashMap::new();
        for r in &rels {
            let oid: u32 = r.get(0);
            let nsp: String = r.get(1);
            let rel: String = r.get(2);
            names.insert(oid, table_name(&nsp, &rel));
        }
        let mut tables = vec![];
        let mut skipped = vec![];
        for r in &rels {
            let oid: u32 = r.get(0);
            let nsp: String = r.get(1);
            let rel: String = r.get(2);
            let relkind: String = r.get(3);
            let reltuples: f64 = r.get(4);
            let bytes: i64 = r.get(5);
            let is_partition: bool = r.get(6);
            let name = table_name(&nsp, &rel);
            if is_partition {
                skipped.push((
                    name,
                    "partition of a partitioned table (read through its parent)".into(),
                ));
                continue;
            }
            let cols = self.columns(oid, &name)?;
            let mut key = self.key_columns(oid)?;
            let mut types = vec![];
            let mut domain_base = vec![];
            let mut columns = vec![];
            for c in &cols {
                let (mut t, mut note) = rule_for(c);
                if let Some((_, o)) = self
                    .overrides
                    .iter()
                    .find(|(k, _)| *k == format!("{name}.{}", c.name))
                {
                    t = PgType::from_name(o).unwrap_or(PgType::AsText);
                    note = format!("as --column-type {o}");
                }
                columns.push(ColumnInfo {
                    name: c.name.clone(),
                    source_type: c.declared.clone(),
                    arrow_type: crate::schema::type_name(&t.data_type()),
                    mapped_as: t.name(),
                    fidelity: note,
                    synthetic: false,
                });
                domain_base.push(c.domain_base.clone());
                types.push(t);
            }
            // A multi-dimensional or non-1-based array is found by the decoder when it meets one (its column is
            // then widened to PostgreSQL array text and the table staged again): no extra scan up front.
            let mut has_ctid_key = false;
            if key.is_empty() {
                has_ctid_key = true;
                key = vec![CTID_COLUMN.to_string()];
                columns.push(ColumnInfo {
                    name: CTID_COLUMN.into(),
                    source_type: "tid".into(),
                    arrow_type: DataType::Utf8.to_string(),
                    mapped_as: "as_text".into(),
                    fidelity: "synthetic key: tuple id (the table has no primary key or unique not-null index)".into(),
                    synthetic: true,
                });
                domain_base.push(None);
                types.push(PgType::AsText);
            }
            let int_key = match key.as_slice() {
                [k] => cols
                    .iter()
                    .zip(&types)
                    .find(|(c, _)| &c.name == k)
                    .filter(|(_, t)| matches!(t, PgType::Int16 | PgType::Int32 | PgType::Int64))
                    .map(|(c, _)| c.name.clone()),
                _ => None,
            };
            let foreign_keys = self.foreign_keys(oid, &names)?;
            let row_estimate = if reltuples >= 0.0 {
                reltuples as u64
            } else {
                // Never analysed: count once (plan and the progress ETA need a number).
                let q = format!("SELECT count(*) FROM {}.{}", quote(&nsp), quote(&rel));
                let n: i64 = self.query(&q, &[])?.first().map(|r| r.get(0)).unwrap_or(0);
                n as u64
            };
            self.tables.insert(
                name.clone(),
                TableState {
                    qualified: format!("{}.{}", quote(&nsp), quote(&rel)),
                    relkind,
                    types,
                    domain_base,
                    int_key,
                    bytes: bytes.max(0) as u64,
                    has_ctid_key,
                },
            );
            tables.push(TableInfo {
                name,
                columns,
                primary_key: key,
                foreign_keys,
                row_estimate: Some(row_estimate),
            });
        }
        Ok((tables, skipped))
    }

    fn columns(&mut self, oid: u32, table: &str) -> Result<Vec<CatalogColumn>> {
        let rows = self.query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    b.typname::text, b.typtype::text, coalesce(e.typname::text, ''),
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
                    CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
             LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid],
        )?;
        if rows.is_empty() {
            tracing::warn!(table, "table has no columns");
        }
        Ok(rows
            .iter()
            .map(|r| CatalogColumn {
                name: r.get(0),
                declared: r.get(1),
                typname: r.get(2),
                typtype: r.get(3),
                elem: r.get(4),
                typmod: r.get(5),
                domain_base: r.get(6),
            })
            .collect())
    }

    /// The primary key, else the first unique index whose columns are all NOT NULL (and plain columns).
    fn key_columns(&mut self, oid: u32) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT i.indexrelid, i.indisprimary, array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull)
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
             GROUP BY i.indexrelid, i.indisprimary
             ORDER BY i.indisprimary DESC, i.indexrelid",
            &[&oid],
        )?;
        for r in rows {
            let primary: bool = r.get(1);
            let cols: Vec<String> = r.get(2);
            let not_null: bool = r.get(3);
            if primary || not_null {
                return Ok(cols);
            }
        }
        Ok(vec![])
    }

    fn foreign_keys(&mut self, oid: u32, names: &HashMap<u32, String>) -> Result<Vec<ForeignKey>> {
        let rows = self.query(
            "SELECT c.confrelid,
                    array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
                    array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_constraint c
             WHERE c.conrelid = $1 AND c.contype = 'f'
             ORDER BY c.conname",
            &[&oid],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let parent: u32 = r.get(0);
                Some(ForeignKey {
                    columns: r.get(1),
                    parent_table: names.get(&parent)?.clone(),
                    parent_columns: r.get(2),
                })
            })
            .collect())
    }

    fn reader(&self) -> PgReader {
        let mut pre: Vec<String> = SESSION.iter().map(|s| s.to_string()).collect();
        if let Some(id) = &self.snapshot_id {
            pre.push("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into());
            pre.push(format!("SET TRANSACTION SNAPSHOT {}", literal(id)));
        }
        PgReader {
            url: self.url.clone(),
            safe_url: self.safe_url.clone(),
            password: self.password.clone(),
            pre,
            tables: self.tables.clone(),
        }
    }

    /// Runs `f` on a fresh connection (outside the snapshot transaction), connecting, querying and closing off
    /// the async runtime.
    fn with_live<R: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<R, postgres::Error> + Send,
    ) -> Result<std::result::Result<R, postgres::Error>> {
        let config: postgres::Config = self.url.parse().map_err(|e: postgres::Error| {
            Error::usage(format!("--source {}: {}", self.safe_url, pg_message(&e)))
        })?;
        off_runtime(|| {
            let mut c = connect_now(&config)?;
            Ok(f(&mut c))
        })
        .map_err(|e: postgres::Error| self.err("cannot connect", &e))
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            off_runtime(move || drop(c));
        }
    }
}

/// Runs blocking client code on a thread of its own when called from inside the async runtime: the sync
/// `postgres` client drives a runtime of its own, which tokio forbids to start or
/// drop inside another. Outside a runtime (the snapshot's worker threads) it runs in place.
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Connects as libpq would for the URL's `sslmode`: `disable` in plain text, `prefer` (the default) and `require`
/// with TLS when the server offers it, without certificate verification (libpq's meaning of those modes).
pub(crate) fn connect(config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
    off_runtime(|| connect_now(config))
}

fn connect_now(config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
    if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        return config.connect(NoTls);
    }
    let tls = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).map(|mut b| {
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        postgres_openssl::MakeTlsConnector::new(b.build())
    });
    match tls {
        Ok(tls) => config.connect(tls),
        Err(_) => config.connect(NoTls),
    }
}

/// `public.t` is named `t`; tables of other schemas keep their schema: `sales.orders`.
fn table_name(nsp: &str, rel: &str) -> String {
    if nsp == "public" {
        rel.to_string()
    } else {
        format!("{nsp}.{rel}")
    }
}

/// Reads partitions as binary COPY; shared by the snapshot's worker threads, each partition on a connection of
/// its own.
pub struct PgReader {
    url: String,
    safe_url: String,
    password: Option<String>,
    /// Statements run on the connection before the COPY: the session settings, and the snapshot transaction.
    pre: Vec<String>,
    tables: HashMap<String, TableState>,
}

impl PgReader {
    fn scrub(&self, msg: String) -> String {
        match &self.password {
            Some(p) if p.len() >= 3 => msg.replace(p.as_str(), "***"),
            _ => msg,
        }
    }

    /// Runs one query as `COPY (...) TO STDOUT (FORMAT binary)` and hands its rows, decoded into the table's
    /// staged schema, to `emit` batch by batch. Returns the rows read, or the column to widen.
    fn run(
        &self,
        table: &TableInfo,
        sql: &str,
        emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<std::result::Result<u64, ReadEnd>> {
        let state = self
            .tables
            .get(&table.name)
            .ok_or_else(|| Error::Internal(format!("table {} was not introspected", table.name)))?;
        let failed = |what: &str, e: &postgres::Error| {
            Error::source_err(
                &self.safe_url,
                self.scrub(format!("table {}: {what}: {}", table.name, pg_message(e))),
            )
        };
        let mut config: postgres::Config = self.url.parse().map_err(|e: postgres::Error| {
            Error::usage(format!("--source {}: {}", self.safe_url, pg_message(&e)))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("engram-migrate");
        }
        let mut client = connect(&config).map_err(|e| failed("cannot connect", &e))?;
        for stmt in &self.pre {
            client
                .batch_execute(stmt)
                .map_err(|e| failed("session setup failed", &e))?;
        }
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let mut reader = client
            .copy_out(copy.as_str())
            .map_err(|e| failed("read failed", &e))?;
        let mut decoder = copy::Decoder::new(state.schema(table), state.types.clone());
        let read = decoder.run(&mut reader, emit).map_err(|e| match e {
            Error::Internal(m) => Error::source_err(
                &self.safe_url,
                self.scrub(format!("table {}: {m}", table.name)),
            ),
            other => other,
        });
        // The client drives a runtime of its own: closed here, on this (non-async) thread.
        drop(reader);
        drop(client);
        Ok(read?.map_err(|m| ReadEnd::Widen {
            column: table.columns[m.column].name.clone(),
            reason: m.reason,
        }))
    }
}

impl PartitionReader for PgReader {
    fn read_partition(
        &self,
        table: &TableInfo,
        part: &Partition,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        let state = self
            .tables
            .get(&table.name)
            .ok_or_else(|| Error::Internal(format!("table {} was not introspected", table.name)))?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            state.select_list(table),
            state.qualified,
            part.filter
        );
        let rows = match self.run(table, &sql, &mut |b| emit(b, None))? {
            Ok(rows) => rows,
            Err(widen) => return Ok(widen),
        };
        Ok(ReadEnd::Done {
            rows,
            read_up_to: json!({ "rows": rows }),
        })
    }
}

impl Source for PgSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> Value {
        json!({ "kind": "postgres", "path": self.safe_url })
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        // Per table: the statistics counters of inserts, updates and deletes (writers flush them within about a
        // second of their commit), the relation's file node (a TRUNCATE or rewrite changes it) and its columns.
        // A partitioned table is its partitions together, as it is read.
        let rows = self
            .with_live(|c| {
                c.query(
                    "SELECT rn.nspname::text, rc.relname::text,
                            coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::text,
                            coalesce(string_agg(pg_relation_filenode(c.oid)::text, ',' ORDER BY c.oid), ''),
                            (SELECT coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
                                                        ', ' ORDER BY a.attnum), '')
                               FROM pg_attribute a
                              WHERE a.attrelid = rc.oid AND a.attnum > 0 AND NOT a.attisdropped)
                     FROM pg_class c
                     JOIN pg_class rc ON rc.oid = coalesce(pg_partition_root(c.oid), c.oid)
                     JOIN pg_namespace rn ON rn.oid = rc.relnamespace
                     LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
                     WHERE c.relkind IN ('r', 'p')
                       AND rn.nspname NOT IN ('pg_catalog', 'information_schema')
                       AND rn.nspname NOT LIKE 'pg\\_toast%' AND rn.nspname NOT LIKE 'pg\\_temp%'
                     GROUP BY rn.nspname, rc.relname, rc.oid",
                    &[],
                )
            })?
            .map_err(|e| self.err("cannot read table statistics", &e))?;
        let mut fp = Fingerprint::default();
        for r in rows {
            let name = table_name(&r.get::<_, String>(0), &r.get::<_, String>(1));
            fp = fp
                .table(&name, "inserts + updates + deletes", r.get::<_, String>(2))
                .table(&name, "storage file", r.get::<_, String>(3))
                .table(&name, "columns", r.get::<_, String>(4));
        }
        Ok(fp)
    }

    fn catalog(&mut self) -> Result<Catalog> {
        self.begin_snapshot()?;
        let (tables, skipped) = self.introspect()?;
        super::check_overrides(&tables, self.overrides.iter().map(|(k, _)| k))?;
        let (tables, cycles) = topological_order(tables);
        Ok(Catalog {
            tables,
            cycles,
            skipped,
        })
    }

    fn schema(&self, table: &TableInfo) -> Result<SchemaRef> {
        Ok(self.state(table)?.schema(table))
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        let q = self.state(table)?.qualified.clone();
        let n: i64 = self
            .with_live(|c| c.query_one(&format!("SELECT count(*) FROM {q}"), &[]))?
            .map_err(|e| self.err(&format!("table {}: cannot count rows", table.name), &e))?
            .get(0);
        Ok(n as u64)
    }

    fn set_table(&mut self, table: &TableInfo) {
        if let Some(state) = self.tables.get_mut(&table.name) {
            for (i, c) in table.columns.iter().enumerate() {
                if let (Some(t), Some(slot)) =
                    (PgType::from_name(&c.mapped_as), state.types.get_mut(i))
                {
                    *slot = t;
                }
            }
        }
    }

    fn widen(&mut self, table: &mut TableInfo, column: &str, reason: &str) -> bool {
        let Some(state) = self.tables.get_mut(&table.name) else {
            return false;
        };
        let Some(i) = table.columns.iter().position(|c| c.name == column) else {
            return false;
        };
        if state.types[i] == PgType::AsText {
            return false;
        }
        state.types[i] = PgType::AsText;
        let c = &mut table.columns[i];
        c.mapped_as = PgType::AsText.name();
        c.arrow_type = crate::schema::type_name(&DataType::Utf8);
        c.fidelity = format!("text fallback: {reason}");
        true
    }

    fn read_table(
        &mut self,
        table: &TableInfo,
        _after: Option<i64>,
        _batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        let whole = Partition {
            filter: "TRUE".into(),
            row_estimate: table.row_estimate.unwrap_or(0),
        };
        let reader = self.reader();
        if tokio::runtime::Handle::try_current().is_err() {
            return reader.read_partition(table, &whole, emit);
        }
        // Inside the async runtime: read on a thread of its own (see `off_runtime`) and hand the batches back
        // here through a small bounded channel, so `emit` runs on this thread and memory stays bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut send = |b: RecordBatch, _pos: Option<i64>| -> Result<()> {
                    tx.send(b)
                        .map_err(|_| Error::Internal("the snapshot stopped taking batches".into()))
                };
                let r = reader.read_partition(table, &whole, &mut send);
                drop(tx);
                r
            });
            let mut emitted: Result<()> = Ok(());
            for b in rx.iter() {
                if emitted.is_ok() {
                    emitted = emit(b, None);
                }
            }
            let read = match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            emitted?;
            read
        })
    }

    fn partitions(&mut self, table: &TableInfo, workers: usize) -> Result<Option<Vec<Partition>>> {
        let state = self.state(table)?.clone();
        let rows = table.row_estimate.unwrap_or(0);
        let by_rows = rows.div_ceil(self.partition_rows);
        let by_bytes = state.bytes.div_ceil(PARTITION_BYTES);
        let n = by_rows.max(by_bytes).max(1);
        let whole = || {
            Ok(Some(vec![Partition {
                filter: "TRUE".into(),
                row_estimate: rows,
            }]))
        };
        if n == 1 {
            return whole();
        }
        let _ = workers;
        if let Some(k) = &state.int_key {
            let q = quote(k);
            let r = self.query(
                &format!(
                    "SELECT min({q})::int8, max({q})::int8 FROM {}",
                    state.qualified
                ),
                &[],
            )?;
            let (Some(lo), Some(hi)) = (
                r.first().and_then(|r| r.get::<_, Option<i64>>(0)),
                r.first().and_then(|r| r.get::<_, Option<i64>>(1)),
            ) else {
                return whole();
            };
            let bounds = split(lo as i128, hi as i128 + 1, n);
            return Ok(Some(ranges(
                &bounds,
                rows,
                |b| format!("{q} >= {b}"),
                |b| format!("{q} < {b}"),
            )));
        }
        if state.relkind == "r" {
            let r = self.query(
                &format!(
                    "SELECT (pg_relation_size('{}'::regclass) / current_setting('block_size')::int8)::int8",
                    state.qualified.replace('\'', "''")
                ),
                &[],
            )?;
            let pages: i64 = r.first().map(|r| r.get(0)).unwrap_or(0);
            if pages < 2 {
                return whole();
            }
            let bounds = split(0, pages as i128, n.min(pages as u64));
            return Ok(Some(ranges(
                &bounds,
                rows,
                |b| format!("ctid >= '({b},0)'::tid"),
                |b| format!("ctid < '({b},0)'::tid"),
            )));
        }
        whole()
    }

    fn partition_reader(&mut self) -> Result<Option<Arc<dyn PartitionReader>>> {
        Ok(Some(Arc::new(self.reader())))
    }

    fn end_snapshot(&mut self) -> Value {
        if let Some(client) = self.client.as_mut() {
            let _ = off_runtime(|| client.batch_execute("COMMIT"));
        }
        let v = json!({ "exported_snapshot": self.snapshot_id, "wal_lsn": self.wal_lsn });
        self.snapshot_id = None;
        v
    }

    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let state = self.state(table)?.clone();
        let key_expr: Vec<String> = table
            .primary_key
            .iter()
            .map(|k| {
                if k == CTID_COLUMN && state.has_ctid_key {
                    "ctid".to_string()
                } else {
                    quote(k)
                }
            })
            .collect();
        let tuples: Vec<String> = keys
            .iter()
            .map(|key| {
                let vals: Vec<String> = table
                    .primary_key
                    .iter()
                    .map(|k| match key.get(k) {
                        Some(Value::String(s)) => literal(s),
                        Some(Value::Null) | None => "NULL".into(),
                        Some(v) => literal(&v.to_string()),
                    })
                    .collect();
                format!("({})", vals.join(", "))
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE ({}) IN ({})",
            state.select_list(table),
            state.qualified,
            key_expr.join(", "),
            tuples.join(", ")
        );
        let mut reader = self.reader();
        // Validation compares with the database as it is now, not with the snapshot transaction.
        reader.pre = SESSION.iter().map(|s| s.to_string()).collect();
        let mut batches = vec![];
        match off_runtime(|| {
            reader.run(table, &sql, &mut |b| {
                batches.push(b);
                Ok(())
            })
        })? {
            Ok(_) => {}
            Err(_) => {
                return Err(Error::source_err(
                    &self.safe_url,
                    format!(
                        "table {}: a re-read value no longer fits its staged type",
                        table.name
                    ),
                ))
            }
        };
        let key_of = |m: &Map<String, Value>| -> String {
            table
                .primary_key
                .iter()
                .map(|k| m.get(k).map(|v| v.to_string()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\u{1f}")
        };
        let mut found: HashMap<String, Map<String, Value>> = HashMap::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                let m = crate::json::row_object(b, r)?;
                found.insert(key_of(&m), m);
            }
        }
        Ok(keys.iter().map(|k| found.remove(&key_of(k))).collect())
    }
}

/// `n` bounds splitting `[lo, hi)` into equal ranges (the first is `lo`).
fn split(lo: i128, hi: i128, n: u64) -> Vec<i128> {
    let n = n.max(1) as i128;
    let width = ((hi - lo) + n - 1) / n;
    (0..n)
        .map(|k| lo + k * width.max(1))
        .filter(|b| *b < hi.max(lo + 1))
        .collect()
}

/// Partitions from bounds: the first has no lower bound and the last no upper bound, so together they cover
/// every row whatever the bounds (rows outside the planned range land in the first or the last).
fn ranges(
    bounds: &[i128],
    rows: u64,
    ge: impl Fn(i128) -> String,
    lt: impl Fn(i128) -> String,
) -> Vec<Partition> {
    let n = bounds.len();
    (0..n)
        .map(|k| {
            let mut conds = vec![];
            if k > 0 {
                conds.push(ge(bounds[k]));
            }
            if k + 1 < n {
                conds.push(lt(bounds[k + 1]));
            }
            Partition {
                filter: if conds.is_empty() {
                    "TRUE".into()
                } else {
                    conds.join(" AND ")
                },
                row_estimate: rows / n as u64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
