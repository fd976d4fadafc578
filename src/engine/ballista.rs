//! The Ballista engine (feature `distributed`): the client session of a run, and the scheduler and executor
//! processes of a cluster, all from this binary so that every process knows the tool's SQL functions.
//!
//! Why our own scheduler and executor rather than the stock `ballista-scheduler`/`ballista-executor` binaries: a
//! query is sent to the scheduler as a logical plan and to the executors as physical plans, both naming functions
//! such as `to_json` or `embed_text`; a process that has not registered them cannot decode the plan. The scheduler
//! also serves one route of its own beside its gRPC service, `GET /engram/v1/jobs`: the jobs it ran, with their
//! stages and tasks per executor, which the run's report records (the stock REST API has no tasks per executor).
//!
//! Storage: the snapshot, the staged files and the tables the tool computes ([`super::register_batches`]) are
//! read by the executors at the paths the client registers, so the work directory must be on storage every
//! executor sees at the same path (one machine, or a shared file system).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::job_status;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::protobuf::task_status;
use ballista_scheduler::cluster::{BallistaCluster, JobState};
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::state::execution_stage::{ExecutionStage, TaskInfo};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use super::{Engine, EngineJobs, EngineSpec, ExecutorLine, JobLine, SharedTables};
use crate::error::{Error, Result};

/// The route of our scheduler that lists its jobs (and answers the client's reachability check).
pub const JOBS_ROUTE: &str = "/engram/v1/jobs";

fn scheduler_addr(engine: &Engine) -> Result<(String, u16)> {
    match &engine.spec {
        EngineSpec::Ballista { host, port } => Ok((host.clone(), *port)),
        EngineSpec::Local => Err(Error::Internal("not a Ballista engine".into())),
    }
}

fn engine_err(engine: &Engine, message: impl Into<String>) -> Error {
    Error::Engine {
        location: format!("engine {}", engine.spec),
        message: message.into(),
    }
}

/// The client session of a run: queries are planned here, sent to the scheduler and their results streamed back
/// from the executors. Tables the tool computes go to `<work>/engine` for the executors to read.
pub async fn session(engine: &Engine) -> Result<SessionContext> {
    let (host, port) = scheduler_addr(engine)?;
    // As many partitions as the cluster has task slots (at least this machine's workers): scans, joins and
    // aggregations are cut into that many tasks, so every executor gets its share.
    let slots: usize = check(engine)
        .await?
        .executors
        .iter()
        .map(|e| e.task_slots as usize)
        .sum();
    let mut config = SessionConfig::new_with_ballista()
        .with_target_partitions(slots.max(engine.workers).max(1))
        .with_batch_size(engine.batch_size.max(1))
        .with_information_schema(true)
        .with_ballista_job_name(&engine.job_name);
    super::with_tool_options(&mut config);
    let config = config.with_extension(Arc::new(SharedTables {
        dir: engine.shared_dir.clone(),
    }));
    let runtime = RuntimeEnvBuilder::new()
        .with_temp_file_path(&engine.memory.spill_dir)
        .build_arc()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state)
        .await
        .map_err(|e| engine_err(engine, format!("cannot open a session: {e}")))?;
    crate::transform::udf::register_all(&ctx);
    Ok(ctx)
}

/// The scheduler's answer to [`JOBS_ROUTE`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SchedulerState {
    pub executors: Vec<ExecutorLine>,
    pub jobs: Vec<JobLine>,
}

