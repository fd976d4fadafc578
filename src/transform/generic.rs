//! The generic default mapping, generated from the snapshot's catalog (the Engram team's plan, shared/ENGRAM.md):
//! table -> space, row -> memory `<table>_<pk>`, the whole row -> JSON content, text columns -> "col: value | ..."
//! (NULLs skipped), created_at/updated_at -> created_at, foreign key -> edge child -> parent (weight 0.8), child
//! rows whose parent is missing -> orphans. A link table (its rows only relate two other rows: see `link_keys`)
//! gives edges instead of memories, one per row, typed by its type column. The SQL is written into the run
//! directory so a user can copy it, edit it and run the copy with `--sql FILE`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::schema::space_id;
use crate::snapshot::{Manifest, TableEntry};
use crate::source::{ForeignKey, TableInfo};

/// Knobs of the generated mapping (the Engram team's flags).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MappingOptions {
    /// Put every memory in this space instead of one space per table.
    pub memory_space: Option<String>,
    /// Table -> space, overriding the per-table default.
    pub table_to_space: BTreeMap<String, String>,
    /// Table -> columns whose values make the text to embed (default: every text column).
    pub text_columns: BTreeMap<String, Vec<String>>,
    /// Column to read created_at from (default: created_at, else updated_at, where present).
    pub timestamp_column: Option<String>,
    pub confidence: f32,
    pub activation: f32,
    pub decay_rate: f32,
    pub edge_weight: f32,
    pub skip_edges: bool,
    /// The run's embedding dimension: a source column of exactly this many floats (pgvector `vector(N)`) becomes
    /// the memory's embedding as it is. Set from the provider when the mapping is generated, not a flag.
    #[serde(skip)]
    pub embedding_dim: usize,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions {
            memory_space: None,
            table_to_space: BTreeMap::new(),
            text_columns: BTreeMap::new(),
            timestamp_column: None,
            confidence: 0.7,
            activation: 0.5,
            decay_rate: 0.01,
            edge_weight: 0.8,
            skip_edges: false,
            embedding_dim: 768,
        }
    }
}

pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn table_ref(name: &str) -> String {
    format!("source.{}", ident(name))
}

fn col(alias: &str, name: &str) -> String {
    format!("{alias}.{}", ident(name))
}

fn is_binary(t: &TableEntry, c: &str) -> bool {
    t.schema
        .iter()
        .any(|f| f.name == c && f.data_type.contains("Binary"))
}

/// A column of one value per row (not a list, vector, struct or map): what can be cast to text and counted.
fn is_scalar(t: &TableEntry, c: &str) -> bool {
    t.schema.iter().any(|f| {
        f.name == c
            && !["List", "Struct", "Map", "Union"]
                .iter()
                .any(|k| f.data_type.contains(k))
    })
}

/// A column value as text for ids: bytes as hex, everything else cast.
fn as_text(t: &TableEntry, alias: &str, c: &str) -> String {
    if is_binary(t, c) {
        format!("encode({}, 'hex')", col(alias, c))
    } else {
        format!("CAST({} AS VARCHAR)", col(alias, c))
    }
}

/// The memory id of a row of `t`: `<table>_<pk>` (composite keys joined with `_`).
pub fn id_expr(t: &TableEntry, alias: &str) -> String {
    let parts: Vec<String> = t
        .info
        .primary_key
        .iter()
        .map(|k| format!("coalesce({}, '')", as_text(t, alias, k)))
        .collect();
    format!(
        "{} || {}",
        lit(&format!("{}_", t.info.name)),
        parts.join(" || '_' || ")
    )
}

fn key_json(t: &TableEntry, alias: &str) -> String {
    let fields: Vec<String> = t
        .info
        .primary_key
        .iter()
        .map(|k| format!("{}, {}", lit(k), col(alias, k)))
        .collect();
    format!("to_json(named_struct({}))", fields.join(", "))
}

pub fn space_of(t: &TableEntry, opts: &MappingOptions) -> String {
    if let Some(s) = &opts.memory_space {
        return s.clone();
    }
    opts.table_to_space
        .get(&t.info.name)
        .cloned()
        .unwrap_or_else(|| space_id(&t.info.name))
}

