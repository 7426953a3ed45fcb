//! How nodes talk: a request/response [`Transport`] trait with a QUIC implementation (iroh) and an
//! in-memory one for tests and simulation that still serialises every frame and can cut links.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use atmosphere_proto::{FrameError, NodeId, Request, Response};
use tokio::sync::oneshot;

pub mod mem;
pub mod quic;

/// A request that arrived from a peer, with the way to answer it.
#[derive(Debug)]
pub struct Incoming {
    pub from: NodeId,
    pub request: Request,
    pub reply_tx: oneshot::Sender<Response>,
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("no address known for peer {0}")]
    NoAddress(String),
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("call to {peer} timed out after {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost { peer: String, reason: String },
    #[error("peer {peer} refused or was refused admission: {reason}")]
    Unauthorized { peer: String, reason: String },
    #[error("the peer dropped the request without answering")]
    NoResponse,
    #[error("transport is shut down")]
    Closed,
}

/// Admission control for a transport: what this node presents, and whom it lets in. The node's
/// trust layer implements it; the transport calls it during each connection's handshake.
pub trait Gatekeeper: Send + Sync + std::fmt::Debug + 'static {
    /// This node's credential (its token), or `None` before it has joined a mesh.
    fn credential(&self) -> Option<Vec<u8>>;

    /// Admits `peer` (its key proven by QUIC) presenting `credential`, or says why not.
    fn admit(&self, peer: NodeId, credential: &[u8]) -> Result<(), String>;
}

/// A request/response transport between nodes. One connection per peer, one stream per call.
pub trait Transport: Send + Sync + 'static {
    /// This node's id (its public key).
    fn local_id(&self) -> NodeId;

    /// The addresses peers can reach this node on.
    fn local_addrs(&self) -> Vec<SocketAddr>;

    /// Sends `request` to `peer` and waits at most `timeout` for its response.
    fn call(
        &self,
        peer: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send;

    /// Remembers where `peer` can be reached (from discovery, config or gossip).
    fn add_peer_addrs(&self, peer: NodeId, addrs: &[SocketAddr]);

    /// Closes every open connection, with `reason` (used by `node disconnect`).
    fn close_all(&self, reason: &str);

    /// Closes the connection to one peer, if any.
    fn close_peer(&self, peer: NodeId, reason: &str);

    /// `peer` is back with a new `generation` (it restarted): a connection to its former self,
    /// which may have died without closing it, is dropped so the next call dials afresh.
    fn peer_restarted(&self, peer: NodeId, generation: u64);
}
