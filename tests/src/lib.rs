//! The compose stack's test harness: [`compose`] reads `docker-compose.yml`,
//! the `.env` profiles and `deploy/Dockerfile` the way `docker compose`
//! does, [`loopback`] places every service's ports on 127.0.0.1, and
//! [`stack`] runs the services for real (the workspace's binaries,
//! Debian's `redis-server`, `prometheus` and `nginx`) with the repository's
//! unmodified configuration but for addresses. No container engine runs on
//! the development machines; this runs what the images would run.
//! `stack.rs` beside this crate holds the tests. [`containers`] runs the
//! same stack in real containers with `docker-compose` (`containers.rs`,
//! run by `scripts/test-containers.sh`).

pub mod compose;
pub mod containers;
pub mod journey;
pub mod loopback;
pub mod stack;

pub use compose::{Profile, Project};
pub use stack::Stack;
