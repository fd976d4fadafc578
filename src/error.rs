//! Typed errors of the library. Every variant names the thing it is about (file, table, column, key) and,
//! where it can, says what to do next. The binary maps `Error::exit_code` to the process exit status, so the
//! domain of an error (the user's input, the source, the target, a failed check) decides how the run ends.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Documented exit codes (see README.md "Exit codes").
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const SOURCE: i32 = 3;
    pub const TARGET: i32 = 4;
    pub const VALIDATION: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, config or mapping SQL: the user must change the command.
    #[error("{0}")]
    Usage(String),

    /// The source cannot be read as asked (missing, not a database, corrupt, unsupported type).
    #[error("source {location}: {message}")]
    Source { location: String, message: String },

    /// The target or the work directory cannot be written.
    #[error("target {location}: {message}")]
    Target { location: String, message: String },

    /// File system error on a named path.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A SQL statement (mapping or validation) failed; `origin` names the file or stage it came from.
    #[error("SQL in {origin}: {message}")]
    Sql { origin: String, message: String },

    /// One or more validation checks returned offending rows.
    #[error("validation failed: {failed} of {total} checks found problems (see the report above and {report})")]
    ValidationFailed {
        failed: usize,
        total: usize,
        report: String,
    },

    /// The source is not what the snapshot in the work directory was taken from any more: resuming would mix
    /// two states, reusing would migrate (and validate against) old data. The user chooses.
    #[error("{}", source_changed(snapshot, changes, *complete))]
    SourceChanged {
        snapshot: String,
        /// What changed, one line per signal (see `catalog::Fingerprint::changes`).
        changes: Vec<String>,
        /// A complete snapshot can be kept on purpose (`--reuse-snapshot`); an interrupted one cannot.
        complete: bool,
    },

    /// The source's tables or columns are not those the last completed run in the work directory migrated:
    /// the mapping may no longer say what the user meant. Stops before the transform unless
    /// `--allow-schema-drift`.
    #[error("{}", schema_drift(changes, record))]
    SchemaDrift {
        /// One line per table or column (see `delta::Drift`).
        changes: Vec<String>,
        /// The record of the last run's schema.
        record: String,
    },

    /// The SQL engine (a Ballista cluster) cannot run the run's queries: unreachable, lost a machine, refused
    /// the plan. Exit 4 like a target: it is the run's infrastructure, not its input.
    #[error("{location}: {message}")]
    Engine { location: String, message: String },

    /// A bug or an impossible state; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

fn source_changed(snapshot: &str, changes: &[String], complete: bool) -> String {
    const SHOWN: usize = 12;
    let mut lines: Vec<String> = changes
        .iter()
        .take(SHOWN)
        .map(|c| format!("  - {c}"))
        .collect();
    if changes.len() > SHOWN {
        lines.push(format!("  - and {} more", changes.len() - SHOWN));
    }
    let choices = if complete {
        "Choose one:\n\
         \x20 --fresh            take a new snapshot and migrate the source as it is now (the bundle is rebuilt;\n\
         \x20                    add --overwrite where the target bundle already exists)\n\
         \x20 --incremental      take a new snapshot and migrate the difference (unchanged memories keep their\n\
         \x20                    vectors; a live target is sent only what changed)\n\
         \x20 --reuse-snapshot   keep the old snapshot on purpose: migrate and validate the data as it was then"
    } else {
        "An interrupted snapshot cannot be finished from a changed source (it would mix two states): start over\n\
         with --fresh, or use another --work-dir."
    };
    let what = if complete { "" } else { "interrupted " };
    format!(
        "the source has changed since the {what}snapshot in {snapshot} was taken:\n{}\n{choices}",
        lines.join("\n")
    )
}

