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

    /// A bug or an impossible state; please report it.
    #[error("internal error: {0}")]
    Internal(String),
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
    pub fn sql(origin: impl Into<String>, err: impl std::fmt::Display) -> Self {
        let mut message = err.to_string();
        if message.contains("Resources exhausted") {
            message
                .push_str(" (the query needs more memory than --memory-limit-mb allows; raise it)");
        }
        Error::Sql {
            origin: origin.into(),
            message,
        }
    }

    /// The process exit code for this error; see `exit`.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Sql { .. } => exit::USAGE,
            Error::Source { .. } => exit::SOURCE,
            Error::Target { .. } | Error::Io { .. } => exit::TARGET,
            Error::ValidationFailed { .. } => exit::VALIDATION,
            Error::Internal(_) => exit::INTERNAL,
        }
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
