//! The bundle's format: `bundle.json` (this manifest) and the part files it lists. Every sink reads a bundle
//! through these types; the writer is the only code that makes one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::parquet_io::PartFile;

pub const BUNDLE_FILE: &str = "bundle.json";
/// 2: embeddings at the provider's own dimension (`embedding.dimension`); 1 padded them to 768 for Engram.
pub const FORMAT: &str = "engram-bundle/2";

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
