//! Options of every command, from flags and from a TOML config file (`--config FILE`, same names in kebab-case).
//! Flags win over the file. The doc comment of each field is its user documentation (`--help`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Options {
    /// What to migrate: a SQLite file (PATH or sqlite://PATH), a PostgreSQL URL
    /// (postgres://USER:PASSWORD@HOST:PORT/DB), a Neo4j/Bolt URL (bolt://HOST:PORT[/DATABASE]), a live Redis
    /// (redis://:PASSWORD@HOST:PORT), a Redis RDB dump file, or a snapshot directory written earlier. Passwords are
    /// never printed.
    #[arg(long, short = 's', env = "ENGRAM_MIGRATE_SOURCE")]
    pub source: Option<String>,

    /// Where to write: a directory that becomes the Engram bundle; or, with `--bundle DIR` (`run` writes it first,
    /// `load` sends a finished one), a live target: a running Engram server, engram+http://HOST:PORT or
    /// engram+grpc://HOST:PORT[?http_port=N] (API key from ENGRAM_API_KEY); PostgreSQL + pgvector,
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB (password also from ENGRAM_MIGRATE_TARGET_PASSWORD or PGPASSWORD);
    /// or Neo4j over Bolt, bolt://HOST:PORT/DB (--target-user/--target-password). Passwords are never printed.
    #[arg(long, short = 't')]
    pub target: Option<String>,

    /// With a live target: for `load`, the finished bundle directory to send; for `run`, the directory where
    /// the bundle is written (and kept) before it is sent [default for `run`: <work-dir>/bundle when --work-dir
    /// is given].
    #[arg(long)]
    pub bundle: Option<PathBuf>,

    /// Directory for the snapshot, generated SQL, staged output, checkpoints and the run report
    /// [default: <target>.work].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// TOML file with any of these options (kebab-case keys); flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Mapping SQL to run instead of the generated one (copy <work-dir>/mapping.sql or sql/codegraph.sql and edit it).
    #[arg(long)]
    pub sql: Option<PathBuf>,

    /// Bolt sources: the user [default: from the URL, else $NEO4J_USERNAME, else neo4j].
    #[arg(long, env = "ENGRAM_MIGRATE_SOURCE_USER")]
    pub source_user: Option<String>,

    /// Bolt sources: the password [default: from the URL, else $NEO4J_PASSWORD]. Never printed.
    #[arg(long, env = "ENGRAM_MIGRATE_SOURCE_PASSWORD", hide_env_values = true)]
    pub source_password: Option<String>,

    /// Bolt sources: records per fetch (Bolt PULL) of the streamed node and relationship reads [default: 8192].
    #[arg(long)]
    pub fetch_size: Option<usize>,

    /// Graph sources: label to space, e.g. "Person:people,Company:companies". A node with several labels goes to
    /// the space of the first label of this list it has, else to --memory-space-prefix + its first label in
    /// alphabetical order.
    #[arg(long)]
    pub label_to_space: Option<String>,

    /// Graph sources: what a node's memory id is made from [default: its element id, neo4j_node_<elementId(n)>,
    /// which the server reuses after deletes]. "NAME": the property NAME of every node, unique across the graph
    /// (id neo4j_<value>); or per label, "File:path,Class:fqn": a node is keyed by the first listed label it has
    /// (id neo4j_<label>:<value>). Give uniqueness-constrained properties to get ids that stay the same across
    /// re-runs; a node without its key property stops the transform.
    #[arg(long, value_name = "SPEC")]
    pub id_property: Option<String>,

    /// Graph sources: prefix of the space made from a label (lower-cased, other characters `_`) [default: neo4j_].
    #[arg(long)]
    pub memory_space_prefix: Option<String>,

    /// Graph sources: properties whose values make the text to embed, after name, title, description, content,
    /// e.g. "summary,body".
    #[arg(long)]
    pub text_properties: Option<String>,

    /// Graph sources: numeric relationship property that gives the edge weight, min-max normalised to [0,1]
    /// over all relationships when its values leave [0,1] [default: weight 0.7 for every edge].
    #[arg(long)]
    pub weight_property: Option<String>,

    /// Graph sources: make two edges (both directions) per relationship.
    #[arg(long)]
    pub bidirectional: bool,

    /// Activation of every memory, 0..1 [default: 0.5].
    #[arg(long)]
    pub activation: Option<f32>,

    /// Put every memory into this one space (3-64 chars of a-z, 0-9, _ and -) instead of one space per table.
    #[arg(long)]
    pub memory_space: Option<String>,

    /// Table to space overrides, e.g. "users:user_space,orders:order_space".
    #[arg(long)]
    pub table_to_space: Option<String>,

    /// Columns whose values make the text to embed, per table, e.g. "users:name,bio;orders:notes"
    /// [default: every text column].
    #[arg(long)]
    pub text_columns: Option<String>,

    /// Column that holds the creation time [default: created_at, else updated_at].
    #[arg(long)]
    pub timestamp_column: Option<String>,

    /// How to stage a column, e.g. "places.geom=text". SQLite: integer, real, boolean, text, json, bytes,
    /// timestamp, date, time. PostgreSQL: as_text, int16, int32, int64, float32, float64, boolean, text, bytes,
    /// uuid, date, time, timestamp, timestamptz, decimal(P,S), json, interval, vector(N). Repeatable.
    #[arg(long = "column-type", value_name = "TABLE.COLUMN=TYPE")]
    pub column_type: Vec<String>,

    /// Tables to read, comma-separated, `*` as wildcard, e.g. "public.*,sales.orders" (tables of PostgreSQL's
    /// public schema match with or without "public.") [default: all].
    #[arg(long)]
    pub include: Option<String>,

    /// Tables not to read, same form as --include; foreign keys into them become orphans.
    #[arg(long)]
    pub exclude: Option<String>,

    /// Rows per partition of a PostgreSQL table; partitions are read in parallel (--parallel-workers) and each is
    /// committed to the snapshot on its own, so an interrupted snapshot resumes from the partitions done
    /// [default: 50000].
    #[arg(long)]
    pub partition_rows: Option<u64>,

    /// Rows per record batch read from the source, run through SQL and embedded [default: 8192]. For `load
    /// --bundle` into a live target (the old spelling, still accepted there): see --target-batch-size.
    #[arg(long)]
    pub batch_size: Option<usize>,

    /// Worker threads for SQL and embeddings [default: number of cores]. For `load --bundle` into a live target
    /// (the old spelling, still accepted there): see --target-parallel.
    #[arg(long)]
    pub parallel_workers: Option<usize>,

    /// Live target: memories per acknowledged (checkpointed) batch, the resume unit [default: 1000].
    #[arg(long)]
    pub target_batch_size: Option<usize>,

    /// Live target: requests (HTTP) or streams (gRPC) in flight [default: 16].
    #[arg(long)]
    pub target_parallel: Option<usize>,

    /// PostgreSQL target: the schema of the memories, edges and orphans tables (created if absent)
    /// [default: engram].
    #[arg(long)]
    pub target_schema: Option<String>,

    /// Neo4j (Bolt) target: the label of each space's nodes, e.g.
    /// "code_files:File,code_classes:Class,code_functions:Function" [default: the space in PascalCase]; every
    /// node also has the label Node.
    #[arg(long)]
    pub target_labels: Option<String>,

    /// Neo4j (Bolt) target: the user [default: from the URL, else neo4j].
    #[arg(long, env = "ENGRAM_MIGRATE_TARGET_USER")]
    pub target_user: Option<String>,

    /// Neo4j and PostgreSQL targets: the password [default: from the URL]. Never printed or recorded.
    #[arg(long, env = "ENGRAM_MIGRATE_TARGET_PASSWORD", hide_env_values = true)]
    pub target_password: Option<String>,

    /// PostgreSQL target: the vector index built after the data: hnsw, ivfflat (cosine both) or none
    /// [default: hnsw].
    #[arg(long)]
    pub target_index: Option<String>,

    /// Live target: the largest share of the bundle's memories the target may be predicted to drop silently
    /// (Engram: near-duplicate embeddings, the per-space limit, contents over 100 KB over HTTP) before the load
    /// refuses to send anything, 0..1 [default: 0.01]. 1 sends whatever is predicted; the bundle keeps everything.
    #[arg(long)]
    pub max_predicted_loss: Option<f64>,

    /// Embedding provider: "hashing" (feature hashing, no model), "model2vec:DIR" (a local model2vec model
    /// directory: model.safetensors, tokenizer.json, config.json) or "openai:URL" (an OpenAI-compatible server's
    /// base URL, e.g. http://127.0.0.1:11434; POST URL/v1/embeddings) [default: hashing].
    #[arg(long)]
    pub embedding_provider: Option<String>,

    /// Model name sent to an openai: provider, e.g. text-embedding-3-small or nomic-embed-text.
    #[arg(long, env = "ENGRAM_EMBEDDING_MODEL")]
    pub embedding_model: Option<String>,

    /// API key of an openai: provider (sent as a bearer token, never printed). Prefer the environment variable
    /// to the flag, which other users of the machine can see in the process list; not read from --config files.
    #[arg(long, env = "ENGRAM_EMBEDDING_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub embedding_api_key: Option<Secret>,

    /// Texts per request to an openai: provider; a 413 answer halves it [default: 128].
    #[arg(long)]
    pub embedding_request_size: Option<usize>,

    /// Size bound of the persistent embedding cache (content hash -> vector, Parquet in <work-dir>/embed-cache,
    /// reused by re-runs and resumed runs) in MiB; 0 turns it off [default: 1024 for model2vec and openai, 0 for
    /// hashing, which recomputes a vector as fast as it could read it back].
    #[arg(long)]
    pub embedding_cache_mb: Option<u64>,

    /// Embed every memory from its text, even those whose source row already holds a 768-float vector
    /// (pgvector), which are otherwise used as they are.
    #[arg(long)]
    pub reembed: bool,

    /// Entries in the in-memory embedding cache (content hash -> vector) [default: 32768, ~100 MB].
    #[arg(long)]
    pub cache_size: Option<usize>,

    /// Confidence of every memory, 0..1 [default: 0.7; graph (Bolt) sources: 0.5, Engram's MEDIUM, as the Engram
    /// team's Neo4j plan has it].
    #[arg(long)]
    pub confidence: Option<f32>,

    /// Do not make edges from foreign keys.
    #[arg(long)]
    pub skip_edges: bool,

    /// Validate after loading (`run`) [default: true]; `--validate false` skips it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub validate: Option<bool>,

    /// Show what would happen (like `plan`) and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Checkpoint file of the load stage [default: <work-dir>/checkpoint.json; of a live load:
    /// <work-dir>/load-checkpoint.json].
    #[arg(long)]
    pub checkpoint_file: Option<PathBuf>,

    /// Replace an existing target bundle (the old one stays until the new one is complete).
    #[arg(long)]
    pub overwrite: bool,

    /// Throw away the work directory's earlier state (snapshot, staged output, checkpoint) and start over.
    #[arg(long)]
    pub fresh: bool,

    /// Use the complete snapshot in the work directory even though the source has changed since it was taken
    /// (a re-run otherwise stops and names the changes): the old data is migrated, and validated against the
    /// snapshot instead of the changed source.
    #[arg(long, conflicts_with = "fresh")]
    pub reuse_snapshot: bool,

    /// Re-run an earlier completed run of this work directory on the source as it is now, migrating the
    /// difference: a new snapshot is diffed against the last by key and row content, unchanged memories keep
    /// their vectors (the persistent embedding cache: size it with --embedding-cache-mb to hold them), and a live
    /// target is sent only the memories added or changed, and asked to delete those gone. The report's "delta"
    /// says what changed. The bundle is replaced by the new one, which equals a fresh full run's.
    #[arg(long, conflicts_with_all = ["fresh", "reuse_snapshot"])]
    pub incremental: bool,

    /// Proceed although the source's tables or columns changed since the last completed run in the work
    /// directory (a re-run otherwise stops, exit 2, naming each table and column); the report lists the drift.
    #[arg(long)]
    pub allow_schema_drift: bool,

    /// Rows sampled for the value-by-value comparison of validation [default: 1000].
    #[arg(long)]
    pub sample_size: Option<usize>,

    /// Seed of the validation sample [default: 42].
    #[arg(long)]
    pub sample_seed: Option<u64>,

    /// Directory of extra validation queries (*.sql, each returning offending rows) run after the built-in ones.
    #[arg(long)]
    pub checks: Option<PathBuf>,

    /// Roll Parquet files over at this size in MiB [default: 128].
    #[arg(long)]
    pub max_file_mb: Option<u64>,

    /// Roll Parquet files over at this many rows [default: no limit].
    #[arg(long)]
    pub max_file_rows: Option<u64>,

    /// Memory for SQL joins, aggregations and sorts in MiB; beyond it they spill to <work-dir>/spill (half
    /// is kept for operators that cannot spill) [default: 256].
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,

    /// Where the SQL stages (transform, validation) and the embedding run: `local` (this process) or
    /// `ballista://HOST:PORT`, a cluster started with `engram-migrate scheduler` and `engram-migrate executor`
    /// (build feature `distributed`; the work directory must be on storage every executor reads at the same path)
    /// [default: local].
    #[arg(long)]
    pub engine: Option<String>,

    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Redis: read only this database number [default: every database with keys; a redis://HOST:PORT/N URL
    /// reads N].
    #[arg(long)]
    pub source_db: Option<u64>,

    /// Redis: read this RDB dump file instead of the server named by --source (same staged rows).
    #[arg(long, value_name = "FILE")]
    pub use_rdb: Option<String>,

    /// Redis: a key's TTL becomes its decay rate, 1 / (ttl_seconds / 3600); keys without TTL get 0.01
    /// [default: true]; `--ttl-as-decay false` gives every key 0.01.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ttl_as_decay: Option<bool>,

    /// Redis: every hash field also becomes a memory of its own (edge FIELD_OF to the hash's memory).
    #[arg(long)]
    pub hash_field_memories: bool,

    /// Redis: keys (and hash fields) whose TTL had run out at the snapshot's as-of time (a dump's ctime, a live
    /// read's start) are dropped, as Redis itself would, and named in the summary; `keep` stages them too (ttl_ms
    /// <= 0, decay rate 3600) [default: drop].
    #[arg(long, value_name = "drop|keep", value_parser = ["drop", "keep"])]
    pub expired: Option<String>,

    /// Validation passes although records were skipped (not staged because the tool cannot read them, e.g.
    /// function libraries in a dump); without it the check `skipped_items` fails on any.
    #[arg(long)]
    pub allow_skipped: bool,
}

