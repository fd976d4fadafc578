//! Sources read a database and hand the pipeline Arrow record batches, table by table. A source knows nothing of
//! snapshots or sinks; the snapshot stage decides batching, files and checkpoints.
//!
//! The list of sources is explicit: `open` below. Today: SQLite files and snapshot directories (a snapshot is a
//! source too, so any run can be reproduced from one). PostgreSQL, Neo4j and Redis plug in here.

pub mod engram;
pub mod neo4j;
pub mod postgres;
pub mod redis;
pub mod snapshot_dir;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

// The catalog types live in `crate::catalog` (a leaf module: the snapshot format needs them without the sources).
pub use crate::catalog::{Catalog, ColumnInfo, Fingerprint, ForeignKey, Partition, TableInfo};

/// How a table read ended.
pub enum ReadEnd {
    /// All rows were emitted; `read_up_to` says where (e.g. the last rowid), recorded in the manifest.
    Done { rows: u64, read_up_to: Value },
    /// A value did not fit the column's current type: stage the table again with the column widened.
    Widen { column: String, reason: String },
}

/// Rows of a table per value of a column (a graph's nodes per label, relationships per type), as the source
/// counts them; validation compares them with the snapshot's.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCount {
    pub table: String,
    /// A Utf8 column (rows per value) or a List<Utf8> column (rows per element value).
    pub column: String,
    pub value: String,
    pub rows: u64,
}

/// Reads partitions; shared by the snapshot's worker threads, each with its own connection.
pub trait PartitionReader: Send + Sync {
    fn read_partition(
        &self,
        table: &TableInfo,
        part: &Partition,
        emit: &mut Emit,
    ) -> Result<ReadEnd>;
}

/// Receives batches; `position` is the source's resume position after the batch's last row, if it has one.
pub type Emit<'a> = dyn FnMut(RecordBatch, Option<i64>) -> Result<()> + 'a;

pub trait Source: Send {
    /// `sqlite`, `snapshot`, ...
    fn kind(&self) -> &'static str;
    /// The source's description for manifests and reports, secrets removed.
    fn describe(&self) -> Value;
    /// The source's fingerprint now: named signals that change when its data may have changed (see
    /// [`Fingerprint`]). A resumed snapshot requires it unchanged; a complete one is stale when it differs.
    fn fingerprint(&mut self) -> Result<Fingerprint>;
    fn catalog(&mut self) -> Result<Catalog>;
    /// The Arrow schema a table is staged with.
    fn schema(&self, table: &TableInfo) -> Result<SchemaRef>;
    /// Exact row count now.
    fn count(&mut self, table: &TableInfo) -> Result<u64>;
    /// Streams a table (from `after`, a position the source gave earlier) in batches of `batch_size` rows.
    fn read_table(
        &mut self,
        table: &TableInfo,
        after: Option<i64>,
        batch_size: usize,
        emit: &mut Emit,
    ) -> Result<ReadEnd>;
    /// Re-reads rows by key (a JSON object of key column -> value) for validation; None where the row is gone.
    /// A column the source cannot re-read by key is left out of the row's map, and is not compared.
    fn fetch_rows(
        &mut self,
        table: &TableInfo,
        keys: &[Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>>;
    /// Splits a table into partitions read in parallel by `partition_reader`; None for one sequential read.
    fn partitions(
        &mut self,
        _table: &TableInfo,
        _workers: usize,
    ) -> Result<Option<Vec<Partition>>> {
        Ok(None)
    }
    fn partition_reader(&mut self) -> Result<Option<Arc<dyn PartitionReader>>> {
        Ok(None)
    }
    /// The snapshot is complete: release what held the source's state still (a transaction) and say where the
    /// source was read up to, for the manifest.
    fn end_snapshot(&mut self) -> Value {
        Value::Null
    }
    /// After `read_table` finished: the table's records that were not staged (expired, skipped), so the
    /// manifest, the summary and validation name them.
    fn not_staged(&self, _table: &TableInfo) -> Vec<crate::catalog::NotStaged> {
        vec![]
    }
    /// The table's staging schema changed (a column was widened); the source must stage it that way from now on.
    fn set_table(&mut self, _table: &TableInfo) {}
    /// Widens a column after `ReadEnd::Widen`, updating `table`'s column info; false if it cannot widen further.
    fn widen(&mut self, _table: &mut TableInfo, _column: &str, _reason: &str) -> bool {
        false
    }
    /// Row counts per value of a grouping column (a graph's labels and relationship types), for `plan` and the
    /// `counts_groups` check; empty where the source has none.
    fn group_counts(&mut self) -> Result<Vec<GroupCount>> {
        Ok(vec![])
    }
}

/// Options that shape how a source reads.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `--column-type` overrides (`table.column`, type name).
    pub column_types: Vec<(String, String)>,
    /// Rows per partition of a partitioned read (`--partition-rows`).
    pub partition_rows: Option<u64>,
    /// Redis: the one database to read (`--source-db`).
    pub redis_db: Option<u64>,
    /// Redis: stage keys expired at the as-of time too (`--expired keep`).
    pub redis_keep_expired: bool,
    /// Bolt sources: user, password, fetch size.
    pub neo4j: neo4j::Neo4jOptions,
}

/// Every `--column-type TABLE.COLUMN=TYPE` must name a column the source has: an override that matches nothing
/// would otherwise be ignored in silence (a typo, or a table renamed since).
pub fn check_overrides<'a>(
    tables: &[TableInfo],
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    for key in keys {
        let found = tables.iter().any(|t| {
            t.columns
                .iter()
                .any(|c| *key == format!("{}.{}", t.name, c.name))
        });
        if !found {
            let (table, column) = key.rsplit_once('.').unwrap_or((key, ""));
            let why = match tables.iter().find(|t| t.name == table) {
                Some(t) => format!(
                    "table {table} has no column {column:?} (columns: {})",
                    t.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!(
                    "the source has no table {table:?} (tables: {})",
                    tables
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(Error::usage(format!("--column-type {key}: {why}")));
        }
    }
    Ok(())
}

/// The kinds of source, one per module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Sqlite,
    Postgres,
    Neo4j,
    Redis,
    /// A live Engram server's memories, read back (`engram+http://`).
    Engram,
    /// A snapshot directory written by an earlier run: read as it is.
    Snapshot,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Postgres => "postgres",
            SourceKind::Neo4j => "neo4j",
            SourceKind::Redis => "redis",
            SourceKind::Engram => "engram",
            SourceKind::Snapshot => "snapshot",
        }
    }

