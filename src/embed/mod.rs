//! The embedding stage: text column in, FixedSizeList<Float32, 768> column out, batch by batch.
//!
//! A provider turns texts into vectors; the stage around it deduplicates texts by content hash (a bounded cache
//! shared across batches), runs the misses through the provider, and writes straight into one values buffer.
//! Providers are synchronous and batch-oriented so that a model (model2vec) or an HTTP endpoint fits the same
//! interface later: they get a slice of texts and fill a slice of floats.

pub mod cache;
pub mod hashing;
pub mod key;
pub mod memories;
pub mod model2vec;
pub mod openai;
pub mod quality;
pub mod stage;
pub mod udf;

pub use cache::DiskCache;
pub use hashing::HashingProvider;
pub use model2vec::Model2VecProvider;
pub use stage::{EmbedStats, Embedder};

use crate::error::Result;

/// Turns texts into vectors of `dimension()` floats.
pub trait EmbeddingProvider: Send + Sync {
    /// Stable name recorded in the bundle's provenance, e.g. `hashing-v1`.
    fn name(&self) -> String;
    /// Native dimension; vectors shorter than 768 are zero-padded by the stage (cosine is unchanged).
    fn dimension(&self) -> usize;
    /// Where the model came from (a directory, an endpoint and model name), recorded in the bundle's provenance.
    fn model(&self) -> Option<String> {
        None
    }
    /// Fill `out` (len = texts.len() * dimension()) with one L2-normalised vector per text, row-major.
    fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()>;
    /// Rows per batch the embedding stage should read when it can: a provider with a large fixed cost per call
    /// (a cluster job) wants more than the stage's default.
    fn preferred_batch_rows(&self) -> Option<usize> {
        None
    }
}
