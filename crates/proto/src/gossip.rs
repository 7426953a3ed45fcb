//! Gossip messages: scuttlebutt digests and deltas (see PROTOCOL.md, "Gossip").
//!
//! A round between A and B is `Syn(digest_A)` → `SynAck(digest_B, delta for A)` → `Ack(delta for B)`.
//! `Push` carries an urgent delta (a leave, later a revocation) without waiting for a round.

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// What one node knows about another, in a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub node: NodeId,
    /// Incarnation of the node: bumped on every start, so a restart supersedes all older state.
    pub generation: u64,
    pub heartbeat: u64,
    /// The highest key version known for `(node, generation)`.
    pub max_version: u64,
}

/// A digest of everything the sender knows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Digest {
    pub entries: Vec<DigestEntry>,
}

/// One value of a node's state with the version at which it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedValue {
    pub key: String,
    pub version: u64,
    pub value: Vec<u8>,
}

/// What the receiver is missing about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDelta {
    pub node: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    /// The entries are every value with a version above `from_version`; `0` means the whole state.
    pub from_version: u64,
    /// The sender's `max_version` for this node: the receiver has it all once it applies the delta.
    pub max_version: u64,
    pub values: Vec<VersionedValue>,
}

/// A set of node deltas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delta {
    pub nodes: Vec<NodeDelta>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The gossip protocol's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    Syn { digest: Digest },
    SynAck { digest: Digest, delta: Delta },
    Ack { delta: Delta },
    Push { delta: Delta },
}
