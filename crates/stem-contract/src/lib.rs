//! The contract every Stem store adapter must keep, as suites of public
//! async functions: [`broker`] (publish, fetch, leases, delays, retries,
//! dead letters, recovery), [`backend`] (statuses that never move
//! backwards, groups, expiry), [`runtime`] (a real [`stem::Worker`] and
//! [`stem::Stem`] on the stores: retries, canvas, signing, revocation,
//! control) and [`schedule`] (schedule entries, firing records, beat's
//! leader lock).
//!
//! An adapter runs a suite by handing it a factory, one line per adapter:
//!
//! ```ignore
//! // tests/broker_contract.rs of a crate with an adapter of its own
//! fn my_store() -> anyhow::Result<stem_contract::Adapters> {
//!     let stores = my_crate::stores()?;                 // a stem::client::Stores
//!     Ok(stem_contract::Adapters::new(stores, stem_contract::Shared))
//! }
//! stem_contract::broker_suite!(my_store_adapter => crate::my_store);
//! stem_contract::backend_suite!(my_store_adapter => crate::my_store);
//! stem_contract::runtime_suite!(my_store_adapter => crate::my_store);
//! ```
//!
//! Each macro writes one `#[tokio::test]` per (adapter, contract test)
//! pair, in a module named after the adapter, so a failure names both.
//! Stem's own adapters (memory, Redis, Redis with the atomic store, Redis
//! Cluster) run the same suites from `crates/stem/tests/*_contract.rs`.
//!
//! Why a crate of its own: the suites were private to `crates/stem/tests`,
//! so a fifth store meant copying 2,800 lines of tests; here they are the
//! contract itself, versioned with the traits they check.

use std::sync::Arc;
use std::time::Duration;

use stem::client::Stores;
use stem::envelope::TaskStatus;

pub mod backend;
pub mod broker;
pub mod runtime;
pub mod schedule;

pub use stem_testkit::poll;

/// What a suite may ask of an adapter beyond its [`Stores`]. Every method
/// has a default, so an adapter with nothing more to offer passes
/// [`Shared`].
pub trait Harness: Send + Sync {
    /// Stores on the same data whose result backend keeps statuses only
    /// `ttl` (the expiry test). The default fails that test saying what
    /// to implement: a contract test never passes by being skipped.
    fn with_ttl(&self, stores: &Stores, ttl: Duration) -> anyhow::Result<Stores> {
        let _ = (stores, ttl);
        anyhow::bail!(
            "this adapter's Harness does not implement with_ttl, which the expiry test needs"
        )
    }

    /// Stores on the same data as `stores` but with connections of their
    /// own, as a second process would have (a second worker that must not
    /// take what the first still holds). Defaults to `stores` themselves,
    /// which is what an in-process adapter shares.
    fn second_process(&self, stores: &Stores) -> anyhow::Result<Stores> {
        Ok(stores.clone())
    }

    /// How many fetches are blocked in the store right now, when the store
    /// can show it from outside (Redis: `CLIENT LIST`), so a test of what a
    /// blocked fetch does can wait until one is. `None`: the tests check
    /// the outcome only.
    fn blocked_fetches(&self) -> Option<anyhow::Result<usize>> {
        None
    }
}

/// The [`Harness`] of an adapter that offers nothing beyond its stores.
pub struct Shared;

impl Harness for Shared {}

/// One set of stores under test, with its [`Harness`] (which also keeps
/// whatever serves the stores alive, e.g. a private redis-server). Derefs
/// to its [`Stores`], so a test reads `a.broker`, `a.admin`, `a.backend`.
pub struct Adapters {
    /// The stores the suites exercise.
    pub stores: Stores,
    harness: Arc<dyn Harness>,
}

impl std::ops::Deref for Adapters {
    type Target = Stores;
    fn deref(&self) -> &Stores {
        &self.stores
    }
}

impl Adapters {
    /// `stores` under test, with what `harness` offers.
    pub fn new(stores: Stores, harness: impl Harness + 'static) -> Self {
        Adapters {
            stores,
            harness: Arc::new(harness),
        }
    }

    /// Writes statuses the way production does on these stores: through
    /// the atomic settle when broker and backend share a Redis, else
    /// through the backend.
    pub async fn set_statuses(&self, statuses: &[TaskStatus]) -> stem::Result<()> {
        match &self.atomic {
            Some(atomic) => atomic.settle(statuses, &[]).await,
            None => self.backend.set_statuses(statuses).await,
        }
    }

    /// The same stores with statuses kept only `ttl` ([`Harness::with_ttl`]).
    pub fn with_ttl(self, ttl: Duration) -> anyhow::Result<Self> {
        let stores = self.harness.with_ttl(&self.stores, ttl)?;
        Ok(Adapters {
            stores,
            harness: self.harness,
        })
    }

    /// The stores as a client's.
    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }

    /// A second process's stores on the same data ([`Harness::second_process`]).
    pub fn second_process(&self) -> anyhow::Result<Stores> {
        self.harness.second_process(&self.stores)
    }

    /// Fetches blocked in the store now, if it can tell ([`Harness::blocked_fetches`]).
    pub fn blocked_fetches(&self) -> Option<anyhow::Result<usize>> {
        self.harness.blocked_fetches()
    }
}

/// One `#[tokio::test]` per (adapter, test) pair, calling
/// `$crate::$suite::$name(factory()?)`; the suite macros expand to this.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite {
    ($suite:ident; []; $($name:ident),* $(,)?) => {};
    (
        $suite:ident;
        [$module:ident => $factory:path $(, $more:ident => $more_factory:path)* $(,)?];
        $($name:ident),* $(,)?
    ) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    $crate::$suite::$name($factory()?).await
                }
            )*
        }
        $crate::__suite!($suite; [$($more => $more_factory),*]; $($name),*);
    };
}