impl Options {
    /// Reads `--config` (if given) and fills in what the flags left unset. Generic over every field (through
    /// serde), so a new option cannot be forgotten here: a value the flags did not set (absent, false, empty
    /// list) is taken from the file. Fields the file may not hold (`config`, the API key) stay as the flags have them.
    pub fn with_config_file(self) -> Result<Options> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = Self::read_file(&path)?;
        let as_json = |o: &Options| {
            serde_json::to_value(o).map_err(|e| Error::Internal(format!("options as JSON: {e}")))
        };
        let mut merged = as_json(&self)?;
        let (Some(flags), serde_json::Value::Object(from_file)) =
            (merged.as_object_mut(), as_json(&file)?)
        else {
            return Err(Error::Internal("options are not a JSON object".into()));
        };
        for (key, value) in from_file {
            let unset = match flags.get(&key) {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => true,
                Some(serde_json::Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if unset {
                flags.insert(key, value);
            }
        }
        let mut out: Options = serde_json::from_value(merged)
            .map_err(|e| Error::usage(format!("config {}: {e}", path.display())))?;
        out.config = self.config;
        out.embedding_api_key = self.embedding_api_key;
        Ok(out)
    }

    /// The options as a work directory records them (`<work>/plan.json`): no secrets (the source password, the
    /// API key, a URL's password), nothing that only concerns one invocation.
    pub fn recordable(&self) -> Result<Options> {
        let mut v = self.as_json()?;
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| role(k) != Some(Role::Invocation));
            for key in ["source", "target"] {
                if let Some(Value::String(url)) = m.get(key) {
                    if url.contains("://") {
                        let redacted = crate::source::redact_url(url);
                        m.insert(key.into(), Value::String(redacted));
                    }
                }
            }
        }
        serde_json::from_value(v).map_err(|e| Error::Internal(format!("recorded options: {e}")))
    }

    /// This command's options completed from the run recorded in its work directory, so `validate --work-dir W`
    /// (and `transform`, `load`) need no flags: an option not given is taken from the record. One given that
    /// shapes a stage this command does not redo (e.g. `--bidirectional` for `validate`: the bundle was made
    /// without it) is an error naming it, since the result on disk was made otherwise. Options that only tune
    /// (batch sizes, workers) may differ; options of one invocation (`--fresh`, `--quiet`) are never taken.
    pub fn continuing(self, recorded: &Options, redoes: Role) -> Result<Options> {
        let mut now = self.as_json()?;
        let then = recorded.as_json()?;
        let (Some(flags), Some(then)) = (now.as_object_mut(), then.as_object()) else {
            return Err(Error::Internal("options are not a JSON object".into()));
        };
        for (key, recorded_value) in then {
            let Some(r) = role(key) else { continue };
            if r == Role::Invocation || is_unset(recorded_value) {
                continue;
            }
            let given = flags.get(key).filter(|v| !is_unset(v)).cloned();
            match given {
                None => {
                    if key == "source"
                        && recorded_value.as_str().is_some_and(|u| u.contains(":***@"))
                    {
                        return Err(Error::usage(format!(
                            "the run in this work directory read {}; its password is not kept: give --source \
                             again with the password",
                            recorded_value.as_str().unwrap_or_default()
                        )));
                    }
                    let mut value = recorded_value.clone();
                    // A target URL is recorded without its password; taken from the record, it has none, so the
                    // sink reads the password from its environment variable (see the target's docs).
                    if key == "target" {
                        if let Some(url) = value.as_str().filter(|u| u.contains(":***@")) {
                            value = Value::String(url.replacen(":***@", "@", 1));
                        }
                    }
                    flags.insert(key.clone(), value);
                }
                Some(v) if r < redoes && !same_value(key, &v, recorded_value) => {
                    return Err(Error::usage(format!(
                        "--{key} {}: the run in this work directory was made with {}, and this command does not \
                         redo what it shapes. Leave it out (the recorded value is used), or make the run again \
                         with it (`run --{key} ...`, which redoes what it changes)",
                        shown(&v),
                        shown(recorded_value)
                    )));
                }
                Some(_) => {}
            }
        }
        // A shaping option the run did not have, given now, differs too (e.g. `--bidirectional` on a run without).
        for (key, v) in flags.iter() {
            let Some(r) = role(key) else { continue };
            let recorded_unset = then.get(key).is_none_or(is_unset);
            if r < redoes && recorded_unset && !is_unset(v) {
                return Err(Error::usage(format!(
                    "--{key} {}: the run in this work directory was made without it, and this command does not \
                     redo what it shapes. Leave it out, or make the run again with it",
                    shown(v)
                )));
            }
        }
        serde_json::from_value(now)
            .map_err(|e| Error::Internal(format!("options from the record: {e}")))
    }

    fn as_json(&self) -> Result<Value> {
        serde_json::to_value(self).map_err(|e| Error::Internal(format!("options as JSON: {e}")))
    }

    fn read_file(path: &Path) -> Result<Options> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::usage(format!("config {}: {e}", path.display())))
    }

    /// What the flags say to a live target's sink.
    pub fn sink_options(&self) -> crate::sink::SinkOptions {
        crate::sink::SinkOptions {
            schema: self.target_schema.clone(),
            index: self.target_index.clone(),
            labels: self.target_labels.clone(),
            user: self.target_user.clone(),
            password: self.target_password.clone(),
        }
    }

    pub fn require_source(&self) -> Result<&str> {
        self.use_rdb.as_deref().or(self.source.as_deref()).ok_or_else(|| {
            Error::usage("--source is required (a SQLite file, a postgres:// URL or a snapshot directory)")
        })
    }

    pub fn require_target(&self) -> Result<&str> {
        self.target
            .as_deref()
            .ok_or_else(|| Error::usage("--target is required (a directory for the Engram bundle)"))
    }

    /// The work directory: `--work-dir`, else `<target>.work`.
    pub fn work_dir(&self) -> Result<PathBuf> {
        if let Some(w) = &self.work_dir {
            return Ok(w.clone());
        }
        match &self.target {
            Some(t) => Ok(PathBuf::from(format!("{}.work", t.trim_end_matches('/')))),
            None => Err(Error::usage(
                "--work-dir is required when there is no --target",
            )),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(8192).max(1)
    }

    pub fn workers(&self) -> usize {
        self.parallel_workers
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(1)
    }
}

