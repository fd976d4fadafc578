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

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray,
};
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::DataType;
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
    /// Zeros appended to each provider vector to reach `dimension` (cosine similarity is unchanged).
    #[serde(default)]
    pub zero_padding: usize,
    /// Where the model came from (model directory, endpoint and model name); absent for feature hashing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Memories whose vector came from the source as is (not embedded).
    #[serde(default)]
    pub existing_vectors: u64,
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
    /// Embed every memory from its text, ignoring vectors the mapping brought (`--reembed`).
    pub reembed: bool,
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

/// Fills the embedding column where it is NULL (a mapping may bring vectors of its own, e.g. pgvector columns of
/// 768 floats): only those rows are embedded. An existing vector that is zero or not finite cannot be used and is
/// replaced by an embedding of the text; a unit vector is kept bit for bit; one that is not of unit norm is scaled
/// to unit norm (same cosine).
/// With `reembed`, existing vectors are ignored and every row is embedded.
pub fn embed_batch(
    embedder: &mut Embedder,
    batch: &RecordBatch,
    reembed: bool,
) -> Result<RecordBatch> {
    let idx = MEMORY_SCHEMA.index_of(memory::EMBEDDING)?;
    let n = batch.num_rows();
    let existing = if reembed {
        arrow::array::new_null_array(batch.column(idx).data_type(), n)
    } else {
        usable_vectors(batch.column(idx))?
    };
    let keep_rows: Vec<usize> = (0..n).filter(|&i| existing.is_valid(i)).collect();
    embedder.count_existing(keep_rows.len() as u64);
    if keep_rows.len() == n && n > 0 {
        let mut cols = batch.columns().to_vec();
        cols[idx] = existing;
        return Ok(RecordBatch::try_new(MEMORY_SCHEMA.clone(), cols)?);
    }
    let texts = texts_to_embed(batch)?;
    let merged = if keep_rows.is_empty() {
        std::sync::Arc::new(embedder.embed_column(&texts)?) as ArrayRef
    } else {
        // Embed only the rows without a vector; `take` scatters the fresh vectors back to their rows and `zip`
        // picks, row by row, the existing vector or the fresh one.
        let todo = arrow::array::UInt32Array::from_iter_values(
            (0..n as u32).filter(|&i| existing.is_null(i as usize)),
        );
        let todo_texts = arrow::compute::take(&texts, &todo, None)?;
        let fresh = embedder.embed_column(todo_texts.as_string::<i32>())?;
        // Row i of the output takes fresh row `pos[i]` where it had no vector.
        let mut next = 0u32;
        let pos: arrow::array::UInt32Array = (0..n)
            .map(|i| {
                if existing.is_null(i) {
                    next += 1;
                    Some(next - 1)
                } else {
                    Some(0)
                }
            })
            .collect();
        let scattered = arrow::compute::take(&fresh, &pos, None)?;
        let keep: BooleanArray = (0..n).map(|i| Some(existing.is_valid(i))).collect();
        zip(&keep, &existing, &scattered)?
    };
    let mut cols = batch.columns().to_vec();
    cols[idx] = merged;
    Ok(RecordBatch::try_new(MEMORY_SCHEMA.clone(), cols)?)
}

/// How far from 1 the norm of an existing vector may be and still be kept bit for bit (f32 rounding of a vector
/// normalised elsewhere is ~1e-7; validation's own tolerance is 1e-3).
const UNIT_NORM_KEPT: f32 = 1e-4;

/// The mapping's vectors that can be used: NULL where missing, zero or not finite; kept as they are when of unit
/// norm, scaled to unit norm otherwise.
fn usable_vectors(col: &ArrayRef) -> Result<ArrayRef> {
    if col.null_count() == col.len() {
        return Ok(col.clone());
    }
    let list = col.as_fixed_size_list();
    let dim = list.value_length() as usize;
    let values = list
        .values()
        .as_primitive::<arrow::datatypes::Float32Type>();
    let mut out: Vec<f32> = Vec::with_capacity(list.len() * dim);
    let mut valid: Vec<bool> = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        // A sliced FixedSizeListArray has its values sliced too (its offset() is always 0).
        let start = i * dim;
        let v = &values.values()[start..start + dim];
        let sq: f32 = v.iter().map(|x| x * x).sum();
        let ok = list.is_valid(i) && sq > 0.0 && sq.is_finite();
        valid.push(ok);
        let norm = sq.sqrt();
        if ok && (norm - 1.0).abs() <= UNIT_NORM_KEPT {
            // Already of unit norm: kept bit for bit (the source's vector as is, checkable against the source).
            out.extend_from_slice(v);
        } else if ok {
            let inv = 1.0 / norm;
            out.extend(v.iter().map(|x| x * inv));
        } else {
            out.resize(out.len() + dim, 0.0);
        }
    }
    let DataType::FixedSizeList(field, size) = list.data_type().clone() else {
        return Err(Error::Internal(
            "embedding column is not a FixedSizeList".into(),
        ));
    };
    Ok(std::sync::Arc::new(FixedSizeListArray::try_new(
        field,
        size,
        std::sync::Arc::new(Float32Array::from(out)),
        Some(valid.into()),
    )?))
}

