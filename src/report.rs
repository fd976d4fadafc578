//! The run report: `<work-dir>/report.json` (a later `validate`: `validate-report-<time>.json`) for machines, a closing summary table on stdout for people.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::embed::EmbedStats;
use crate::error::Result;
use crate::validate::CheckResult;

#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    pub rows: u64,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableLine {
    pub table: String,
    pub rows: u64,
    pub files: usize,
    pub checksum: String,
    /// Per column: `name: source type -> arrow type (fidelity)`.
    pub columns: Vec<String>,
    /// Columns staged in a wider type than the source declares (values kept exactly, see `columns`).
    pub widened: usize,
    /// Records of the table not in the snapshot (expired, skipped), with the first few keys.
    pub not_staged: Vec<crate::catalog::NotStaged>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SpaceLine {
    pub space: String,
    pub memories: u64,
    pub edges: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    pub command: String,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    pub source: Value,
    pub target: String,
    pub work_dir: String,
    pub mapping: String,
    pub stages: Vec<StageTiming>,
    /// With `--reuse-snapshot`: how the source differs from the snapshot that was migrated (and validated
    /// against, in the source's stead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_changed_since_snapshot: Vec<String>,
    pub tables: Vec<TableLine>,
    /// How the source's tables and columns differ from the last completed run's (`--allow-schema-drift`
    /// proceeded, or the run stopped on it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema_drift: Vec<crate::delta::Drift>,
    /// `--incremental`: how the bundle was made: `layer N` (extended by the changes), or `rewrite: why`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_mode: Option<String>,
    /// `--incremental`: rows added, changed, deleted and unchanged since the last run, per table, and the
    /// bundle's memories against those the target last received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::delta::Delta>,
    /// What the generic mapping embedded of each table and how many distinct texts that gave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<crate::transform::generic::TextChoice>,
    pub spaces: Vec<SpaceLine>,
    pub orphans: u64,
    pub embedding: Option<EmbeddingLine>,
    /// `--engine`: where the SQL stages and the embedding ran (`local`, `ballista://HOST:PORT`).
    pub engine: String,
    /// On a cluster: this run's jobs, their stages and tasks per executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::engine::EngineJobs>,
    pub validation: Vec<CheckResult>,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingLine {
    pub provider: String,
    pub texts: u64,
    pub cache_hits: u64,
    pub embedded: u64,
    pub hit_rate: f64,
    /// Hits answered by the persistent cache with vectors of earlier runs.
    pub hits_from_earlier_runs: u64,
    /// Memories whose vector came from the source and was used as is.
    pub existing_vectors: u64,
    /// Entries of the persistent cache (<work-dir>/embed-cache) after the run; None when it is off.
    pub persistent_cache_entries: Option<u64>,
}

impl EmbeddingLine {
    pub fn new(provider: String, s: EmbedStats) -> Self {
        EmbeddingLine {
            provider,
            texts: s.texts,
            cache_hits: s.cache_hits,
            embedded: s.embedded,
            hit_rate: s.hit_rate(),
            hits_from_earlier_runs: s.hits_from_earlier_runs,
            existing_vectors: s.existing_vectors,
            persistent_cache_entries: None,
        }
    }
}

/// Times a stage.
pub struct Timer(Instant);
impl Timer {
    pub fn start() -> Self {
        Timer(Instant::now())
    }
    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
    pub fn stage(&self, stage: &str, rows: u64, note: impl Into<String>) -> StageTiming {
        StageTiming {
            stage: stage.into(),
            seconds: self.0.elapsed().as_secs_f64(),
            rows,
            note: note.into(),
        }
    }
}

/// A live load's section of `report.json` ("delivery"): what was sent and what the target kept.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub sink: String,
    pub target: String,
    pub bundle: String,
    pub finished_at: String,
    pub sent: u64,
    pub resumed: u64,
    pub seconds: f64,
    pub memories_per_second: f64,
    pub rejected: u64,
    /// What the sink predicted the target would drop silently, before sending (None: no prediction).
    pub predicted_lost: Option<u64>,
    /// "whole bundle", or an incremental run's "delta: N to send, M to delete".
    pub scope: String,
    /// An incremental run's deletes: what the target removed and what it kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletes: Option<crate::sink::DeleteOutcome>,
    /// Every target check passed: the target holds every bundle memory as the bundle has it.
    pub complete: bool,
    /// The target checks (sql/validate/target_*.sql) over the sink's read-back.
    pub checks: Vec<CheckResult>,
    /// The sink's read-back findings (Engram: "protocol", "verification").
    #[serde(flatten)]
    pub read_back: Value,
}

