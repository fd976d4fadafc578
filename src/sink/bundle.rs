//! The Engram bundle: the embedded default target, and the full truth of a migration (edges, decay rates,
//! activation and provenance that a live Engram server cannot store).
//!
//! Layout: `bundle.json`, `spaces/<space>/memories/part-NNNNN.parquet`, `spaces/<space>/edges/part-NNNNN.parquet`,
//! `orphans/part-NNNNN.parquet`. It is built in `<target>.partial/`; every part is committed by rename and then
//! recorded in the checkpoint, so a killed load resumes with the next part; the finished bundle is renamed
//! to `<target>` in one step. A target that exists is never half-replaced.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::kernels::zip::zip;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checksum::Checksum;
use crate::embed::{EmbedStats, Embedder};
use crate::error::{Error, Result};
use crate::parquet_io::{self, part_name, PartFile, PartLimits, RollingWriter};
use crate::schema::{memory, EMBEDDING_DIM, MEMORY_SCHEMA};
use crate::transform::TransformSummary;

pub const BUNDLE_FILE: &str = "bundle.json";
pub const FORMAT: &str = "engram-bundle/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartSet {
    pub rows: u64,
    pub checksum: String,
    pub files: Vec<PartFile>,
}

impl PartSet {
    pub fn from_files(files: Vec<PartFile>) -> Result<PartSet> {
        let mut sum = Checksum::default();
        for f in &files {
            sum.combine(f.checksum()?);
        }
        Ok(PartSet {
            rows: sum.rows,
            checksum: sum.to_hex(),
            files,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceEntry {
    pub space: String,
    pub memories: PartSet,
    pub edges: PartSet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingInfo {
    pub provider: String,
    pub dimension: usize,
    pub native_dimension: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: String,
    pub run_id: String,
    pub created_at: String,
    pub source: Value,
    pub mapping: String,
    /// Identity of the transform input (mapping SQL + snapshot checksums).
    pub transform_key: String,
    pub embedding: EmbeddingInfo,
    pub spaces: Vec<SpaceEntry>,
    pub orphans: PartSet,
    pub totals: BTreeMap<String, u64>,
}

impl BundleManifest {
    pub fn load(dir: &Path) -> Result<BundleManifest> {
        let p = dir.join(BUNDLE_FILE);
        let bytes = fs::read(&p).map_err(|e| {
            Error::target_err(
                dir.display().to_string(),
                format!("no readable {BUNDLE_FILE} ({e}); is this an Engram bundle?"),
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::target_err(
                p.display().to_string(),
                format!("not a bundle manifest: {e}"),
            )
        })
    }

    pub fn memory_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.spaces
            .iter()
            .flat_map(|s| {
                s.memories.files.iter().map(move |f| {
                    dir.join("spaces")
                        .join(&s.space)
                        .join("memories")
                        .join(&f.file)
                })
            })
            .collect()
    }

    pub fn edge_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.spaces
            .iter()
            .flat_map(|s| {
                s.edges.files.iter().map(move |f| {
                    dir.join("spaces")
                        .join(&s.space)
                        .join("edges")
                        .join(&f.file)
                })
            })
            .collect()
    }

    pub fn orphan_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.orphans
            .files
            .iter()
            .map(|f| dir.join("orphans").join(&f.file))
            .collect()
    }
}

/// Parts of the bundle already written, keyed by their path inside the bundle. Saved after every part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Ties the checkpoint to one staged transform output and run configuration.
    pub run_key: String,
    pub parts: BTreeMap<String, PartFile>,
}

impl Checkpoint {
    pub fn load_or_new(path: &Path, run_key: &str) -> Result<Checkpoint> {
        if let Ok(bytes) = fs::read(path) {
            let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                Error::usage(format!(
                    "checkpoint {} is unreadable ({e}); delete it to start the load over",
                    path.display()
                ))
            })?;
            if c.run_key == run_key {
                return Ok(c);
            }
            tracing::info!(checkpoint = %path.display(), "checkpoint belongs to other input or settings; starting the load over");
        }
        Ok(Checkpoint {
            run_key: run_key.to_string(),
            parts: BTreeMap::new(),
        })
    }

