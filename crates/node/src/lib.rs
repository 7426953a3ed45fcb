//! The Atmosphere node daemon: configuration, identity, durable state, the mesh and the HTTP API,
//! wired together. `atmosphere serve` is a thin wrapper over [`daemon::run`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agents;
pub mod api;
pub mod bridge;
pub mod config;
pub mod configsync;
pub mod daemon;
pub mod dashboard;
pub mod identity;
pub mod intent;
pub mod knowledge;
pub mod llamafarm;
pub mod models;
pub mod openai;
pub mod packages;
pub mod servers;
pub mod service;
pub mod store;
pub mod tools;
pub mod trust;

pub use config::NodeConfig;
pub use daemon::{NodeError, run};
