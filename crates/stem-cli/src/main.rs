//! `stem`: the operator CLI (README "CLI"). `stem <group> <command>`:
//! schedules, workers, queues, dead letters, tasks, health, plus `stem
//! keys` (signing keys), `stem probe` (an HTTP health probe) and `stem
//! dev` (the whole stack in one process).
//!
//! Data goes to stdout (tables, or JSON with `--json`); errors go to
//! stderr as one line. Exit codes: 0 ok, 1 awaited task failed (`task
//! wait`), 64 usage (including a destructive command without `--yes`), 65
//! bad input data (unknown id, invalid file), 69 Redis unavailable, 70
//! internal error, 75 nobody answered / timed out, 78 configuration.

mod context;
mod dev;
mod dlq;
mod fail;
mod health;
mod keys;
mod output;
mod probe;
mod queue;
mod revoke;
mod schedule;
mod task;
mod worker;

use clap::{Parser, Subcommand};

/// Stem operator CLI.
#[derive(Parser, Debug)]
#[command(
    name = "stem",
    version,
    about,
    after_help = "Configuration comes from STEM_* variables (STEM_BROKER_URL, STEM_SCHEDULE_STORE_URL, \
                  STEM_SIGNING_*, STEM_TLS_*).\nExit codes: 0 ok, 1 task failed (task wait), 64 usage, \
                  65 bad input, 69 Redis unavailable, 70 internal, 75 nobody answered / timeout, 78 configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Schedule entries: list, show, apply a file, enable/disable, delete,
    /// dry-run.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Live workers: list, ping, stats, inspect, revoke, shutdown,
    /// pause/resume queues.
    #[command(subcommand)]
    Worker(worker::WorkerCommand),
    /// Queues: counts, inspect, purge.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Tasks: status, wait, enqueue, revoke.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Check that the broker, result backend and schedule store answer.
    Health(health::HealthArgs),
    /// Print ready-to-paste STEM_SIGNING_* lines with fresh keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the enqueue API, one worker per demo queue, a beat and the
    /// dashboard in one process.
    Dev(dev::DevArgs),
    /// GET a URL, directly (no proxy, no redirect followed); exit 0 on a
    /// 2xx answer, 69 otherwise (for container healthchecks).
    Probe(probe::ProbeArgs),
}

// A sanctioned exit (`clippy::exit` is denied elsewhere): without a runtime
// nothing has started yet.
#[allow(clippy::exit)]
fn runtime() -> tokio::runtime::Runtime {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(stem_service::exit::EXIT_SOFTWARE);
        }
    }
}

/// Runs an operator command and turns its outcome into an exit code.
fn operate<F, Fut>(f: F) -> i32
where
    F: FnOnce(context::Ctx) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    // Library warnings only, unless RUST_LOG asks for more.
    stem_service::logging::init_logging(stem_service::logging::log_format_from_env(), "warn");
    let ctx = context::Ctx::load();
    let targets = ctx.targets.clone();
    match runtime().block_on(f(ctx)) {
        Ok(code) => code,
        Err(e) => {
            let (code, line) = fail::classify(&e, &targets);
            eprintln!("error: {line}");
            code
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                stem_service::exit::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        Command::Keys(k) => keys::run(k),
        Command::Probe(a) => probe::run(a),
        Command::Dev(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(dev::run(args)),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                stem_service::exit::EXIT_SOFTWARE
            }
        },
        Command::Schedule(c) => operate(|ctx| async move { schedule::run(&ctx, c).await }),
        Command::Worker(c) => operate(|ctx| async move { worker::run(&ctx, c).await }),
        Command::Queue(c) => operate(|ctx| async move { queue::run(&ctx, c).await }),
        Command::Dlq(c) => operate(|ctx| async move { dlq::run(&ctx, c).await }),
        Command::Task(c) => operate(|ctx| async move { task::run(&ctx, c).await }),
        Command::Health(a) => operate(|ctx| async move { health::run(&ctx, a).await }),
    };
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