/// Absent, false or an empty list: what a flag not given looks like.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn same_value(key: &str, given: &Value, recorded: &Value) -> bool {
    match (key, given.as_str()) {
        // The record holds a URL without its password.
        ("source" | "target", Some(url)) if url.contains("://") => {
            Value::String(crate::source::redact_url(url)) == *recorded
        }
        // A file named relatively now and absolutely then (or through a link) is the same file.
        (_, Some(path)) => {
            given == recorded
                || recorded.as_str().is_some_and(|then| {
                    match (std::fs::canonicalize(path), std::fs::canonicalize(then)) {
                        (Ok(a), Ok(b)) => a == b,
                        _ => false,
                    }
                })
        }
        _ => given == recorded,
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(true) => "(set)".into(),
        other => other.to_string(),
    }
}

/// What an option shapes, in the order a run's stages come: a command that continues a recorded run redoes its
/// own stage and the later ones, so it may change their options, not those of the stages before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// What the snapshot holds.
    Snapshot,
    /// What the mapping makes of it (the staged memories and edges).
    Transform,
    /// The bundle (embeddings) and where it goes.
    Load,
    /// What validation checks.
    Validate,
    /// How fast or in what pieces, not what: taken from the record when not given, free to change.
    Tuning,
    /// One invocation's: never recorded, never taken from a record.
    Invocation,
}