async fn fetch_state(engine: &Engine) -> Result<SchedulerState> {
    let (host, port) = scheduler_addr(engine)?;
    let url = format!("http://{host}:{port}{JOBS_ROUTE}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let resp = client.get(&url).send().await.map_err(|e| {
        engine_err(
            engine,
            format!(
                "no scheduler answers at {host}:{port} ({e}); start one with `engram-migrate scheduler --port {port}` \
                 and executors with `engram-migrate executor --scheduler {host}:{port}`, or run with --engine local"
            ),
        )
    })?;
    if !resp.status().is_success() {
        return Err(engine_err(
            engine,
            format!(
                "{host}:{port} answered {} to {JOBS_ROUTE}: it is not an engram-migrate scheduler (a stock \
                 ballista-scheduler lacks this tool's SQL functions); start one with `engram-migrate scheduler`",
                resp.status()
            ),
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| engine_err(engine, format!("no answer to {JOBS_ROUTE}: {e}")))?;
    serde_json::from_slice::<SchedulerState>(&body)
        .map_err(|e| engine_err(engine, format!("unreadable answer to {JOBS_ROUTE}: {e}")))
}

/// The scheduler answers and has at least one executor.
pub async fn check(engine: &Engine) -> Result<SchedulerState> {
    let state = fetch_state(engine).await?;
    if state.executors.is_empty() {
        return Err(engine_err(
            engine,
            "the scheduler has no executors; start some with `engram-migrate executor --scheduler HOST:PORT`",
        ));
    }
    Ok(state)
}

/// This run's jobs (by job name) and their tasks per executor.
pub async fn jobs(engine: &Engine) -> Result<EngineJobs> {
    let state = fetch_state(engine).await?;
    let mut jobs: Vec<JobLine> = state
        .jobs
        .into_iter()
        .filter(|j| j.job_name == engine.job_name)
        .collect();
    jobs.sort_by(|a, b| (a.queued_at, &a.job_id).cmp(&(b.queued_at, &b.job_id)));
    let mut tasks_per_executor = BTreeMap::new();
    for j in &jobs {
        for (e, n) in &j.tasks_per_executor {
            *tasks_per_executor.entry(e.clone()).or_insert(0) += n;
        }
    }
    Ok(EngineJobs {
        executors: state.executors,
        jobs,
        tasks_per_executor,
    })
}

/// Every SQL function of the tool, for the scheduler's and executors' registries.
fn tool_functions() -> Vec<Arc<ScalarUDF>> {
    crate::transform::udf::all()
        .into_iter()
        .map(Arc::new)
        .collect()
}

fn session_builder() -> ballista_scheduler::SessionBuilder {
    Arc::new(|config: SessionConfig| {
        let mut config = config;
        super::with_tool_options(&mut config);
        // Registered after the build: `with_scalar_functions` would replace DataFusion's own functions.
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(Arc::new(RuntimeEnvBuilder::new().build()?))
            .build();
        for f in tool_functions() {
            datafusion::execution::FunctionRegistry::register_udf(&mut state, f)?;
        }
        Ok(state)
    })
}

/// Settings of `engram-migrate scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: String,
    pub port: u16,
    /// An executor not heard from for this long is lost: its tasks run again elsewhere.
    pub executor_timeout_secs: u64,
}

