//! The Neo4j (Bolt) target (issue 16) against ArcadeDB over Bolt, started by the project's script: the code-graph
//! fixture through `sql/codegraph.sql` into File/Class/Function nodes and CONTAINS/IMPORTS/EXTENDS/CALLS/HAS_METHOD
//! relationships whose counts equal the source's (orphans not loaded), each node with its embedding; a second run
//! changes no count; the id constraint refuses a duplicate; rollback leaves only what was there before; a wrong
//! password fails clearly without showing it.

use crate::common::*;

/// One count (column `c`) from the test server over Bolt.
fn count(db: &str, q: &str) -> i64 {
    let (rt, g) = bolt(db);
    rt.block_on(async {
        let mut s = g.execute(neo4rs::query(q)).await.unwrap();
        let r = s.next().await.unwrap().expect("a row");
        r.get::<i64>("c").unwrap()
    })
}

fn sqlite_one(sql: &str) -> i64 {
    let c = rusqlite::Connection::open(fixture()).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn code_graph_into_bolt_counts_idempotence_constraint_and_rollback() {
    let url = arcadedb_fixture("it_target_graph", "preexisting.cypher");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    let fx = fixture();
    let sql = repo().join("sql/codegraph.sql");
    let args = [
        "run",
        "--source",
        p(&fx),
        "--sql",
        p(&sql),
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-user",
        "root",
        "--target-password",
        ARCADEDB_PASSWORD,
        "--max-predicted-loss",
        "1",
    ];
    // The labels come from the mapping (sql/codegraph.sql's space_labels view), through the bundle.
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains(ARCADEDB_PASSWORD));
    let db = "it_target_graph";
    // The code graph's lookup index on `name` exists for each label (asked through ArcadeDB's own SQL over HTTP:
    // its Cypher has no SHOW INDEXES).
    let http: u16 = arcadedb_port().parse::<u16>().unwrap() + 1;
    let o = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-u",
            &format!("root:{ARCADEDB_PASSWORD}"),
            &format!("http://127.0.0.1:{http}/api/v1/query/{db}"),
            "-d",
            r#"{"language":"sql","command":"select from schema:indexes"}"#,
        ])
        .output()
        .unwrap();
    let indexes = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{indexes}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for label in ["File", "Class", "Function"] {
        assert!(
            indexes.contains(&format!(r#""name":"engram_{label}_name","indexType":"LSM_TREE","typeName":"{label}","properties":[["name"]]"#)),
            "no name index on {label}: {indexes}"
        );
    }
    for label in ["File", "Class", "Function"] {
        assert_eq!(
            count(db, &format!("MATCH (n:{label}) RETURN count(n) AS c")),
            sqlite_one(&format!(
                "SELECT count(*) FROM nodes WHERE type = '{label}'"
            )),
            "{label} nodes"
        );
    }
    // Relationships per type equal the source's edges whose two ends exist (the others are orphans, not loaded).
    for ty in ["CONTAINS", "IMPORTS", "EXTENDS", "CALLS", "HAS_METHOD"] {
        assert_eq!(
            count(db, &format!("MATCH ()-[e:{ty}]->() RETURN count(e) AS c")),
            sqlite_one(&format!(
                "SELECT count(*) FROM edges e JOIN nodes s ON s.id = e.source JOIN nodes t ON t.id = e.target
                 WHERE e.type = '{ty}'"
            )),
            "{ty} relationships"
        );
    }
    let nodes = sqlite_one("SELECT count(*) FROM nodes");
    assert_eq!(
        count(
            db,
            "MATCH (n:Node) WHERE size(n.embedding) = 768 RETURN count(n) AS c"
        ),
        nodes,
        "every node has its 768 floats"
    );
    assert_eq!(count(db, "MATCH (n:Legacy) RETURN count(n) AS c"), 1);

    // A second identical run changes no count.
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count(db, "MATCH (n:Node) RETURN count(n) AS c"), nodes);
    assert_eq!(
        count(db, "MATCH ()-[e]->() RETURN count(e) AS c"),
        sqlite_one(
            "SELECT count(*) FROM edges e JOIN nodes s ON s.id = e.source JOIN nodes t ON t.id = e.target"
        )
    );

    // The read-back compares every node's content property by property: a property the bundle does not have
    // (which a load's MERGE leaves in place) fails the target check, naming the node; removed, it passes again.
    let one = "MATCH (n:Node) WHERE n.id = 'code_src/pkg/mod_1.py'";
    cypher(
        db,
        &[neo4rs::query(&format!("{one} SET n.reviewer = 'someone'"))],
    );
    let out = run(&args);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let report = json(&bundle.with_extension("work").join("report.json"));
    let failed: Vec<_> = report["delivery"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["passed"].as_bool().unwrap_or(true))
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        failed,
        vec!["target_content".to_string()],
        "{}",
        report["delivery"]
    );
    assert!(report["delivery"]
        .to_string()
        .contains("code_src/pkg/mod_1.py"));
    cypher(db, &[neo4rs::query(&format!("{one} REMOVE n.reviewer"))]);
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // The id constraint refuses a duplicate.
    let (rt, g) = bolt(db);
    let refused = rt.block_on(async {
        g.run(neo4rs::query(
            "CREATE (:Node {id: 'code_src/pkg/mod_1.py'})",
        ))
        .await
        .is_err()
    });
    assert!(refused, "a duplicate id was accepted");

    // Rollback leaves only what was there before.
    let out = run(&[
        "rollback",
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-user",
        "root",
        "--target-password",
        ARCADEDB_PASSWORD,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count(db, "MATCH (n:Node) RETURN count(n) AS c"), 0);
    assert_eq!(count(db, "MATCH ()-[e]->() RETURN count(e) AS c"), 0);
    assert_eq!(count(db, "MATCH (n:Legacy) RETURN count(n) AS c"), 1);
}