/// Builds the bundle from staged transform output. Resumes from `opts.checkpoint_file`.
pub fn load(
    transform_dir: &Path,
    summary: &TransformSummary,
    target: &Path,
    embedder: &mut Embedder,
    opts: &LoadOptions,
) -> Result<LoadResult> {
    let target = &super::bundle_path(target);
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
                let b = embed_batch(embedder, &b, opts.reembed)?;
                pb.inc(b.num_rows() as u64);
                w.write(&b)?;
            }
            let written = w
                .finish(true)?
                .ok_or_else(|| Error::Internal("bundle part not written".into()))?;
            debug_assert_eq!(written.file, part_name(index));
            // The cache first: a part the checkpoint records has its vectors persisted.
            embedder.flush()?;
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
            zero_padding: EMBEDDING_DIM - embedder.native_dimension(),
            model: embedder.provider_model(),
            existing_vectors: embedder.stats().existing_vectors,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Float32Type;

    use super::*;
    use crate::embed::{Embedder, HashingProvider};
    use crate::schema::{embedding_type, timestamp_type};

    /// Memories with texts "t0".."t3"; row 0 brings a non-unit vector, row 1 none, row 2 the zero vector, row 3 a
    /// unit vector.
    fn batch() -> RecordBatch {
        let n = 4;
        let s = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let mut values = vec![0.0f32; n * EMBEDDING_DIM];
        values[0] = 3.0;
        values[1] = 4.0;
        values[3 * EMBEDDING_DIM + 5] = 1.0;
        let DataType::FixedSizeList(field, size) = embedding_type() else {
            unreachable!()
        };
        let emb = FixedSizeListArray::try_new(
            field,
            size,
            Arc::new(Float32Array::from(values)),
            Some(vec![true, false, true, true].into()),
        )
        .unwrap();
        let f = |v: f32| Arc::new(Float32Array::from(vec![v; n])) as ArrayRef;
        RecordBatch::try_new(
            MEMORY_SCHEMA.clone(),
            vec![
                s("space"),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                s("{}"),
                Arc::new(StringArray::from(vec!["t0", "t1", "t2", "t3"])),
                Arc::new(emb),
                f(0.7),
                f(1.0),
                f(0.01),
                arrow::array::new_null_array(&timestamp_type(), n),
                s("semantic"),
                s("sqlite"),
                s("t"),
                s("{}"),
            ],
        )
        .unwrap()
    }

    fn vectors(b: &RecordBatch) -> Vec<Vec<f32>> {
        let c = b
            .column_by_name(memory::EMBEDDING)
            .unwrap()
            .as_fixed_size_list();
        assert_eq!(c.null_count(), 0);
        c.values()
            .as_primitive::<Float32Type>()
            .values()
            .chunks_exact(EMBEDDING_DIM)
            .map(|r| r.to_vec())
            .collect()
    }

    fn hashed(text: &str) -> Vec<f32> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        HashingProvider::new().embed(&[text], &mut v).unwrap();
        v
    }

    use crate::embed::EmbeddingProvider;

    #[test]
    fn existing_vectors_are_kept_and_only_the_others_embedded() {
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_batch(&mut e, &batch(), false).unwrap();
        let v = vectors(&out);
        // Row 0: its own vector, scaled to unit norm (3,4)/5; row 3: its own; rows 1 and 2 (none, zero): embedded.
        assert!(
            (v[0][0] - 0.6).abs() < 1e-6 && (v[0][1] - 0.8).abs() < 1e-6,
            "{:?}",
            &v[0][..2]
        );
        assert!(v[0][2..].iter().all(|&x| x == 0.0));
        assert_eq!(v[3][5], 1.0);
        assert_eq!(v[1], hashed("t1"));
        assert_eq!(v[2], hashed("t2"));
        let s = e.stats();
        assert_eq!((s.texts, s.embedded, s.existing_vectors), (2, 2, 2));

        // --reembed: every row from its text.
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_batch(&mut e, &batch(), true).unwrap();
        let v = vectors(&out);
        for (i, row) in v.iter().enumerate() {
            assert_eq!(row, &hashed(&format!("t{i}")));
        }
        assert_eq!((e.stats().embedded, e.stats().existing_vectors), (4, 0));

        // All rows with usable vectors: no provider call at all.
        let all = batch().slice(3, 1);
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_batch(&mut e, &all, false).unwrap();
        assert_eq!(vectors(&out)[0][5], 1.0);
        assert_eq!((e.stats().texts, e.stats().existing_vectors), (0, 1));
    }
}
