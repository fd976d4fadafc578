//! Writes a bundle from the transform's staged output: memories batch by batch through a [`MemoryStage`] (the
//! embedding stage, which the writer knows only through this trait), edges and orphans copied as they are.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{
    BundleManifest, EmbeddingInfo, PartSet, SpaceEntry, BUNDLE_FILE, FORMAT, FORMAT_LAYERED,
};
use crate::error::{Error, Result};
use crate::parquet_io::{self, part_name, PartFile, PartLimits, RollingWriter};
use crate::schema::memory_schema;
use crate::transform::TransformSummary;
use crate::workdir::{self, Checkpoint, RunKey};

/// Memories embedded and encoded at a time, at most. A batch of memories with 768-float vectors is 3 KB a row
/// in each of the several forms it passes through (texts, vectors, Arrow list, Parquet levels and pages): at
/// 8,192 rows a load held ~630 MB, at 2,048 ~420 MB, and ran faster (2026-12-07, 1.1M memories).
pub const EMBED_BATCH_ROWS: usize = 2048;

/// What happens to each batch of staged memories on its way into the bundle: the embedding stage.
pub trait MemoryStage {
    /// The batch as it goes into the bundle (same schema, embedding column filled).
    fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch>;
    /// Makes what `apply` produced durable (the persistent embedding cache) before a part is checkpointed.
    fn flush(&mut self) -> Result<()>;
    /// How the vectors were made, for `bundle.json`.
    fn embedding_info(&self) -> EmbeddingInfo;
    /// Rows per batch this stage wants, when more than the writer's default (a cluster's embedding).
    fn batch_rows(&self) -> Option<usize> {
        None
    }
}

/// Parts of the bundle already written, keyed by their path inside the bundle. Saved after every part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleParts {
    pub parts: BTreeMap<String, PartFile>,
}

pub struct WriteOptions {
    pub batch_size: usize,
    pub run_id: String,
    pub source: Value,
    pub mapping: String,
    pub overwrite: bool,
    pub checkpoint_file: std::path::PathBuf,
    /// Ties the checkpoint to one staged transform output, embedding and bundle.
    pub run_key: RunKey,
    /// Where each memory part's row hashes go (`<dir>/<space>/<part checksum>.parquet`: space, id, hash), the
    /// hashes its checksum sums: an incremental run reads them instead of hashing the bundle again.
    pub hashes_dir: Option<std::path::PathBuf>,
    /// An incremental run's layer: the bundle at `target` is extended (its parts kept, hard-linked) instead of
    /// replaced. None: a bundle of its own.
    pub base: Option<Base>,
}

/// The bundle an incremental run extends, and what its layer removes from it.
pub struct Base {
    pub manifest: BundleManifest,
    /// Each live memory (space, id) the layer removes (deleted or changed in the source; a changed one comes back
    /// in the layer), with its row hash: the space's checksum no longer sums it.
    pub removed: BTreeMap<(String, String), u128>,
    /// The key a full run of the same input records (the layer's staged output has a key of its own): the
    /// extended bundle is the same bundle, so a resumed run recognises it as complete.
    pub transform_key: String,
}

pub struct WriteResult {
    pub manifest: BundleManifest,
    pub resumed_parts: usize,
    /// With a base: the row hash of every memory (space, id) the layer wrote.
    pub layer_hashes: std::collections::HashMap<(String, String), u128>,
}

