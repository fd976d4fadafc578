//! SQLite source: any SQLite file, read-only, all tables in one read transaction (a consistent snapshot).
//!
//! SQLite is dynamically typed: a declared type is only a hint, and any cell may hold any storage class. So a
//! column is staged with the Arrow type its declared type maps to (`TYPE_MAP`), and a value that does not fit
//! is never dropped or nulled: the column is widened one step (to text, then to bytes) and the table staged
//! again; the manifest and the report say how many values did not fit and where the first one is.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Map, Value};

use super::{
    topological_order, Catalog, ColumnInfo, Emit, Fingerprint, ForeignKey, ReadEnd, Source,
    TableInfo,
};
use crate::error::{Error, Result};

/// How a column is staged. The ladder of widening is: anything -> `Text` -> `Bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Integer,
    Real,
    Boolean,
    Text,
    Json,
    Bytes,
    Timestamp,
    Date,
    Time,
}

impl ColType {
    pub fn name(self) -> &'static str {
        match self {
            ColType::Integer => "integer",
            ColType::Real => "real",
            ColType::Boolean => "boolean",
            ColType::Text => "text",
            ColType::Json => "json",
            ColType::Bytes => "bytes",
            ColType::Timestamp => "timestamp",
            ColType::Date => "date",
            ColType::Time => "time",
        }
    }

    pub fn from_name(s: &str) -> Option<ColType> {
        ALL_TYPES.iter().copied().find(|t| t.name() == s)
    }

    pub fn data_type(self) -> DataType {
        match self {
            ColType::Integer => DataType::Int64,
            ColType::Real => DataType::Float64,
            ColType::Boolean => DataType::Boolean,
            ColType::Text | ColType::Json => DataType::Utf8,
            ColType::Bytes => DataType::Binary,
            ColType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColType::Date => DataType::Date32,
            ColType::Time => DataType::Time64(TimeUnit::Microsecond),
        }
    }

    /// One step up the widening ladder.
    fn widened(self) -> Option<ColType> {
        match self {
            ColType::Bytes => None,
            ColType::Text => Some(ColType::Bytes),
            _ => Some(ColType::Text),
        }
    }
}

const ALL_TYPES: [ColType; 9] = [
    ColType::Integer,
    ColType::Real,
    ColType::Boolean,
    ColType::Text,
    ColType::Json,
    ColType::Bytes,
    ColType::Timestamp,
    ColType::Date,
    ColType::Time,
];

/// Declared type (upper case, without its `(n)` or `(p,s)` suffix) -> how it is staged, and the note for the report.
/// A declared type that is not in this table is an error naming the column, unless `--column-type` says what it is.
pub const TYPE_MAP: &[(&str, ColType, &str)] = &[
    ("INTEGER", ColType::Integer, "exact"),
    ("INT", ColType::Integer, "exact"),
    ("TINYINT", ColType::Integer, "exact"),
    ("SMALLINT", ColType::Integer, "exact"),
    ("MEDIUMINT", ColType::Integer, "exact"),
    ("BIGINT", ColType::Integer, "exact"),
    ("UNSIGNED BIG INT", ColType::Integer, "exact"),
    ("INT2", ColType::Integer, "exact"),
    ("INT4", ColType::Integer, "exact"),
    ("INT8", ColType::Integer, "exact"),
    ("REAL", ColType::Real, "exact"),
    ("DOUBLE", ColType::Real, "exact"),
    ("DOUBLE PRECISION", ColType::Real, "exact"),
    ("FLOAT", ColType::Real, "exact"),
    // SQLite stores NUMERIC values as 64-bit integers or doubles; integers fit a double exactly up to 2^53,
    // larger ones do not fit and widen the column to text.
    (
        "NUMERIC",
        ColType::Real,
        "widened: NUMERIC is stored by SQLite as integer or double",
    ),
    (
        "DECIMAL",
        ColType::Real,
        "widened: DECIMAL is stored by SQLite as integer or double",
    ),
    ("BOOLEAN", ColType::Boolean, "exact"),
    ("BOOL", ColType::Boolean, "exact"),
    ("TEXT", ColType::Text, "exact"),
    ("CHARACTER", ColType::Text, "exact"),
    ("CHAR", ColType::Text, "exact"),
    ("VARCHAR", ColType::Text, "exact"),
    ("VARYING CHARACTER", ColType::Text, "exact"),
    ("NCHAR", ColType::Text, "exact"),
    ("NATIVE CHARACTER", ColType::Text, "exact"),
    ("NVARCHAR", ColType::Text, "exact"),
    ("CLOB", ColType::Text, "exact"),
    ("STRING", ColType::Text, "exact"),
    ("UUID", ColType::Text, "exact"),
    ("JSON", ColType::Json, "exact"),
    ("BLOB", ColType::Bytes, "exact"),
    ("BINARY", ColType::Bytes, "exact"),
    ("VARBINARY", ColType::Bytes, "exact"),
    // Text in ISO-8601 forms (zone offsets converted to UTC, no zone read as UTC) or integer Unix seconds.
    ("DATETIME", ColType::Timestamp, "exact"),
    ("TIMESTAMP", ColType::Timestamp, "exact"),
    ("DATE", ColType::Date, "exact"),
    ("TIME", ColType::Time, "exact"),
];

