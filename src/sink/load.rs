//! The one loader: sends a finished bundle to any [`Sink`], resumably. Every target (Engram over HTTP or gRPC,
//! and the database targets after it) is driven by this loop; a sink only says how to write one unit.
//!
//! The bundle's memory parts are read batch by batch; each batch is cut into units of the sink's size and the
//! units go out as one ordered stream, at most `parallel` in flight. A batch is the resume unit: once every
//! unit of it is answered, the rows done per part and the refusals so far are checkpointed. A killed load
//! started again skips the rows done; the sink's writes are keyed by memory id, so a unit sent twice lands once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::{DeleteOutcome, LoadScope, RowOutcome, Sink, WriteUnit};
use crate::bundle::{BundleManifest, MemoryPart, Removed};
use crate::delta::IdsBySpace;
use crate::error::{Error, Result};
use crate::parquet_io;
use crate::workdir::{Checkpoint, RunKey};

/// How the loader paces a load.
#[derive(Debug, Clone)]
pub struct DeliverLimits {
    /// Rows per acknowledged (checkpointed) batch.
    pub batch_rows: usize,
    /// Units in flight.
    pub parallel: usize,
}

/// A row the target refused, kept in the checkpoint so a resumed load still reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rejection {
    pub space: String,
    pub id: String,
    pub status: String,
    pub message: String,
}

/// The loader's progress, saved after every acknowledged batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadProgress {
    /// Rows acknowledged per bundle part (`space/part-NNNNN.parquet`).
    pub rows_done: BTreeMap<String, u64>,
    pub rejected: Vec<Rejection>,
    pub sent: u64,
}

/// What one load did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOutcome {
    /// Rows sent by this process (a resumed load counts only what it sent itself).
    pub sent: u64,
    /// Rows acknowledged in earlier, interrupted runs and skipped now.
    pub resumed: u64,
    pub rejected: Vec<Rejection>,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// What the target did with the deletes of a delta (None: none asked).
    pub deletes: Option<DeleteOutcome>,
}

/// What an incremental run's load does besides sending: `send` narrows the memories sent to these (a sink
/// that accepts a delta), `delete` are the memories gone from the source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta<'a> {
    pub send: Option<&'a IdsBySpace>,
    pub delete: Option<&'a [(String, String)]>,
}

/// One memory part of the bundle.
struct Part {
    /// `space/part-NNNNN.parquet`: its key in the checkpoint.
    rel: String,
    part: MemoryPart,
}

fn memory_parts(bundle: &Path, manifest: &BundleManifest) -> Vec<Part> {
    manifest
        .memory_parts(bundle)
        .into_iter()
        .map(|p| Part {
            rel: format!("{}/{}", p.space, p.file.file),
            part: p,
        })
        .collect()
}

/// The units of one part, read batch by batch, the first `skip` rows (acknowledged before an interruption) left
/// out. `ends_batch` is set on the last unit of a batch: the batch's row count, checkpointed once it is answered.
fn units_of_part<'a>(
    part: &'a Part,
    mut skip: u64,
    batch_rows: usize,
    unit_rows: usize,
    only: Option<&'a IdsBySpace>,
    removed: &'a Removed,
) -> Box<dyn Iterator<Item = Result<WriteUnit>> + 'a> {
    // Rows of batches the filter emptied, checkpointed with the next unit of the part.
    let mut carried = 0u64;
    let reader = match parquet_io::open_reader(&part.part.path, batch_rows) {
        Ok(r) => r,
        Err(e) => return Box::new(std::iter::once(Err(e))),
    };
    let space = &part.part.space;
    Box::new(reader.flat_map(move |batch| -> Vec<Result<WriteUnit>> {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                return vec![Err(Error::source_err(
                    part.part.path.display().to_string(),
                    e.to_string(),
                ))]
            }
        };
        // Batch boundaries may differ between runs: skip by rows, not by batches.
        let n = batch.num_rows() as u64;
        if skip >= n {
            skip -= n;
            return vec![];
        }
        let batch = batch.slice(skip as usize, (n - skip) as usize);
        skip = 0;
        // The checkpoint counts rows of the part, sent or filtered out, so a resume skips both.
        let read = batch.num_rows() as u64 + std::mem::take(&mut carried);
        // Rows a later layer of the bundle removed are not part of it (see `bundle::Removed`).
        let batch = match removed.live(batch, part.part.file.layer) {
            Ok(b) => b,
            Err(e) => return vec![Err(e)],
        };
        let batch = match only {
            None => batch,
            Some(keep) => match keep_rows(&batch, space, keep) {
                Ok(b) => b,
                Err(e) => return vec![Err(e)],
            },
        };
        if batch.num_rows() == 0 {
            carried = read;
            return vec![];
        }
        let rows = batch.num_rows();
        let mut units = vec![];
        let mut at = 0;
        while at < rows {
            let len = unit_rows.min(rows - at);
            units.push(WriteUnit {
                space: space.clone(),
                part: part.rel.clone(),
                file: part.part.path.clone(),
                batch: batch.slice(at, len),
                ends_batch: None,
            });
            at += len;
        }
        if let Some(last) = units.last_mut() {
            last.ends_batch = Some(read);
        }
        units.into_iter().map(Ok).collect()
    }))
}