/// Runs a scheduler until the process ends.
pub async fn run_scheduler(opts: SchedulerOptions) -> Result<()> {
    let err = |m: String| Error::target_err(format!("scheduler {}:{}", opts.bind, opts.port), m);
    let config = SchedulerConfig {
        bind_host: opts.bind.clone(),
        external_host: opts.bind.clone(),
        bind_port: opts.port,
        executor_timeout_seconds: opts.executor_timeout_secs.max(1),
        // The report lists a run's jobs at its end: keep finished jobs a day, not the default hour.
        finished_job_state_clean_up_interval_seconds: 86_400,
        expire_dead_executor_interval_seconds: (opts.executor_timeout_secs / 3).clamp(1, 15),
        // One task per executor in turn: the default (Bias) fills one executor's slots first, so a small job
        // never reaches the second executor and the cluster's width goes unused.
        task_distribution: ballista_scheduler::config::TaskDistributionPolicy::RoundRobin,
        override_session_builder: Some(session_builder()),
        ..Default::default()
    };
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| err(e.to_string()))?;
    let job_state = cluster.job_state();
    let cluster_state = cluster.cluster_state();
    let scheduler = ballista_scheduler::scheduler_process::create_scheduler::<
        LogicalPlanNode,
        PhysicalPlanNode,
    >(cluster, config.clone())
    .await
    .map_err(|e| err(e.to_string()))?;

    let grpc = SchedulerGrpcServer::new(scheduler)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut routes = tonic_ballista::service::RoutesBuilder::default();
    routes.add_service(grpc);
    let jobs_route = axum::routing::get(move || {
        let job_state = job_state.clone();
        let cluster_state = cluster_state.clone();
        async move {
            match scheduler_state(job_state.as_ref(), cluster_state.as_ref()).await {
                Ok(s) => Ok(axum::Json(s)),
                Err(e) => Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, e)),
            }
        }
    });
    let app = routes
        .routes()
        .into_axum_router()
        .route(JOBS_ROUTE, jobs_route)
        .into_make_service_with_connect_info::<SocketAddr>();
    let addr: SocketAddr = format!("{}:{}", opts.bind, opts.port)
        .parse()
        .map_err(|e| err(format!("not an address: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| err(format!("cannot listen: {e}")))?;
    eprintln!("engram-migrate scheduler listening on {addr}");
    axum::serve(listener, app)
        .await
        .map_err(|e| err(e.to_string()))
}

async fn scheduler_state(
    jobs: &dyn JobState,
    cluster: &dyn ballista_scheduler::cluster::ClusterState,
) -> std::result::Result<SchedulerState, String> {
    let mut out = SchedulerState::default();
    for e in cluster.registered_executor_metadata().await {
        out.executors.push(ExecutorLine {
            id: e.id,
            host: e.host,
            port: e.port,
            task_slots: e.specification.task_slots,
        });
    }
    out.executors.sort_by(|a, b| a.id.cmp(&b.id));
    let ids = jobs.get_jobs().await.map_err(|e| e.to_string())?;
    for id in ids {
        let Some(graph) = jobs
            .get_execution_graph(&id)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let (status, queued_at) = match &graph.status().status {
            Some(job_status::Status::Queued(q)) => ("queued", q.queued_at),
            Some(job_status::Status::Running(r)) => ("running", r.queued_at),
            Some(job_status::Status::Failed(f)) => ("failed", f.queued_at),
            Some(job_status::Status::Successful(s)) => ("successful", s.queued_at),
            None => ("unknown", 0),
        };
        let mut tasks_per_executor = BTreeMap::new();
        for stage in graph.stages().values() {
            let infos: Vec<&TaskInfo> = match stage {
                ExecutionStage::Successful(s) => s.task_infos.iter().collect(),
                ExecutionStage::Running(s) => s.task_infos.iter().flatten().collect(),
                ExecutionStage::Failed(s) => s.task_infos.iter().flatten().collect(),
                _ => vec![],
            };
            for t in infos {
                if let task_status::Status::Successful(ok) = &t.task_status {
                    *tasks_per_executor
                        .entry(ok.executor_id.clone())
                        .or_insert(0) += 1;
                }
            }
        }
        out.jobs.push(JobLine {
            job_id: graph.job_id().to_string(),
            job_name: graph.job_name().to_string(),
            status: status.to_string(),
            stages: graph.stage_count() as u64,
            tasks_per_executor,
            queued_at,
        });
    }
    Ok(out)
}

/// Settings of `engram-migrate executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    pub bind: String,
    /// Flight port (results and shuffle data); the gRPC port is the next one.
    pub port: u16,
    pub concurrent_tasks: usize,
    /// Where shuffle files go; `<tmp>/engram-migrate-executor-<port>` if None.
    pub work_dir: Option<String>,
    pub heartbeat_secs: u64,
}

/// Runs an executor until the process ends.
pub async fn run_executor(opts: ExecutorOptions) -> Result<()> {
    // A directory of our own for shuffle files when none is given: one that outlives the process's start (the
    // library's default is a temporary directory it does not keep).
    let work_dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir()
            .join(format!("engram-migrate-executor-{}", opts.port))
            .display()
            .to_string(),
    };
    std::fs::create_dir_all(&work_dir).map_err(Error::io("create directory", &work_dir))?;
    let mut registry = BallistaFunctionRegistry::default();
    for f in tool_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    let config = ballista_executor::executor_process::ExecutorProcessConfig {
        bind_host: opts.bind.clone(),
        external_host: Some(opts.bind.clone()),
        port: opts.port,
        grpc_port: opts.port.saturating_add(1),
        scheduler_host: opts.scheduler_host.clone(),
        scheduler_port: opts.scheduler_port,
        // Wait for a scheduler that is still starting instead of failing at once.
        scheduler_connect_timeout_seconds: 30,
        concurrent_tasks: opts.concurrent_tasks,
        work_dir: Some(work_dir),
        executor_heartbeat_interval_seconds: opts.heartbeat_secs.max(1),
        print_thread_info: false,
        override_function_registry: Some(Arc::new(registry)),
        override_config_producer: Some(Arc::new(|| {
            let mut c = SessionConfig::new_with_ballista();
            super::with_tool_options(&mut c);
            c
        })),
        ..Default::default()
    };
    eprintln!(
        "engram-migrate executor on {}:{} for scheduler {}:{}",
        opts.bind, opts.port, opts.scheduler_host, opts.scheduler_port
    );
    ballista_executor::executor_process::start_executor_process(Arc::new(config))
        .await
        .map_err(|e| {
            Error::target_err(
                format!("executor {}:{}", opts.bind, opts.port),
                e.to_string(),
            )
        })
}