    /// The kind a snapshot manifest's `source` description names (`kind`, or `of.kind` for a snapshot of one).
    pub fn of_description(source: &serde_json::Value) -> Option<SourceKind> {
        let k = source
            .pointer("/of/kind")
            .or_else(|| source.get("kind"))?
            .as_str()?;
        registry()
            .iter()
            .map(|f| f.kind())
            .find(|kind| kind.name() == k)
    }
}

/// Opens one kind of source. `matches` decides by the `--source` value alone (a URL scheme, a file's first
/// bytes), without connecting.
pub trait SourceFactory: Sync {
    fn kind(&self) -> SourceKind;
    fn matches(&self, spec: &str) -> bool;
    fn open(&self, spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>>;
}

struct PostgresFactory;
impl SourceFactory for PostgresFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }
    fn matches(&self, spec: &str) -> bool {
        spec.starts_with("postgres://") || spec.starts_with("postgresql://")
    }
    fn open(&self, spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
        let mut s = postgres::PgSource::open_with_password(spec, opts.neo4j.password.as_deref())?;
        s.set_overrides(&opts.column_types)?;
        if let Some(n) = opts.partition_rows {
            s.set_partition_rows(n);
        }
        Ok(Box::new(s))
    }
}

struct Neo4jFactory;
impl SourceFactory for Neo4jFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Neo4j
    }
    fn matches(&self, spec: &str) -> bool {
        [
            "bolt://",
            "bolt+s://",
            "bolt+ssc://",
            "neo4j://",
            "neo4j+s://",
            "neo4j+ssc://",
        ]
        .iter()
        .any(|s| spec.starts_with(s))
    }
    fn open(&self, spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
        Ok(Box::new(neo4j::Neo4jSource::open(spec, &opts.neo4j)?))
    }
}

/// A live Redis (`redis://`, `rediss://`) or an RDB dump file (recognised by its `REDIS` magic).
struct RedisFactory;
impl SourceFactory for RedisFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Redis
    }
    fn matches(&self, spec: &str) -> bool {
        spec.starts_with("redis://") || spec.starts_with("rediss://") || {
            let p = Path::new(spec);
            p.is_file() && redis::is_rdb_file(p)
        }
    }
    fn open(&self, spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
        if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            let s = redis::RedisSource::open_live(spec, opts.redis_db)?;
            return Ok(Box::new(s.keep_expired(opts.redis_keep_expired)));
        }
        let s = redis::RedisSource::open_rdb(Path::new(spec), opts.redis_db)?;
        Ok(Box::new(s.keep_expired(opts.redis_keep_expired)))
    }
}

