//! Takes (or resumes) a snapshot of a source: table by table, part by part, each part committed by rename and
//! recorded in the manifest.

use std::fs;
use std::path::Path;

use serde_json::Value;

use super::format::*;
use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::parquet_io::{PartFile, PartLimits, RollingWriter};
use crate::source::{Partition, PartitionReader, ReadEnd, Source};

#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub batch_size: usize,
    pub limits: PartLimits,
    /// Partitions read at once, for sources that read in partitions.
    pub workers: usize,
    /// `--include` / `--exclude` table patterns.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `--reuse-snapshot`: a complete snapshot of a source that has changed since is used anyway.
    pub reuse_stale: bool,
}

/// A snapshot ready for the next stage.
#[derive(Debug)]
pub struct Taken {
    pub manifest: Manifest,
    /// How the source differs from this (complete, reused on purpose) snapshot; empty when it does not.
    pub stale: Vec<String>,
}

/// A folder name for a table: its index (names may collide once cleaned) and its name cleaned for file systems.
fn folder_name(index: usize, table: &str) -> String {
    let clean: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    format!("{index:03}-{clean}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn schema_entries(schema: &arrow::datatypes::Schema) -> Vec<FieldEntry> {
    schema
        .fields()
        .iter()
        .map(|f| FieldEntry {
            name: f.name().clone(),
            data_type: crate::schema::type_name(f.data_type()),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Whether a snapshot's recorded source is the one given now: same kind and same location (`path`: a file, or a
/// URL without its password). A description without a location never matches: equal counts on another server
/// must not resume (or reuse) this snapshot.
fn same_source(recorded: &Value, now: &Value) -> bool {
    recorded.get("kind") == now.get("kind")
        && now.get("path").is_some_and(|p| !p.is_null())
        && recorded.get("path") == now.get("path")
}

/// Takes (or resumes) a snapshot of `source` into `dir`. A complete snapshot already there is reused when the
/// source's fingerprint is unchanged; when it changed, the command stops naming the changes (unless
/// `reuse_stale`). An interrupted one is resumed only from an unchanged source.
pub fn take(source: &mut dyn Source, dir: &Path, opts: &SnapshotOptions) -> Result<Taken> {
    let (include, exclude) = (&opts.include, &opts.exclude);
    let fingerprint = source
        .fingerprint()?
        .only_tables(|t| crate::source::is_included(t, include, exclude));
    let mut manifest = if dir.join(MANIFEST).is_file() {
        let m = Manifest::load(dir)?;
        if !same_source(&m.source, &source.describe()) {
            return Err(Error::usage(format!(
                "the snapshot in {} was taken from another source ({}); start over with --fresh or use another \
                 --work-dir",
                dir.display(),
                m.source.get("path").and_then(|p| p.as_str()).unwrap_or("unknown")
            )));
        }
        let changes = m.source_fingerprint.changes(&fingerprint);
        if !changes.is_empty() && !(m.complete && opts.reuse_stale) {
            return Err(Error::SourceChanged {
                snapshot: dir.display().to_string(),
                changes,
                complete: m.complete,
            });
        }
        if m.complete {
            tracing::info!(dir = %dir.display(), "snapshot already complete; reusing it");
            return Ok(Taken {
                manifest: m,
                stale: changes,
            });
        }
        tracing::info!(dir = %dir.display(), "resuming an interrupted snapshot");
        // A new process: read the catalog again, it sets up the source's per-table state.
        source.catalog()?;
        m
    } else {
        fs::create_dir_all(dir.join("tables")).map_err(Error::io("create directory", dir))?;
        let mut catalog = source.catalog()?;
        crate::source::filter_catalog(&mut catalog, &opts.include, &opts.exclude)?;
        let mut tables = vec![];
        for (i, info) in catalog.tables.into_iter().enumerate() {
            let schema = source.schema(&info)?;
            tables.push(TableEntry {
                folder: folder_name(i, &info.name),
                schema: schema_entries(&schema),
                info,
                files: vec![],
                resume_after: None,
                rows: 0,
                checksum: Checksum::default().to_hex(),
                read_up_to: Value::Null,
                complete: false,
                partitions: vec![],
                not_staged: vec![],
            });
        }
        let m = Manifest {
            format: FORMAT.into(),
            source: source.describe(),
            source_fingerprint: fingerprint,
            started_at: now(),
            completed_at: None,
            read_up_to: Value::Null,
            complete: false,
            checksum_scheme: crate::checksum::SCHEME,
            cycles: catalog.cycles,
            skipped: catalog.skipped,
            tables,
        };
        m.save(dir)?;
        m
    };
    for i in 0..manifest.tables.len() {
        if manifest.tables[i].complete {
            continue;
        }
        snapshot_table(source, dir, &mut manifest, i, opts)?;
    }
    let up_to = source.end_snapshot();
    if !up_to.is_null() {
        manifest.read_up_to = up_to;
    }
    manifest.complete = true;
    manifest.completed_at = Some(now());
    manifest.save(dir)?;
    Ok(Taken {
        manifest,
        stale: vec![],
    })
}

fn snapshot_table(
    source: &mut dyn Source,
    dir: &Path,
    manifest: &mut Manifest,
    i: usize,
    opts: &SnapshotOptions,
) -> Result<()> {
    loop {
        let entry = &mut manifest.tables[i];
        source.set_table(&entry.info);
        if entry.partitions.is_empty() {
            if let Some(parts) = source.partitions(&entry.info, opts.workers)? {
                entry.partitions = parts
                    .into_iter()
                    .map(|partition| PartitionState {
                        partition,
                        done: false,
                        rows: 0,
                    })
                    .collect();
                entry.files.clear();
                manifest.save(dir)?;
            }
        }
        let entry = &mut manifest.tables[i];
        if !entry.partitions.is_empty() {
            let reader = source.partition_reader()?.ok_or_else(|| {
                Error::Internal("a source that partitions has no partition reader".into())
            })?;
            let schema = source.schema(&entry.info)?;
            entry.schema = schema_entries(&schema);
            match snapshot_partitions(reader.as_ref(), schema, dir, manifest, i, opts)? {
                None => return Ok(()),
                Some((column, reason)) => {
                    widen_column(source, manifest, i, &column, &reason)?;
                    let entry = &mut manifest.tables[i];
                    let tdir = Manifest::table_dir(dir, entry);
                    entry.files.clear();
                    for p in &mut entry.partitions {
                        p.done = false;
                        p.rows = 0;
                    }
                    remove_unlisted(&tdir, &[])?;
                    manifest.save(dir)?;
                    continue;
                }
            }
        }
        let entry = &mut manifest.tables[i];
        let tdir = Manifest::table_dir(dir, entry);
        fs::create_dir_all(&tdir).map_err(Error::io("create directory", &tdir))?;
        // Without a resume position the table restarts from its first row: forget its earlier files.
        if entry.resume_after.is_none() {
            entry.files.clear();
        }
        remove_unlisted(&tdir, &entry.files)?;
        crate::delta::remove_unlisted_records(dir, entry)?;
        let schema = source.schema(&entry.info)?;
        entry.schema = schema_entries(&schema);
        let info = entry.info.clone();
        let after = entry.resume_after;
        let first_index = entry.files.len();
        let done_rows: u64 = entry.files.iter().map(|f| f.rows).sum();

        let pb = crate::progress::bar(
            info.row_estimate.unwrap_or(0),
            format!("snapshot {}", info.name),
            "rows",
        );
        pb.set_position(done_rows);
        let recorder = crate::delta::RowRecorder::new(dir, entry, &schema, "")?;
        let writer = RollingWriter::new(&tdir, schema, opts.limits, first_index)?;
        let (end, written) = read_and_write(source, &info, after, opts, &pb, |rx| {
            // The writer's half: encode, compress and hash each batch, and record every part it completes
            // (with the position of the batch that completed it, where a resume starts) in the manifest.
            let (mut writer, mut recorder) = (writer, recorder);
            for (batch, pos) in rx {
                let (part, hashes) = writer.write_hashed(&batch)?;
                recorder.add(&batch, &hashes)?;
                if let Some(part) = part {
                    recorder.commit(&part)?;
                    let entry = &mut manifest.tables[i];
                    entry.files.push(part);
                    entry.resume_after = pos;
                    manifest.save(dir)?;
                }
            }
            Ok((writer, recorder))
        });
        // The writer's error first: the reader's is then only that the writer stopped taking batches.
        let (writer, recorder) = written?;
        let mut recorder = recorder;
        match end? {
            ReadEnd::Widen { column, reason } => {
                drop(writer);
                drop(recorder);
                pb.finish_and_clear();
                widen_column(source, manifest, i, &column, &reason)?;
                let entry = &mut manifest.tables[i];
                entry.files.clear();
                entry.resume_after = None;
                remove_unlisted(&tdir, &[])?;
                manifest.save(dir)?;
                continue;
            }
            ReadEnd::Done { read_up_to, .. } => {
                let last = writer.finish(true)?;
                if let Some(part) = &last {
                    recorder.commit(part)?;
                }
                pb.finish_and_clear();
                let entry = &mut manifest.tables[i];
                if let Some(part) = last {
                    // An empty schema-only part is kept only when the table has no other file.
                    if part.rows > 0 || entry.files.is_empty() {
                        entry.files.push(part);
                    } else {
                        let _ = fs::remove_file(tdir.join(&part.file));
                    }
                }
                let mut sum = Checksum::default();
                for f in &entry.files {
                    sum.combine(f.checksum()?);
                }
                entry.rows = sum.rows;
                entry.checksum = sum.to_hex();
                entry.read_up_to = read_up_to;
                entry.not_staged = source.not_staged(&entry.info);
                entry.complete = true;
                tracing::info!(table = %entry.info.name, rows = entry.rows, files = entry.files.len(), "table staged");
                manifest.save(dir)?;
                return Ok(());
            }
        }
    }
}

/// A batch the source read, with its resume position.
type Read = (arrow::array::RecordBatch, Option<i64>);

/// Reads a table on this thread while `write` takes what was read on another: the source's half (SQLite's
/// VM, decoding values into Arrow) and the writer's (Parquet encoding, zstd, row hashes) take about as long as
/// each other, so two cores stage a table in about half the time of one. A bounded queue of two batches keeps
/// memory flat when one half is slower. Returns the read's end and what `write` returned; when `write` fails,
/// the read fails too (its batches have nowhere to go) and the caller reports `write`'s error.
fn read_and_write<W: Send>(
    source: &mut dyn Source,
    info: &crate::catalog::TableInfo,
    after: Option<i64>,
    opts: &SnapshotOptions,
    pb: &indicatif::ProgressBar,
    write: impl FnOnce(std::sync::mpsc::Receiver<Read>) -> Result<W> + Send,
) -> (Result<ReadEnd>, Result<W>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Read>(2);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write(rx));
        let end = {
            let mut emit = |batch: arrow::array::RecordBatch, pos: Option<i64>| -> Result<()> {
                pb.inc(batch.num_rows() as u64);
                tx.send((batch, pos)).map_err(|_| {
                    Error::Internal(format!(
                        "table {}: the snapshot writer stopped taking rows",
                        info.name
                    ))
                })
            };
            source.read_table(info, after, opts.batch_size, &mut emit)
        };
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "table {}: the snapshot writer panicked",
                info.name
            )))
        });
        (end, written)
    })
}

