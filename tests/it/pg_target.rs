//! The PostgreSQL + pgvector target (issue 17) against the real PostgreSQL 15 + pgvector server the project's
//! script starts: the fixture end to end with the HNSW index and foreign keys, counts equal to the bundle; a
//! second run changes nothing; rollback restores what was there before (an overwritten row included); a killed
//! load leaves the target as it was and a re-run completes it; a wrong password and a table of another shape
//! fail clearly, naming the column and never printing the password.

use std::path::Path;

use crate::common::*;

fn one(db: &str, sql: &str) -> String {
    psql(db, sql).trim().to_string()
}

fn count(db: &str, table: &str) -> u64 {
    one(db, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

fn totals(bundle: &Path, what: &str) -> u64 {
    json(&bundle.join("bundle.json"))["totals"][what]
        .as_u64()
        .unwrap()
}

#[test]
fn fixture_into_postgres_with_index_idempotent_and_rolled_back() {
    let url = pg_database("it_target");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    let fx = fixture();
    let args = [
        "run",
        "--source",
        p(&fx),
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
    ];
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains(":engram@"), "password printed");
    let plan = std::fs::read_to_string(format!("{}.work/plan.json", bundle.display())).unwrap();
    assert!(!plan.contains(":engram@"), "password recorded: {plan}");

    // The shape: vector(768) with an HNSW cosine index, edges with foreign keys at both ends.
    assert_eq!(
        one(
            "it_target",
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'engram.memories'::regclass AND attname = 'embedding'"
        ),
        "vector(768)"
    );
    let indexes = psql(
        "it_target",
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'engram' AND tablename = 'memories'",
    );
    assert!(
        indexes.contains("USING hnsw (embedding vector_cosine_ops)"),
        "{indexes}"
    );
    assert_eq!(
        one(
            "it_target",
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'engram.edges'::regclass AND contype = 'f'"
        ),
        "2"
    );
    // Counts equal to the bundle's, embeddings bit for bit (the read-back compared every one).
    let memories = totals(&bundle, "memories");
    assert_eq!(count("it_target", "engram.memories"), memories);
    assert_eq!(count("it_target", "engram.edges"), totals(&bundle, "edges"));
    assert_eq!(
        count("it_target", "engram.orphans"),
        totals(&bundle, "orphans")
    );
    let report = json(&Path::new(&format!("{}.work", bundle.display())).join("report.json"));
    let d = &report["delivery"];
    assert!(
        d["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["bundle"] == s["target"] && s["embedding_differs"] == 0),
        "{d}"
    );
    // `validate --work-dir W` alone re-checks the run's bundle (the password is not needed for that).
    let work = format!("{}.work", bundle.display());
    let out = run(&["validate", "--work-dir", work.as_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A nearest-neighbour query through the index answers with the memory itself.
    let nn = one(
        "it_target",
        "SET enable_seqscan = off;
         SELECT m.id FROM engram.memories m,
           (SELECT embedding FROM engram.memories WHERE id = 'nodes_src/pkg/mod_1.py' LIMIT 1) q
         ORDER BY m.embedding <=> q.embedding LIMIT 1",
    );
    assert!(nn.ends_with("nodes_src/pkg/mod_1.py"), "{nn}");

    // A second run changes nothing.
    let before = one(
        "it_target",
        "SELECT md5(string_agg(space || id || content::text, ',' ORDER BY space, id)) FROM engram.memories",
    );
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already recorded"),
        "{}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("was already loaded into") && stdout.contains("nothing sent"),
        "{stdout}"
    );
    assert!(!stdout.contains(": sent "), "{stdout}");
    assert_eq!(count("it_target", "engram.memories"), memories);
    assert_eq!(count("it_target", "engram.engram_loads"), 1);
    assert_eq!(
        one(
            "it_target",
            "SELECT md5(string_agg(space || id || content::text, ',' ORDER BY space, id)) FROM engram.memories"
        ),
        before
    );

    // The read-back compares every memory's content (as JSON) and embedding with the bundle: a row changed in
    // the target since fails the re-run's checks, by name.
    psql(
        "it_target",
        "UPDATE engram.memories SET content = jsonb_set(content, '{name}', '\"changed\"')
         WHERE id = 'nodes_src/pkg/mod_1.py';
         UPDATE engram.memories SET embedding = (SELECT embedding FROM engram.memories WHERE id = 'nodes_src/pkg/mod_2.py')
         WHERE id = 'nodes_src/pkg/mod_3.py';",
    );
    let out = run(&args);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let report = json(&Path::new(&format!("{}.work", bundle.display())).join("report.json"));
    let failed: Vec<&str> = report["delivery"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec!["target_embeddings", "target_content"],
        "{report}"
    );

    // Rollback restores the before: here, nothing at all.
    let out = run(&["rollback", "--bundle", p(&bundle), "--target", url.as_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count("it_target", "engram.memories"), 0);
    assert_eq!(count("it_target", "engram.edges"), 0);
    assert_eq!(count("it_target", "engram.engram_loads"), 0);
    let leftovers = one(
        "it_target",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'engram' AND tablename LIKE '%\\_\\_%'",
    );
    assert_eq!(leftovers, "0", "staging or before-image tables left");

    // A row that was there before, with other content, is overwritten by the load and put back by rollback.
    psql(
        "it_target",
        "INSERT INTO engram.memories (space, id, content, confidence, activation, decay_rate, memory_type,
                                      source_kind, source_name, source_key)
         VALUES ('nodes', 'nodes_src/pkg/mod_1.py', '{\"mine\": true}', 0.1, 0.1, 0.1, 'semantic', 'manual', 'x', '{}');",
    );
    let out = run(&["load", "--bundle", p(&bundle), "--target", url.as_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count("it_target", "engram.memories"), memories);
    assert_ne!(
        one(
            "it_target",
            "SELECT content::text FROM engram.memories WHERE id = 'nodes_src/pkg/mod_1.py'"
        ),
        "{\"mine\": true}"
    );
    let out = run(&["rollback", "--bundle", p(&bundle), "--target", url.as_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count("it_target", "engram.memories"), 1);
    assert_eq!(
        one(
            "it_target",
            "SELECT content::text FROM engram.memories WHERE id = 'nodes_src/pkg/mod_1.py'"
        ),
        "{\"mine\": true}"
    );
    // Nothing to roll back any more: said, nothing changed.
    let out = run(&["rollback", "--bundle", p(&bundle), "--target", url.as_str()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(count("it_target", "engram.memories"), 1);
}

#[test]
fn wrong_password_and_a_table_of_another_shape_fail_clearly() {
    let url = pg_database("it_target_bad");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    let out = run(&["run", "--source", p(&fixture()), "--target", p(&bundle)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let wrong = url.replace(":engram@", ":not-the-password@");
    let out = run(&["load", "--bundle", p(&bundle), "--target", wrong.as_str()]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("password"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("not-the-password"),
        "{}",
        stderr(&out)
    );

    psql(
        "it_target_bad",
        "CREATE SCHEMA legacy; CREATE TABLE legacy.memories (space text, id integer);",
    );
    let out = run(&[
        "load",
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-schema",
        "legacy",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("memories.id: is integer, expected text"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        one(
            "it_target_bad",
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'legacy' AND table_name = 'memories'"
        ),
        "2",
        "the table was altered"
    );
}

/// A load SIGKILLed after some units reached the staging table: the real tables are as before (a reader sees
/// nothing of it), and the same command started again completes with every memory once.
#[test]
fn a_killed_load_is_invisible_and_a_rerun_completes_it() {
    let url = pg_database("it_target_kill");
    let tmp = tempfile::tempdir().unwrap();
    let db = large_sqlite(tmp.path(), 20_000);
    let bundle = tmp.path().join("b");
    let out = run(&["run", "--source", p(&db), "--target", p(&bundle)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let args = [
        "load",
        "--bundle",
        p(&bundle),
        "--target",
        url.as_str(),
        "--target-batch-size",
        "200",
        "--target-parallel",
        "1",
        "--quiet",
    ];
    let ckpt = Path::new(&format!("{}.work", bundle.display())).join("load-checkpoint.json");
    assert!(
        crate::resume::run_and_kill(&args, &|| ckpt.is_file()),
        "the load ended before it could be killed (its stderr is printed above)"
    );
    let staged: u64 = one(
        "it_target_kill",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'engram' AND tablename LIKE 'memories\\_\\_load\\_%'",
    )
    .parse()
    .unwrap();
    assert_eq!(staged, 1, "the staging table holds the units sent");
    assert_eq!(
        count("it_target_kill", "engram.memories"),
        0,
        "a reader sees a half load"
    );
    let out = run(&args[..args.len() - 1]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).is_empty() || !stderr(&out).contains("error"));
    let memories = totals(&bundle, "memories");
    assert_eq!(count("it_target_kill", "engram.memories"), memories);
    assert_eq!(
        one(
            "it_target_kill",
            "SELECT count(DISTINCT (space, id)) FROM engram.memories"
        ),
        memories.to_string()
    );
}

/// An OpenAI-compatible provider answering 1,536 floats (the local test server): the target's column is
/// `vector(1536)` with its HNSW index, every embedding bit for bit.
#[test]
fn openai_1536_dimensions_fill_a_vector_1536_column() {
    use crate::openai_server::{Behaviour, Server};
    let server = Server::start(Behaviour {
        dim: 1536,
        ..Default::default()
    });
    let url = pg_database("it_target_1536");
    let tmp = tempfile::tempdir().unwrap();
    // No --bundle: with --work-dir W the run keeps its bundle in W/bundle.
    let work = tmp.path().join("w");
    let bundle = work.join("bundle");
    let provider = format!("openai:{}", server.url);
    let fx = fixture();
    let out = run(&[
        "run",
        "--source",
        p(&fx),
        "--work-dir",
        p(&work),
        "--target",
        url.as_str(),
        "--embedding-provider",
        &provider,
        "--embedding-model",
        "test-embed",
        "--max-predicted-loss",
        "1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        one(
            "it_target_1536",
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'engram.memories'::regclass AND attname = 'embedding'"
        ),
        "vector(1536)"
    );
    assert!(psql(
        "it_target_1536",
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'engram' AND tablename = 'memories'"
    )
    .contains("USING hnsw"));
    assert_eq!(
        count("it_target_1536", "engram.memories"),
        totals(&bundle, "memories")
    );
    let report = json(&work.join("report.json"));
    assert!(
        report["delivery"]["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["embedding_differs"] == 0),
        "{report}"
    );
}
