//! Periodic tasks: schedule entries, their store, the YAML seed file and the
//! beat scheduler (README "Beat"; keys and algorithm in
//! `docs/architecture.md`, "Beat").
//!
//! - [`spec`]: `every:` and cron specs, the slot grid, time zones and DST.
//! - [`entry`]: [`ScheduleEntry`] (definition + [`RunHistory`]) and its JSON.
//! - [`store`]: the [`ScheduleStore`] and [`LockStore`] traits;
//!   [`redis`] and [`memory`] implement both.
//! - [`seed`]: the schedule file, lenient (beat) and strict (`schedule apply`).
//! - [`beat`]: the leader-leased scheduler loop; [`metrics`]: its counters.
//!
//! What an operator tool needs, in calls:
//!
//! | command | call |
//! | --- | --- |
//! | list / `--json` | [`ScheduleStore::list`] → [`ScheduleEntry::summary`] |
//! | show | [`ScheduleStore::get`] → [`ScheduleEntry::to_json`] |
//! | apply `-f FILE` | [`seed::load_file_strict`] (all errors → exit 65) → [`seed::apply`] |
//! | delete | [`ScheduleStore::delete`] |
//! | enable / disable | [`ScheduleStore::set_enabled`] |
//! | dry-run `--id` / `--spec` | [`ScheduleEntry::upcoming`] / [`Spec::upcoming`] |

pub mod beat;
pub mod entry;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod seed;
pub mod spec;
pub mod store;

use std::sync::Arc;

pub use beat::{Beat, BeatConfig};
pub use entry::{Misfire, RunHistory, ScheduleEntry, ScheduleSummary};
pub use spec::Spec;
pub use store::{LockStore, ScheduleStore, UpsertOutcome};

use crate::config::{StemConfig, StoreUrl};
use crate::error::Result;
use crate::redis_conn;

/// The schedule store and lock store on one URL.
#[derive(Clone)]
pub struct ScheduleStores {
    /// Schedule entries and their run history.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Locks for beat's leader lease.
    pub locks: Arc<dyn LockStore>,
}

impl ScheduleStores {
    /// Stores on `STEM_SCHEDULE_STORE_URL` (Redis, with the configured TLS),
    /// or fresh in-process stores for `memory://`. Connections are lazy.
    pub fn connect(config: &StemConfig) -> Result<Self> {
        Ok(match &config.schedule_store_url {
            StoreUrl::Memory => ScheduleStores::memory(),
            StoreUrl::Redis(url) => {
                let client = redis_conn::endpoint(url, &config.tls)?;
                ScheduleStores {
                    schedules: Arc::new(redis::RedisScheduleStore::new(client.clone())?),
                    locks: Arc::new(redis::RedisLockStore::new(client)?),
                }
            }
        })
    }

    /// Fresh in-memory stores.
    pub fn memory() -> Self {
        ScheduleStores {
            schedules: Arc::new(memory::MemoryScheduleStore::new()),
            locks: Arc::new(memory::MemoryLockStore::new()),
        }
    }
}