/// Builds the bundle from staged transform output, every memory batch through `stage` on its way (the
/// embedding stage). Resumes from `opts.checkpoint_file`.
pub fn write(
    transform_dir: &Path,
    summary: &TransformSummary,
    target: &Path,
    stage: &mut dyn MemoryStage,
    opts: &WriteOptions,
) -> Result<WriteResult> {
    let target = &crate::sink::bundle_path(target);
    if target.exists() && !opts.overwrite {
        return Err(Error::target_err(
            target.display().to_string(),
            "already exists; pass --overwrite to replace it (the old bundle is kept until the new one is complete)",
        ));
    }
    let partial = workdir::bundle_partial(target);
    let mut checkpoint: Checkpoint<BundleParts> =
        Checkpoint::load_or_new(&opts.checkpoint_file, &opts.run_key)?;
    if checkpoint.state.parts.is_empty() && partial.exists() {
        fs::remove_dir_all(&partial).map_err(Error::io("remove", &partial))?;
    }
    // A layer keeps the base's records: its parts stay in the bundle.
    if let Some(h) = opts
        .hashes_dir
        .as_ref()
        .filter(|_| checkpoint.state.parts.is_empty() && opts.base.is_none())
    {
        if h.exists() {
            fs::remove_dir_all(h).map_err(Error::io("remove", h))?;
        }
    }
    fs::create_dir_all(&partial).map_err(|e| {
        Error::target_err(
            partial.display().to_string(),
            format!("cannot create the bundle directory: {e}; check the path and permissions"),
        )
    })?;
    let resumed_parts = checkpoint.state.parts.len();
    let layer = opts
        .base
        .as_ref()
        .map(|b| b.manifest.top_layer() + 1)
        .unwrap_or(0);
    if let Some(base) = &opts.base {
        link_base(target, &partial, &base.manifest)?;
    }
    let mut layer_hashes = std::collections::HashMap::new();
    // The bundle keeps the stage's vectors at their own dimension (recorded in bundle.json).
    let dim = stage.embedding_info().dimension;

    let total = summary.memory_rows();
    let pb = crate::progress::bar(total, "embed + write", "memories");
    let mut spaces = vec![];
    let base_spaces = opts
        .base
        .iter()
        .flat_map(|b| b.manifest.spaces.iter().map(|s| &s.space));
    let all_spaces: std::collections::BTreeSet<&String> = summary
        .memories
        .keys()
        .chain(summary.edges.keys())
        .chain(base_spaces)
        .collect();
    for space in all_spaces {
        let base_set = opts
            .base
            .as_ref()
            .and_then(|b| b.manifest.spaces.iter().find(|s| &s.space == space))
            .map(|s| &s.memories);
        // A layer's parts are numbered after the base's, so every part keeps its name.
        let first_index = base_set
            .and_then(|set| set.files.iter().map(|f| part_index(&f.file) + 1).max())
            .unwrap_or(0);
        // Memories: the base's parts as they are, then one part per staged part, embedded batch by batch.
        let mut mem_files: Vec<PartFile> = base_set.map(|s| s.files.clone()).unwrap_or_default();
        for part in summary.memories.get(space).into_iter().flatten() {
            let index = first_index + part_index(&part.file);
            let rel = format!("spaces/{space}/memories/{}", part_name(index));
            if let Some(done) = checkpoint.state.parts.get(&rel) {
                if partial.join(&rel).is_file() {
                    pb.inc(part.rows);
                    if opts.base.is_some() {
                        layer_hashes.extend(recorded_hashes(opts, space, done)?);
                    }
                    mem_files.push(done.clone());
                    continue;
                }
            }
            let dir = partial.join("spaces").join(space).join("memories");
            let limits = PartLimits {
                max_file_bytes: u64::MAX,
                max_file_rows: u64::MAX,
                row_group_rows: 8192,
            };
            let w = RollingWriter::new(&dir, memory_schema(dim), limits, index)?;
            let src = transform_dir.join("memories").join(space).join(&part.file);
            // Embedding here, Parquet encoding (and its checksum) on a thread of its own: the two overlap, a
            // batch or two apart, instead of taking turns on one core.
            let written = std::thread::scope(|scope| -> Result<PartFile> {
                // `None` is the end of the part; a channel closed without it (an error upstream) abandons the
                // part: the writer is dropped unfinished and nothing is committed.
                let (tx, rx) = std::sync::mpsc::sync_channel::<Option<RecordBatch>>(2);
                let hashes_dir = opts.hashes_dir.as_ref().map(|d| d.join(space));
                let encoder = scope.spawn(move || -> Result<Option<PartFile>> {
                    let mut w = w;
                    let mut hashes = std::collections::HashMap::new();
                    for b in rx {
                        match b {
                            Some(b) => {
                                let (_, h) = w.write_hashed(&b)?;
                                if hashes_dir.is_some() {
                                    record_hashes(&mut hashes, space, &b, h)?;
                                }
                            }
                            None => {
                                let part = w.finish(true)?;
                                if let (Some(dir), Some(part)) = (&hashes_dir, &part) {
                                    crate::delta::save_hashes(
                                        &dir.join(format!("{}.parquet", part.checksum)),
                                        &hashes,
                                    )?;
                                }
                                return Ok(part);
                            }
                        }
                    }
                    Ok(None)
                });
                let mut sent: Result<()> = Ok(());
                for b in parquet_io::open_reader(
                    &src,
                    opts.batch_size
                        .min(EMBED_BATCH_ROWS)
                        .max(stage.batch_rows().unwrap_or(0)),
                )? {
                    let b =
                        b.map_err(|e| Error::Internal(format!("reading {}: {e}", src.display())));
                    let b = match b.and_then(|b| stage.apply(&b)) {
                        Ok(b) => b,
                        Err(e) => {
                            sent = Err(e);
                            break;
                        }
                    };
                    pb.inc(b.num_rows() as u64);
                    if tx.send(Some(b)).is_err() {
                        break; // the encoder stopped: its error is the one to report
                    }
                }
                if sent.is_ok() {
                    let _ = tx.send(None);
                }
                drop(tx);
                let encoded = match encoder.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                sent?;
                encoded?.ok_or_else(|| Error::Internal("bundle part not written".into()))
            })?;
            debug_assert_eq!(written.file, part_name(index));
            let written = PartFile { layer, ..written };
            if opts.base.is_some() {
                layer_hashes.extend(recorded_hashes(opts, space, &written)?);
            }
            // The stage first (the embedding cache): a part the checkpoint records has its vectors persisted.
            stage.flush()?;
            checkpoint.state.parts.insert(rel, written.clone());
            checkpoint.save(&opts.checkpoint_file)?;
            mem_files.push(written);
            // A part's batches were allocated on one thread and freed on the other (see `return_freed_memory`).
            crate::engine::memory::return_freed_memory();
        }
        // Edges carry no embedding: the staged parts are copied as they are.
        let mut edge_files = vec![];
        for part in summary.edges.get(space).into_iter().flatten() {
            let rel = format!("spaces/{space}/edges/{}", part.file);
            copy_part(
                &transform_dir.join("edges").join(space).join(&part.file),
                &partial.join(&rel),
            )?;
            edge_files.push(part.clone());
        }
        let memories = match (&opts.base, base_set) {
            (Some(base), Some(set)) => {
                layered_set(set, mem_files, removed_of(&base.removed, space))?
            }
            _ => PartSet::from_files(mem_files)?,
        };
        let edges = PartSet::from_files(edge_files)?;
        if opts.base.is_some() && memories.rows == 0 && edges.rows == 0 {
            // Every memory of the space removed and no edge left: a full run of this input has no such space.
            let dir = partial.join("spaces").join(space);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
            }
            continue;
        }
        spaces.push(SpaceEntry {
            label: summary.labels.get(space).cloned().or_else(|| {
                let base = opts.base.as_ref()?;
                let s = base.manifest.spaces.iter().find(|s| &s.space == space)?;
                s.label.clone()
            }),
            space: space.clone(),
            memories,
            edges,
        });
    }
    let mut orphan_files = vec![];
    for part in &summary.orphans {
        copy_part(
            &transform_dir.join("orphans").join(&part.file),
            &partial.join("orphans").join(&part.file),
        )?;
        orphan_files.push(part.clone());
    }
    pb.finish_and_clear();

    let orphans = PartSet::from_files(orphan_files)?;
    let mut totals = BTreeMap::new();
    totals.insert(
        "memories".to_string(),
        spaces.iter().map(|s| s.memories.rows).sum(),
    );
    totals.insert(
        "edges".to_string(),
        spaces.iter().map(|s| s.edges.rows).sum(),
    );
    totals.insert("orphans".to_string(), orphans.rows);
    totals.insert("spaces".to_string(), spaces.len() as u64);
    let mut removed = vec![];
    if let Some(base) = &opts.base {
        removed = base.manifest.removed.clone();
        removed.push(write_removed(&partial, layer, &base.removed)?);
    }
    let manifest = BundleManifest {
        format: if removed.is_empty() {
            FORMAT.into()
        } else {
            FORMAT_LAYERED.into()
        },
        removed,
        run_id: opts.run_id.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: opts.source.clone(),
        mapping: opts.mapping.clone(),
        transform_key: opts
            .base
            .as_ref()
            .map(|b| b.transform_key.clone())
            .unwrap_or_else(|| summary.key.clone()),
        embedding: stage.embedding_info(),
        spaces,
        orphans,
        totals,
        checksum_scheme: crate::checksum::SCHEME,
    };
    parquet_io::write_atomic(
        &partial.join(BUNDLE_FILE),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    commit(&partial, target)?;
    let _ = fs::remove_file(&opts.checkpoint_file);
    Ok(WriteResult {
        manifest,
        resumed_parts,
        layer_hashes,
    })
}

