//! [`contract_suite!`]: runs each contract test against each adapter.
//!
//! A contract test is an `async fn name(adapters) -> anyhow::Result<()>` at
//! the root of a test crate; the macro writes, for every adapter listed as
//! `module => factory`, a module of `#[tokio::test]`s that call the test
//! with `factory()?`. The broker, backend, runtime and schedule suites of
//! `crates/stem/tests` all use it, and an adapter of one's own (Redis
//! Cluster, another store) joins a suite by adding one line.

/// One `#[tokio::test]` per (adapter, test) pair:
///
/// ```ignore
/// stem_testkit::contract_suite!(
///     [memory_adapter => crate::common::memory, redis_adapter => crate::common::redis];
///     publish_fetch_ack_empties_the_queue,
///     fetch_takes_at_most_max,
/// );
/// ```
#[macro_export]
macro_rules! contract_suite {
    ([]; $($name:ident),* $(,)?) => {};
    (
        [$module:ident => $factory:path $(, $more:ident => $more_factory:path)* $(,)?];
        $($name:ident),* $(,)?
    ) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($factory()?).await
                }
            )*
        }
        $crate::contract_suite!([$($more => $more_factory),*]; $($name),*);
    };
}