#[test]
fn wrong_password_fails_clearly_without_showing_it() {
    let url = arcadedb_fixture("it_target_graph_pw", "preexisting.cypher");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&bundle)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&[
        "load",
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-user",
        "root",
        "--target-password",
        "wrong-pw-123",
        "--max-predicted-loss",
        "1",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-pw-123"), "{}", stderr(&out));
    assert!(stderr(&out).contains("password"), "{}", stderr(&out));
}

/// A load SIGKILLed after its first checkpointed batches and started again ends with every node exactly once
/// (MERGE on id: the units sent twice land once) and every relationship.
#[test]
fn a_killed_load_resumes_to_exactly_the_bundle() {
    let url = arcadedb_fixture("it_target_graph_kill", "preexisting.cypher");
    let tmp = tempfile::tempdir().unwrap();
    let db = large_sqlite(tmp.path(), 3000);
    let bundle = tmp.path().join("b");
    let out = run(&["run", "--source", p(&db), "--target", p(&bundle)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let args = [
        "load",
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-user",
        "root",
        "--target-password",
        ARCADEDB_PASSWORD,
        "--target-batch-size",
        "50",
        "--target-parallel",
        "2",
        "--max-predicted-loss",
        "1",
        "--quiet",
    ];
    let ckpt =
        std::path::Path::new(&format!("{}.work", bundle.display())).join("load-checkpoint.json");
    assert!(
        crate::resume::run_and_kill(&args, &|| ckpt.is_file()),
        "the load ended before it could be killed (its stderr is printed above)"
    );
    let memories = json(&bundle.join("bundle.json"))["totals"]["memories"]
        .as_u64()
        .unwrap() as i64;
    let edges = json(&bundle.join("bundle.json"))["totals"]["edges"]
        .as_u64()
        .unwrap() as i64;
    let partial = count(
        "it_target_graph_kill",
        "MATCH (n:Node) RETURN count(n) AS c",
    );
    assert!(partial < memories, "killed after {partial} of {memories}");
    let out = run(&args[..args.len() - 1]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        count(
            "it_target_graph_kill",
            "MATCH (n:Node) RETURN count(n) AS c"
        ),
        memories
    );
    assert_eq!(
        count(
            "it_target_graph_kill",
            "MATCH (n:Node) RETURN count(DISTINCT n.id) AS c"
        ),
        memories
    );
    assert_eq!(
        count(
            "it_target_graph_kill",
            "MATCH (:Node)-[e]->(:Node) RETURN count(e) AS c"
        ),
        edges
    );
}

/// Nothing listens on the port: `run` stops before the snapshot (no bundle written) with exit 4 and a message that
/// names the target; `load` of a finished bundle the same.
#[test]
fn an_unreachable_server_fails_fast_and_names_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = format!("bolt://127.0.0.1:{port}/neo4j");
    let started = std::time::Instant::now();
    let out = run(&[
        "run",
        "--source",
        p(&fixture()),
        "--bundle",
        p(&bundle),
        "--target",
        &target,
        "--target-user",
        "root",
        "--target-password",
        "pw-not-shown-42",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("pw-not-shown-42"), "{e}");
    assert!(!bundle.exists(), "stopped before the bundle was written");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "fails fast"
    );
    // A finished bundle sent to the same address: the same answer.
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&bundle)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&[
        "load",
        "--bundle",
        p(&bundle),
        "--target",
        &target,
        "--target-user",
        "root",
        "--target-password",
        "pw-not-shown-42",
        "--max-predicted-loss",
        "1",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
}
