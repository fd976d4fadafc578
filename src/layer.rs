//! An incremental run's layer: instead of rewriting the bundle, the run adds on top of it the memories of the
//! rows that were added or changed, and removes those of the rows that were deleted or changed (see
//! `bundle::Removed`). The vectors of the unchanged memories stay where they are: neither read back nor
//! written again, which is most of a bundle's bytes.
//!
//! This holds for the generated mapping of a table source, where a memory depends on its own row alone (the
//! text columns, chosen from the whole table, are part of the mapping SQL, which must not have changed). Edges
//! and orphans also depend on whether a parent row exists, so they are mapped again from the whole snapshot (they
//! carry no vectors). Anything else (a mapping of the user's, a schema that drifted, a keyless table that
//! changed, another embedding, a bundle already mostly removals) rewrites the bundle as a full run does, and
//! says why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::bundle::{writer::Base, BundleManifest};
use crate::delta::{self, Delta};
use crate::error::{Error, Result};
use crate::snapshot::Manifest;
use crate::transform::generic::{self, MappingOptions};
use crate::transform::{self, ChangedRows};

/// A layer may add removals until they are this share of the bundle's live memories; past it the run rewrites
/// the bundle (a compaction), so readers never filter more than they keep.
const MAX_REMOVED_SHARE: f64 = 0.25;
/// Layers at most; the next run rewrites the bundle.
const MAX_LAYERS: u32 = 64;

/// What an incremental run needs to add a layer.
pub struct LayerInput {
    /// The mapping with its `memories` view over `changed."<table>"`.
    pub sql: String,
    /// The key of the layer's staged output (not the full transform's: the staged memories are only the changed).
    pub key: String,
    pub changed: ChangedRows,
    pub base: Base,
    /// The changed rows mapped into memories.
    pub rows: u64,
}

pub enum Decision {
    Layer(Box<LayerInput>),
    /// The bundle already is this input's (nothing changed, or a killed run committed its layer): the orphans
    /// it holds, and how many layers it has (all validated by the runs that wrote them).
    Complete {
        orphans: u64,
        layers: u32,
    },
    /// The bundle is rewritten: why.
    Full(String),
}

/// What `prepare` decides from.
pub struct Inputs<'a> {
    pub bundle_dir: &'a Path,
    /// Where the bundle writer recorded each memory part's row hashes.
    pub recorded: &'a Path,
    /// The mapping SQL the last run wrote (None: it had none, or a mapping file of the user's).
    pub previous_sql: Option<&'a str>,
    pub sql: &'a str,
    /// This run's full transform key.
    pub full_key: &'a str,
    pub old_dir: &'a Path,
    pub old: &'a Manifest,
    pub new_dir: &'a Path,
    pub new: &'a Manifest,
    pub delta: &'a Delta,
    pub mapping: &'a MappingOptions,
    pub embedding_dim: usize,
    pub provider: &'a str,
    pub batch_rows: usize,
}