fn schema_drift(changes: &[String], record: &str) -> String {
    let lines: Vec<String> = changes.iter().map(|c| format!("  - {c}")).collect();
    format!(
        "the source's schema has changed since the last completed run (recorded in {record}):\n{}\n\
         The mapping may no longer say what you meant: check it (a generated mapping is regenerated from the new \
         schema; review a --sql file against it), then run again with --allow-schema-drift to proceed; the \
         report lists the drift either way.",
        lines.join("\n")
    )
}

impl Error {
    pub fn source_err(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Source {
            location: location.into(),
            message: message.into(),
        }
    }
    pub fn target_err(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Target {
            location: location.into(),
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }
    pub fn io(
        action: &'static str,
        path: impl AsRef<Path>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
    /// A DataFusion error of the SQL in `origin` (a mapping file, a check, a stage), classified by what failed,
    /// not by its message: the query itself (the user's SQL or data: exit 2), memory (exit 2, with the flag to
    /// raise), the work directory's files (an I/O error anywhere in the chain: exit 4), or DataFusion itself (exit 1).
    pub fn sql(origin: impl Into<String>, err: datafusion::error::DataFusionError) -> Self {
        Self::sql_in(origin, "", err)
    }

    /// As `sql`, with `context` (the statement or view) put before the message.
    pub fn sql_in(
        origin: impl Into<String>,
        context: &str,
        err: datafusion::error::DataFusionError,
    ) -> Self {
        use datafusion::error::DataFusionError as E;
        let origin = origin.into();
        let mut message = err.strip_backtrace();
        if !context.is_empty() {
            message = format!("{context}: {message}");
        }
        let io_in_chain = {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            let mut found = false;
            while let Some(e) = cur {
                if e.downcast_ref::<std::io::Error>().is_some() {
                    found = true;
                    break;
                }
                cur = e.source();
            }
            found
        };
        if let Some(why) = cluster_failure(&message) {
            return Error::Engine {
                location: format!("the cluster running {origin}"),
                message: format!(
                    "{message} ({why}: start what is missing, or use --engine local, and run the same command \
                     again: it resumes after the last finished stage)"
                ),
            };
        }
        match err.find_root() {
            E::ResourcesExhausted(_) => Error::Sql {
                origin,
                message: format!(
                    "{message} (the query needs more memory than --memory-limit-mb allows; raise it)"
                ),
            },
            E::IoError(_) | E::ObjectStore(_) => Error::Target {
                location: origin,
                message: format!("{message} (files of the work directory: check free space and permissions)"),
            },
            _ if io_in_chain => Error::Target {
                location: origin,
                message: format!("{message} (files of the work directory: check free space and permissions)"),
            },
            E::Internal(_) | E::ExecutionJoin(_) => Error::Internal(format!("SQL in {origin}: {message}")),
            _ => Error::Sql { origin, message },
        }
    }

    /// The process exit code for this error; see `exit`.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::Sql { .. }
            | Error::SourceChanged { .. }
            | Error::SchemaDrift { .. } => exit::USAGE,
            Error::Source { .. } => exit::SOURCE,
            Error::Target { .. } | Error::Engine { .. } | Error::Io { .. } => exit::TARGET,
            Error::ValidationFailed { .. } => exit::VALIDATION,
            Error::Internal(_) => exit::INTERNAL,
        }
    }
}

