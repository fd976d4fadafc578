//! One integration-test binary (as ripgrep does), split in modules. These tests run the real binary on real
//! SQLite files and against a real PostgreSQL 15 + pgvector server that scripts/services/postgres.sh installs and
//! starts on loopback, and against ArcadeDB (Bolt + Cypher) that scripts/services/arcadedb.sh starts. Python readers (pyarrow, DuckDB) come from scripts/python-env.sh.

mod bad_input;
mod common;
#[cfg(feature = "distributed")]
mod distributed;
mod docs;
mod e2e;
mod embed;
mod engram;
mod engram_clients;
mod engram_standin;
mod exact;
mod faults;
mod incremental;
mod neo4j;
mod neo4j_target;
mod openai_server;
mod pg_target;
mod plan;
mod postgres;
mod redis;
mod rerun;
mod resume;
mod sink_api;
