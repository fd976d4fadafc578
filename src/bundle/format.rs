//! The bundle's format: `bundle.json` (this manifest) and the part files it lists. Every sink reads a bundle
//! through these types; the writer is the only code that makes one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::parquet_io::PartFile;

pub const BUNDLE_FILE: &str = "bundle.json";
/// 2: embeddings at the provider's own dimension (`embedding.dimension`); 1 padded them to 768 for Engram.
pub const FORMAT: &str = "engram-bundle/2";
/// 3: a bundle an incremental run extended in layers (`removed` not empty): a reader of format 2 would see
/// removed memories as live, so such a bundle says so.
pub const FORMAT_LAYERED: &str = "engram-bundle/3";

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
    /// The graph label the mapping gives this space's nodes (its `space_labels` view), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
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
    /// How the parts' checksums were computed ([`crate::checksum::SCHEME`]); 0: not recorded (older bundles).
    #[serde(default)]
    pub checksum_scheme: u32,
    /// Memories an incremental run removed from the layers below its own (see [`Removed`]); empty for a
    /// bundle one full run wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedSet>,
}

/// The memories (space, id) that layer `layer` removed from every layer below it: those the source deleted or
/// changed since the run before (a changed one comes back in `layer` itself). File schema: space, id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemovedSet {
    pub layer: u32,
    /// Relative to the bundle: `removed/layer-NNNNN.parquet`.
    pub file: String,
    pub rows: u64,
}

/// One memory part of a bundle, with what a reader needs to keep only its live rows.
#[derive(Debug, Clone)]
pub struct MemoryPart {
    pub space: String,
    pub path: PathBuf,
    pub file: PartFile,
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

    /// Whether later layers removed memories from earlier ones: readers must then filter through [`Removed`].
    pub fn is_layered(&self) -> bool {
        !self.removed.is_empty()
    }

    /// The highest layer of any memory part or removal (0 for a bundle one full run wrote).
    pub fn top_layer(&self) -> u32 {
        let parts = self
            .spaces
            .iter()
            .flat_map(|s| s.memories.files.iter().map(|f| f.layer));
        parts
            .chain(self.removed.iter().map(|r| r.layer))
            .max()
            .unwrap_or(0)
    }

    /// Every memory part, with its space and layer. Read their rows through [`read_live`].
    pub fn memory_parts(&self, dir: &Path) -> Vec<MemoryPart> {
        self.spaces
            .iter()
            .flat_map(|s| {
                s.memories.files.iter().map(move |f| MemoryPart {
                    space: s.space.clone(),
                    path: dir
                        .join("spaces")
                        .join(&s.space)
                        .join("memories")
                        .join(&f.file),
                    file: f.clone(),
                })
            })
            .collect()
    }

    /// The memory parts of one space.
    pub fn memory_parts_of(&self, dir: &Path, space: &str) -> Vec<MemoryPart> {
        let mut parts = self.memory_parts(dir);
        parts.retain(|p| p.space == space);
        parts
    }