/// The columns the default text is made of: every text column; a table without one is described by all its
/// non-binary values, so its memories still differ (Engram collapses memories with near-identical embeddings).
fn default_text_columns(t: &TableEntry) -> Vec<String> {
    let real: Vec<&crate::source::ColumnInfo> =
        t.info.columns.iter().filter(|c| !c.synthetic).collect();
    let text: Vec<String> = real
        .iter()
        .filter(|c| c.mapped_as == "text")
        .map(|c| c.name.clone())
        .collect();
    if !text.is_empty() {
        return text;
    }
    real.iter()
        .filter(|c| !is_binary(t, &c.name))
        .map(|c| c.name.clone())
        .collect()
}

fn text_columns(t: &TableEntry, opts: &MappingOptions) -> Vec<String> {
    opts.text_columns
        .get(&t.info.name)
        .cloned()
        .unwrap_or_else(|| default_text_columns(t))
}

fn text_of(t: &TableEntry, columns: &[String], alias: &str) -> String {
    if columns.is_empty() {
        return "CAST(NULL AS VARCHAR)".into();
    }
    let parts: Vec<String> = columns
        .iter()
        .map(|c| format!("{} || {}", lit(&format!("{c}: ")), as_text(t, alias, c)))
        .collect();
    format!("nullif(concat_ws(' | ', {}), '')", parts.join(", "))
}

fn text_expr(t: &TableEntry, opts: &MappingOptions, alias: &str) -> String {
    text_of(t, &text_columns(t, opts), alias)
}

/// What a table's memories embed, and how many distinct texts that gives: shown by `plan`, kept in the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TextChoice {
    pub table: String,
    pub columns: Vec<String>,
    /// Columns added to the default text because the text columns alone repeat (see `choose_texts`).
    pub added: Vec<String>,
    /// Named by `--text-columns`: used as given.
    pub explicit: bool,
    pub rows: u64,
    pub distinct_texts: u64,
}

/// The share of a table's rows whose texts must differ for the default text to stand. Rows with the same text
/// get the same embedding, and Engram keeps one memory of each (its near-duplicate filter), so a default below
/// this would lose rows silently: the 2,000-row table whose only text column repeated 97 values.
pub const DISTINCT_ENOUGH: f64 = 0.99;

/// Chooses each table's text from the data (`ctx` has the snapshot registered as `source.*`). A table named by
/// `--text-columns` keeps what it was given. Otherwise the default (every text column) stands when its texts
/// tell at least 99% of the rows apart; when they do not, the columns that do are added: the key first, then the
/// other columns with many distinct values (at least a tenth of the rows, most distinct first), and, if that is
/// still not enough, every other non-binary column. Deterministic for a snapshot, so `validate` regenerates the
/// same mapping.
pub async fn choose_texts(
    ctx: &datafusion::prelude::SessionContext,
    manifest: &Manifest,
    opts: &MappingOptions,
) -> crate::error::Result<Vec<TextChoice>> {
    let mut out = vec![];
    let infos = infos(manifest);
    for t in &manifest.tables {
        // A link table's rows are edges: they embed nothing.
        if !opts.skip_edges && link_keys(&t.info, &infos, opts).is_some() {
            continue;
        }
        let explicit = opts.text_columns.contains_key(&t.info.name);
        let columns = text_columns(t, opts);
        let (rows, distinct) = distinct_texts(ctx, t, &columns).await?;
        let mut choice = TextChoice {
            table: t.info.name.clone(),
            columns,
            added: vec![],
            explicit,
            rows,
            distinct_texts: distinct,
        };
        if explicit || rows == 0 || distinct as f64 >= DISTINCT_ENOUGH * rows as f64 {
            out.push(choice);
            continue;
        }
        let candidates: Vec<String> = t
            .info
            .columns
            .iter()
            .filter(|c| {
                !c.synthetic
                    && is_scalar(t, &c.name)
                    && !is_binary(t, &c.name)
                    && !choice.columns.contains(&c.name)
            })
            .map(|c| c.name.clone())
            .collect();
        if candidates.is_empty() {
            out.push(choice);
            continue;
        }
        let counts = column_distinct(ctx, t, &candidates).await?;
        let mut ranked: Vec<(bool, u64, String)> = candidates
            .iter()
            .zip(&counts)
            .map(|(c, n)| (t.info.primary_key.contains(c), *n, c.clone()))
            .collect();
        // Key columns first, then by distinct values, most first; ties by name, so the choice is stable.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let many = (rows / 10).max(2);
        let first: Vec<String> = ranked
            .iter()
            .filter(|(key, n, _)| *key || *n >= many)
            .map(|(_, _, c)| c.clone())
            .collect();
        // Two tries, each wider than the one before: the key and the many-valued columns, then every column.
        // The first that reaches the bar is taken, else the widest (it tells the most rows apart).
        let mut tries = vec![first];
        if tries[0].len() < ranked.len() {
            tries.push(ranked.into_iter().map(|(_, _, c)| c).collect());
        }
        let base = choice.columns.clone();
        for added in tries.into_iter().filter(|a| !a.is_empty()) {
            let columns: Vec<String> = base.iter().chain(&added).cloned().collect();
            let (_, d) = distinct_texts(ctx, t, &columns).await?;
            (choice.columns, choice.added, choice.distinct_texts) = (columns, added, d);
            if d as f64 >= DISTINCT_ENOUGH * rows as f64 {
                break;
            }
        }
        out.push(choice);
    }
    Ok(out)
}