/// Every option's role (by its config-file name). A table, so a new option must be placed in it: a unit test
/// fails for an option missing here.
pub fn role(key: &str) -> Option<Role> {
    use Role::*;
    Some(match key {
        "source" | "use-rdb" | "source-db" | "include" | "exclude" | "column-type" | "expired" => {
            Snapshot
        }
        "sql"
        | "label-to-space"
        | "memory-space-prefix"
        | "text-properties"
        | "weight-property"
        | "id-property"
        | "bidirectional"
        | "activation"
        | "memory-space"
        | "table-to-space"
        | "text-columns"
        | "timestamp-column"
        | "confidence"
        | "skip-edges"
        | "ttl-as-decay"
        | "hash-field-memories" => Transform,
        "target" | "bundle" | "embedding-provider" | "embedding-model" | "reembed"
        | "target-schema" | "target-index" | "target-labels" => Load,
        "validate" | "sample-size" | "sample-seed" | "checks" | "allow-skipped" => Validate,
        "source-user"
        | "target-user"
        | "fetch-size"
        | "partition-rows"
        | "batch-size"
        | "parallel-workers"
        | "target-batch-size"
        | "target-parallel"
        | "max-predicted-loss"
        | "embedding-request-size"
        | "embedding-cache-mb"
        | "cache-size"
        | "max-file-mb"
        | "max-file-rows"
        | "memory-limit-mb" => Tuning,
        "work-dir" | "config" | "source-password" | "target-password" | "embedding-api-key"
        | "dry-run" | "checkpoint-file" | "overwrite" | "fresh" | "reuse-snapshot" | "quiet"
        | "incremental" | "allow-schema-drift"
        // Where the SQL runs is this invocation's: a later `validate` of a cluster's run needs no cluster.
        | "engine" => Invocation,
        _ => return None,
    })
}

