//! Sinks write what the pipeline produced. The list is explicit: the Engram bundle (embedded default, a
//! directory), the live Engram server (`engram+http://`, `engram+grpc://`, loaded from a bundle); Neo4j and
//! pgvector later.

pub mod engram;

use crate::error::{Error, Result};

/// A bundle directory as given (`--target out/`, `--bundle ./b//`) without trailing separators: its siblings
/// `<dir>.partial`, `<dir>.old` and `<dir>.work` are then next to it, never inside it (a bundle built in
/// `out/.partial` could not be renamed onto `out/`, its own parent).
pub fn bundle_path(p: &std::path::Path) -> std::path::PathBuf {
    let normal: std::path::PathBuf = p.components().collect();
    if normal.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        normal
    }
}

/// Where `--target` points.
#[derive(Debug, Clone)]
pub enum Target {
    Bundle(std::path::PathBuf),
    /// A running Engram server; `load --bundle DIR` sends a finished bundle there.
    Engram(engram::EngramTarget),
}

impl Target {
    pub fn parse(spec: &str) -> Result<Target> {
        if spec.starts_with("engram+http://") || spec.starts_with("engram+grpc://") {
            return Ok(Target::Engram(engram::EngramTarget::parse(spec)?));
        }
        for scheme in [
            "engram://",
            "bolt://",
            "neo4j://",
            "postgres://",
            "postgresql://",
        ] {
            if spec.starts_with(scheme) {
                return Err(Error::usage(format!(
                    "target {scheme}...: this sink is not built yet; --target takes a directory for an Engram bundle, or engram+http:// / engram+grpc:// with `load --bundle`"
                )));
            }
        }
        Ok(Target::Bundle(bundle_path(std::path::Path::new(spec))))
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Bundle(p) => p.display().to_string(),
            Target::Engram(t) => t.describe(),
        }
    }

    /// The bundle directory of a bundle target; a live server is loaded from a finished bundle instead.
    pub fn bundle_dir(self) -> Result<std::path::PathBuf> {
        match self {
            Target::Bundle(p) => Ok(p),
            Target::Engram(t) => Err(Error::usage(format!(
                "--target {}: this command writes a bundle; use `engram-migrate run --bundle DIR --target {}` \
                 (writes the bundle, then sends it), or send a finished bundle with `engram-migrate load --bundle DIR \
                 --target {}`",
                t.describe(),
                t.describe(),
                t.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_bundle_target_has_no_trailing_separator() {
        for (given, want) in [("out/", "out"), ("a/b//", "a/b"), ("./x/", "./x"), ("/tmp/b", "/tmp/b"), ("b", "b")] {
            let t = Target::parse(given).unwrap().bundle_dir().unwrap();
            assert_eq!(t, Path::new(want), "--target {given}");
            assert_eq!(bundle_path(Path::new(given)), Path::new(want));
        }
    }
}