    /// The memory part files (for their schema, or their bytes as a whole: not their rows, which a layered
    /// bundle filters; see [`read_live`]).
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

/// The memories later layers removed, by space and id, each with the highest layer that removed it. A row of
/// a part in layer `l` is live unless a layer above `l` removed its (space, id): a changed memory is removed by
/// layer `n` and written again in layer `n`, so its new version stays and its old one goes.
#[derive(Debug, Default)]
pub struct Removed {
    by_space: std::collections::HashMap<String, std::collections::HashMap<String, u32>>,
}

impl Removed {
    /// Reads every removal file the manifest lists (nothing for a bundle one full run wrote).
    pub fn load(dir: &Path, manifest: &BundleManifest) -> Result<Removed> {
        use arrow::array::AsArray;
        let mut out = Removed::default();
        for r in &manifest.removed {
            let path = dir.join(&r.file);
            let bad = |m: String| Error::target_err(path.display().to_string(), m);
            let mut rows = 0u64;
            for b in crate::parquet_io::open_reader(&path, 65_536)? {
                let b = b.map_err(|e| bad(e.to_string()))?;
                let (Some(space), Some(id)) = (
                    b.column_by_name(crate::schema::memory::SPACE)
                        .and_then(|c| c.as_string_opt::<i32>()),
                    b.column_by_name(crate::schema::memory::ID)
                        .and_then(|c| c.as_string_opt::<i32>()),
                ) else {
                    return Err(bad("not a removal file (space, id)".into()));
                };
                for i in 0..b.num_rows() {
                    let layer = out
                        .by_space
                        .entry(space.value(i).to_string())
                        .or_default()
                        .entry(id.value(i).to_string())
                        .or_insert(0);
                    *layer = (*layer).max(r.layer);
                }
                rows += b.num_rows() as u64;
            }
            if rows != r.rows {
                return Err(bad(format!(
                    "holds {rows} removed memories, bundle.json says {}; the bundle is damaged: rebuild it \
                     with a full run (--fresh --overwrite)",
                    r.rows
                )));
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.by_space.is_empty()
    }

    /// Every removed (space, id) with the highest layer that removed it.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u32)> {
        self.by_space.iter().flat_map(|(space, ids)| {
            ids.iter()
                .map(move |(id, layer)| (space.as_str(), id.as_str(), *layer))
        })
    }

    /// Whether the memory (space, id) of a part in layer `layer` is still part of the bundle.
    pub fn is_live(&self, space: &str, id: &str, layer: u32) -> bool {
        self.by_space
            .get(space)
            .and_then(|ids| ids.get(id))
            .is_none_or(|removed_by| *removed_by <= layer)
    }

    /// The live rows of a batch of memories read from a part of layer `layer`.
    pub fn live(&self, batch: RecordBatch, layer: u32) -> Result<RecordBatch> {
        use arrow::array::AsArray;
        if self.is_empty() {
            return Ok(batch);
        }
        let (Some(space), Some(id)) = (
            batch
                .column_by_name(crate::schema::memory::SPACE)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(crate::schema::memory::ID)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return Err(Error::Internal(
                "a bundle memory batch without space and id".into(),
            ));
        };
        let keep: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|i| Some(self.is_live(space.value(i), id.value(i), layer)))
            .collect();
        if keep.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
    }
}

/// The live rows of one memory part, batch by batch.
pub fn read_live<'a>(
    part: &'a MemoryPart,
    removed: &'a Removed,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + 'a> {
    let reader = crate::parquet_io::open_reader(&part.path, batch_rows)?;
    Ok(reader.map(move |b| {
        let b = b.map_err(|e| Error::target_err(part.path.display().to_string(), e.to_string()))?;
        removed.live(b, part.file.layer)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn ids(space: &str, ids: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("space", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![space; ids.len()])),
                Arc::new(StringArray::from(ids.to_vec())),
            ],
        )
        .unwrap()
    }

    fn manifest(removed: Vec<RemovedSet>) -> BundleManifest {
        serde_json::from_value(serde_json::json!({
            "format": FORMAT_LAYERED, "run_id": "t", "created_at": "t", "source": {}, "mapping": "t",
            "transform_key": "t",
            "embedding": {"provider": "t", "dimension": 2, "native_dimension": 2},
            "spaces": [], "orphans": {"rows": 0, "checksum": "0", "files": []}, "totals": {},
            "removed": removed,
        }))
        .unwrap()
    }

    #[test]
    fn a_row_is_live_unless_a_layer_above_its_own_removed_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("removed")).unwrap();
        let set = |layer: u32, batch: RecordBatch| {
            let file = format!("removed/layer-{layer:05}.parquet");
            crate::parquet_io::write_batch_atomic(&dir.path().join(&file), &batch).unwrap();
            RemovedSet {
                layer,
                file,
                rows: batch.num_rows() as u64,
            }
        };
        // Layer 1 removed a and b (b came back in layer 1: changed); layer 2 removed b again.
        let m = manifest(vec![
            set(1, ids("s", &["a", "b"])),
            set(2, ids("s", &["b"])),
        ]);
        let r = Removed::load(dir.path(), &m).unwrap();
        assert!(!r.is_live("s", "a", 0));
        assert!(
            r.is_live("s", "a", 1),
            "a layer's own rows are not removed by it"
        );
        assert!(!r.is_live("s", "b", 0));
        assert!(!r.is_live("s", "b", 1), "removed again by layer 2");
        assert!(r.is_live("s", "b", 2));
        assert!(r.is_live("s", "c", 0));
        assert!(r.is_live("t", "a", 0), "ids are per space");
        let live = r.live(ids("s", &["a", "c", "b"]), 0).unwrap();
        let kept = live
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.value(0), "c");
        assert_eq!(r.live(ids("s", &["a", "c"]), 1).unwrap().num_rows(), 2);
    }

    #[test]
    fn a_removal_file_that_does_not_hold_what_the_manifest_says_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("removed")).unwrap();
        let file = "removed/layer-00001.parquet".to_string();
        crate::parquet_io::write_batch_atomic(&dir.path().join(&file), &ids("s", &["a"])).unwrap();
        let m = manifest(vec![RemovedSet {
            layer: 1,
            file,
            rows: 2,
        }]);
        let e = Removed::load(dir.path(), &m).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        assert!(Removed::load(dir.path(), &manifest(vec![]))
            .unwrap()
            .is_empty());
    }
}