/// Whether this run can add a layer, and if so its input: the changed rows to map and the memories to remove
/// (with their row hashes, which the space's checksum no longer sums).
pub async fn prepare(i: Inputs<'_>) -> Result<Decision> {
    let started = std::time::Instant::now();
    let full = |why: &str| Ok(Decision::Full(why.to_string()));
    let Ok(base) = BundleManifest::load(i.bundle_dir) else {
        return full("no readable earlier bundle");
    };
    if base.transform_key == i.full_key && base.embedding.provider == i.provider {
        return Ok(Decision::Complete {
            orphans: base.orphans.rows,
            layers: base.top_layer() + 1,
        });
    }
    if i.previous_sql != Some(i.sql) {
        return full(
            "the generated mapping differs from the last run's (schema, options or text columns)",
        );
    }
    // The earlier bundle must be exactly this mapping over the old snapshot.
    if base.transform_key != transform::transform_key(i.sql, i.old, i.embedding_dim) {
        return full("the earlier bundle is not this mapping over the last run's snapshot");
    }
    if base.embedding.provider != i.provider {
        return full("the embedding provider changed");
    }
    if base.embedding.existing_vectors > 0 {
        // The bundle counts the memories whose vector came from the source; which of them a layer removes is
        // not recorded, so the count would drift.
        return full("the source has vectors of its own");
    }
    if base.checksum_scheme != crate::checksum::SCHEME {
        // A layer's checksums would be summed with the earlier layers' under another scheme.
        return full("the earlier bundle's checksums are of an older scheme");
    }
    if base.top_layer() >= MAX_LAYERS {
        return full("the bundle has the most layers it may have (compaction)");
    }
    let links: HashSet<String> = if i.mapping.skip_edges {
        HashSet::new()
    } else {
        generic::link_tables(i.new, i.mapping).into_iter().collect()
    };
    let mut changed: ChangedRows = BTreeMap::new();
    let mut gone: HashMap<String, HashSet<String>> = HashMap::new();
    let mut rows = 0u64;
    for t in &i.new.tables {
        let name = &t.info.name;
        let Some(d) = i.delta.tables.iter().find(|d| &d.table == name) else {
            return full(&format!("no row delta for table {name}"));
        };
        let memories = !links.contains(name);
        let Some(old) = i.old.table(name) else {
            return full(&format!("table {name} is new"));
        };
        let keyless = delta::own_key(t).is_empty();
        // A keyless table's memories are keyed by a row number (a SQLite rowid, a PostgreSQL ctid) that can
        // change while every row's content stays (VACUUM, an UPDATE that writes the same values): its rows
        // compare equal as a multiset, but its ids are the staged table's, whose checksum covers the number.
        let unchanged = if keyless {
            d.is_unchanged() && old.checksum == t.checksum
        } else {
            d.is_unchanged()
        };
        if unchanged || !memories {
            changed.insert(name.clone(), vec![]);
            continue;
        }
        let (batches, expected, keys) = if keyless {
            // Its memories are keyed by a row number, not by content: the whole table is mapped again.
            if t.info.primary_key.is_empty() || old.info.primary_key != t.info.primary_key {
                return full(&format!("table {name} changed and has no key"));
            }
            let key = &old.info.primary_key;
            (
                delta::all_rows(i.new_dir, t, None, i.batch_rows)?,
                t.rows,
                delta::all_rows(i.old_dir, old, Some(key), i.batch_rows)?,
            )
        } else {
            let key = delta::own_key(old);
            (
                delta::rows_with_keys(i.new_dir, i.new, t, &d.upserted, None, i.batch_rows)?,
                d.added + d.changed,
                delta::rows_with_keys(i.old_dir, i.old, old, &d.gone, Some(&key), i.batch_rows)?,
            )
        };
        let n: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if n != expected {
            return Err(Error::Internal(format!(
                "table {name}: {n} changed rows found again, the delta counted {expected}"
            )));
        }
        rows += n;
        changed.insert(name.clone(), batches);
        for (space, id) in memory_ids(old, i.mapping, keys).await? {
            gone.entry(space).or_default().insert(id);
        }
    }
    let wanted: u64 = gone.values().map(|s| s.len() as u64).sum();
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "layer: changed rows and gone ids read"
    );
    let removed = delta::hashes_of(i.bundle_dir, &base, i.recorded, &gone, i.batch_rows)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "layer: hashes of the removed memories read"
    );
    let live = base.totals.get("memories").copied().unwrap_or(0);
    let removed_before: u64 = base.removed.iter().map(|r| r.rows).sum();
    if (removed_before + removed.len() as u64) as f64 > MAX_REMOVED_SHARE * live.max(1) as f64 {
        return full("removals would be over a quarter of the bundle (compaction)");
    }
    tracing::info!(
        rows,
        removed = removed.len(),
        wanted,
        "incremental layer: mapping the changed rows, removing their earlier memories"
    );
    let sql = generic::generate_in(i.new, i.mapping, Some(generic::CHANGED_SCHEMA));
    let key = format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(
            format!("layer\n{}\n{}", i.full_key, base.transform_key).as_bytes()
        )
    );
    Ok(Decision::Layer(Box::new(LayerInput {
        sql,
        key,
        changed,
        rows,
        base: Base {
            manifest: base,
            removed,
            transform_key: i.full_key.to_string(),
        },
    })))
}

/// The (space, id) of the memories the generated mapping made of these rows of `table` (its key columns only:
/// an id is made of the key alone).
async fn memory_ids(
    table: &crate::snapshot::TableEntry,
    mapping: &MappingOptions,
    keys: Vec<arrow::array::RecordBatch>,
) -> Result<Vec<(String, String)>> {
    use arrow::array::AsArray;
    let Some(schema) = keys.first().map(|b| b.schema()) else {
        return Ok(vec![]);
    };
    let ctx = datafusion::prelude::SessionContext::new_with_config(crate::engine::session_config(
        1, 8192,
    ));
    crate::transform::udf::register_all(&ctx);
    let t = datafusion::datasource::MemTable::try_new(schema, vec![keys])
        .map_err(|e| Error::Internal(format!("keys of {}: {e}", table.info.name)))?;
    ctx.register_table("gone", std::sync::Arc::new(t))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let sql = format!(
        "SELECT CAST({} AS VARCHAR) AS space, CAST({} AS VARCHAR) AS id FROM gone c",
        generic::lit(&generic::space_of(table, mapping)),
        generic::id_expr(table, "c")
    );
    let mut out = vec![];
    for b in transform::collect(&ctx, &sql, "the ids of deleted and changed rows").await? {
        let (s, id) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for r in 0..b.num_rows() {
            out.push((s.value(r).to_string(), id.value(r).to_string()));
        }
    }
    Ok(out)
}