/// Asks the source to widen `column` of table `i` after a value did not fit; an error when it cannot widen further.
fn widen_column(
    source: &mut dyn Source,
    manifest: &mut Manifest,
    i: usize,
    column: &str,
    reason: &str,
) -> Result<()> {
    let entry = &mut manifest.tables[i];
    tracing::warn!(table = %entry.info.name, column = %column, "{reason}; widening the column and staging the table again");
    if source.widen(&mut entry.info, column, reason) {
        return Ok(());
    }
    Err(Error::source_err(
        manifest.source.to_string(),
        format!(
            "table {}, column {column}: {reason}, and the column cannot be widened further",
            entry.info.name
        ),
    ))
}

/// What a worker reports for one partition.
enum PartOutcome {
    Done(Vec<PartFile>, u64),
    Widen(String, String),
}

/// Reads the table's partitions not yet done, `opts.workers` at a time, each into its own part files
/// (`part-pNNNNN-MMMMM.parquet`); a partition is recorded in the manifest, files and all, when it is complete.
/// Returns the column to widen if a value did not fit, after the workers have stopped.
fn snapshot_partitions(
    reader: &dyn PartitionReader,
    schema: arrow::datatypes::SchemaRef,
    dir: &Path,
    manifest: &mut Manifest,
    i: usize,
    opts: &SnapshotOptions,
) -> Result<Option<(String, String)>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Mutex};

    let entry = &manifest.tables[i];
    let tdir = Manifest::table_dir(dir, entry);
    fs::create_dir_all(&tdir).map_err(Error::io("create directory", &tdir))?;
    remove_unlisted(&tdir, &entry.files)?;
    crate::delta::remove_unlisted_records(dir, entry)?;
    let info = entry.info.clone();
    let pending: Vec<usize> = (0..entry.partitions.len())
        .filter(|&k| !entry.partitions[k].done)
        .collect();
    let done_rows: u64 = entry
        .partitions
        .iter()
        .filter(|p| p.done)
        .map(|p| p.rows)
        .sum();
    let pb = crate::progress::bar(
        info.row_estimate.unwrap_or(0),
        format!("snapshot {}", info.name),
        "rows",
    );
    pb.set_position(done_rows);
    let parts: Vec<Partition> = entry
        .partitions
        .iter()
        .map(|p| p.partition.clone())
        .collect();
    let entry_now = manifest.tables[i].clone();
    let queue = Mutex::new(pending.into_iter());
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<PartOutcome>)>();
    let mut first_error: Option<Error> = None;
    let mut widen: Option<(String, String)> = None;
    std::thread::scope(|scope| {
        for _ in 0..opts.workers.max(1) {
            let tx = tx.clone();
            let entry_now = &entry_now;
            let (queue, stop, info, schema, tdir, pb, parts) = (
                &queue,
                &stop,
                &info,
                schema.clone(),
                &tdir,
                pb.clone(),
                &parts,
            );
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some(k) = next else { return };
                let part = parts[k].clone();
                let outcome = (|| -> Result<PartOutcome> {
                    let mut recorder = crate::delta::RowRecorder::new(
                        dir,
                        entry_now,
                        &schema,
                        &format!("p{k:05}"),
                    )?;
                    let mut writer = RollingWriter::new(tdir, schema.clone(), opts.limits, 0)?
                        .with_prefix(format!("p{k:05}-"));
                    let mut files = vec![];
                    let mut emit =
                        |batch: arrow::array::RecordBatch, _pos: Option<i64>| -> Result<()> {
                            pb.inc(batch.num_rows() as u64);
                            let (f, hashes) = writer.write_hashed(&batch)?;
                            recorder.add(&batch, &hashes)?;
                            if let Some(f) = f {
                                recorder.commit(&f)?;
                                files.push(f);
                            }
                            Ok(())
                        };
                    match reader.read_partition(info, &part, &mut emit)? {
                        ReadEnd::Widen { column, reason } => Ok(PartOutcome::Widen(column, reason)),
                        ReadEnd::Done { rows, .. } => {
                            if let Some(f) = writer.finish(false)? {
                                recorder.commit(&f)?;
                                files.push(f);
                            }
                            Ok(PartOutcome::Done(files, rows))
                        }
                    }
                })();
                if !matches!(outcome, Ok(PartOutcome::Done(..))) {
                    stop.store(true, Ordering::Relaxed);
                }
                if tx.send((k, outcome)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // The main thread records each finished partition, so the manifest is written by one thread only.
        for (k, outcome) in rx {
            match outcome {
                Ok(PartOutcome::Done(files, rows)) => {
                    if first_error.is_some() || widen.is_some() {
                        continue;
                    }
                    let entry = &mut manifest.tables[i];
                    entry.files.extend(files);
                    entry.partitions[k].done = true;
                    entry.partitions[k].rows = rows;
                    if let Err(e) = manifest.save(dir) {
                        stop.store(true, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                }
                Ok(PartOutcome::Widen(c, r)) => {
                    widen.get_or_insert((c, r));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    pb.finish_and_clear();
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(w) = widen {
        return Ok(Some(w));
    }
    let entry = &mut manifest.tables[i];
    // An empty table still gets one (empty) file, so its schema survives.
    if entry.files.is_empty() {
        let writer =
            RollingWriter::new(&tdir, schema, opts.limits, 0)?.with_prefix("p00000-".into());
        if let Some(f) = writer.finish(true)? {
            entry.files.push(f);
        }
    }
    entry.files.sort_by(|a, b| a.file.cmp(&b.file));
    let mut sum = Checksum::default();
    for f in &entry.files {
        sum.combine(f.checksum()?);
    }
    entry.rows = sum.rows;
    entry.checksum = sum.to_hex();
    entry.read_up_to = serde_json::json!({
        "rows": entry.rows,
        "partitions": entry.partitions.len(),
    });
    entry.complete = true;
    tracing::info!(table = %entry.info.name, rows = entry.rows, files = entry.files.len(), partitions = entry.partitions.len(), "table staged");
    manifest.save(dir)?;
    Ok(None)
}

/// Deletes part files (and temporaries) in `tdir` that the manifest does not list: leftovers of a crash.
fn remove_unlisted(tdir: &Path, listed: &[PartFile]) -> Result<()> {
    for e in fs::read_dir(tdir)
        .map_err(Error::io("list", tdir))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !listed.iter().any(|f| f.file == name) {
            fs::remove_file(e.path()).map_err(Error::io("remove", e.path()))?;
        }
    }
    Ok(())
}
