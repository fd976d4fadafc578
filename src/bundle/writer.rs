//! Writes a bundle from the transform's staged output: memories batch by batch through a [`MemoryStage`] (the
//! embedding stage, which the writer knows only through this trait), edges and orphans copied as they are.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{BundleManifest, EmbeddingInfo, PartSet, SpaceEntry, BUNDLE_FILE, FORMAT};
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
}

pub struct WriteResult {
    pub manifest: BundleManifest,
    pub resumed_parts: usize,
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
    if let Some(h) = opts
        .hashes_dir
        .as_ref()
        .filter(|_| checkpoint.state.parts.is_empty())
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
    // The bundle keeps the stage's vectors at their own dimension (recorded in bundle.json).
    let dim = stage.embedding_info().dimension;

    let total = summary.memory_rows();
    let pb = crate::progress::bar(total, "embed + write", "memories");
    let mut spaces = vec![];
    let all_spaces: std::collections::BTreeSet<&String> = summary
        .memories
        .keys()
        .chain(summary.edges.keys())
        .collect();
    for space in all_spaces {
        // Memories: one bundle part per staged part, embedded batch by batch.
        let mut mem_files = vec![];
        for part in summary.memories.get(space).into_iter().flatten() {
            let rel = format!("spaces/{space}/memories/{}", part.file);
            if let Some(done) = checkpoint.state.parts.get(&rel) {
                if partial.join(&rel).is_file() {
                    pb.inc(part.rows);
                    mem_files.push(done.clone());
                    continue;
                }
            }
            let index: usize = part
                .file
                .trim_start_matches("part-")
                .trim_end_matches(".parquet")
                .parse()
                .unwrap_or(0);
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
            // The stage first (the embedding cache): a part the checkpoint records has its vectors persisted.
            stage.flush()?;
            checkpoint.state.parts.insert(rel, written.clone());
            checkpoint.save(&opts.checkpoint_file)?;
            mem_files.push(written);
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
        spaces.push(SpaceEntry {
            label: summary.labels.get(space).cloned(),
            space: space.clone(),
            memories: PartSet::from_files(mem_files)?,
            edges: PartSet::from_files(edge_files)?,
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
    let manifest = BundleManifest {
        format: FORMAT.into(),
        run_id: opts.run_id.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: opts.source.clone(),
        mapping: opts.mapping.clone(),
        transform_key: summary.key.clone(),
        embedding: stage.embedding_info(),
        spaces,
        orphans,
        totals,
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
    })
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
