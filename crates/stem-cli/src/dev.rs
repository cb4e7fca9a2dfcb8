//! `stem dev`: enqueue API plus one worker per demo queue in one process,
//! on the embedded in-memory broker unless `STEM_BROKER_URL` names Redis.
//! Without configured keys it signs with an ephemeral HMAC key, so the
//! signed path is what developers exercise. A beat runs too, seeded from
//! `STEM_SCHEDULE_FILE` or `./schedules.example.yaml` when present.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig, StoreUrl};
use stem::schedule::{BeatConfig, ScheduleStore, ScheduleStores};
use stem::signing::{generate_hmac_secret, KeyRing};
use stem::worker::WorkerConfig;
use stem_service::{config_or_exit, shutdown_token};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub(crate) struct DevArgs {
    /// Enqueue API port.
    #[arg(long, env = "PORT", default_value_t = 8081)]
    port: u16,
    /// Dashboard port.
    #[arg(long, env = "DASHBOARD_PORT", default_value_t = 3080)]
    dashboard_port: u16,
    /// Concurrency of each demo worker.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

fn dev_config() -> stem::Result<StemConfig> {
    let redis = matches!(
        std::env::var("STEM_BROKER_URL").ok().as_deref().map(str::trim),
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://")
    );
    let mut config = if redis {
        StemConfig::from_env()?
    } else {
        let mut c = StemConfig::from_env_with_broker_default("memory://")?;
        c.broker_url = StoreUrl::Memory;
        c.result_backend_url = StoreUrl::Memory;
        c.schedule_store_url = StoreUrl::Memory;
        c
    };
    if !config.keys.has_signing_material() {
        let secret = generate_hmac_secret();
        let env = move |k: &str| match k {
            "STEM_SIGNING_KEYS" => Some(format!("dev:{secret}")),
            "STEM_SIGNING_ACTIVE_KEY" => Some("dev".to_string()),
            _ => None,
        };
        config.keys = KeyRing::from_lookup(&env)?;
        eprintln!(
            "stem dev: no signing keys configured; signing with an ephemeral HMAC key (id \"dev\")"
        );
    }
    Ok(config)
}

/// The schedule file to seed: `STEM_SCHEDULE_FILE`, else
/// `./schedules.example.yaml` when it exists.
fn dev_schedule_file(config: &StemConfig) -> Option<PathBuf> {
    config.schedule_file.clone().or_else(|| {
        let p = PathBuf::from("schedules.example.yaml");
        p.is_file().then_some(p)
    })
}

/// Runs the stack until Ctrl-C / SIGTERM (or the enqueue API fails), then
/// stops every part; exit 70 when the enqueue API failed.
pub(crate) async fn run(args: DevArgs) -> i32 {
    stem_service::logging::init_logging(stem_service::logging::log_format_from_env(), "info");
    let config = stem_service::stem_config_or_exit(dev_config());
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem_demo::registry());
    let shutdown = shutdown_token();
    // One process, one port: the composed services export no metrics of
    // their own (each would bind the same exporter port).
    let mut config = config;
    config.metric_exporters.clear();

    // The same services the stack runs, composed in one process: a worker
    // per demo queue, a beat, the enqueue API and the dashboard.
    let workers = spawn_workers(&config, &stem, args.concurrency, &shutdown);
    let (beat, schedules, beat_banner) = spawn_beat(&config, &stem, &shutdown);
    let env = FlagsOverEnv::new()
        .flag("PORT", Some(args.port))
        .flag("DASHBOARD_PORT", Some(args.dashboard_port));
    let settings = config_or_exit(enqueuer::EnqueuerConfig::from_lookup(&env));
    let (ui, board_url) = spawn_dashboard(&config, &stem, schedules, &env, &shutdown);
    print_banner(&config, args.port, &board_url, &beat_banner);
    let served = enqueuer::serve(&settings, enqueuer::AppState::new(stem), shutdown.clone()).await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    let _ = beat.await;
    let _ = ui.await;
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            stem_service::exit::EXIT_SOFTWARE
        }
    }
}

/// Starts one worker per demo queue, each with `concurrency` slots.
fn spawn_workers(
    config: &StemConfig,
    stem: &Stem,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut workers = Vec::new();
    for queue in stem_demo::QUEUES {
        let mut worker = WorkerConfig::new(format!("dev-{queue}-{}", std::process::id()), &[queue]);
        worker.concurrency = concurrency;
        let (config, stem, stop) = (config.clone(), stem.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            if let Err(e) = worker::run(&config, worker, &stem, stop).await {
                tracing::error!(error = %e, "worker stopped");
            }
        }));
    }
    workers
}

/// Starts the beat, seeded from the dev schedule file. Returns its task,
/// its schedule store (the dashboard reads the same one: a private one on
/// memory://) and the banner line naming the file.
fn spawn_beat(
    config: &StemConfig,
    stem: &Stem,
    shutdown: &CancellationToken,
) -> (JoinHandle<()>, Arc<dyn ScheduleStore>, String) {
    let mut beat_config = config.clone();
    beat_config.schedule_file = dev_schedule_file(config);
    let beat_banner = match &beat_config.schedule_file {
        Some(path) => format!("schedules from {}", path.display()),
        None => "no schedule file (set STEM_SCHEDULE_FILE)".to_string(),
    };
    let stores = config_or_exit(ScheduleStores::connect(&beat_config));
    let schedules = stores.schedules.clone();
    let beat = tokio::spawn({
        let (stem, stop) = (stem.clone(), shutdown.clone());
        async move {
            if let Err(e) = beat::run(
                &beat_config,
                stem,
                stores,
                BeatConfig::default(),
                None,
                stop,
            )
            .await
            {
                tracing::error!(error = %e, "beat stopped");
            }
        }
    });
    (beat, schedules, beat_banner)
}

/// Starts the dashboard on `schedules`. Returns its task and its URL.
fn spawn_dashboard(
    config: &StemConfig,
    stem: &Stem,
    schedules: Arc<dyn ScheduleStore>,
    env: &FlagsOverEnv,
    shutdown: &CancellationToken,
) -> (JoinHandle<()>, String) {
    let mut board = config_or_exit(dashboard::DashboardConfig::from_lookup(env));
    board.demo_keys = config.uses_demo_secrets();
    let board_url = format!("http://{}:{}{}/", board.host, board.port, board.base_path);
    let ui = tokio::spawn({
        let state = dashboard::AppState::new(stem.clone(), schedules, board);
        let stop = shutdown.clone();
        async move {
            if let Err(e) = dashboard::serve(state, stop).await {
                tracing::error!(error = %e, "dashboard stopped");
            }
        }
    });
    (ui, board_url)
}

/// Prints where each part of the stack listens, and a first request to try.
fn print_banner(config: &StemConfig, port: u16, board_url: &str, beat_banner: &str) {
    println!("Stem dev stack on {}", config.broker_url.redacted());
    println!("  Enqueue API: http://127.0.0.1:{port}/enqueue");
    println!("  Task status: http://127.0.0.1:{port}/tasks/<taskId>");
    println!("  Health:      http://127.0.0.1:{port}/healthz");
    println!("  Dashboard:   {board_url}");
    println!("  Workers:     {}", stem_demo::QUEUES.join(", "));
    println!("  Beat:        {beat_banner}");
    println!("Try: curl -X POST http://127.0.0.1:{port}/enqueue -H 'content-type: application/json' -d '{{\"name\":\"Ada\"}}'");
}