async fn distinct_texts(
    ctx: &datafusion::prelude::SessionContext,
    t: &TableEntry,
    columns: &[String],
) -> crate::error::Result<(u64, u64)> {
    let sql = format!(
        // Distinct 64-bit hashes, not distinct strings: the set of strings of millions of rows outgrows the SQL
        // memory limit (count distinct cannot spill); two texts colliding in 64 bits are as good as impossible.
        "SELECT count(*) AS n, count(DISTINCT text_hash({})) AS d FROM {} AS c",
        text_of(t, columns, "c"),
        table_ref(&t.info.name)
    );
    let started = std::time::Instant::now();
    let b = super::collect(ctx, &sql, "the text choice of the generated mapping").await?;
    tracing::debug!(table = %t.info.name, seconds = started.elapsed().as_secs_f64(), ?columns, "distinct texts counted");
    let get = |i: usize| -> u64 {
        b.first()
            .and_then(|b| {
                arrow::array::cast::AsArray::as_primitive_opt::<arrow::datatypes::Int64Type>(
                    b.column(i).as_ref(),
                )
                .map(|a| a.value(0).max(0) as u64)
            })
            .unwrap_or(0)
    };
    Ok((get(0), get(1)))
}

/// Approximate distinct values per column (HyperLogLog: one pass, bounded memory, order-independent).
async fn column_distinct(
    ctx: &datafusion::prelude::SessionContext,
    t: &TableEntry,
    columns: &[String],
) -> crate::error::Result<Vec<u64>> {
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| format!("approx_distinct({})", as_text(t, "c", c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} AS c",
        exprs.join(", "),
        table_ref(&t.info.name)
    );
    let started = std::time::Instant::now();
    let b = super::collect(ctx, &sql, "the text choice of the generated mapping").await?;
    tracing::debug!(table = %t.info.name, seconds = started.elapsed().as_secs_f64(), ?columns, "distinct values per column estimated");
    Ok((0..columns.len())
        .map(|i| {
            b.first()
                .and_then(|b| {
                    arrow::array::cast::AsArray::as_primitive_opt::<arrow::datatypes::UInt64Type>(
                        b.column(i).as_ref(),
                    )
                    .map(|a| a.value(0))
                })
                .unwrap_or(0)
        })
        .collect())
}

fn created_at_expr(t: &TableEntry, opts: &MappingOptions, alias: &str) -> String {
    let wanted: Vec<String> = match &opts.timestamp_column {
        Some(c) => vec![c.clone()],
        None => vec!["created_at".into(), "updated_at".into()],
    };
    for w in wanted {
        if let Some(f) = t.schema.iter().find(|f| f.name.eq_ignore_ascii_case(&w)) {
            let c = col(alias, &f.name);
            return if f.data_type.starts_with("Timestamp") {
                format!("CAST({c} AS TIMESTAMP)")
            } else if f.data_type.starts_with("Int") {
                format!("CAST(to_timestamp_seconds({c}) AS TIMESTAMP)")
            } else if f.data_type.contains("Utf8") {
                format!("TRY_CAST({c} AS TIMESTAMP)")
            } else if f.data_type.starts_with("Date") {
                format!("CAST({c} AS TIMESTAMP)")
            } else {
                "CAST(NULL AS TIMESTAMP)".into()
            };
        }
    }
    "CAST(NULL AS TIMESTAMP)".into()
}

