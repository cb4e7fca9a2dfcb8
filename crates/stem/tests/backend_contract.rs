//! The result-backend contract (`stem_contract::backend`), run against the
//! in-memory backend, Redis (with and without the atomic store) and a
//! Redis Cluster.

mod common;

stem_contract::backend_suite!(
    memory_adapter => crate::common::memory,
    redis_adapter => crate::common::redis,
    redis_colocated => crate::common::redis_colocated,
    redis_cluster => crate::common::cluster,
);
