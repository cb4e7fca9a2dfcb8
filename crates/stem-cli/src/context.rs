//! Configuration → connections for the operator commands. Configuration is
//! read once from `STEM_*` (invalid → one line, exit 78); connections are
//! lazy, so nothing touches Redis until a command needs it.
//!
//! Read-only and control commands use a consumer client (no signing key
//! needed); only `task enqueue` builds a producer that signs.

use stem::client::Stem;
use stem::config::{StemConfig, StoreUrl};
use stem::schedule::ScheduleStores;
use stem_service::stem_config_or_exit;

use crate::fail::{fail, Exit};

pub(crate) use stem_service::flags::{
    duration as parse_duration_or_zero, positive_duration as parse_duration,
};

/// The configuration plus lazily built clients.
pub(crate) struct Ctx {
    pub config: StemConfig,
    /// The store URLs of this invocation (passwords redacted), e.g.
    /// `redis://127.0.0.1:6379/0`, or `broker redis://…, backend redis://…`
    /// when they differ: the "Redis unavailable" line names them.
    pub targets: String,
}

impl Ctx {
    /// Reads `STEM_*`; exits 78 with one line naming the variable when a
    /// value is invalid.
    pub(crate) fn load() -> Self {
        let config = stem_config_or_exit(StemConfig::from_env());
        let urls = [
            ("broker", &config.broker_url),
            ("backend", &config.result_backend_url),
            ("schedule store", &config.schedule_store_url),
        ];
        let all_same = urls.iter().all(|(_, u)| *u == &config.broker_url);
        let text = if all_same {
            config.broker_url.redacted()
        } else {
            urls.iter()
                .map(|(n, u)| format!("{n} {}", u.redacted()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let targets = text;
        if urls.iter().any(|(_, u)| **u == StoreUrl::Memory) {
            eprintln!(
                "warning: a store URL is memory://; the CLI sees only its own empty in-process store \
                 (set STEM_BROKER_URL / STEM_SCHEDULE_STORE_URL to the Redis the services use)"
            );
        }
        Ctx { config, targets }
    }

    /// A client that never signs: statuses, queues, dead letters, control.
    pub(crate) fn consumer(&self) -> anyhow::Result<Stem> {
        let stem = Stem::connect_consumer(&self.config)
            .map_err(|e| fail(Exit::Config, format!("configuration error: {e}")))?;
        Ok(stem.with_registry(stem_demo::registry()))
    }

    /// A consumer client for a command on one queue, once the queue is
    /// known: exit 65 for an invalid name or a queue the broker has never
    /// seen (a typo, usually), before anything is read or changed.
    pub(crate) async fn consumer_on(&self, queue: &str) -> anyhow::Result<Stem> {
        let stem = self.consumer()?;
        known(&stem, queue).await?;
        Ok(stem)
    }

    /// A client for worker commands: it signs them with
    /// `STEM_SIGNING_ACTIVE_KEY` when the signing keys allow, so workers
    /// with keys accept revoke, shutdown, pause and resume; without a
    /// usable key it sends them unsigned (read-only commands still work).
    pub(crate) fn operator(&self) -> anyhow::Result<Stem> {
        match Stem::connect(&self.config) {
            Ok(stem) => Ok(stem.with_registry(stem_demo::registry())),
            Err(_) => self.consumer(),
        }
    }

    /// A client that signs with `STEM_SIGNING_ACTIVE_KEY` (task enqueue).
    pub(crate) fn producer(&self) -> anyhow::Result<Stem> {
        let stem = Stem::connect(&self.config)
            .map_err(|e| fail(Exit::Config, format!("configuration error: {e}")))?;
        Ok(stem.with_registry(stem_demo::registry()))
    }

    /// The schedule store on `STEM_SCHEDULE_STORE_URL`.
    pub(crate) fn schedules(&self) -> anyhow::Result<ScheduleStores> {
        ScheduleStores::connect(&self.config)
            .map_err(|e| fail(Exit::Config, format!("configuration error: {e}")))
    }
}

/// Exit 65 for a name no queue may have (the library's rule).
pub(crate) fn check_queue_name(queue: &str) -> anyhow::Result<()> {
    stem::config::validate_queue_name("queue", queue)
        .map_err(|e| fail(Exit::Data, format!("invalid queue name: {e}")))
}

/// Exit 65 for a queue the broker has never seen (a typo, usually).
async fn known(stem: &Stem, queue: &str) -> anyhow::Result<()> {
    check_queue_name(queue)?;
    let queues = stem.admin().known_queues().await?;
    if queues.iter().any(|q| q == queue) {
        return Ok(());
    }
    let known = if queues.is_empty() {
        "none".to_string()
    } else {
        queues.join(", ")
    };
    Err(fail(
        Exit::Data,
        format!("unknown queue {queue:?} (known: {known})"),
    ))
}
