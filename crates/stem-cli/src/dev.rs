//! `stem dev`: enqueue API plus one worker per demo queue in one process,
//! on the embedded in-memory broker unless `STEM_BROKER_URL` names Redis.
//! Without configured keys it signs with an ephemeral HMAC key, so the
//! signed path is what developers exercise. A beat runs too, seeded from
//! `STEM_SCHEDULE_FILE` or `./schedules.example.yaml` when present.

use std::path::PathBuf;

use clap::Args;
use stem::client::Stem;
use stem::config::{StemConfig, StoreUrl};
use stem::runtime::{config_or_exit, shutdown_token};
use stem::schedule::{seed, Beat, BeatOptions, ScheduleStores};
use stem::signing::{generate_hmac_secret, KeyRing};
use stem::worker::{Worker, WorkerConfig};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Enqueue API port.
    #[arg(long, env = "PORT", default_value_t = 8081)]
    port: u16,
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

/// Seeds the schedule store (when there is a file) and starts a beat;
/// returns its task and a line for the banner.
async fn start_beat(
    config: &StemConfig,
    stem: &Stem,
    shutdown: &tokio_util::sync::CancellationToken,
) -> (tokio::task::JoinHandle<()>, String) {
    let stores = config_or_exit(ScheduleStores::connect(config));
    let banner = match dev_schedule_file(config) {
        None => "no schedule file (set STEM_SCHEDULE_FILE)".to_string(),
        Some(path) => match seed::load_file(&path) {
            Err(e) => {
                tracing::error!("{e}; beat runs without seeding");
                format!("{} could not be read", path.display())
            }
            Ok(file) => match seed::apply_now(stores.schedules.as_ref(), &file.entries).await {
                Ok(done) => format!("{} schedule(s) from {}", done.len(), path.display()),
                Err(e) => {
                    tracing::error!(error = %e, "seeding the schedule store failed");
                    format!("seeding {} failed", path.display())
                }
            },
        },
    };
    let beat = Beat::new(
        stem.clone(),
        stores.schedules,
        stores.locks,
        BeatOptions::default(),
    );
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        if let Err(e) = beat.run(token).await {
            tracing::error!(error = %e, "beat stopped");
        }
    });
    (handle, banner)
}

pub async fn run(args: DevArgs) -> i32 {
    stem::telemetry::init_logging(stem::telemetry::log_format_from_env(), "info");
    let config = config_or_exit(dev_config());
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem::demo::registry());
    let shutdown = shutdown_token();
    let verifier = config.keys.verifier();

    let mut workers = Vec::new();
    for queue in stem::demo::QUEUES {
        let mut opts = WorkerConfig::new(format!("dev-{queue}-{}", std::process::id()), &[queue]);
        opts.concurrency = args.concurrency;
        let worker = Worker::new(opts, &stem, verifier.clone());
        workers.push(tokio::spawn(worker.run(shutdown.clone())));
    }

    let (beat, beat_banner) = start_beat(&config, &stem, &shutdown).await;

    let mut settings = config_or_exit(enqueuer::EnqueuerSettings::from_env());
    settings.port = args.port;
    println!("Stem dev stack on {}", config.broker_url.redacted());
    println!("  Enqueue API: http://127.0.0.1:{}/enqueue", args.port);
    println!(
        "  Task status: http://127.0.0.1:{}/tasks/<taskId>",
        args.port
    );
    println!("  Health:      http://127.0.0.1:{}/healthz", args.port);
    println!("  Workers:     {}", stem::demo::QUEUES.join(", "));
    println!("  Beat:        {beat_banner}");
    println!("Try: curl -X POST http://127.0.0.1:{}/enqueue -H 'content-type: application/json' -d '{{\"name\":\"Ada\"}}'", args.port);
    let served = enqueuer::serve(&settings, enqueuer::AppState { stem }, shutdown.clone()).await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    let _ = beat.await;
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            stem::runtime::EXIT_SOFTWARE
        }
    }
}