/// A query that failed on a Ballista cluster rather than in its SQL: an executor or the scheduler went away
/// (the results of a finished job could not be fetched, a connection was refused) or the scheduler could not run
/// the plan (a stock scheduler without this tool's functions). Ballista reports these as execution errors with
/// only a message, so its messages (ballista-core 50, `distributed_query.rs` and its gRPC client) are what
/// tells them apart from an error of the user's SQL; a local session never produces them.
fn cluster_failure(message: &str) -> Option<&'static str> {
    if message.contains("GrpcConnectionError")
        || message.contains("Error connecting to Ballista")
        // A result stream (Arrow Flight over HTTP/2) cut off by an executor that went away while it was read.
        || message.contains("h2 protocol error")
    {
        Some("a machine of the cluster cannot be reached")
    } else if message.contains("Fail to execute query due to") {
        Some("the cluster's scheduler refused the query")
    } else if message.contains("Job ")
        && message.contains(" failed: ")
        && [
            "ExecutorLost",
            "FetchPartitionError",
            "ResultLost",
            "IoError",
            // The scheduler's own words for a stage given up after its executor went away.
            "lost",
        ]
        .iter()
        .any(|r| message.contains(r))
    {
        // Only the cluster's own failure reasons: a task that failed on the data or the SQL stays the SQL's.
        Some("the cluster lost a machine or its results during the job")
    } else if message.contains("FetchFailed") || message.contains("Failed to fetch partition") {
        Some("results held by an executor that went away could not be read")
    } else {
        None
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Internal(format!("arrow: {e}"))
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Internal(format!("parquet: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::error::ArrowError;
    use datafusion::error::DataFusionError as E;

    /// A cluster's failures (as Ballista words them) are the engine's, exit 4, with what to do; the same SQL's
    /// own errors stay the user's.
    #[test]
    fn cluster_failures_are_the_engines() {
        for m in [
            "GrpcConnectionError(\"Error connecting to Ballista scheduler or executor at http://127.0.0.1:1\")",
            "Fail to execute query due to ExecuteQueryFailureResult { failure: Some(PlanParsingFailure(\"x\")) }",
            "Job abc failed: Task failed: ExecutorLost(\"e1\")",
            "Arrow error: External error: status: Unknown, message: \"h2 protocol error: error reading a body from connection\"",
            "Job abc failed: Job failed due to stage 2 failed: Task failure due to Executor e1 lost",
        ] {
            let e = Error::sql("transform", E::Execution(m.into()));
            assert_eq!(e.exit_code(), exit::TARGET, "{m}");
            assert!(e.to_string().contains("run the same command again"), "{e}");
        }
        let e = Error::sql("transform", E::Plan("column x not found".into()));
        assert_eq!(e.exit_code(), exit::USAGE);
        let e = Error::sql(
            "transform",
            E::Execution(
                "Job abc failed: Task failed: ExecutionError(\"division by zero\")".into(),
            ),
        );
        assert_eq!(
            e.exit_code(),
            exit::USAGE,
            "a failure of the SQL on the data is the SQL's"
        );
    }

    /// Classified by the error's variant, wherever it sits in the chain; the message text decides nothing.
    #[test]
    fn sql_errors_are_classified_by_variant() {
        let disk = E::IoError(std::io::Error::other("No space left on device"));
        assert_eq!(Error::sql("transform", disk).exit_code(), exit::TARGET);
        let wrapped = E::ArrowError(
            Box::new(ArrowError::ExternalError(Box::new(E::IoError(
                std::io::Error::other("disk full"),
            )))),
            None,
        );
        assert_eq!(Error::sql("transform", wrapped).exit_code(), exit::TARGET);
        assert_eq!(
            Error::sql("t", E::Internal("bug".into())).exit_code(),
            exit::INTERNAL
        );
        assert_eq!(
            Error::sql("t", E::Plan("no such column x".into())).exit_code(),
            exit::USAGE
        );
        // A message that merely mentions memory is not a memory error; a real one gets the hint, even wrapped.
        let lookalike = Error::sql(
            "t",
            E::Execution("Resources exhausted: in a string column".into()),
        );
        assert!(
            !lookalike.to_string().contains("--memory-limit-mb"),
            "{lookalike}"
        );
        let oom = E::Context(
            "sorting".into(),
            Box::new(E::ResourcesExhausted("Failed to allocate 1 GB".into())),
        );
        let oom = Error::sql("t", oom);
        assert_eq!(oom.exit_code(), exit::USAGE);
        assert!(oom.to_string().contains("--memory-limit-mb"), "{oom}");
        let ctx = Error::sql_in("m.sql", "view memories", E::Plan("x".into()));
        assert!(ctx.to_string().contains("view memories: "), "{ctx}");
    }
}