/// Looks up a declared type. `None` for an unknown name; `Some(None)` for an undeclared column, which is typed
/// from the storage classes its values actually have.
pub fn map_declared(declared: &str) -> Option<Option<(ColType, &'static str)>> {
    let upper = declared.trim().to_ascii_uppercase();
    let base = upper
        .split('(')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if base.is_empty() {
        return Some(None);
    }
    TYPE_MAP
        .iter()
        .find(|(name, _, _)| *name == base)
        .map(|(_, t, note)| Some((*t, *note)))
}

/// Name of the column added to tables that have no primary key: their rowid, the only stable row identity.
pub const ROWID_COLUMN: &str = "__sqlite_rowid";

struct TableState {
    /// Current staging type per column (after any widening), in column order.
    types: Vec<ColType>,
    /// The type the declared type maps to (to count values that do not fit it).
    declared: Vec<ColType>,
    /// The table has a rowid (not WITHOUT ROWID): batches carry positions and a read can resume.
    has_rowid: bool,
}

pub struct SqliteSource {
    path: PathBuf,
    conn: Connection,
    overrides: HashMap<String, ColType>,
    tables: HashMap<String, TableState>,
    in_txn: bool,
}

fn src_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    let hint = if msg.contains("not a database") || msg.contains("file is encrypted") {
        " (the file is not a SQLite database; check --source)"
    } else if msg.contains("malformed") || msg.contains("corrupt") {
        " (the file is corrupt; run `sqlite3 FILE 'PRAGMA integrity_check'` and restore it from a backup or `.recover` it)"
    } else {
        ""
    };
    Error::source_err(path.display().to_string(), format!("{what}: {msg}{hint}"))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl SqliteSource {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::source_err(
                path.display().to_string(),
                "no such file; check --source",
            ));
        }
        // Read-only and without creating anything: a migration never writes to its source.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| src_err(path, "cannot open", e))?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| src_err(path, "cannot read the schema", e))?;
        Ok(SqliteSource {
            path: path.to_path_buf(),
            conn,
            overrides: HashMap::new(),
            tables: HashMap::new(),
            in_txn: false,
        })
    }

    /// `table.column` -> staging type name (from `--column-type`).
    pub fn set_overrides(&mut self, overrides: &[(String, String)]) -> Result<()> {
        for (col, ty) in overrides {
            let t = ColType::from_name(&ty.to_ascii_lowercase()).ok_or_else(|| {
                Error::usage(format!(
                    "--column-type {col}={ty}: unknown type; use one of {}",
                    ALL_TYPES
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            self.overrides.insert(col.clone(), t);
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// Holds one read transaction across all tables so the snapshot is consistent.
    fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.conn
                .execute_batch("BEGIN")
                .map_err(|e| src_err(&self.path, "cannot begin a read transaction", e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    fn introspect(&mut self, name: &str, sql: &str) -> Result<(TableInfo, TableState)> {
        let p = self.path.clone();
        let err = |what: &str, e: rusqlite::Error| src_err(&p, &format!("table {name}: {what}"), e);
        let without_rowid = sql
            .to_ascii_uppercase()
            .replace(char::is_whitespace, "")
            .contains("WITHOUTROWID");
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA table_xinfo({})", quote(name)))
            .map_err(|e| err("columns", e))?;
        // (name, declared type, pk position, hidden)
        let cols: Vec<(String, String, i64, i64)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(1)?,
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| err("columns", e))?;
        let cols: Vec<_> = cols.into_iter().filter(|c| c.3 != 1).collect();

        let mut columns = vec![];
        let mut types = vec![];
        let mut declared_types = vec![];
        for (cname, declared, _, _) in &cols {
            let key = format!("{name}.{cname}");
            let (t, note) = if let Some(t) = self.overrides.get(&key) {
                (*t, format!("exact (--column-type {key}={})", t.name()))
            } else {
                match map_declared(declared) {
                    Some(Some((t, note))) => (t, note.to_string()),
                    Some(None) => {
                        let t = self.undeclared_type(name, cname)?;
                        (t, format!("exact (no declared type; values are {})", t.name()))
                    }
                    None => {
                        return Err(Error::source_err(
                            self.location(),
                            format!(
                                "table {name}, column {cname}: unknown declared type {declared:?}; say how to stage it with \
                                 --column-type '{key}=TYPE' where TYPE is one of {}",
                                ALL_TYPES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                            ),
                        ))
                    }
                }
            };
            types.push(t);
            declared_types.push(t);
            columns.push(ColumnInfo {
                name: cname.clone(),
                source_type: declared.clone(),
                arrow_type: crate::schema::type_name(&t.data_type()),
                mapped_as: t.name().into(),
                fidelity: note,
                synthetic: false,
            });
        }
        let mut pk: Vec<(i64, String)> = cols
            .iter()
            .filter(|c| c.2 > 0)
            .map(|c| (c.2, c.0.clone()))
            .collect();
        pk.sort();
        let mut primary_key: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();
        let synthetic_rowid = primary_key.is_empty() && !without_rowid;
        if synthetic_rowid {
            columns.push(ColumnInfo {
                name: ROWID_COLUMN.into(),
                source_type: "ROWID".into(),
                arrow_type: DataType::Int64.to_string(),
                mapped_as: ColType::Integer.name().into(),
                fidelity: "exact (rowid of a table without primary key)".into(),
                synthetic: true,
            });
            types.push(ColType::Integer);
            declared_types.push(ColType::Integer);
            primary_key = vec![ROWID_COLUMN.into()];
        }

        let mut fk_stmt = self
            .conn
            .prepare(&format!("PRAGMA foreign_key_list({})", quote(name)))
            .map_err(|e| err("foreign keys", e))?;
        // (id, seq, parent, from, to)
        let fk_rows: Vec<(i64, i64, String, String, Option<String>)> = fk_stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| err("foreign keys", e))?;
        let mut fks: Vec<(i64, ForeignKey, Vec<Option<String>>)> = vec![];
        for (id, _seq, parent, from, to) in fk_rows {
            match fks.iter_mut().find(|f| f.0 == id) {
                Some(f) => {
                    f.1.columns.push(from);
                    f.2.push(to);
                }
                None => fks.push((
                    id,
                    ForeignKey {
                        columns: vec![from],
                        parent_table: parent,
                        parent_columns: vec![],
                    },
                    vec![to],
                )),
            }
        }
        let mut foreign_keys = vec![];
        for (_, mut fk, to) in fks.into_iter().rev() {
            if to.iter().all(|t| t.is_some()) {
                fk.parent_columns = to.into_iter().flatten().collect();
            } else {
                // `REFERENCES parent` without columns means the parent's primary key.
                fk.parent_columns = self.primary_key_of(&fk.parent_table)?;
            }
            foreign_keys.push(fk);
        }
        let state = TableState {
            types,
            declared: declared_types,
            has_rowid: !without_rowid,
        };
        Ok((
            TableInfo {
                name: name.into(),
                columns,
                primary_key,
                foreign_keys,
                row_estimate: None,
            },
            state,
        ))
    }

    fn primary_key_of(&self, table: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA table_info({})", quote(table)))
            .map_err(|e| src_err(&self.path, &format!("table {table}: primary key"), e))?;
        let mut pk: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(5)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<std::result::Result<Vec<(i64, String)>, _>>())
            .map_err(|e| src_err(&self.path, &format!("table {table}: primary key"), e))?
            .into_iter()
            .filter(|(p, _)| *p > 0)
            .collect();
        pk.sort();
        Ok(pk.into_iter().map(|(_, n)| n).collect())
    }

    /// An undeclared column takes the narrowest type that holds every storage class it has.
    fn undeclared_type(&self, table: &str, column: &str) -> Result<ColType> {
        let sql = format!(
            "SELECT DISTINCT typeof({c}) FROM {t}",
            c = quote(column),
            t = quote(table)
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|e| src_err(&self.path, &format!("table {table}"), e))?;
        let classes: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| src_err(&self.path, &format!("table {table}, column {column}"), e))?;
        let has = |c: &str| classes.iter().any(|x| x == c);
        Ok(
            match (has("integer"), has("real"), has("text"), has("blob")) {
                (_, _, _, true) => ColType::Bytes,
                (_, _, true, false) => ColType::Text,
                (_, true, false, false) => ColType::Real,
                (true, false, false, false) => ColType::Integer,
                _ => ColType::Text,
            },
        )
    }

    fn state(&self, table: &TableInfo) -> Result<&TableState> {
        self.tables
            .get(&table.name)
            .ok_or_else(|| Error::Internal(format!("table {} read before the catalog", table.name)))
    }

    fn select_list(table: &TableInfo, state: &TableState) -> String {
        let mut cols: Vec<String> = vec!["rowid".into()];
        if !state.has_rowid {
            cols[0] = "NULL".into();
        }
        for c in &table.columns {
            cols.push(if c.synthetic {
                "rowid".into()
            } else {
                quote(&c.name)
            });
        }
        cols.join(", ")
    }
}

/// A staged cell value.
enum Cell<'a> {
    Null,
    I(i64),
    F(f64),
    B(bool),
    S(Cow<'a, str>),
    Bin(Cow<'a, [u8]>),
    Ts(i64),
    D(i32),
    T(i64),
}

fn real_text(f: f64) -> String {
    match serde_json::Number::from_f64(f) {
        Some(n) => n.to_string(),
        None => format!("{f}"),
    }
}

/// Converts a SQLite value to a column type; `None` when it does not fit.
fn convert(t: ColType, v: ValueRef<'_>) -> Option<Cell<'_>> {
    use ValueRef as V;
    if let V::Null = v {
        return Some(Cell::Null);
    }
    match (t, v) {
        (ColType::Integer, V::Integer(i)) => Some(Cell::I(i)),
        (ColType::Real, V::Real(f)) => Some(Cell::F(f)),
        (ColType::Real, V::Integer(i)) if i.unsigned_abs() <= 1 << 53 => Some(Cell::F(i as f64)),
        (ColType::Boolean, V::Integer(i @ (0 | 1))) => Some(Cell::B(i == 1)),
        (ColType::Text, V::Text(b)) => std::str::from_utf8(b)
            .ok()
            .map(|s| Cell::S(Cow::Borrowed(s))),
        (ColType::Text, V::Integer(i)) => Some(Cell::S(Cow::Owned(i.to_string()))),
        (ColType::Text, V::Real(f)) => Some(Cell::S(Cow::Owned(real_text(f)))),
        (ColType::Json, V::Text(b)) => {
            let s = std::str::from_utf8(b).ok()?;
            serde_json::from_str::<serde::de::IgnoredAny>(s).ok()?;
            Some(Cell::S(Cow::Borrowed(s)))
        }
        (ColType::Json, V::Integer(i)) => Some(Cell::S(Cow::Owned(i.to_string()))),
        (ColType::Json, V::Real(f)) if f.is_finite() => Some(Cell::S(Cow::Owned(real_text(f)))),
        (ColType::Bytes, V::Blob(b)) => Some(Cell::Bin(Cow::Borrowed(b))),
        (ColType::Bytes, V::Text(b)) => Some(Cell::Bin(Cow::Borrowed(b))),
        (ColType::Bytes, V::Integer(i)) => Some(Cell::Bin(Cow::Owned(i.to_string().into_bytes()))),
        (ColType::Bytes, V::Real(f)) => Some(Cell::Bin(Cow::Owned(real_text(f).into_bytes()))),
        (ColType::Timestamp, V::Text(b)) => {
            parse_timestamp(std::str::from_utf8(b).ok()?).map(Cell::Ts)
        }
        (ColType::Timestamp, V::Integer(secs)) => secs.checked_mul(1_000_000).map(Cell::Ts),
        (ColType::Date, V::Text(b)) => parse_date(std::str::from_utf8(b).ok()?).map(Cell::D),
        (ColType::Time, V::Text(b)) => parse_time(std::str::from_utf8(b).ok()?).map(Cell::T),
        _ => None,
    }
}

/// Does `v` fit type `t` exactly? Bytes hold anything, but only blobs exactly.
fn fits(t: ColType, v: ValueRef<'_>) -> bool {
    match (t, v) {
        (ColType::Bytes, ValueRef::Blob(_) | ValueRef::Null) => true,
        (ColType::Bytes, _) => false,
        _ => convert(t, v).is_some(),
    }
}

/// `YYYY-MM-DD`, `YYYY-MM-DD[ T]HH:MM` and `YYYY-MM-DD[ T]HH:MM:SS[.f]` (1 to 9 digits), two digits a field:
/// the shapes SQLite's own date functions write, parsed without chrono's format strings (which chrono parses
/// again for every value: nearly half of a SQLite snapshot's time with a timestamp column). Anything else
/// (offsets, one-digit fields, leap seconds) is None and goes the general way, which gives the same result for
/// all these shapes (unit-tested against it).
fn iso_fast(s: &str) -> Option<chrono::NaiveDateTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    if b.len() == 10 {
        return date.and_hms_opt(0, 0, 0);
    }
    if b.len() < 16 || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' {
        return None;
    }
    let (h, m) = (num(11..13)?, num(14..16)?);
    if b.len() == 16 {
        return date.and_hms_opt(h, m, 0);
    }
    if b.len() < 19 || b[16] != b':' {
        return None;
    }
    let sec = num(17..19)?;
    if sec > 59 {
        return None;
    }
    let nanos = match b.len() {
        19 => 0,
        20 => return None,
        n if b[19] == b'.' && n <= 29 => num(20..n)? * 10u32.pow((29 - n) as u32),
        _ => return None,
    };
    date.and_hms_nano_opt(h, m, sec, nanos)
}

/// ISO-8601 text to microseconds since the epoch (UTC). Sub-microsecond digits do not fit (no silent truncation).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let dt = match iso_fast(s) {
        Some(dt) => dt,
        None => parse_datetime_general(s)?,
    };
    let utc = dt.and_utc();
    if utc.timestamp_subsec_nanos() % 1000 != 0 {
        return None;
    }
    Some(utc.timestamp_micros())
}

/// Every form `parse_timestamp` accepts, through chrono's parsers (offsets are applied: the result is UTC).
fn parse_datetime_general(s: &str) -> Option<chrono::NaiveDateTime> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let dt = if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        dt.naive_utc()
    } else if let Some(dt) = [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ]
    .iter()
    .find_map(|f| DateTime::parse_from_str(s, f).ok())
    {
        dt.naive_utc()
    } else if let Some(dt) = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    {
        dt
    } else {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
    };
    Some(dt)
}

pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    let d = match iso_fast(s).filter(|_| s.len() == 10) {
        Some(dt) => dt.date(),
        None => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?,
    };
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

pub fn parse_time(s: &str) -> Option<i64> {
    use chrono::Timelike;
    let t = ["%H:%M:%S%.f", "%H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveTime::parse_from_str(s.trim(), f).ok())?;
    if t.nanosecond() % 1000 != 0 {
        return None;
    }
    Some(t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64)
}

enum Col {
    I(Int64Builder),
    F(Float64Builder),
    B(BooleanBuilder),
    S(StringBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMicrosecondBuilder),
    D(Date32Builder),
    T(Time64MicrosecondBuilder),
}

impl Col {
    fn new(t: ColType, cap: usize) -> Col {
        match t {
            ColType::Integer => Col::I(Int64Builder::with_capacity(cap)),
            ColType::Real => Col::F(Float64Builder::with_capacity(cap)),
            ColType::Boolean => Col::B(BooleanBuilder::with_capacity(cap)),
            ColType::Text | ColType::Json => Col::S(StringBuilder::with_capacity(cap, cap * 16)),
            ColType::Bytes => Col::Bin(BinaryBuilder::with_capacity(cap, cap * 16)),
            ColType::Timestamp => {
                Col::Ts(TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC"))
            }
            ColType::Date => Col::D(Date32Builder::with_capacity(cap)),
            ColType::Time => Col::T(Time64MicrosecondBuilder::with_capacity(cap)),
        }
    }

    /// Appends a converted cell; the cell was converted for this column's type, so kinds always match.
    fn append(&mut self, c: Cell<'_>) {
        match (self, c) {
            (Col::I(b), Cell::Null) => b.append_null(),
            (Col::F(b), Cell::Null) => b.append_null(),
            (Col::B(b), Cell::Null) => b.append_null(),
            (Col::S(b), Cell::Null) => b.append_null(),
            (Col::Bin(b), Cell::Null) => b.append_null(),
            (Col::Ts(b), Cell::Null) => b.append_null(),
            (Col::D(b), Cell::Null) => b.append_null(),
            (Col::T(b), Cell::Null) => b.append_null(),
            (Col::I(b), Cell::I(v)) => b.append_value(v),
            (Col::F(b), Cell::F(v)) => b.append_value(v),
            (Col::B(b), Cell::B(v)) => b.append_value(v),
            (Col::S(b), Cell::S(v)) => b.append_value(v),
            (Col::Bin(b), Cell::Bin(v)) => b.append_value(v),
            (Col::Ts(b), Cell::Ts(v)) => b.append_value(v),
            (Col::D(b), Cell::D(v)) => b.append_value(v),
            (Col::T(b), Cell::T(v)) => b.append_value(v),
            _ => unreachable!("convert() returns the cell kind of the column type"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::I(b) => Arc::new(b.finish()),
            Col::F(b) => Arc::new(b.finish()),
            Col::B(b) => Arc::new(b.finish()),
            Col::S(b) => Arc::new(b.finish()),
            Col::Bin(b) => Arc::new(b.finish()),
            Col::Ts(b) => Arc::new(b.finish()),
            Col::D(b) => Arc::new(b.finish()),
            Col::T(b) => Arc::new(b.finish()),
        }
    }
}

/// Counts values that do not fit their declared type in a widened column (for the report).
#[derive(Default, Clone)]
struct Misfits {
    count: u64,
    first_key: Option<String>,
}

/// Converts one row of SQLite values into the builders; on a misfit, names the column that must widen.
struct RowReader<'s> {
    state: &'s TableState,
    cols: Vec<Col>,
    misfits: Vec<Misfits>,
}

impl SqliteSource {
    fn build_schema(table: &TableInfo, state: &TableState) -> SchemaRef {
        let fields: Vec<Field> = table
            .columns
            .iter()
            .zip(&state.types)
            .map(|(c, t)| {
                // SQLite lets even primary-key columns of rowid tables hold NULL; only the rowid never is.
                let mut f = Field::new(&c.name, t.data_type(), !c.synthetic);
                if *t == ColType::Json {
                    // Lets later stages (and users reading the snapshot) know the text is JSON.
                    f = f.with_metadata(
                        [("engram.logical_type".to_string(), "json".to_string())].into(),
                    );
                }
                f
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    fn key_of(table: &TableInfo, row: &rusqlite::Row<'_>) -> String {
        let mut m = Map::new();
        for k in &table.primary_key {
            if let Some(i) = table.columns.iter().position(|c| &c.name == k) {
                let v = match row.get_ref(i + 1) {
                    Ok(ValueRef::Integer(n)) => json!(n),
                    Ok(ValueRef::Real(f)) => json!(f),
                    Ok(ValueRef::Text(t)) => json!(String::from_utf8_lossy(t)),
                    _ => Value::Null,
                };
                m.insert(k.clone(), v);
            }
        }
        Value::Object(m).to_string()
    }
}

impl<'s> RowReader<'s> {
    fn new(state: &'s TableState, cap: usize) -> Self {
        RowReader {
            state,
            cols: state.types.iter().map(|t| Col::new(*t, cap)).collect(),
            misfits: vec![Misfits::default(); state.types.len()],
        }
    }

    /// Err(column index) when a value does not fit the column's current type.
    fn push(
        &mut self,
        row: &rusqlite::Row<'_>,
        key: impl Fn() -> String,
    ) -> std::result::Result<(), usize> {
        for i in 0..self.cols.len() {
            let v = row.get_ref(i + 1).map_err(|_| i)?;
            let t = self.state.types[i];
            let cell = convert(t, v).ok_or(i)?;
            if t != self.state.declared[i] && !fits(self.state.declared[i], v) {
                let m = &mut self.misfits[i];
                m.count += 1;
                if m.first_key.is_none() {
                    m.first_key = Some(key());
                }
            }
            self.cols[i].append(cell);
        }
        Ok(())
    }

    fn batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.cols.iter_mut().map(|c| c.finish()).collect();
        Ok(RecordBatch::try_new(schema.clone(), arrays)?)
    }
}

impl Source for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn describe(&self) -> Value {
        json!({ "kind": "sqlite", "path": self.location() })
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        // The schema, each table's row count (what a change is said in), and the bytes of the file and its
        // write-ahead log (what catches an update that leaves every count as it was). Content, not size and
        // modification time: a copied or touched file is the same database. One caveat, said in the docs: a
        // checkpoint moves the log's pages into the file, which changes the bytes, not the data.
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let bytes = crate::catalog::file_digest(&[&self.path, &wal])
            .map_err(|e| src_err(&self.path, "cannot read the file to fingerprint it", e))?;
        let objects: Vec<(String, String)> = self
            .conn
            .prepare("SELECT name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
            })
            .map_err(|e| src_err(&self.path, "cannot read the schema", e))?;
        let schema: String = objects
            .iter()
            .map(|(n, sql)| format!("{n}\n{sql}\n"))
            .collect();
        let mut fp = Fingerprint::default()
            .whole("content of the file", bytes)
            .whole("schema", crate::catalog::digest(schema.as_bytes()));
        for (name, sql) in &objects {
            // The tables the catalog lists: real tables, not SQLite's own; a virtual table's rows are read
            // through its shadow tables, which are real tables here too.
            let create = sql.trim_start().to_ascii_uppercase();
            if create.starts_with("CREATE TABLE") && !name.starts_with("sqlite_") {
                fp = fp.table(name, "rows", self.count_rows(name)?);
            }
        }
        Ok(fp)
    }

    fn catalog(&mut self) -> Result<Catalog> {
        self.begin()?;
        let mut stmt = self
            .conn
            .prepare("SELECT name, type, coalesce(sql, '') FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .map_err(|e| src_err(&self.path, "cannot list tables", e))?;
        let objects: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| src_err(&self.path, "cannot list tables", e))?;
        drop(stmt);
        let mut tables = vec![];
        let mut skipped = vec![];
        for (name, _kind, sql) in objects {
            if name.starts_with("sqlite_") {
                continue;
            }
            if sql
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL")
            {
                skipped.push((
                    name,
                    "virtual table (its shadow tables are read instead)".to_string(),
                ));
                continue;
            }
            let (mut info, state) = self.introspect(&name, &sql)?;
            info.row_estimate = Some(self.count_rows(&name)?);
            self.tables.insert(name, state);
            tables.push(info);
        }
        super::check_overrides(&tables, self.overrides.keys())?;
        let (tables, cycles) = topological_order(tables);
        Ok(Catalog {
            tables,
            cycles,
            skipped,
        })
    }

    fn schema(&self, table: &TableInfo) -> Result<SchemaRef> {
        Ok(Self::build_schema(table, self.state(table)?))
    }

    fn count(&mut self, table: &TableInfo) -> Result<u64> {
        self.count_rows(&table.name)
    }

    /// Widens a column one step after a value did not fit; false when it is already bytes (cannot happen:
    /// bytes hold every storage class).
    fn widen(&mut self, table: &mut TableInfo, column: &str, reason: &str) -> bool {
        let Some(state) = self.tables.get_mut(&table.name) else {
            return false;
        };
        let Some(i) = table.columns.iter().position(|c| c.name == column) else {
            return false;
        };
        let Some(next) = state.types[i].widened() else {
            return false;
        };
        state.types[i] = next;
        let c = &mut table.columns[i];
        c.mapped_as = next.name().into();
        c.arrow_type = crate::schema::type_name(&next.data_type());
        let label = if next == ColType::Bytes {
            "bytes fallback"
        } else {
            "text fallback"
        };
        c.fidelity = format!("{label}: {reason}");
        true
    }

    fn set_table(&mut self, table: &TableInfo) {
        // Adopt staging types recorded elsewhere (a manifest, or a widening).
        if let Some(state) = self.tables.get_mut(&table.name) {
            for (i, c) in table.columns.iter().enumerate() {
                if let (Some(t), Some(slot)) =
                    (ColType::from_name(&c.mapped_as), state.types.get_mut(i))
                {
                    *slot = t;
                }
            }
        }
    }

    fn read_table(
        &mut self,
        table: &TableInfo,
        after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd> {
        self.begin()?;
        let state = self.state(table)?;
        let schema = Self::build_schema(table, state);
        let filter = match (state.has_rowid, after) {
            (true, Some(_)) => "WHERE rowid > ?1 ORDER BY rowid",
            (true, None) => "ORDER BY rowid",
            (false, _) => "",
        };
        let sql = format!(
            "SELECT {} FROM {} {filter}",
            Self::select_list(table, state),
            quote(&table.name)
        );
        let p = self.path.clone();
        let tname = table.name.clone();
        let err = move |e: rusqlite::Error| src_err(&p, &format!("table {tname}"), e);
        let mut stmt = self.conn.prepare(&sql).map_err(&err)?;
        let mut rows = match (state.has_rowid, after) {
            (true, Some(a)) => stmt.query([a]).map_err(&err)?,
            _ => stmt.query([]).map_err(&err)?,
        };
        let mut reader = RowReader::new(state, batch_size);
        let mut in_batch = 0usize;
        let mut total = 0u64;
        let mut last_rowid: Option<i64> = after;
        while let Some(row) = rows.next().map_err(&err)? {
            if let Err(i) = reader.push(row, || Self::key_of(table, row)) {
                let c = &table.columns[i];
                let found = match row.get_ref(i + 1) {
                    Ok(v) => format!("{:?}", v.data_type()).to_lowercase(),
                    Err(_) => "unreadable".into(),
                };
                return Ok(ReadEnd::Widen {
                    column: c.name.clone(),
                    reason: format!(
                        "a {found} value at key {} does not fit {}",
                        Self::key_of(table, row),
                        state.types[i].name()
                    ),
                });
            }
            if state.has_rowid {
                last_rowid = row.get_ref(0).ok().and_then(|v| v.as_i64().ok());
            }
            in_batch += 1;
            total += 1;
            if in_batch == batch_size {
                emit(
                    reader.batch(&schema)?,
                    last_rowid.filter(|_| state.has_rowid),
                )?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            emit(
                reader.batch(&schema)?,
                last_rowid.filter(|_| state.has_rowid),
            )?;
        }
        let mut misfits = Map::new();
        for (i, m) in reader.misfits.iter().enumerate() {
            if m.count > 0 {
                misfits.insert(
                    table.columns[i].name.clone(),
                    json!({ "count": m.count, "declared": state.declared[i].name(), "first_key": m.first_key }),
                );
            }
        }
        let mut up_to = json!({ "rows": total });
        if state.has_rowid {
            up_to["last_rowid"] = json!(last_rowid);
        }
        if !misfits.is_empty() {
            up_to["values_not_fitting_declared_type"] = Value::Object(misfits);
        }
        Ok(ReadEnd::Done {
            rows: total,
            read_up_to: up_to,
        })
    }

    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        let state = self.state(table)?;
        let schema = Self::build_schema(table, state);
        let cond: Vec<String> = table
            .primary_key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let col = if k == ROWID_COLUMN {
                    "rowid".to_string()
                } else {
                    quote(k)
                };
                format!("{col} = ?{}", i + 1)
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            Self::select_list(table, state),
            quote(&table.name),
            cond.join(" AND ")
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|e| src_err(&self.path, &format!("table {}", table.name), e))?;
        let mut out = vec![];
        for key in keys {
            let params: Vec<rusqlite::types::Value> = table
                .primary_key
                .iter()
                .map(|k| match key.get(k) {
                    Some(Value::Number(n)) if n.is_i64() => {
                        rusqlite::types::Value::Integer(n.as_i64().unwrap_or_default())
                    }
                    Some(Value::Number(n)) => {
                        rusqlite::types::Value::Real(n.as_f64().unwrap_or_default())
                    }
                    Some(Value::String(s)) => rusqlite::types::Value::Text(s.clone()),
                    _ => rusqlite::types::Value::Null,
                })
                .collect();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(|e| src_err(&self.path, &format!("table {}", table.name), e))?;
            let Some(row) = rows
                .next()
                .map_err(|e| src_err(&self.path, &format!("table {}", table.name), e))?
            else {
                out.push(None);
                continue;
            };
            let mut reader = RowReader::new(state, 1);
            reader.push(row, String::new).map_err(|i| {
                Error::source_err(
                    self.location(),
                    format!(
                        "table {}, column {}: value no longer fits its staged type",
                        table.name, table.columns[i].name
                    ),
                )
            })?;
            let batch = reader.batch(&schema)?;
            out.push(Some(crate::json::row_object(&batch, 0)?));
        }
        Ok(out)
    }
}

impl SqliteSource {
    fn count_rows(&self, table: &str) -> Result<u64> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM {}", quote(table)), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| src_err(&self.path, &format!("table {table}: cannot count rows"), e))
    }
}

#[cfg(test)]
mod tests;