/// A column that already holds vectors of the run's dimension (pgvector `vector(768)` with a 768-float provider):
/// they become the memory's embedding as they are, instead of an embedding of the text. Vectors of other sizes
/// stay in the content only.
pub fn embedding_column(t: &TableEntry, dim: usize) -> Option<&str> {
    let wanted = format!("FixedSizeList({dim} x Float32)");
    t.schema
        .iter()
        .find(|f| f.data_type == wanted)
        .map(|f| f.name.as_str())
}

/// Vector columns of another size, reported in the mapping (they are embedded from text instead).
pub fn other_vector_columns(t: &TableEntry, dim: usize) -> Vec<String> {
    let wanted = format!("FixedSizeList({dim} x Float32)");
    t.schema
        .iter()
        .filter(|f| {
            f.data_type.starts_with("FixedSizeList(") && f.data_type.ends_with("x Float32)")
        })
        .filter(|f| f.data_type != wanted)
        .map(|f| format!("{} ({})", f.name, f.data_type))
        .collect()
}

fn float(v: f32) -> String {
    format!("CAST({v} AS FLOAT)")
}

fn fk_name(fk: &ForeignKey) -> String {
    format!("fk:{}->{}", fk.columns.join(","), fk.parent_table)
}

fn fk_not_null(fk: &ForeignKey, alias: &str) -> String {
    fk.columns
        .iter()
        .map(|c| format!("{} IS NOT NULL", col(alias, c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn join_cond(child: &TableEntry, parent: &TableEntry, fk: &ForeignKey) -> String {
    join_on(child, "c", parent, "p", fk)
}

/// The join condition of a foreign key between the child row `ca` and the parent row `pa`.
fn join_on(child: &TableEntry, ca: &str, parent: &TableEntry, pa: &str, fk: &ForeignKey) -> String {
    fk.columns
        .iter()
        .zip(&fk.parent_columns)
        .map(|(c, p)| {
            let ct = child
                .schema
                .iter()
                .find(|f| &f.name == c)
                .map(|f| f.data_type.as_str());
            let pt = parent
                .schema
                .iter()
                .find(|f| &f.name == p)
                .map(|f| f.data_type.as_str());
            if ct == pt {
                format!("{} = {}", col(ca, c), col(pa, p))
            } else {
                // SQLite compares across declared types; compare as text so both sides meet.
                format!("{} = {}", as_text(child, ca, c), as_text(parent, pa, p))
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

const EMPTY_EDGES: &str = "SELECT CAST(NULL AS VARCHAR) AS space, CAST(NULL AS VARCHAR) AS source_id, \
CAST(NULL AS VARCHAR) AS target_id, CAST(NULL AS VARCHAR) AS edge_type, CAST(NULL AS FLOAT) AS weight, \
CAST(NULL AS VARCHAR) AS properties, CAST(NULL AS VARCHAR) AS source_name, CAST(NULL AS VARCHAR) AS source_key WHERE false";

/// Column names that give a link table's rows their relationship type.
const TYPE_COLUMNS: &[&str] = &[
    "type",
    "kind",
    "relation",
    "relationship",
    "rel_type",
    "edge_type",
    "label",
];

/// A link table's two foreign keys, or None for a table of things. A link table's rows only relate two other
/// rows (a code graph's `edges(source, target, type, line)`, an `order_items(order_id, product_id, quantity)`):
/// exactly two foreign keys to other tables in the snapshot; no foreign key points at it; and no text column
/// besides its type column (a text column describes a thing of its own, which deserves a memory). Its rows become
/// edges, not memories. `--text-columns` naming the table asks for memories and so turns this off.
pub fn link_keys<'a>(
    t: &'a TableInfo,
    tables: &[&TableInfo],
    opts: &MappingOptions,
) -> Option<(&'a ForeignKey, &'a ForeignKey)> {
    let [a, b] = t.foreign_keys.as_slice() else {
        return None;
    };
    if opts.text_columns.contains_key(&t.name) {
        return None;
    }
    for fk in [a, b] {
        let parent = tables.iter().find(|p| p.name == fk.parent_table)?;
        if fk.columns.len() != fk.parent_columns.len() || parent.name == t.name {
            return None;
        }
    }
    let referenced = tables
        .iter()
        .any(|o| o.foreign_keys.iter().any(|fk| fk.parent_table == t.name));
    if referenced {
        return None;
    }
    let keys: Vec<&String> = a.columns.iter().chain(&b.columns).collect();
    let type_col = link_type_column(t);
    let other_text = t.columns.iter().any(|c| {
        c.mapped_as == "text"
            && !keys.contains(&&c.name)
            && !t.primary_key.contains(&c.name)
            && Some(c.name.as_str()) != type_col
    });
    (!other_text).then_some((a, b))
}

/// A link table's type column: the first text column named like a relationship type.
pub fn link_type_column(t: &TableInfo) -> Option<&str> {
    TYPE_COLUMNS.iter().find_map(|n| {
        t.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(n) && c.mapped_as == "text")
            .map(|c| c.name.as_str())
    })
}

/// A link row's edge type: its type column's value, else (or when NULL) the table's name in capitals.
fn link_type_expr(t: &TableEntry) -> String {
    let table = lit(&t.info.name.to_uppercase());
    match link_type_column(&t.info) {
        Some(c) => format!("coalesce({}, {table})", as_text(t, "c", c)),
        None => table,
    }
}

/// The tables the generic mapping turns into edges (for `plan` and the run's summary).
pub fn link_tables(manifest: &Manifest, opts: &MappingOptions) -> Vec<String> {
    let infos = infos(manifest);
    infos
        .iter()
        .filter(|t| link_keys(t, &infos, opts).is_some())
        .map(|t| t.name.clone())
        .collect()
}

fn infos(manifest: &Manifest) -> Vec<&TableInfo> {
    manifest.tables.iter().map(|t| &t.info).collect()
}

/// A link table's rows as edges (rows whose parents are both there) and orphans (either parent missing).
fn link_edges(
    t: &TableEntry,
    (fa, fb): (&ForeignKey, &ForeignKey),
    manifest: &Manifest,
    opts: &MappingOptions,
) -> (String, String, String) {
    let name = &t.info.name;
    let (pa, pb) = (
        manifest
            .table(&fa.parent_table)
            .expect("checked by link_keys"),
        manifest
            .table(&fb.parent_table)
            .expect("checked by link_keys"),
    );
    let etype = link_type_expr(t);
    let weight = match t.info.columns.iter().find(|c| {
        c.name.eq_ignore_ascii_case("weight")
            && t.schema.iter().any(|f| {
                f.name == c.name
                    && (f.data_type.starts_with("Float") || f.data_type.starts_with("Int"))
            })
    }) {
        Some(c) => format!(
            "CAST(coalesce({}, {}) AS FLOAT)",
            col("c", &c.name),
            float(opts.edge_weight)
        ),
        None => float(opts.edge_weight),
    };
    let keys: Vec<&String> = fa.columns.iter().chain(&fb.columns).collect();
    let props: Vec<String> = t
        .info
        .columns
        .iter()
        .filter(|c| !c.synthetic && !keys.contains(&&c.name))
        .map(|c| format!("{}, {}", lit(&c.name), col("c", &c.name)))
        .collect();
    let props = if props.is_empty() {
        "'{}'".to_string()
    } else {
        format!("to_json(named_struct({}))", props.join(", "))
    };
    // A row with a NULL or dangling reference is an orphan edge (kept, reported), never dropped.
    let would_be = |fk: &ForeignKey| {
        let parts: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("coalesce({}, '')", as_text(t, "c", c)))
            .collect();
        format!(
            "{} || {}",
            lit(&format!("{}_", fk.parent_table)),
            parts.join(" || '_' || ")
        )
    };
    let head = |src: &str, dst: &str| {
        format!(
            "SELECT {space} AS space, {src} AS source_id, {dst} AS target_id, {etype} AS edge_type, \
             {weight} AS weight, {props} AS properties, {sname} AS source_name, {key} AS source_key",
            space = lit(&space_of(pa, opts)),
            sname = lit(name),
            key = key_json(t, "c"),
        )
    };
    let edges = format!(
        "-- link table {name}: each row an edge {} -> {}\n{}\nFROM {} c JOIN {} a ON {} JOIN {} b ON {}",
        fa.parent_table,
        fb.parent_table,
        head(&id_expr(pa, "a"), &id_expr(pb, "b")),
        table_ref(name),
        table_ref(&fa.parent_table),
        join_on(t, "c", pa, "a", fa),
        table_ref(&fb.parent_table),
        join_on(t, "c", pb, "b", fb),
    );
    let orphans = format!(
        "{}\nFROM {} c LEFT JOIN {} a ON {} LEFT JOIN {} b ON {}\nWHERE {} IS NULL OR {} IS NULL",
        head(&would_be(fa), &would_be(fb)),
        table_ref(name),
        table_ref(&fa.parent_table),
        join_on(t, "c", pa, "a", fa),
        table_ref(&fb.parent_table),
        join_on(t, "c", pb, "b", fb),
        col("a", &fa.parent_columns[0]),
        col("b", &fb.parent_columns[0]),
    );
    let group = if link_type_column(&t.info).is_some() {
        format!(" GROUP BY {etype}")
    } else {
        String::new()
    };
    let expected = format!(
        "SELECT {} AS source_name, 'edges' AS kind, {etype} AS name, count(*) AS expected FROM {} c{group}",
        lit(name),
        table_ref(name),
    );
    (edges, orphans, expected)
}

/// What the generic mapping must produce, counted by the tool from the snapshot itself (a query over `source.*`
/// only, never the mapping's views): validation's `counts_derived` holds the mapping's own `expected_counts` and
/// the bundle to it, so a mapping edited to drop rows (and to expect fewer) is caught. One memory per row of a
/// table of things; per link table its rows by type; per foreign key its non-NULL references.
/// Columns: source_name, kind, name, derived.
pub fn derived_counts_sql(manifest: &Manifest, opts: &MappingOptions) -> String {
    let infos = infos(manifest);
    let mut parts = vec![];
    for t in &manifest.tables {
        let name = &t.info.name;
        if !opts.skip_edges && link_keys(&t.info, &infos, opts).is_some() {
            let etype = link_type_expr(t);
            parts.push(format!(
                "SELECT {} AS source_name, 'edges' AS kind, {etype} AS name, count(*) AS derived FROM {} c GROUP BY {etype}",
                lit(name),
                table_ref(name)
            ));
            continue;
        }
        // The snapshot's own row count, from its manifest: nothing the mapping computes.
        parts.push(format!(
            "SELECT {} AS source_name, 'memories' AS kind, '' AS name, CAST({} AS BIGINT) AS derived",
            lit(name),
            t.rows
        ));
        if opts.skip_edges {
            continue;
        }
        for fk in &t.info.foreign_keys {
            parts.push(format!(
                "SELECT {} AS source_name, 'edges' AS kind, {} AS name, count(*) AS derived FROM {} c WHERE {}",
                lit(name),
                lit(&fk_name(fk)),
                table_ref(name),
                fk_not_null(fk, "c")
            ));
        }
    }
    parts.join("\nUNION ALL\n")
}

/// Fault injection for the tests, in debug builds only: `ENGRAM_MIGRATE_FAULT_DROP_TABLE=<table>` makes the
/// generated mapping drop that table's rows and lower its own expected count to match, the mapping bug that
/// only `counts_derived` can catch (tests/it/e2e.rs). Release builds never read it.
fn injected_fault_drops(table: &str) -> bool {
    cfg!(debug_assertions)
        && std::env::var("ENGRAM_MIGRATE_FAULT_DROP_TABLE").is_ok_and(|t| t == table)
}

/// Generates the mapping SQL for a snapshot.
pub fn generate(manifest: &Manifest, opts: &MappingOptions) -> String {
    generate_in(manifest, opts, None)
}

/// The schema an incremental run registers each table's added and changed rows in (`changed."<table>"`, the
/// same columns as `source."<table>"`).
pub const CHANGED_SCHEMA: &str = "changed";

/// The mapping SQL, its `memories` view read from `memories_from."<table>"` instead of `source."<table>"`
/// when given: an incremental run maps only the rows that changed into memories (a memory depends on its own
/// row alone), while edges, orphans and counts still read the whole snapshot (an edge also depends on whether
/// its parent row exists).
pub fn generate_in(
    manifest: &Manifest,
    opts: &MappingOptions,
    memories_from: Option<&str>,
) -> String {
    let kind = manifest
        .source
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("unknown");
    let kind = if kind == "snapshot" {
        manifest
            .source
            .pointer("/of/kind")
            .and_then(|k| k.as_str())
            .unwrap_or("unknown")
    } else {
        kind
    };
    let by_name: BTreeMap<&str, &TableEntry> = manifest
        .tables
        .iter()
        .map(|t| (t.info.name.as_str(), t))
        .collect();
    let mut memories = vec![];
    let mut edges = vec![];
    let mut orphans = vec![];
    let mut expected = vec![];
    for t in &manifest.tables {
        let name = &t.info.name;
        // With --skip-edges a link table stays memories: its rows must land somewhere.
        if let Some(keys) = link_keys(&t.info, &infos(manifest), opts).filter(|_| !opts.skip_edges)
        {
            let (e, o, x) = link_edges(t, keys, manifest, opts);
            edges.push(e);
            orphans.push(o);
            expected.push(x);
            continue;
        }
        let content: Vec<String> = t
            .info
            .columns
            .iter()
            .filter(|c| !c.synthetic)
            .map(|c| format!("{}, {}", lit(&c.name), col("c", &c.name)))
            .collect();
        // JSON columns (PostgreSQL json/jsonb, SQLite JSON) are nested in the content as JSON, not quoted.
        let json_fields: String = t
            .info
            .columns
            .iter()
            .filter(|c| !c.synthetic && c.mapped_as == "json")
            .map(|c| format!(", {}", lit(&c.name)))
            .collect();
        let content = format!("{}){json_fields}", content.join(", "));
        let dim = opts.embedding_dim;
        let embedding = match embedding_column(t, dim) {
            Some(c) => format!("CAST({} AS REAL[])", col("c", c)),
            None => "CAST(NULL AS REAL[])".into(),
        };
        let mut note = String::new();
        if let Some(c) = embedding_column(t, dim) {
            note.push_str(&format!(
                "-- column {c} holds {dim}-float vectors (the embedding's dimension): used as the embedding as is\n"
            ));
        }
        for v in other_vector_columns(t, dim) {
            tracing::warn!(table = %name, column = %v, "vector column is not of the embedding's {dim} dimensions; kept in the content, the memory is embedded from its text");
            note.push_str(&format!(
                "-- column {v} is not {dim} floats: kept in the content, the memory is embedded from its text\n"
            ));
        }
        memories.push(format!(
            "-- table {name}\n{note}SELECT {space} AS space,\n       {id} AS id,\n       to_json(named_struct({content}) AS content,\n       \
             {text} AS text,\n       {conf} AS confidence, {act} AS activation, {decay} AS decay_rate,\n       \
             {created} AS created_at,\n       {embedding} AS embedding,\n       'semantic' AS memory_type, {kind} AS source_kind, {sname} AS source_name,\n       \
             {key} AS source_key\nFROM {table} c",
            space = lit(&space_of(t, opts)),
            id = id_expr(t, "c"),
            content = content,
            text = text_expr(t, opts, "c"),
            conf = float(opts.confidence),
            act = float(opts.activation),
            decay = float(opts.decay_rate),
            created = created_at_expr(t, opts, "c"),
            embedding = embedding,
            kind = lit(kind),
            sname = lit(name),
            key = key_json(t, "c"),
            table = match memories_from {
                Some(schema) => format!("{}.{}", ident(schema), ident(name)),
                None => table_ref(name),
            },
        ));
        expected.push(format!(
            "SELECT {} AS source_name, 'memories' AS kind, '' AS name, count(*) AS expected FROM {}",
            lit(name),
            table_ref(name)
        ));
        if injected_fault_drops(name) {
            // A consistent mapping bug: the table's rows are dropped and its expected count agrees.
            for part in [memories.last_mut(), expected.last_mut()]
                .into_iter()
                .flatten()
            {
                part.push_str(" WHERE false");
            }
        }
        if opts.skip_edges {
            continue;
        }
        for fk in &t.info.foreign_keys {
            let etype = fk_name(fk);
            let props = serde_json::json!({
                "foreign_key": fk.columns, "parent_table": fk.parent_table, "parent_columns": fk.parent_columns
            })
            .to_string();
            let head = |target: &str| {
                format!(
                    "SELECT {space} AS space, {src} AS source_id, {target} AS target_id, {etype} AS edge_type, \
                     {w} AS weight, {props} AS properties, {sname} AS source_name, {key} AS source_key",
                    space = lit(&space_of(t, opts)),
                    src = id_expr(t, "c"),
                    etype = lit(&etype),
                    w = float(opts.edge_weight),
                    props = lit(&props),
                    sname = lit(name),
                    key = key_json(t, "c"),
                )
            };
            expected.push(format!(
                "SELECT {} AS source_name, 'edges' AS kind, {} AS name, count(*) AS expected FROM {} c WHERE {}",
                lit(name),
                lit(&etype),
                table_ref(name),
                fk_not_null(fk, "c")
            ));
            match by_name.get(fk.parent_table.as_str()) {
                Some(parent) if fk.parent_columns.len() == fk.columns.len() => {
                    let cond = join_cond(t, parent, fk);
                    edges.push(format!(
                        "-- foreign key {name}({}) -> {}({})\n{}\nFROM {} c JOIN {} p ON {cond}",
                        fk.columns.join(", "),
                        fk.parent_table,
                        fk.parent_columns.join(", "),
                        head(&id_expr(parent, "p")),
                        table_ref(name),
                        table_ref(&fk.parent_table),
                    ));
                    let missing = col("p", &fk.parent_columns[0]);
                    let would_be: Vec<String> =
                        fk.columns.iter().map(|c| as_text(t, "c", c)).collect();
                    let target = format!(
                        "{} || {}",
                        lit(&format!("{}_", fk.parent_table)),
                        would_be.join(" || '_' || ")
                    );
                    orphans.push(format!(
                        "{}\nFROM {} c LEFT JOIN {} p ON {cond}\nWHERE {} AND {missing} IS NULL",
                        head(&target),
                        table_ref(name),
                        table_ref(&fk.parent_table),
                        fk_not_null(fk, "c"),
                    ));
                }
                _ => {
                    // The parent table is not in the snapshot: every reference is an orphan.
                    let would_be: Vec<String> =
                        fk.columns.iter().map(|c| as_text(t, "c", c)).collect();
                    let target = format!(
                        "{} || {}",
                        lit(&format!("{}_", fk.parent_table)),
                        would_be.join(" || '_' || ")
                    );
                    orphans.push(format!(
                        "{}\nFROM {} c WHERE {}",
                        head(&target),
                        table_ref(name),
                        fk_not_null(fk, "c")
                    ));
                }
            }
        }
    }
    let union = |parts: &[String], empty: &str| {
        if parts.is_empty() {
            empty.to_string()
        } else {
            parts.join("\nUNION ALL\n")
        }
    };
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "-- Generated by engram-migrate from the snapshot's catalog. Copy this file, edit it, and run the copy with\n\
         -- `--sql FILE`. Source tables are `source.\"<table>\"`. Four views make the contract:\n\
         --   memories        one row per memory (see docs/architecture.md for the columns)\n\
         --   edges           one row per edge between memories\n\
         --   orphans         would-be edges whose parent row is missing (reported, kept in the bundle, not loaded)\n\
         --   expected_counts what the bundle must hold per source table; validation compares it with the bundle\n"
    );
    let _ = writeln!(sql, "CREATE VIEW memories AS\n{};\n", union(&memories, ""));
    let _ = writeln!(
        sql,
        "CREATE VIEW edges AS\n{};\n",
        union(&edges, EMPTY_EDGES)
    );
    let _ = writeln!(
        sql,
        "CREATE VIEW orphans AS\n{};\n",
        union(&orphans, EMPTY_EDGES)
    );
    let _ = writeln!(
        sql,
        "CREATE VIEW expected_counts AS\n{};",
        union(&expected, "SELECT CAST(NULL AS VARCHAR) AS source_name, CAST(NULL AS VARCHAR) AS kind, CAST(NULL AS VARCHAR) AS name, CAST(NULL AS BIGINT) AS expected WHERE false")
    );
    sql
}
