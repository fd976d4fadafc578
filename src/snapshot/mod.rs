//! The Parquet snapshot: a reproducible, checksummed copy of the source, table by table.
//!
//! Layout: `DIR/manifest.json` and `DIR/tables/NNN-name/part-NNNNN.parquet`. Each part file is committed by an
//! atomic rename and then recorded in the manifest (itself replaced atomically), together with the source position
//! after its last row, so an interrupted snapshot resumes after the last recorded part. A part file on disk that
//! the manifest does not list is a leftover of a crash and is deleted. The snapshot is complete when the manifest
//! says `"complete": true`; only then can it be transformed or used as a source.

pub mod format;
pub mod writer;

pub use format::*;
pub use writer::{take, SnapshotOptions};
