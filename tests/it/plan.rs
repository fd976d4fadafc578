//! `plan` prints the plan `run` executes: for every source kind and both kinds of target, the plan section
//! `plan` prints equals the one `run` recorded in `<work>/plan.json`, and it names the source kind, the mapping
//! and its knobs as the run used them.

use std::path::Path;

use crate::common::*;
use crate::engram_standin::{Config, Standin};

/// The lines `plan` prints under "plan:".
fn plan_section(stdout: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in stdout.lines() {
        if l == "plan:" {
            inside = true;
            continue;
        }
        if inside {
            if !l.starts_with("  ") {
                break;
            }
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Runs `plan` and then `run` with the same flags; returns the plan section after checking both agree.
fn plan_then_run(args: &[&str], work: &Path) -> String {
    plan_then_run_exiting(args, work, 0)
}

/// As `plan_then_run`, for a run expected to end with `exit`.
fn plan_then_run_exiting(args: &[&str], work: &Path, exit: i32) -> String {
    let planned = run(&[&["plan"][..], args].concat());
    assert_eq!(code(&planned), 0, "plan failed: {}", stderr(&planned));
    let shown = plan_section(&String::from_utf8_lossy(&planned.stdout));
    assert!(!shown.is_empty(), "plan printed no plan section");
    let ran = run(&[&["run"][..], args].concat());
    assert_eq!(code(&ran), exit, "run: {}", stderr(&ran));
    let recorded = json(&work.join("plan.json"));
    assert_eq!(
        recorded["rendered"].as_str().unwrap(),
        shown,
        "plan showed one plan, run executed another"
    );
    shown
}

#[test]
fn plan_shows_the_plan_run_executes_for_every_source_and_target_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name);
    let work = |name: &str| tmp.path().join(format!("{name}.work"));

    // SQLite into a bundle, with mapping knobs.
    let fx = fixture();
    let shown = plan_then_run(
        &[
            "--source",
            p(&fx),
            "--target",
            p(&t("sq")),
            "--memory-space",
            "code",
            "--confidence",
            "0.9",
        ],
        &work("sq"),
    );
    assert!(shown.contains("source       sqlite "), "{shown}");
    assert!(
        shown.contains("generated from the catalog") && shown.contains("\"memory_space\":\"code\""),
        "{shown}"
    );
    assert!(shown.contains("\"confidence\":0.9"), "{shown}");
    assert!(shown.contains("no live target"), "{shown}");

    // The snapshot of that run as a source: a snapshot of sqlite, mapped as sqlite.
    let snap = work("sq").join("snapshot");
    let shown = plan_then_run(
        &[
            "--source",
            p(&snap),
            "--target",
            p(&t("snap")),
            "--work-dir",
            p(&work("snap")),
        ],
        &work("snap"),
    );
    assert!(
        shown.contains("source       snapshot ") && shown.contains("(a snapshot of sqlite)"),
        "{shown}"
    );

    // PostgreSQL.
    let url = postgres_fixture();
    let shown = plan_then_run(
        &[
            "--source",
            &url,
            "--target",
            p(&t("pg")),
            "--partition-rows",
            "5000",
            "--validate",
            "false",
        ],
        &work("pg"),
    );
    assert!(
        shown.contains("source       postgres ") && shown.contains("partitions of 5000 rows"),
        "{shown}"
    );
    assert!(shown.contains("validate     off"), "{shown}");
    assert!(
        !shown.contains("engram@") && !shown.contains(":engram@"),
        "a password in the plan: {shown}"
    );

    // Neo4j (Bolt), graph mapping knobs.
    let bolt = arcadedb_fixture("it_plan", "codegraph.cypher");
    let shown = plan_then_run(
        &[
            "--source",
            &bolt,
            "--source-user",
            "root",
            "--source-password",
            ARCADEDB_PASSWORD,
            "--target",
            p(&t("bolt")),
            "--bidirectional",
            "--label-to-space",
            "File:files",
        ],
        &work("bolt"),
    );
    assert!(
        shown.contains("source       neo4j ") && shown.contains("sql/neo4j.sql"),
        "{shown}"
    );
    assert!(
        shown.contains("\"bidirectional\":true") && shown.contains("files"),
        "{shown}"
    );
    assert!(!shown.contains(ARCADEDB_PASSWORD));

    // Redis, live and from a dump (both "redis", mapped by sql/redis.sql).
    let _guard = crate::redis::lock(7);
    let (rurl, port) = crate::redis::server(7);
    let mut c = crate::redis::con(&rurl);
    crate::redis::reset(&mut c);
    crate::redis::cmd(&mut c, &[b"SET", b"k", b"v"]);
    crate::redis::cmd(&mut c, &[b"ZADD", b"z", b"1.5", b"m"]);
    let rdb = tmp.path().join("dump.rdb");
    crate::redis::dump(&rurl, port, &rdb);
    for (name, src) in [("rlive", rurl.as_str()), ("rdump", p(&rdb))] {
        let shown = plan_then_run(
            &[
                "--source",
                src,
                "--target",
                p(&t(name)),
                "--hash-field-memories",
            ],
            &work(name),
        );
        assert!(
            shown.contains("source       redis ") && shown.contains("sql/redis.sql"),
            "{name}: {shown}"
        );
        assert!(
            shown.contains("\"hash_field_memories\":true"),
            "{name}: {shown}"
        );
    }

    // A live target, both protocols: the plan names the sink and the delivery limits (new flags).
    for grpc in [false, true] {
        let standin = Standin::start(Config::default());
        let target = if grpc {
            standin.grpc_target()
        } else {
            standin.http_target()
        };
        let name = if grpc { "live_grpc" } else { "live_http" };
        // Exit 5: the stand-in drops near-duplicate hashing embeddings of the fixture, as Engram does.
        let shown = plan_then_run_exiting(
            &[
                "--source",
                p(&fx),
                "--target",
                &target,
                "--bundle",
                p(&t(name)),
                "--target-batch-size",
                "50",
                "--target-parallel",
                "3",
                "--max-predicted-loss",
                "1",
            ],
            &work(name),
            5,
        );
        let delivery = &json(&work(name).join("report.json"))["delivery"];
        assert_eq!(delivery["sink"], "engram", "{delivery}");
        assert!(
            shown.contains("(engram sink), batches of 50 memories, 3 in flight"),
            "{shown}"
        );
        assert!(standin.state.total() > 0, "the run delivered");
    }
}

/// A config file fills what the flags leave unset, generically (no list of fields to forget), and flags win.
#[test]
fn config_file_options_reach_the_plan_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        "memory-space = \"from_file\"\nsample-size = 77\nskip-edges = true\ntarget-parallel = 5\n\
         max-file-rows = 1234\nbatch-size = 999\nsample-seed = 7\ncache-size = 10\nmemory-limit-mb = 100\n",
    )
    .unwrap();
    let out = run(&[
        "plan",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("b")),
        "--config",
        p(&cfg),
        "--batch-size",
        "111",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown = plan_section(&String::from_utf8_lossy(&out.stdout));
    assert!(shown.contains("\"memory_space\":\"from_file\""), "{shown}");
    assert!(shown.contains("\"skip_edges\":true"), "{shown}");
    assert!(shown.contains("sample of 77 rows"), "{shown}");
    assert!(shown.contains("/ 1234 rows"), "{shown}");
    assert!(shown.contains("batches of 111 rows"), "flags win: {shown}");
    for want in ["(seed 7)", "cache 10 entries", "SQL memory 100 MiB"] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    std::fs::write(&cfg, "memory-spcae = \"typo\"\n").unwrap();
    let out = run(&[
        "plan",
        "--source",
        p(&fixture()),
        "--target",
        p(&tmp.path().join("b")),
        "--config",
        p(&cfg),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("memory-spcae"), "{}", stderr(&out));
}

/// The one-stage commands execute the same plan as `run`: snapshot, transform, load and validate one by one,
/// with mapping and embedding knobs, give the bundle `run` gives (same checksums per space).
#[test]
fn stage_commands_execute_the_run_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture();
    let knobs = [
        "--memory-space",
        "whole_graph",
        "--confidence",
        "0.8",
        "--skip-edges",
    ];
    let whole = tmp.path().join("whole");
    let o = run(&[
        &["run", "--source", p(&fx), "--target", p(&whole)][..],
        &knobs[..],
    ]
    .concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let staged = tmp.path().join("staged");
    for cmd in ["snapshot", "transform", "load", "validate"] {
        let mut args = vec![cmd, "--target", p(&staged)];
        if cmd != "load" {
            args.extend(["--source", p(&fx)]);
        }
        let o = run(&[&args[..], &knobs[..]].concat());
        assert_eq!(code(&o), 0, "{cmd}: {}", stderr(&o));
    }
    let sums = |b: &Path| -> Vec<(String, String, String, u64)> { space_checksums(b) };
    assert_eq!(
        sums(&whole),
        sums(&staged),
        "stage by stage gave another bundle than run"
    );
    assert_eq!(
        sums(&whole).len(),
        1,
        "--memory-space reached the transform"
    );
    // A live target is for run and load; the one-stage commands that work on the bundle say so.
    let o = run(&[
        "snapshot",
        "--source",
        p(&fx),
        "--target",
        "engram+http://127.0.0.1:9",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("works on the bundle"), "{}", stderr(&o));
}
