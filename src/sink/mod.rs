//! Sinks write what the pipeline produced. The list is explicit: the Engram bundle (embedded default, a
//! directory) today; the live Engram server (`engram+http://`, `engram+grpc://`), Neo4j and pgvector later.

pub mod bundle;

use crate::error::{Error, Result};

/// Where `--target` points.
#[derive(Debug, Clone)]
pub enum Target {
    Bundle(std::path::PathBuf),
}

impl Target {
    pub fn parse(spec: &str) -> Result<Target> {
        for scheme in [
            "engram+http://",
            "engram+grpc://",
            "engram://",
            "bolt://",
            "neo4j://",
            "postgres://",
            "postgresql://",
        ] {
            if spec.starts_with(scheme) {
                return Err(Error::usage(format!(
                    "target {scheme}...: this sink is not built yet; today --target takes a directory for an Engram bundle"
                )));
            }
        }
        Ok(Target::Bundle(std::path::PathBuf::from(spec)))
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Bundle(p) => p.display().to_string(),
        }
    }
}
