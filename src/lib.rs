//! engram-migrate: snapshot-then-load migrations into Engram.
//!
//! source -> Parquet snapshot -> DataFusion SQL mapping -> embeddings -> sink (Engram bundle) -> SQL validation.
//! Each stage exchanges Arrow record batches; `pipeline` wires them and owns order, checkpoints and progress.

pub mod bundle;
pub mod catalog;
pub mod checksum;
pub mod config;
pub mod delta;
pub mod embed;
pub mod engine;
pub mod error;
pub mod json;
pub mod layer;
pub mod parquet_io;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod report;
pub mod retry;
pub mod schema;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod transform;
pub mod validate;
pub mod workdir;

pub use error::{Error, Result};