/// The rows of `batch` (memories of `space`) whose id `keep` names.
fn keep_rows(
    batch: &arrow::array::RecordBatch,
    space: &str,
    keep: &IdsBySpace,
) -> Result<arrow::array::RecordBatch> {
    let ids = batch
        .column_by_name("id")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .ok_or_else(|| Error::Internal("a bundle memory batch without a text id".into()))?;
    let Some(keep) = keep.get(space) else {
        return Ok(batch.slice(0, 0));
    };
    let mask: arrow::array::BooleanArray = ids
        .iter()
        .map(|id| Some(id.is_some_and(|id| keep.contains(id))))
        .collect();
    Ok(arrow::compute::filter_record_batch(batch, &mask)?)
}

/// Sends every memory of `bundle` to `sink` (or, with `delta.send`, those of these (space, id)): `prepare`
/// first, then the units in bundle order, then the deletes of `delta.delete`, then `finish` (with
/// [`LoadScope::Delta`] when only a delta was sent). Progress goes to `checkpoint_file` under `run_key`. The
/// read-back is the caller's next step.
pub async fn run(
    bundle: &Path,
    manifest: &BundleManifest,
    sink: &dyn Sink,
    limits: &DeliverLimits,
    checkpoint_file: &Path,
    run_key: &RunKey,
    delta: Delta<'_>,
) -> Result<LoadOutcome> {
    let only = delta.send;
    let started = Instant::now();
    sink.prepare(manifest).await?;
    let mut ckpt: Checkpoint<LoadProgress> = Checkpoint::load_or_new(checkpoint_file, run_key)?;
    // Rows sent before an interruption (a delta load filters rows out: rows read are not rows sent).
    let resumed: u64 = ckpt.state.sent;
    let total = match only {
        Some(keep) => keep.values().map(|ids| ids.len() as u64).sum(),
        None => manifest.totals.get("memories").copied().unwrap_or(0),
    };
    let pb = crate::progress::bar(total, &format!("send to {}", sink.name()), "memories");
    pb.inc(resumed);
    let parts = memory_parts(bundle, manifest);
    let removed = Removed::load(bundle, manifest)?;
    let removed = &removed;
    let batch_rows = limits.batch_rows.max(1);
    let unit_rows = sink.unit_rows(limits).max(1);
    let skips: Vec<u64> = parts
        .iter()
        .map(|p| ckpt.state.rows_done.get(&p.rel).copied().unwrap_or(0))
        .collect();
    // One ordered stream of units over every part and batch, at most `parallel` in flight: a batch is the resume
    // unit, not a barrier, so the slow tail of one batch overlaps the next. Units are pulled lazily: about two
    // batches in memory.
    let units = parts
        .iter()
        .zip(skips)
        .flat_map(|(part, skip)| units_of_part(part, skip, batch_rows, unit_rows, only, removed));
    let mut answers = stream::iter(units)
        .map(|unit| async move {
            let unit = unit?;
            let outcomes = sink.write(&unit).await?;
            if outcomes.len() != unit.batch.num_rows() {
                return Err(Error::Internal(format!(
                    "sink {} answered {} outcomes for {} rows",
                    sink.name(),
                    outcomes.len(),
                    unit.batch.num_rows()
                )));
            }
            Ok::<_, Error>((unit, outcomes))
        })
        .buffered(limits.parallel.max(1));
    let mut sent = 0u64;
    while let Some(answer) = answers.next().await {
        let (unit, outcomes) = answer?;
        for o in outcomes {
            if let RowOutcome::Rejected {
                id,
                status,
                message,
            } = o
            {
                ckpt.state.rejected.push(Rejection {
                    space: unit.space.clone(),
                    id,
                    status,
                    message,
                });
            }
        }
        let done = unit.batch.num_rows() as u64;
        sent += done;
        ckpt.state.sent += done;
        pb.inc(done);
        // Units arrive in order, so when the last unit of a batch is answered the whole batch is.
        if let Some(rows) = unit.ends_batch {
            *ckpt.state.rows_done.entry(unit.part.clone()).or_default() += rows;
            ckpt.save(checkpoint_file)?;
        }
    }
    drop(answers);
    pb.finish_and_clear();
    // Deletes after the sends and before `finish` (a transactional target applies them with its merge);
    // deleting is idempotent, so a resumed load simply asks again.
    let deletes = match delta.delete {
        Some(gone) => Some(delete(sink, gone).await?),
        None => None,
    };
    let scope = if only.is_some() {
        LoadScope::Delta
    } else {
        LoadScope::Whole
    };
    sink.finish(bundle, manifest, scope).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(LoadOutcome {
        sent,
        resumed,
        rejected: ckpt.state.rejected,
        seconds,
        rows_per_second: if seconds > 0.0 {
            sent as f64 / seconds
        } else {
            0.0
        },
        deletes,
    })
}

/// Asks `sink` to delete `gone` (space, id), space by space.
async fn delete(sink: &dyn Sink, gone: &[(String, String)]) -> Result<DeleteOutcome> {
    let mut outcome = DeleteOutcome::default();
    let mut by_space: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (space, id) in gone {
        by_space.entry(space).or_default().push(id.clone());
    }
    for (space, ids) in by_space {
        outcome.add(sink.delete(space, &ids).await?);
    }
    Ok(outcome)
}
