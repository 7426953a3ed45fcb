//! The in-memory transport: a simulated network in one process. Every request and response is
//! encoded to a frame and decoded again, so the codec is exercised as on a socket, and links
//! between pairs of nodes can be cut and healed.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use atmosphere_proto::{MAX_FRAME_BYTES, NodeId, Request, Response, frame};
use tokio::sync::{mpsc, oneshot};

use super::{Incoming, Transport, TransportError};

#[derive(Debug, Default)]
struct NetworkState {
    inboxes: HashMap<NodeId, mpsc::Sender<Incoming>>,
    cut: HashSet<(NodeId, NodeId)>,
    isolated: HashSet<NodeId>,
}

/// A simulated network; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetworkState>>,
    bytes: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a < b { (a, b) } else { (b, a) }
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a node; returns its transport and the stream of requests addressed to it.
    pub fn endpoint(&self, id: NodeId) -> (Arc<MemTransport>, mpsc::Receiver<Incoming>) {
        let (incoming_tx, incoming_rx) = mpsc::channel(256);
        self.lock().inboxes.insert(id, incoming_tx);
        let transport = Arc::new(MemTransport {
            id,
            network: self.clone(),
        });
        (transport, incoming_rx)
    }

    /// Removes a node from the network, as if its process died.
    pub fn detach(&self, id: NodeId) {
        self.lock().inboxes.remove(&id);
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.lock().cut.insert(pair(a, b));
    }

    pub fn heal(&self, a: NodeId, b: NodeId) {
        self.lock().cut.remove(&pair(a, b));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    pub fn rejoin(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }

    /// Bytes carried so far (requests and responses, framing included).
    pub fn bytes_carried(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn frames_carried(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<mpsc::Sender<Incoming>, TransportError> {
        let state = self.lock();
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: to.short(),
            reason: reason.to_owned(),
        };
        if state.cut.contains(&pair(from, to))
            || state.isolated.contains(&from)
            || state.isolated.contains(&to)
        {
            return Err(unreachable("link cut"));
        }
        state
            .inboxes
            .get(&to)
            .cloned()
            .ok_or_else(|| unreachable("no such node"))
    }

    fn carry<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        message: &T,
    ) -> Result<T, TransportError> {
        let bytes = frame::encode(message, MAX_FRAME_BYTES)?;
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        Ok(frame::decode(&bytes, MAX_FRAME_BYTES)?)
    }
}

/// One node's attachment to a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    id: NodeId,
    network: MemNetwork,
}

impl Transport for MemTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        // A stable fake address per node, so records look like real ones.
        let b = self.id.as_bytes();
        vec![SocketAddr::from((
            Ipv4Addr::new(10, b[0], b[1], b[2]),
            7400,
        ))]
    }

    async fn call(
        &self,
        peer: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let inbox = self.network.route(self.id, peer)?;
        let request = self.network.carry(request)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let incoming = Incoming {
            from: self.id,
            request,
            reply_tx,
        };
        let exchange = async {
            inbox
                .send(incoming)
                .await
                .map_err(|_| TransportError::Unreachable {
                    peer: peer.short(),
                    reason: "node stopped".into(),
                })?;
            let response = reply_rx.await.map_err(|_| TransportError::NoResponse)?;
            // The link may have been cut while the request was in flight.
            self.network.route(self.id, peer)?;
            self.network.carry(&response)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout {
                peer: peer.short(),
                after: timeout,
            })?
    }

    fn add_peer_addrs(&self, _peer: NodeId, _addrs: &[SocketAddr]) {}

    fn close_all(&self, _reason: &str) {}

    fn close_peer(&self, _peer: NodeId, _reason: &str) {}

    fn peer_restarted(&self, _peer: NodeId, _generation: u64) {}
}
