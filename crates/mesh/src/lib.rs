//! The Atmosphere mesh: membership, gossip, failure detection and the gradient table as sans-I/O
//! cores, plus the transports, discovery and the async driver that runs them.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod detector;
pub mod discovery;
pub mod driver;
pub mod gradient;
pub mod links;
pub mod membership;
pub mod peer;
pub mod transport;

pub use driver::{
    EchoResult, Hooks, Mesh, MeshConfig, MeshError, MeshStatus, NodeInfo, RouteInfo, ValueChanged,
    WorkResult,
};
pub use membership::Status;
pub use peer::PeerAddr;
pub mod sim;
pub mod testkit;