fn part_index(file: &str) -> usize {
    file.trim_start_matches("part-")
        .trim_end_matches(".parquet")
        .parse()
        .unwrap_or(0)
}

/// The base bundle's memory parts and removal files in the partial bundle, as hard links (the same bytes, no
/// copy: the vectors of a million memories are gigabytes); a copy where the file system has no links.
fn link_base(target: &Path, partial: &Path, base: &BundleManifest) -> Result<()> {
    let mut rels: Vec<String> = base
        .spaces
        .iter()
        .flat_map(|s| {
            s.memories
                .files
                .iter()
                .map(move |f| format!("spaces/{}/memories/{}", s.space, f.file))
        })
        .collect();
    rels.extend(base.removed.iter().map(|r| r.file.clone()));
    for rel in rels {
        let (from, to) = (target.join(&rel), partial.join(&rel));
        if to.is_file() {
            continue; // a resumed layer linked it before
        }
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        if fs::hard_link(&from, &to).is_err() {
            copy_part(&from, &to)?;
        }
    }
    Ok(())
}

/// The row hashes of the memories of `space` that `removed` lists.
fn removed_of<'a>(
    removed: &'a BTreeMap<(String, String), u128>,
    space: &'a str,
) -> impl Iterator<Item = u128> + 'a {
    removed
        .iter()
        .filter(move |((s, _), _)| s == space)
        .map(|(_, h)| *h)
}

