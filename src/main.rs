//! The `engram-migrate` binary: the command line over the library. `anyhow` lives only here; every library
//! error carries its exit code.

use clap::{Parser, Subcommand};
use engram_migrate::config::Options;
use engram_migrate::error::exit;
use engram_migrate::pipeline;

/// glibc's malloc, limited to two arenas (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` still decide when set). By
/// default glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core), and Arrow
/// buffers are allocated on one thread (a reader, a tokio worker) and freed on another: freed memory stayed
/// spread over many arenas. Measured (docs/benchmarks.md): validation at 3.3M rows held 365 MB resident for
/// ~120 MB live with the default arenas, 221 MB with two; mimalloc (this binary's allocator until then) held 568
/// MB, and the whole 1.1M run peaked at 390-470 MB with two arenas against ~510 MB with mimalloc, at the same
/// speed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !tuned {
            // SAFETY: called first thing in main, before any other thread exists; mallopt only sets a parameter.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
    }
}

#[derive(Parser)]
#[command(
    name = "engram-migrate",
    version,
    about = "Migrate SQLite, PostgreSQL, Neo4j and Redis into Engram: snapshot -> SQL mapping -> embeddings -> bundle -> validation",
    after_help = "Exit codes: 0 ok, 1 internal error, 2 usage or mapping SQL error, 3 source error, 4 target error, 5 validation failed.\n\
                  Logs: RUST_LOG=info (or debug). Every option can also come from --config FILE (TOML, kebab-case keys)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show tables, dependency order, row counts, type mapping and where output goes; writes nothing.
    Plan(Options),
    /// Stage the source into a Parquet snapshot (<work-dir>/snapshot), resumable.
    Snapshot(Options),
    /// Run the mapping SQL over the snapshot and stage memories and edges.
    Transform(Options),
    /// Embed the staged memories and write the Engram bundle, resumable; or, with --bundle DIR and a live
    /// --target (engram+http://, engram+grpc://, postgres://, bolt://), send a finished bundle and read back what the
    /// target kept.
    Load(Options),
    /// Re-check a finished run: counts, sampled values, checksums, orphan edges, duplicate ids, embeddings.
    Validate(Options),
    /// All stages: snapshot, transform, load, validate. Started again after a crash, it resumes.
    Run(Options),
    /// Remove from a live target (--target URL) what loading the bundle (--bundle DIR) put there, where the target
    /// can; a target that cannot says so and changes nothing. The bundle itself is never touched.
    Rollback(Options),
    /// Start a Ballista scheduler for `--engine ballista://HOST:PORT` (build feature `distributed`): it knows this
    /// tool's SQL functions, and lists its jobs' tasks per executor for the run report.
    #[cfg(feature = "distributed")]
    Scheduler(SchedulerArgs),
    /// Start a Ballista executor that registers with a scheduler (build feature `distributed`). Every executor
    /// must read the work directory at the same path as the run (one machine or a shared file system), and a
    /// model2vec model at the path the run names.
    #[cfg(feature = "distributed")]
    Executor(ExecutorArgs),
}

#[cfg(feature = "distributed")]
#[derive(clap::Args)]
struct SchedulerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Port of the scheduler's gRPC service and of its job list (`GET /engram/v1/jobs`).
    #[arg(long, default_value_t = 50050)]
    port: u16,
    /// Seconds without a heartbeat after which an executor is lost and its tasks run elsewhere.
    #[arg(long, default_value_t = 30)]
    executor_timeout_secs: u64,
}

#[cfg(feature = "distributed")]
#[derive(clap::Args)]
struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Address to listen on (and to be reached at).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Port for results and shuffle data (Arrow Flight); the executor's gRPC port is the next one.
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Tasks run at once [default: the number of cores].
    #[arg(long)]
    concurrent_tasks: Option<usize>,
    /// Directory for shuffle files [default: <tmp>/engram-migrate-executor-<port>].
    #[arg(long)]
    work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler (keep it well under the scheduler's --executor-timeout-secs).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
}

#[cfg(feature = "distributed")]
fn run_cluster_process(command: Command) -> anyhow::Result<()> {
    use engram_migrate::engine::ballista;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match command {
        Command::Scheduler(a) => {
            runtime.block_on(ballista::run_scheduler(ballista::SchedulerOptions {
                bind: a.bind,
                port: a.port,
                executor_timeout_secs: a.executor_timeout_secs,
            }))?
        }
        Command::Executor(a) => {
            let (host, port) = a
                .scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    engram_migrate::Error::usage(format!(
                        "--scheduler {:?}: expected HOST:PORT",
                        a.scheduler
                    ))
                })?;
            runtime.block_on(ballista::run_executor(ballista::ExecutorOptions {
                scheduler_host: host,
                scheduler_port: port,
                bind: a.bind,
                port: a.port,
                concurrent_tasks: a.concurrent_tasks.unwrap_or(0),
                work_dir: a.work_dir,
                heartbeat_secs: a.heartbeat_secs,
            }))?
        }
        _ => unreachable!("only cluster processes come here"),
    }
    Ok(())
}

fn main() {
    tune_allocator();
    // A closed stdout (`engram-migrate plan ... | head`) ends the process quietly, as it does other Unix tools,
    // instead of a panic in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour escapes only for a terminal: a log written to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(cli) {
        Ok(()) => exit::OK,
        Err(e) => {
            let code = e
                .downcast_ref::<engram_migrate::Error>()
                .map(|e| e.exit_code())
                .unwrap_or(exit::INTERNAL);
            eprintln!("error: {e:#}");
            code
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (name, opts) = match cli.command {
        #[cfg(feature = "distributed")]
        c @ (Command::Scheduler(_) | Command::Executor(_)) => return run_cluster_process(c),
        Command::Plan(o) => ("plan", o),
        Command::Snapshot(o) => ("snapshot", o),
        Command::Transform(o) => ("transform", o),
        Command::Load(o) => ("load", o),
        Command::Validate(o) => ("validate", o),
        Command::Run(o) => ("run", o),
        Command::Rollback(o) => ("rollback", o),
    };
    let opts = opts.with_config_file()?;
    engram_migrate::progress::set_quiet(opts.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers())
        .enable_all()
        .build()?;
    let name = if opts.dry_run { "plan" } else { name };
    runtime.block_on(async move {
        match name {
            "plan" => pipeline::plan_cmd(opts).await,
            "snapshot" => pipeline::snapshot_cmd(opts).await,
            "transform" => pipeline::transform_cmd(opts).await,
            "load" => pipeline::load_cmd(opts).await,
            "validate" => pipeline::validate_cmd(opts).await,
            "rollback" => pipeline::rollback_cmd(opts).await,
            _ => pipeline::run_cmd(opts).await,
        }
    })?;
    Ok(())
}
