//! The documentation cannot rot: the README's first command runs as written, and the tutorial's and guides'
//! ```sh blocks run in order through scripts/run-doc.sh against the real servers they start themselves.

use std::process::Command;

use crate::common::*;

/// The first ```sh block of the README: its lines, comments stripped.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README.md starts with a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The README's first command, exactly as written, with `cargo run --` standing for the binary cargo built for
/// this test run: the shipped fixture becomes a validated bundle of code nodes and typed relationships.
#[test]
fn readme_first_command_runs_as_written() {
    let commands = readme_commands();
    assert_eq!(
        commands.len(),
        2,
        "the README starts with two commands: {commands:?}"
    );
    assert_eq!(commands[1], "bash scripts/test.sh");
    let args: Vec<String> = commands[0]
        .strip_prefix("cargo run -- ")
        .unwrap_or_else(|| panic!("the first command is `cargo run -- ...`: {}", commands[0]))
        .split_whitespace()
        .map(String::from)
        .collect();
    // Relative paths as written, from a scratch copy of the repository's fixture so `out/` lands there.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("fixtures")).unwrap();
    std::fs::copy(fixture(), tmp.path().join("fixtures/codegraph.sqlite")).unwrap();
    let o = Command::new(bin())
        .args(&args)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(out.contains("link tables as edges: edges"), "{out}");
    let b = json(&tmp.path().join("out/codegraph.bundle/bundle.json"));
    assert_eq!(b["totals"]["memories"], 379);
    assert_eq!(b["totals"]["edges"], 801);
    assert_eq!(b["totals"]["orphans"], 3);
}

/// Runs a document's ```sh blocks in order through scripts/run-doc.sh with the binary under test: each starts
/// the servers it needs through scripts/services/*.sh on ports of its own and stops them at its end.
fn run_doc(doc: &str) {
    let o = Command::new("bash")
        .arg(repo().join("scripts/run-doc.sh"))
        .arg(repo().join(doc))
        .env("ENGRAM_MIGRATE_BIN", bin())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{doc} failed:\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
        tail(&String::from_utf8_lossy(&o.stdout), 60),
        tail(&stderr(&o), 60)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The tutorial, start to finish: ArcadeDB over Bolt, plan, run, report, DuckDB, PostgreSQL target, a kill and a
/// resume, a customised mapping.
#[test]
fn tutorial_migrate_from_neo4j_runs() {
    run_doc("docs/tutorials/migrate-from-neo4j.md");
}

/// Each guide's quick start, configuration examples and troubleshooting commands, as written.
#[test]
fn guides_run() {
    for doc in [
        "docs/guides/sqlite.md",
        "docs/guides/postgresql.md",
        "docs/guides/neo4j.md",
        "docs/guides/redis.md",
        "docs/guides/targets.md",
    ] {
        run_doc(doc);
    }
}

/// The cluster guide: a scheduler and two executors of this binary, the fixture through them, equal to a local run.
#[cfg(feature = "distributed")]
#[test]
fn distributed_guide_runs() {
    run_doc("docs/distributed.md");
}