/// A space's memories after a layer: the base's parts and the layer's, counted and checksummed as their live
/// rows (the base's sum without the removed rows' hashes, plus the layer's parts).
fn layered_set(
    base: &PartSet,
    files: Vec<PartFile>,
    removed: impl Iterator<Item = u128>,
) -> Result<PartSet> {
    let mut sum =
        crate::checksum::Checksum::from_hex(base.rows, &base.checksum).ok_or_else(|| {
            Error::Internal(format!(
                "bad checksum {:?} in the base bundle",
                base.checksum
            ))
        })?;
    for h in removed {
        sum.remove_row(h);
    }
    let base_files: std::collections::BTreeSet<&str> =
        base.files.iter().map(|f| f.file.as_str()).collect();
    for f in files
        .iter()
        .filter(|f| !base_files.contains(f.file.as_str()))
    {
        sum.combine(f.checksum()?);
    }
    Ok(PartSet {
        rows: sum.rows,
        checksum: sum.to_hex(),
        files,
    })
}

/// `removed/layer-NNNNN.parquet`: the (space, id) a layer removes.
fn write_removed(
    partial: &Path,
    layer: u32,
    removed: &BTreeMap<(String, String), u128>,
) -> Result<super::format::RemovedSet> {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    let file = format!("removed/layer-{layer:05}.parquet");
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new(crate::schema::memory::SPACE, DataType::Utf8, false),
        Field::new(crate::schema::memory::ID, DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(
                removed.keys().map(|(s, _)| s.as_str()),
            )),
            std::sync::Arc::new(StringArray::from_iter_values(
                removed.keys().map(|(_, i)| i.as_str()),
            )),
        ],
    )?;
    let path = partial.join(&file);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    parquet_io::write_batch_atomic(&path, &batch)?;
    Ok(super::format::RemovedSet {
        layer,
        file,
        rows: removed.len() as u64,
    })
}

/// The row hashes the writer recorded for one of its parts (a layer needs them: see `Base`).
fn recorded_hashes(
    opts: &WriteOptions,
    space: &str,
    part: &PartFile,
) -> Result<std::collections::HashMap<(String, String), u128>> {
    let dir = opts.hashes_dir.as_ref().ok_or_else(|| {
        Error::Internal("an incremental layer written without its hash records".into())
    })?;
    crate::delta::load_hashes(&dir.join(space).join(format!("{}.parquet", part.checksum)))
}
fn copy_part(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    fs::copy(from, to).map_err(Error::io("copy", from))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("sync", to))?;
    Ok(())
}

/// Adds a written batch's (space, id) -> row hash to `into`.
fn record_hashes(
    into: &mut std::collections::HashMap<(String, String), u128>,
    space: &str,
    batch: &RecordBatch,
    hashes: Vec<u128>,
) -> Result<()> {
    use arrow::array::AsArray;
    let ids = batch
        .column_by_name(crate::schema::memory::ID)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal("a bundle memory batch without a text id".into()))?;
    for (i, h) in hashes.into_iter().enumerate() {
        into.insert((space.to_string(), ids.value(i).to_string()), h);
    }
    Ok(())
}

/// Moves the finished bundle into place. An existing target is moved aside first and removed only after the
/// new one is in place, so at every instant `target` is either the old complete bundle or the new one.
fn commit(partial: &Path, target: &Path) -> Result<()> {
    let old = workdir::bundle_old(target);
    if target.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(Error::io("remove", &old))?;
        }
        fs::rename(target, &old).map_err(Error::io("move aside", target))?;
    }
    fs::rename(partial, target).map_err(Error::io("rename into place", target))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        parquet_io::sync_dir(parent)?;
    }
    if old.exists() {
        fs::remove_dir_all(&old).map_err(Error::io("remove", &old))?;
    }
    Ok(())
}