struct EngramFactory;
impl SourceFactory for EngramFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Engram
    }
    fn matches(&self, spec: &str) -> bool {
        spec.starts_with("engram+http://") || spec.starts_with("engram+grpc://")
    }
    fn open(&self, spec: &str, _opts: &SourceOptions) -> Result<Box<dyn Source>> {
        Ok(Box::new(engram::EngramSource::open(spec)?))
    }
}

struct SnapshotFactory;
impl SourceFactory for SnapshotFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Snapshot
    }
    fn matches(&self, spec: &str) -> bool {
        Path::new(spec).join(snapshot_dir::MANIFEST).is_file()
    }
    fn open(&self, spec: &str, _opts: &SourceOptions) -> Result<Box<dyn Source>> {
        Ok(Box::new(snapshot_dir::SnapshotSource::open(Path::new(
            spec,
        ))?))
    }
}

/// `sqlite://PATH`, or any other existing file (SQLite itself says whether it is a database).
struct SqliteFactory;
impl SourceFactory for SqliteFactory {
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }
    fn matches(&self, spec: &str) -> bool {
        spec.starts_with("sqlite://") || Path::new(spec).is_file()
    }
    fn open(&self, spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
        let mut s =
            sqlite::SqliteSource::open(Path::new(spec.strip_prefix("sqlite://").unwrap_or(spec)))?;
        s.set_overrides(&opts.column_types)?;
        Ok(Box::new(s))
    }
}

/// Every source, in the order a `--source` value is tried: URL schemes, then files by their content, SQLite last.
pub fn registry() -> &'static [&'static dyn SourceFactory] {
    &[
        &PostgresFactory,
        &Neo4jFactory,
        &RedisFactory,
        &EngramFactory,
        &SnapshotFactory,
        &SqliteFactory,
    ]
}

/// The source a `--source` value names, without opening it.
pub fn factory_for(spec: &str) -> Result<&'static dyn SourceFactory> {
    if let Some(f) = registry().iter().find(|f| f.matches(spec)) {
        return Ok(*f);
    }
    let path = Path::new(spec);
    Err(Error::source_err(
        spec,
        if path.is_dir() {
            "is a directory without manifest.json; --source takes a SQLite file or a snapshot directory written by `engram-migrate snapshot`"
        } else {
            "no such file; check the path (--source takes a SQLite file, a Redis dump, a snapshot directory, or a postgres://, bolt:// or redis:// URL)"
        },
    ))
}

/// Opens the source a `--source` value names.
pub fn open(spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
    factory_for(spec)?.open(spec, opts)
}

/// A connection URL with its password replaced by `***`, for messages, manifests and reports (every URL source).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => format!(
            "{}://(unparsable URL)",
            url.split("://").next().unwrap_or("source")
        ),
    }
}

/// Whether `name` matches a pattern of `--include`/`--exclude` (`*` matches any run of characters). Tables of
/// PostgreSQL's default schema are named without it but also match as `public.name`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
        }
    }
    glob(pattern.as_bytes(), name.as_bytes())
        || (!name.contains('.') && glob(pattern.as_bytes(), format!("public.{name}").as_bytes()))
}

/// Whether `--include` (all when empty) and `--exclude` let table `name` be migrated.
pub fn is_included(name: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| name_matches(p, name)))
        && !exclude.iter().any(|p| name_matches(p, name))
}

/// Keeps the tables `--include` names (all when empty) minus those `--exclude` names; the others are listed as
/// skipped. A pattern without `*` that names no table is an error: a typo must not silently migrate nothing.
pub fn filter_catalog(catalog: &mut Catalog, include: &[String], exclude: &[String]) -> Result<()> {
    for p in include.iter().chain(exclude) {
        if !p.contains('*') && !catalog.tables.iter().any(|t| name_matches(p, &t.name)) {
            let known: Vec<&str> = catalog
                .tables
                .iter()
                .map(|t| t.name.as_str())
                .take(20)
                .collect();
            return Err(Error::usage(format!(
                "table {p:?} (--include/--exclude) is not in the source; tables: {}",
                known.join(", ")
            )));
        }
    }
    let tables = std::mem::take(&mut catalog.tables);
    for t in tables {
        if is_included(&t.name, include, exclude) {
            catalog.tables.push(t);
        } else {
            let why = if exclude.iter().any(|p| name_matches(p, &t.name)) {
                "excluded by --exclude"
            } else {
                "not named by --include"
            };
            catalog.skipped.push((t.name, why.to_string()));
        }
    }
    Ok(())
}