    fn save(&self, path: &Path) -> Result<()> {
        parquet_io::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

pub struct LoadOptions {
    pub batch_size: usize,
    pub run_id: String,
    pub source: Value,
    pub mapping: String,
    pub overwrite: bool,
    pub checkpoint_file: PathBuf,
    pub run_key: String,
}

pub struct LoadResult {
    pub manifest: BundleManifest,
    pub embed: EmbedStats,
    pub resumed_parts: usize,
}

/// The text to embed for each row: `text` where present and non-empty, else the JSON content (never empty).
fn texts_to_embed(batch: &RecordBatch) -> Result<StringArray> {
    let text = batch
        .column_by_name(memory::TEXT)
        .map(|c| c.as_string::<i32>().clone());
    let content = batch
        .column_by_name(memory::CONTENT)
        .ok_or_else(|| Error::Internal("memories without content".into()))?
        .as_string::<i32>();
    Ok((0..batch.num_rows())
        .map(|i| match &text {
            Some(t) if !t.is_null(i) && !t.value(i).is_empty() => Some(t.value(i)),
            _ => Some(content.value(i)),
        })
        .collect())
}

/// Fills the embedding column where it is NULL (a mapping may bring vectors of its own).
pub fn embed_batch(embedder: &mut Embedder, batch: &RecordBatch) -> Result<RecordBatch> {
    let idx = MEMORY_SCHEMA.index_of(memory::EMBEDDING)?;
    let existing = batch.column(idx);
    if existing.null_count() == 0 && !existing.is_empty() {
        return Ok(batch.clone());
    }
    let texts = texts_to_embed(batch)?;
    let fresh: ArrayRef = std::sync::Arc::new(embedder.embed_column(&texts)?);
    let merged = if existing.null_count() == existing.len() {
        fresh
    } else {
        let keep: BooleanArray = (0..existing.len())
            .map(|i| Some(existing.is_valid(i)))
            .collect();
        zip(&keep, existing, &fresh)?
    };
    let mut cols = batch.columns().to_vec();
    cols[idx] = merged;
    Ok(RecordBatch::try_new(MEMORY_SCHEMA.clone(), cols)?)
}

/// Builds the bundle from staged transform output. Resumes from `opts.checkpoint_file`.
pub fn load(
    transform_dir: &Path,
    summary: &TransformSummary,
    target: &Path,
    embedder: &mut Embedder,
    opts: &LoadOptions,
) -> Result<LoadResult> {
    if target.exists() && !opts.overwrite {
        return Err(Error::target_err(
            target.display().to_string(),
            "already exists; pass --overwrite to replace it (the old bundle is kept until the new one is complete)",
        ));
    }
    let partial = PathBuf::from(format!("{}.partial", target.display()));
    let mut checkpoint = Checkpoint::load_or_new(&opts.checkpoint_file, &opts.run_key)?;
    if checkpoint.parts.is_empty() && partial.exists() {
        fs::remove_dir_all(&partial).map_err(Error::io("remove", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(|e| {
        Error::target_err(
            partial.display().to_string(),
            format!("cannot create the bundle directory: {e}; check the path and permissions"),
        )
    })?;
    let resumed_parts = checkpoint.parts.len();

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
            if let Some(done) = checkpoint.parts.get(&rel) {
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
            let mut w = RollingWriter::new(&dir, MEMORY_SCHEMA.clone(), limits, index)?;
            let src = transform_dir.join("memories").join(space).join(&part.file);
            for b in parquet_io::open_reader(&src, opts.batch_size)? {
                let b =
                    b.map_err(|e| Error::Internal(format!("reading {}: {e}", src.display())))?;
                let b = embed_batch(embedder, &b)?;
                pb.inc(b.num_rows() as u64);
                w.write(&b)?;
            }
            let written = w
                .finish(true)?
                .ok_or_else(|| Error::Internal("bundle part not written".into()))?;
            debug_assert_eq!(written.file, part_name(index));
            checkpoint.parts.insert(rel, written.clone());
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
        embedding: EmbeddingInfo {
            provider: embedder.provider_name(),
            dimension: EMBEDDING_DIM,
            native_dimension: embedder.native_dimension(),
        },
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
    Ok(LoadResult {
        manifest,
        embed: embedder.stats(),
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

/// Moves the finished bundle into place. An existing target is moved aside first and removed only after the
/// new one is in place, so at every instant `target` is either the old complete bundle or the new one.
fn commit(partial: &Path, target: &Path) -> Result<()> {
    let old = PathBuf::from(format!("{}.old", target.display()));
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