/// An embedding provider whose vectors are made on the cluster: each call writes its texts to the shared storage
/// as one file per task slot and runs `embed_text` over them (a one-stage job spread over the executors). The
/// embedding stage around it is unchanged: its cache still answers repeated texts, within a run and across runs,
/// so only distinct texts the cache lacks reach the cluster, and it checks the vectors that come back.
pub struct ClusterEmbedding {
    /// The provider as loaded here: its name, dimension and model are the bundle's provenance (the same as a
    /// local run's, so caches and bundles are shared); it never embeds.
    local: Arc<dyn crate::embed::EmbeddingProvider>,
    spec: String,
    engine: Engine,
    /// Files per request: the cluster's task slots when it was opened.
    width: usize,
    ctx: tokio::sync::Mutex<Option<SessionContext>>,
    /// The embedding stage is synchronous; requests are driven on this runtime from a thread of their own.
    runtime: Option<tokio::runtime::Runtime>,
}

impl ClusterEmbedding {
    /// Texts per request: large enough that a job's fixed cost (planning, and the executors' and the client's
    /// 100 ms polls: a few tenths of a second) is small beside the embedding, small enough that the vectors in
    /// flight stay small (16,384 x 768 floats = 48 MiB; at 65,536 the client's peak RSS was 1.6 GB, measured).
    pub const REQUEST_ROWS: usize = 16_384;

