//! Requests and responses between nodes: one request per QUIC stream, one response back.

use serde::{Deserialize, Serialize};

use crate::gossip::GossipMsg;
use crate::id::NodeId;

/// A request from one node to a directly connected peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A gossip message; answered with [`Response::Gossip`].
    Gossip(GossipMsg),
    /// Liveness and round-trip probe; answered with [`Response::Pong`].
    Ping { nonce: u64 },
    /// Steering of the receiving node itself (the spec's `node disconnect` / `reconnect`).
    Control(Control),
    /// Admission handshake, the first request on a connection: the sender's token and its
    /// generation (incremented at each start, so a restarted node is told from its former self).
    /// Answered with [`Response::Welcome`] carrying the receiver's token and generation, or an
    /// `Unauthorized` error and a close.
    Hello { token: Vec<u8>, generation: u64 },
    /// A new node asks the authority for a token with a one-time invite secret. The only request
    /// accepted before admission; the token is bound to the connection's proven key.
    Join { secret: Vec<u8>, name: String },
    /// A member asks the authority to renew its current token before it expires.
    Renew { token: Vec<u8> },
    /// A member asks the authority to sign an edited shared config (`llamafarm.yaml`) as the
    /// project's next version. Answered with [`Response::Config`].
    SignConfig { text: String },
    /// Work addressed to `dest`, relayed hop by hop along the gradient table.
    Routed {
        dest: NodeId,
        /// Hops left before the request is dropped (loop guard).
        ttl: u8,
        /// Nodes the request has passed through so far, the origin first.
        path: Vec<NodeId>,
        body: RoutedBody,
    },
}

/// What a routed request asks the destination to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutedBody {
    /// Reply with the same bytes: proves a route works end to end and measures it.
    Echo {
        #[serde(with = "crate::bytes")]
        payload: Vec<u8>,
    },
    /// Work for the destination node's services (an intent, a tool call, …): `kind` names the
    /// service, `payload` is its request; relays pass it on without reading it. `timeout_ms`
    /// bounds each hop's wait (model work takes longer than mesh chatter).
    Work {
        kind: String,
        #[serde(with = "crate::bytes")]
        payload: Vec<u8>,
        timeout_ms: u32,
    },
}

/// A routed request's answer from its destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutedReply {
    Echo {
        #[serde(with = "crate::bytes")]
        payload: Vec<u8>,
    },
    /// The service's answer to [`RoutedBody::Work`].
    Work {
        #[serde(with = "crate::bytes")]
        payload: Vec<u8>,
    },
}

/// Steering commands a node accepts from an admitted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Drop every link and refuse mesh traffic until [`Control::Reconnect`]: a network failure on
    /// purpose.
    Disconnect,
    /// Leave the isolated state and rejoin the mesh.
    Reconnect,
}

/// Error classes a peer can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded or is not allowed here.
    BadRequest,
    /// No route to the destination, or the ttl ran out.
    Unreachable,
    /// The receiving node is disconnected on purpose.
    Isolated,
    /// The receiving node failed while handling the request.
    Internal,
    /// The sender is not admitted (no token, or a bad one), or may not do this.
    Unauthorized,
    /// The sender is over its request rate: the request was not read; slow down and retry.
    RateLimited,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The gossip reply (`SynAck` to a `Syn`), or nothing for `Ack` and `Push`.
    Gossip(Option<GossipMsg>),
    Pong {
        nonce: u64,
    },
    Done,
    /// Handshake accepted; the receiver's own token and generation.
    Welcome {
        token: Vec<u8>,
        generation: u64,
    },
    /// A token issued by the authority (answer to `Join` and `Renew`).
    Token {
        token: Vec<u8>,
    },
    /// A shared config signed by the authority (answer to `SignConfig`).
    Config {
        signed: Vec<u8>,
    },
    Routed {
        /// Every node the request passed through, the origin first and the destination last.
        path: Vec<NodeId>,
        reply: RoutedReply,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}