/// A secret (API key, token): shown as `***` by `Debug`, so logging the options never prints it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// "a:b,c:d" -> {a: b, c: d}
pub fn parse_pairs(flag: &str, s: Option<&str>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in s
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (k, v) = item
            .split_once(':')
            .ok_or_else(|| Error::usage(format!("--{flag}: {item:?} is not TABLE:VALUE (e.g. \"users:user_space,orders:order_space\")")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// "users:name,bio;orders:notes" -> {users: [name, bio], orders: [notes]}
pub fn parse_table_lists(flag: &str, s: Option<&str>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for item in s
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (k, v) = item.split_once(':').ok_or_else(|| {
            Error::usage(format!(
                "--{flag}: {item:?} is not TABLE:COL,COL (e.g. \"users:name,bio;orders:notes\")"
            ))
        })?;
        out.insert(
            k.trim().to_string(),
            v.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
        );
    }
    Ok(out)
}

/// "table.column=type" -> (table.column, type)
pub fn parse_column_types(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| k.contains('.'))
                .ok_or_else(|| {
                    Error::usage(format!("--column-type {i:?}: expected TABLE.COLUMN=TYPE"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_lists_parse_and_reject_garbage() {
        let p = parse_pairs(
            "table-to-space",
            Some("users:user_space, orders:order_space"),
        )
        .unwrap();
        assert_eq!(p["orders"], "order_space");
        assert!(parse_pairs("table-to-space", Some("users")).is_err());
        let t = parse_table_lists("text-columns", Some("users:name,bio;orders:notes")).unwrap();
        assert_eq!(t["users"], vec!["name", "bio"]);
        assert!(parse_column_types(&["geo=text".into()]).is_err());
        assert_eq!(
            parse_column_types(&["t.geo=text".into()]).unwrap()[0].1,
            "text"
        );
    }

    #[test]
    fn every_option_has_a_role() {
        let o = serde_json::to_value(Options::default()).unwrap();
        for key in o.as_object().unwrap().keys() {
            assert!(
                role(key).is_some(),
                "option --{key} has no role in config::role"
            );
        }
    }

    #[test]
    fn continuing_takes_the_record_and_refuses_a_contradiction() {
        let recorded = Options {
            source: Some("postgres://u:secret@h/db".into()),
            source_password: Some("pw".into()),
            bidirectional: true,
            sample_size: Some(50),
            fresh: true,
            target: Some("out".into()),
            ..Default::default()
        }
        .recordable()
        .unwrap();
        assert_eq!(recorded.source.as_deref(), Some("postgres://u:***@h/db"));
        assert!(recorded.source_password.is_none() && !recorded.fresh);

        // Nothing given: everything shaping comes from the record, except a password it does not keep.
        let e = Options::default()
            .continuing(&recorded, Role::Validate)
            .unwrap_err();
        assert!(e.to_string().contains("password is not kept"), "{e}");
        let given = Options {
            source: Some("postgres://u:secret@h/db".into()),
            sample_size: Some(7),
            ..Default::default()
        };
        let o = given.continuing(&recorded, Role::Validate).unwrap();
        assert!(o.bidirectional, "taken from the record");
        assert_eq!(
            o.sample_size,
            Some(7),
            "validate may change its own options"
        );
        assert_eq!(o.source.as_deref(), Some("postgres://u:secret@h/db"));

        // A contradiction of a stage not redone names the flag.
        let e = Options {
            source: Some("postgres://u:secret@h/db".into()),
            memory_space: Some("x".into()),
            ..Default::default()
        }
        .continuing(&recorded, Role::Validate)
        .unwrap_err();
        assert!(e.to_string().contains("--memory-space"), "{e}");
        // ... which a command redoing that stage may change.
        assert!(Options {
            source: Some("postgres://u:secret@h/db".into()),
            memory_space: Some("x".into()),
            ..Default::default()
        }
        .continuing(&recorded, Role::Transform)
        .is_ok());
        let e = Options {
            source: Some("other.db".into()),
            ..Default::default()
        }
        .continuing(&recorded, Role::Transform)
        .unwrap_err();
        assert!(e.to_string().contains("--source"), "{e}");
    }

    #[test]
    fn config_file_fills_unset_flags_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "source = \"a.db\"\nbatch-size = 100\nskip-edges = true\n",
        )
        .unwrap();
        let o = Options {
            config: Some(f.clone()),
            batch_size: Some(5),
            ..Default::default()
        }
        .with_config_file()
        .unwrap();
        assert_eq!(o.source.as_deref(), Some("a.db"));
        assert_eq!(o.batch_size, Some(5), "flags win");
        assert!(o.skip_edges);
        std::fs::write(&f, "sorce = \"a.db\"\n").unwrap();
        let e = Options {
            config: Some(f),
            ..Default::default()
        }
        .with_config_file()
        .unwrap_err();
        assert!(e.to_string().contains("sorce"), "{e}");
    }

    #[test]
    fn the_same_file_named_two_ways_is_the_same_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db.sqlite");
        std::fs::write(&f, b"x").unwrap();
        let abs = Value::String(f.display().to_string());
        let dotted = Value::String(dir.path().join(".").join("db.sqlite").display().to_string());
        assert!(same_value("source", &dotted, &abs));
        let other = dir.path().join("other.sqlite");
        std::fs::write(&other, b"x").unwrap();
        assert!(!same_value(
            "source",
            &Value::String(other.display().to_string()),
            &abs
        ));
    }
}