/// Orders tables so that parents come before children (Kahn's algorithm); tables left over sit on or behind a
/// foreign-key cycle: they are appended in name order and the cycles are reported.
pub fn topological_order(mut tables: Vec<TableInfo>) -> (Vec<TableInfo>, Vec<Vec<String>>) {
    use std::collections::{BTreeMap, BTreeSet};
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let names: BTreeSet<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &tables {
        let d = t
            .foreign_keys
            .iter()
            .map(|fk| fk.parent_table.clone())
            .filter(|p| p != &t.name && names.contains(p))
            .collect();
        deps.insert(t.name.clone(), d);
    }
    let mut order: Vec<String> = vec![];
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready: Vec<String> = deps
            .iter()
            .filter(|(n, d)| !done.contains(*n) && d.iter().all(|p| done.contains(p)))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in ready {
            done.insert(n.clone());
            order.push(n);
        }
    }
    // Find the cycles among the rest: follow parent links from each remaining table until a table repeats.
    let rest: Vec<String> = deps
        .keys()
        .filter(|n| !done.contains(*n))
        .cloned()
        .collect();
    let mut cycles: Vec<Vec<String>> = vec![];
    let mut seen_in_cycle: BTreeSet<String> = BTreeSet::new();
    for start in &rest {
        let mut path = vec![start.clone()];
        let mut cur = start.clone();
        while let Some(next) = deps[&cur].iter().find(|p| !done.contains(*p)) {
            if let Some(pos) = path.iter().position(|p| p == next) {
                let cycle: Vec<String> = path[pos..].to_vec();
                if cycle.iter().all(|c| !seen_in_cycle.contains(c)) {
                    seen_in_cycle.extend(cycle.iter().cloned());
                    cycles.push(cycle);
                }
                break;
            }
            path.push(next.clone());
            cur = next.clone();
        }
    }
    order.extend(rest);
    let mut by_name: BTreeMap<String, TableInfo> =
        tables.into_iter().map(|t| (t.name.clone(), t)).collect();
    let ordered = order
        .into_iter()
        .filter_map(|n| by_name.remove(&n))
        .collect();
    (ordered, cycles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, parents: &[&str]) -> TableInfo {
        TableInfo {
            name: name.into(),
            columns: vec![],
            primary_key: vec!["id".into()],
            foreign_keys: parents
                .iter()
                .map(|p| ForeignKey {
                    columns: vec!["x".into()],
                    parent_table: p.to_string(),
                    parent_columns: vec!["id".into()],
                })
                .collect(),
            row_estimate: None,
        }
    }

    #[test]
    fn include_exclude_patterns() {
        assert!(name_matches("users", "users"));
        assert!(name_matches("public.users", "users"));
        assert!(name_matches("public.*", "users"));
        assert!(!name_matches("public.*", "sales.orders"));
        assert!(name_matches("sales.*", "sales.orders"));
        assert!(name_matches("*orders", "sales.orders"));
        assert!(!name_matches("user", "users"));
        let mut cat = Catalog {
            tables: vec![
                t("users", &[]),
                t("orders", &["users"]),
                t("sales.items", &[]),
            ],
            ..Default::default()
        };
        filter_catalog(&mut cat, &["public.*".into()], &["orders".into()]).unwrap();
        let names: Vec<_> = cat.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["users"]);
        assert_eq!(cat.skipped.len(), 2);
        let mut cat = Catalog {
            tables: vec![t("users", &[])],
            ..Default::default()
        };
        let e = filter_catalog(&mut cat, &["userz".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("userz"), "{e}");
    }

    #[test]
    fn parents_first_cycles_reported_self_reference_ignored() {
        let (order, cycles) = topological_order(vec![
            t("orders", &["customers"]),
            t("customers", &[]),
            t("employees", &["employees"]),
            t("a", &["b"]),
            t("b", &["a"]),
            t("c", &["a"]),
        ]);
        let names: Vec<_> = order.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["customers", "employees", "orders", "a", "b", "c"]
        );
        assert_eq!(cycles, vec![vec!["a".to_string(), "b".to_string()]]);
    }
}