impl Delivery {
    pub fn new(
        sink: &dyn crate::sink::Sink,
        bundle: &Path,
        out: &crate::sink::LoadOutcome,
        rb: &crate::sink::ReadBack,
        checks: &[CheckResult],
        elapsed: std::time::Duration,
    ) -> Delivery {
        Delivery {
            sink: sink.name().into(),
            target: sink.identity(),
            bundle: bundle.display().to_string(),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            sent: out.sent,
            resumed: out.resumed,
            seconds: elapsed.as_secs_f64(),
            memories_per_second: out.rows_per_second,
            rejected: out.rejected.len() as u64,
            predicted_lost: None,
            scope: "whole bundle".into(),
            deletes: None,
            complete: checks.iter().all(|c| c.passed),
            checks: checks.to_vec(),
            read_back: rb.details.clone(),
        }
    }
}

/// Puts a live load's section into `report.json`, next to the run's own sections (a run that wrote the bundle
/// keeps its report; a `load` alone starts one).
pub fn save_delivery(report: &Path, d: &Delivery) -> Result<()> {
    let mut v: Value = std::fs::read(report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({ "command": "load" }));
    v["delivery"] = serde_json::to_value(d)?;
    crate::parquet_io::write_atomic(report, &serde_json::to_vec_pretty(&v)?)
}

impl RunReport {
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::parquet_io::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// The closing summary printed to stdout.
    pub fn print_summary(&self, path: &Path) {
        println!();
        println!(
            "{:<16} {:>12} {:>10} {:>12}  note",
            "stage", "rows", "seconds", "rows/s"
        );
        for s in &self.stages {
            let rate = if s.seconds > 0.0 {
                s.rows as f64 / s.seconds
            } else {
                0.0
            };
            println!(
                "{:<16} {:>12} {:>10.2} {:>12.0}  {}",
                s.stage, s.rows, s.seconds, rate, s.note
            );
        }
        if !self.tables.is_empty() {
            println!();
            println!(
                "{:<32} {:>12} {:>6}  checksum",
                "source table", "rows", "files"
            );
            for t in &self.tables {
                println!(
                    "{:<32} {:>12} {:>6}  {}",
                    t.table, t.rows, t.files, t.checksum
                );
                for c in t.columns.iter().filter(|c| !c.ends_with("(exact)")) {
                    println!("{:<4}{c}", "");
                }
                // Never silent: every record left out is counted here, with the first keys.
                for n in &t.not_staged {
                    println!("{:<4}{} {}: {}", "", n.count, n.kind, n.what);
                    if !n.first.is_empty() {
                        println!("{:<8}first: {}", "", n.first.join(", "));
                    }
                }
            }
        }
        if !self.schema_drift.is_empty() {
            println!();
            println!("schema drift since the last run (--allow-schema-drift):");
            for d in &self.schema_drift {
                println!("{:<4}{d}", "");
            }
        }
        if let Some(d) = &self.delta {
            println!();
            println!(
                "{:<32} {:>10} {:>10} {:>10} {:>10}",
                "delta since the last run", "added", "changed", "deleted", "unchanged"
            );
            for t in &d.tables {
                println!(
                    "{:<32} {:>10} {:>10} {:>10} {:>10}{}",
                    t.table,
                    t.added,
                    t.changed,
                    t.deleted,
                    t.unchanged,
                    if t.key.is_empty() {
                        "  (no key: by whole-row content)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(m) = &d.memories {
                println!(
                    "{:<32} {:>10} {:>10} {:>10} {:>10}",
                    "memories (bundle)", m.added, m.changed, m.deleted, m.unchanged
                );
            }
        }
        if !self.spaces.is_empty() {
            println!();
            println!("{:<32} {:>12} {:>12}", "space", "memories", "edges");
            for s in &self.spaces {
                println!("{:<32} {:>12} {:>12}", s.space, s.memories, s.edges);
            }
            if self.orphans > 0 {
                println!(
                    "{:<32} {:>12} (references to missing rows; kept in orphans/, see the report)",
                    "orphans", self.orphans
                );
            }
        }
        if let Some(c) = &self.cluster {
            let tasks: Vec<String> = c
                .tasks_per_executor
                .iter()
                .map(|(e, n)| format!("{} {n}", e.get(..8).unwrap_or(e)))
                .collect();
            println!();
            println!(
                "engine: {}, {} jobs on {} executors; tasks per executor: {}",
                self.engine,
                c.jobs.len(),
                c.executors.len(),
                if tasks.is_empty() {
                    "none".to_string()
                } else {
                    tasks.join(", ")
                }
            );
        }
        if let Some(e) = &self.embedding {
            println!();
            println!(
                "embedding: {} texts with {}, {} embedded, cache hit rate {:.1}%",
                e.texts,
                e.provider,
                e.embedded,
                e.hit_rate * 100.0
            );
            if let Some(n) = e.persistent_cache_entries {
                println!(
                    "           persistent cache: {} hits from earlier runs, {} entries",
                    e.hits_from_earlier_runs, n
                );
            }
            if e.existing_vectors > 0 {
                println!(
                    "           {} memories kept the vector of their source row",
                    e.existing_vectors
                );
            }
        }
        println!();
        println!(
            "{}: {} in {:.1} s (report: {})",
            self.command,
            self.outcome,
            self.seconds,
            path.display()
        );
    }
}
