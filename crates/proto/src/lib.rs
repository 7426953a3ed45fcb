//! Atmosphere wire types: node ids, node records, gossip and request messages, and the framed codec.
//!
//! Everything here is plain data plus pure functions: no I/O, no clocks. The mesh, the node and the
//! tests all speak these types, and every type that crosses a socket round-trips through
//! [`frame::encode`] / [`frame::decode`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bytes;
pub mod frame;
pub mod gossip;
pub mod id;
pub mod record;
pub mod rpc;

pub use frame::{FrameError, MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use gossip::{Delta, Digest, DigestEntry, GossipMsg, NodeDelta, VersionedValue};
pub use id::{NodeId, ParseNodeIdError};
pub use record::{Capability, Link, Load, ModelAdvert, ModelKind, RecordKey};
pub use rpc::{Control, ErrorCode, Request, Response, RoutedBody, RoutedReply};
