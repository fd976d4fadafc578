//! The Engram bundle: the embedded default target, the full truth of a migration (edges, decay rates,
//! activation and provenance that a live Engram server cannot store), and the contract between the two halves of
//! the tool: the producing half (source -> snapshot -> SQL -> embeddings) writes a bundle, and every sink of the
//! delivering half loads a finished one.
//!
//! Layout: `bundle.json`, `spaces/<space>/memories/part-NNNNN.parquet`, `spaces/<space>/edges/part-NNNNN.parquet`,
//! `orphans/part-NNNNN.parquet`. It is built in `<bundle>.partial/`; every part is committed by rename and then
//! recorded in the checkpoint, so a killed write resumes with the next part; the finished bundle is renamed
//! to `<bundle>` in one step. A bundle that exists is never half-replaced.

pub mod format;
pub mod writer;

pub use format::*;