    pub fn new(
        local: Arc<dyn crate::embed::EmbeddingProvider>,
        spec: &str,
        engine: Engine,
    ) -> Result<ClusterEmbedding> {
        // `local` is the provider loaded here: the spec is one that runs in SQL (the caller checked).
        // Executors resolve the model's directory themselves: give them the absolute path.
        let spec = match spec.strip_prefix("model2vec:") {
            Some(dir) => format!(
                "model2vec:{}",
                std::fs::canonicalize(dir)
                    .map_err(Error::io("resolve", dir))?
                    .display()
            ),
            None => spec.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("embedding runtime: {e}")))?;
        let state = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(check(&engine)))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                // Dropping a runtime inside the run's own runtime would panic.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let width = state
            .executors
            .iter()
            .map(|e| e.task_slots as usize)
            .sum::<usize>()
            .max(1);
        Ok(ClusterEmbedding {
            local,
            spec,
            engine,
            width,
            ctx: Default::default(),
            runtime: Some(runtime),
        })
    }

    async fn request(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        use arrow::array::{Array, AsArray, StringArray, UInt32Array};
        use arrow::datatypes::{DataType, Field, Schema};
        let dim = self.local.dimension();
        // Process-wide: a run may hold more than one ClusterEmbedding, and their files must not meet.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("embed_request_{n}");
        let dir = self
            .engine
            .shared_dir
            .join("embed")
            .join(format!("{}-{n}", std::process::id()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::UInt32, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
        }
        // The request's files go whatever happens below (an error, a panic unwinding).
        struct Remove<'a>(&'a std::path::Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(self.0);
            }
        }
        let _remove = Remove(&dir);
        let per_file = texts.len().div_ceil(self.width).max(1);
        for (k, chunk) in texts.chunks(per_file).enumerate() {
            let first = (k * per_file) as u32;
            let batch = arrow::array::RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt32Array::from_iter_values(
                        first..first + chunk.len() as u32,
                    )),
                    Arc::new(StringArray::from_iter_values(chunk.iter())),
                ],
            )?;
            let mut w = crate::parquet_io::RollingWriter::new(
                &dir,
                schema.clone(),
                crate::parquet_io::PartLimits::default(),
                k,
            )?;
            w.write(&batch)?;
            w.finish(false)?;
        }
        let mut guard = self.ctx.lock().await;
        if guard.is_none() {
            *guard = Some(session(&self.engine).await?);
        }
        let ctx = guard.as_ref().expect("session just made");
        ctx.register_table(&table, super::listing_table(&dir, schema, self.width)?)
            .map_err(|e| Error::Internal(format!("table {table}: {e}")))?;
        let sql = format!(
            "SELECT i, embed_text(text, {}, {dim}, {}) AS v FROM {table}",
            crate::transform::generic::lit(&self.spec),
            crate::transform::generic::lit(&self.local.name())
        );
        let result = crate::transform::collect(ctx, &sql, "the embedding on the cluster").await;
        let _ = ctx.deregister_table(&table);
        drop(guard);
        // Every text gets exactly one vector, or the request fails: rows lost or doubled on the way would
        // otherwise become wrong vectors in the bundle.
        let mut filled = vec![false; texts.len()];
        for b in result? {
            let idx = b.column(0).as_primitive::<arrow::datatypes::UInt32Type>();
            let vectors = b.column(1).as_fixed_size_list();
            let values = vectors
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values();
            for r in 0..b.num_rows() {
                let i = idx.value(r) as usize;
                if i >= texts.len() || filled[i] || vectors.is_null(r) {
                    return Err(engine_err(
                        &self.engine,
                        format!(
                            "the embedding job returned a bad row for text {i} of {}",
                            texts.len()
                        ),
                    ));
                }
                let at = vectors.value_offset(r) as usize;
                out[i * dim..(i + 1) * dim].copy_from_slice(&values[at..at + dim]);
                filled[i] = true;
            }
        }
        let missing = filled.iter().filter(|f| !**f).count();
        if missing > 0 {
            return Err(engine_err(
                &self.engine,
                format!(
                    "the embedding job returned no vector for {missing} of {} texts",
                    texts.len()
                ),
            ));
        }
        Ok(())
    }
}

impl crate::embed::EmbeddingProvider for ClusterEmbedding {
    fn name(&self) -> String {
        self.local.name()
    }
    fn dimension(&self) -> usize {
        self.local.dimension()
    }
    fn model(&self) -> Option<String> {
        self.local.model()
    }
    fn preferred_batch_rows(&self) -> Option<usize> {
        Some(Self::REQUEST_ROWS)
    }
    fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Internal("embedding runtime gone".into()))?;
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(self.request(texts, out)))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for ClusterEmbedding {
    fn drop(&mut self) {
        // Dropped inside the run's own runtime: a blocking shutdown would panic there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
