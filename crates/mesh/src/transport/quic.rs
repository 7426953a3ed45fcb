//! The QUIC transport, on iroh: a node's endpoint id *is* its Ed25519 key, so every connection is
//! mutually authenticated by the TLS handshake. Relays, n0 DNS and port mapping are off: LAN first.
//!
//! One connection per peer (an accepted connection is reused for calls back), one bidirectional
//! stream per call carrying one request frame and one response frame. The handshake tells each
//! side the other's generation, so a connection to a node's former self (killed without a word,
//! restarted) is dropped as soon as its new self is heard of, not when a call to it times out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use atmosphere_proto::frame::{self, HEADER_BYTES};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use atmosphere_proto::{ErrorCode, NodeId, Request, Response};
use iroh::endpoint::{Connection, QuicTransportConfig, RecvStream, SendStream, presets};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey, TransportAddr};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Gatekeeper, Incoming, Transport, TransportError};

/// The ALPN of Atmosphere's mesh protocol, version 2 (1 had no generation in its handshake).
pub const ALPN: &[u8] = b"atmosphere/mesh/2";

/// Settings of the QUIC transport.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub listen: SocketAddr,
    /// Largest frame accepted on a stream.
    pub max_frame_bytes: usize,
    /// Connections idle longer than this are closed (iroh's default is 30 s; we gossip every
    /// half second, so a silent connection is a dead one).
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests handled at once per connection; more wait for a stream.
    pub max_streams_per_peer: u32,
    /// How much a peer may ask of us before it is slowed down or cut off.
    pub policy: PeerPolicy,
    /// This node's generation (its membership incarnation), told to peers in the handshake.
    pub generation: u64,
}

/// What a connection may do before it is refused or closed: a token bucket of requests, a cap
/// on malformed frames and a deadline for a request to arrive. A flooding or broken peer loses
/// its own connection; the others do not notice.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerPolicy {
    /// Requests per second a connection may sustain.
    pub requests_per_sec: f64,
    /// Requests it may send at once above that rate.
    pub burst: f64,
    /// Requests refused for rate that the peer may ignore before its connection is closed.
    pub max_refusals: u32,
    /// Malformed or oversized frames before its connection is closed.
    pub max_bad_frames: u32,
    /// A request must arrive whole within this time of its stream opening.
    pub request_timeout: Duration,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        // A model pull keeps 6 chunk requests in flight; a busy node answers a few hundred
        // routed intents and tool calls a second. Ten times that is not a peer at work.
        Self {
            requests_per_sec: 2000.0,
            burst: 4000.0,
            max_refusals: 2000,
            max_bad_frames: 16,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The token bucket of one connection.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: tokio::time::Instant,
}

impl Bucket {
    fn new(policy: &PeerPolicy) -> Self {
        Self {
            tokens: policy.burst,
            refilled: tokio::time::Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, policy: &PeerPolicy) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * policy.requests_per_sec).min(policy.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What one connection has done wrong so far (shared by its stream tasks).
#[derive(Debug, Default)]
struct Strikes {
    bad_frames: AtomicU32,
}

impl QuicConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_frame_bytes: atmosphere_proto::MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(3),
            max_streams_per_peer: 128,
            policy: PeerPolicy::default(),
            generation: 0,
        }
    }
}

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("invalid listen address {addr}: {reason}")]
    Address { addr: SocketAddr, reason: String },
    #[error(
        "could not bind the QUIC endpoint on {addr}: {reason} (is another node using the port?)"
    )]
    Bind { addr: SocketAddr, reason: String },
}

#[derive(Debug, Default)]
struct Peers {
    /// Where each peer can be reached, the most recently learned first.
    addrs: HashMap<NodeId, Vec<SocketAddr>>,
    connections: HashMap<NodeId, Link>,
    /// One dial at a time per peer, so concurrent callers share a connection.
    dialing: HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>,
}

/// The connection kept for calls to one peer, and the generation the peer told us on it
/// (0 when it did not say: a node that has not joined yet).
#[derive(Debug, Clone)]
struct Link {
    connection: Connection,
    generation: u64,
}

/// Addresses remembered per peer; the oldest are forgotten first.
const MAX_ADDRS_PER_PEER: usize = 8;

/// A node's QUIC endpoint; cheap to share (`Arc` inside).
#[derive(Debug)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: NodeId,
    endpoint: Endpoint,
    config: QuicConfig,
    peers: Mutex<Peers>,
    incoming_tx: mpsc::Sender<Incoming>,
    /// Admission control; `None` admits every peer (tests of the mesh core only).
    gate: Option<Arc<dyn Gatekeeper>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Close code used when a peer is refused; the reason travels with it.
const CLOSE_REFUSED: u32 = 403;
/// Close code used when a peer floods us or keeps sending what cannot be read.
const CLOSE_MISBEHAVING: u32 = 429;

/// Converts between our wire id and iroh's key type; every 32-byte id from a live connection is
/// a valid key, so this only fails for ids that came from elsewhere.
pub fn endpoint_id(id: &NodeId) -> Result<iroh::EndpointId, TransportError> {
    iroh::EndpointId::from_bytes(id.as_bytes()).map_err(|e| TransportError::Unreachable {
        peer: id.short(),
        reason: format!("not a valid Ed25519 key: {e}"),
    })
}

pub fn node_id(id: &iroh::EndpointId) -> NodeId {
    NodeId::from_bytes(*id.as_bytes())
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting connections; requests arrive on the returned
    /// receiver.
    pub async fn bind(
        secret_key: SecretKey,
        config: QuicConfig,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Incoming>), BindError> {
        Self::bind_with_gate(secret_key, config, None).await
    }

    /// Like [`QuicTransport::bind`], with admission control: every connection starts with a
    /// `Hello` carrying a token, checked by `gate` on both sides.
    pub async fn bind_with_gate(
        secret_key: SecretKey,
        config: QuicConfig,
        gate: Option<Arc<dyn Gatekeeper>>,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Incoming>), BindError> {
        let idle = config
            .idle_timeout
            .try_into()
            .map_err(|e| BindError::Address {
                addr: config.listen,
                reason: format!("idle timeout: {e}"),
            })?;
        // Windows sized for model chunks (a 4 MiB answer on one stream, several in flight); the
        // defaults (1.25 MB per stream, 10 MB per connection) halve a LAN transfer's speed.
        let transport_config = QuicTransportConfig::builder()
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(config.max_streams_per_peer.into())
            .stream_receive_window((8u32 << 20).into())
            .send_window(64 << 20)
            .build();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(secret_key)
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr(config.listen)
            .map_err(|e| BindError::Address {
                addr: config.listen,
                reason: e.to_string(),
            })?
            .transport_config(transport_config)
            .bind()
            .await
            .map_err(|e| BindError::Bind {
                addr: config.listen,
                reason: e.to_string(),
            })?;
        let (incoming_tx, incoming_rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            id: node_id(&endpoint.id()),
            endpoint,
            config,
            peers: Mutex::new(Peers::default()),
            incoming_tx,
            gate,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let accepting = inner.clone();
        inner
            .tasks
            .spawn(async move { accepting.accept_loop().await });
        Ok((Arc::new(Self { inner }), incoming_rx))
    }

    /// Stops accepting, closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.cancel.cancel();
        inner.close_all("shutting down");
        inner.endpoint.close().await;
        inner.tasks.close();
        inner.tasks.wait().await;
    }
}

impl Inner {
    fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let this = self.clone();
            self.tasks.spawn(async move {
                let connecting = match incoming.accept() {
                    Ok(connecting) => connecting,
                    Err(e) => return debug!("incoming connection failed: {e}"),
                };
                match connecting.await {
                    Ok(connection) => {
                        let peer = node_id(&connection.remote_id());
                        let admitted = Arc::new(AtomicBool::new(this.gate.is_none()));
                        this.serve(peer, connection, admitted).await;
                    }
                    Err(e) => debug!("handshake failed: {e}"),
                }
            });
        }
    }

    /// Keeps a connection whose peer has said hello, for calls back to it. A connection from a
    /// newer generation of the peer replaces (and closes) one to its former self, which may have
    /// died without a word. When both sides of one generation dialled at once, both keep the
    /// connection dialled by the smaller id, so they converge on one.
    fn adopt(&self, peer: NodeId, connection: &Connection, generation: u64) {
        let mut peers = self.peers();
        let superseded = match peers.connections.get(&peer) {
            None => None,
            Some(existing) if existing.connection.stable_id() == connection.stable_id() => None,
            Some(existing) if existing.connection.close_reason().is_some() => None,
            Some(existing) if generation > existing.generation => Some(existing.connection.clone()),
            Some(existing) if generation == existing.generation && peer < self.id => None,
            Some(_) => return,
        };
        let link = Link {
            connection: connection.clone(),
            generation,
        };
        peers.connections.insert(peer, link);
        drop(peers);
        if let Some(old) = superseded {
            debug!(peer = %peer.short(), generation, "dropping the connection to the peer's former self");
            old.close(0u32.into(), b"superseded by the peer's new generation");
        }
    }

    /// Serves the streams of one connection until it closes.
    async fn serve(
        self: Arc<Self>,
        peer: NodeId,
        connection: Connection,
        admitted: Arc<AtomicBool>,
    ) {
        let policy = &self.config.policy;
        let mut bucket = Bucket::new(policy);
        let mut refusals = 0u32;
        let strikes = Arc::new(Strikes::default());
        loop {
            let stream = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                stream = connection.accept_bi() => stream,
            };
            let (mut send, recv) = match stream {
                Ok(streams) => streams,
                Err(e) => {
                    debug!(peer = %peer.short(), "connection ended: {e}");
                    break;
                }
            };
            if !bucket.take(policy) {
                refusals += 1;
                if refusals > policy.max_refusals {
                    let reason = format!(
                        "flooding: over {} requests/s after {} refusals",
                        policy.requests_per_sec, policy.max_refusals
                    );
                    warn!(peer = %peer.short(), "closing the connection: {reason}");
                    connection.close(CLOSE_MISBEHAVING.into(), reason.as_bytes());
                    break;
                }
                // Answered without reading the request: refusing must cost less than serving.
                let max = self.config.max_frame_bytes;
                let limit = policy.requests_per_sec;
                self.tasks.spawn(async move {
                    let refusal = Response::Error {
                        code: ErrorCode::RateLimited,
                        message: format!("rate limited: over {limit} requests/s; slow down"),
                    };
                    let _ = write_frame(&mut send, &refusal, max).await;
                    drop(recv);
                });
                continue;
            }
            let (this, connection, admitted, strikes) = (
                self.clone(),
                connection.clone(),
                admitted.clone(),
                strikes.clone(),
            );
            self.tasks.spawn(async move {
                this.serve_stream(peer, &connection, &admitted, &strikes, send, recv)
                    .await
            });
        }
        let mut peers = self.peers();
        if peers
            .connections
            .get(&peer)
            .is_some_and(|c| c.connection.stable_id() == connection.stable_id())
        {
            peers.connections.remove(&peer);
        }
    }

    async fn serve_stream(
        &self,
        peer: NodeId,
        connection: &Connection,
        admitted: &AtomicBool,
        strikes: &Strikes,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let mut refused = None;
        let policy = &self.config.policy;
        let read = tokio::time::timeout(
            policy.request_timeout,
            read_frame::<Request>(&mut recv, self.config.max_frame_bytes),
        )
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Timeout {
                peer: peer.short(),
                after: policy.request_timeout,
            })
        });
        if let Err(TransportError::Frame(_) | TransportError::Timeout { .. }) = &read {
            let bad = strikes.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
            if bad > policy.max_bad_frames {
                let reason = format!("{bad} malformed, oversized or unfinished requests");
                warn!(peer = %peer.short(), "closing the connection: {reason}");
                connection.close(CLOSE_MISBEHAVING.into(), reason.as_bytes());
                return;
            }
        }
        let response = match read {
            Ok(Request::Hello { token, generation }) => match self.handshake(peer, &token) {
                Ok(welcome) => {
                    admitted.store(true, Ordering::Release);
                    self.adopt(peer, connection, generation);
                    welcome
                }
                Err(reason) => {
                    refused = Some(reason.clone());
                    unauthorized(reason)
                }
            },
            Ok(request)
                if !admitted.load(Ordering::Acquire)
                    && !matches!(request, Request::Join { .. }) =>
            {
                let reason =
                    "not admitted: a connection must start with a Hello carrying a valid token"
                        .to_owned();
                refused = Some(reason.clone());
                unauthorized(reason)
            }
            Ok(request) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                let incoming = Incoming {
                    from: peer,
                    request,
                    reply_tx,
                };
                if self.incoming_tx.send(incoming).await.is_err() {
                    return;
                }
                match reply_rx.await {
                    Ok(response) => response,
                    Err(_) => return, // the node dropped the request (shutting down)
                }
            }
            Err(e) => {
                warn!(peer = %peer.short(), "dropping bad request: {e}");
                Response::Error {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                }
            }
        };
        if let Err(e) = write_frame(&mut send, &response, self.config.max_frame_bytes).await {
            debug!(peer = %peer.short(), "could not answer: {e}");
        }
        if let Some(reason) = refused {
            warn!(peer = %peer.short(), "refused: {reason}");
            // Let the answer leave before the close: wait until the peer has read it.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            connection.close(CLOSE_REFUSED.into(), reason.as_bytes());
        }
    }

    /// Checks a peer's Hello; returns our Welcome.
    fn handshake(&self, peer: NodeId, token: &[u8]) -> Result<Response, String> {
        let generation = self.config.generation;
        let Some(gate) = &self.gate else {
            return Ok(Response::Welcome {
                token: Vec::new(),
                generation,
            });
        };
        gate.admit(peer, token)?;
        let ours = gate
            .credential()
            .ok_or_else(|| "this node has not joined a mesh yet".to_owned())?;
        Ok(Response::Welcome {
            token: ours,
            generation,
        })
    }

    /// Our side of the handshake on a connection we dialled: present our token, check theirs.
    /// Returns the peer's generation (0 when there was no handshake: we have not joined yet).
    async fn hello(&self, peer: NodeId, connection: &Connection) -> Result<u64, TransportError> {
        // Without admission control the handshake only trades generations.
        let credential = match &self.gate {
            None => Vec::new(),
            Some(gate) => match gate.credential() {
                Some(credential) => credential,
                // Before joining, a node may only ask for a token (Join); it presents nothing.
                None => return Ok(0),
            },
        };
        let refused = |reason: String| TransportError::Unauthorized {
            peer: peer.short(),
            reason,
        };
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let hello = Request::Hello {
            token: credential,
            generation: self.config.generation,
        };
        write_frame(&mut send, &hello, self.config.max_frame_bytes).await?;
        match read_frame::<Response>(&mut recv, self.config.max_frame_bytes).await? {
            Response::Welcome { token, generation } => match &self.gate {
                None => Ok(generation),
                Some(gate) => match gate.admit(peer, &token) {
                    Ok(()) => Ok(generation),
                    Err(reason) => {
                        connection.close(CLOSE_REFUSED.into(), reason.as_bytes());
                        Err(refused(reason))
                    }
                },
            },
            Response::Error { message, .. } => Err(refused(message)),
            other => Err(refused(format!("unexpected answer to Hello: {other:?}"))),
        }
    }

    async fn connection(self: &Arc<Self>, peer: NodeId) -> Result<Connection, TransportError> {
        let lock = {
            let mut peers = self.peers();
            if let Some(link) = peers.connections.get(&peer)
                && link.connection.close_reason().is_none()
            {
                return Ok(link.connection.clone());
            }
            peers.dialing.entry(peer).or_default().clone()
        };
        let _dialing = lock.lock().await;
        let addrs = {
            let peers = self.peers();
            if let Some(link) = peers.connections.get(&peer)
                && link.connection.close_reason().is_none()
            {
                return Ok(link.connection.clone());
            }
            peers.addrs.get(&peer).cloned().unwrap_or_default()
        };
        if addrs.is_empty() {
            return Err(TransportError::NoAddress(peer.short()));
        }
        let addr = EndpointAddr::from_parts(
            endpoint_id(&peer)?,
            addrs.iter().map(|a| TransportAddr::Ip(*a)),
        );
        let connect = self.endpoint.connect(addr, ALPN);
        let connection = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| TransportError::Timeout {
                peer: peer.short(),
                after: self.config.connect_timeout,
            })?
            .map_err(|e| TransportError::Unreachable {
                peer: peer.short(),
                reason: e.to_string(),
            })?;
        let generation = self.hello(peer, &connection).await?;
        let link = Link {
            connection: connection.clone(),
            generation,
        };
        self.peers().connections.insert(peer, link);
        // Serve the streams the peer opens on our connection too; it passed our check above.
        let (this, serving) = (self.clone(), connection.clone());
        let admitted = Arc::new(AtomicBool::new(true));
        self.tasks
            .spawn(async move { this.serve(peer, serving, admitted).await });
        Ok(connection)
    }

    async fn call(
        self: &Arc<Self>,
        peer: NodeId,
        request: &Request,
    ) -> Result<Response, TransportError> {
        let connection = self.connection(peer).await?;
        let lost = |e: &dyn std::fmt::Display| TransportError::ConnectionLost {
            peer: peer.short(),
            reason: e.to_string(),
        };
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        // The frame helpers do not know the peer; name it in what they report.
        let named = |error: TransportError| match error {
            TransportError::ConnectionLost { reason, .. } => TransportError::ConnectionLost {
                peer: peer.short(),
                reason,
            },
            other => other,
        };
        write_frame(&mut send, request, self.config.max_frame_bytes)
            .await
            .map_err(named)?;
        read_frame::<Response>(&mut recv, self.config.max_frame_bytes)
            .await
            .map_err(named)
    }

    fn close_all(&self, reason: &str) {
        let connections: Vec<Connection> = self
            .peers()
            .connections
            .drain()
            .map(|(_, link)| link.connection)
            .collect();
        for connection in connections {
            connection.close(0u32.into(), reason.as_bytes());
        }
    }
}

impl Transport for QuicTransport {
    fn local_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound sockets, with a wildcard bind (0.0.0.0 / ::) expanded to the addresses of the
    /// machine's non-loopback interfaces: what a peer can actually dial.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        expand_wildcards(&self.inner.endpoint.bound_sockets())
    }

    async fn call(
        &self,
        peer: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        if peer == self.inner.id {
            return Err(TransportError::Unreachable {
                peer: peer.short(),
                reason: "a node does not call itself over the network".into(),
            });
        }
        let result = tokio::time::timeout(timeout, self.inner.call(peer, request))
            .await
            .map_err(|_| TransportError::Timeout {
                peer: peer.short(),
                after: timeout,
            })?;
        if let Err(TransportError::ConnectionLost { .. } | TransportError::Timeout { .. }) = &result
        {
            // Do not keep a connection that just failed us: the next call dials afresh.
            self.close_peer(peer, "call failed");
        }
        result
    }

    fn add_peer_addrs(&self, peer: NodeId, addrs: &[SocketAddr]) {
        if peer == self.inner.id || addrs.is_empty() {
            return;
        }
        let mut peers = self.inner.peers();
        let known = peers.addrs.entry(peer).or_default();
        // The newest first: after a restart on new ports, the old ones are tried last.
        let mut fresh: Vec<SocketAddr> = Vec::with_capacity(MAX_ADDRS_PER_PEER);
        for addr in addrs.iter().chain(known.iter()) {
            if fresh.len() < MAX_ADDRS_PER_PEER && !fresh.contains(addr) {
                fresh.push(*addr);
            }
        }
        *known = fresh;
    }

    fn peer_restarted(&self, peer: NodeId, generation: u64) {
        let stale = {
            let mut peers = self.inner.peers();
            match peers.connections.get(&peer) {
                Some(link) if link.generation < generation => peers.connections.remove(&peer),
                _ => None,
            }
        };
        if let Some(link) = stale {
            debug!(peer = %peer.short(), generation, "dropping the connection to the peer's former self");
            link.connection
                .close(0u32.into(), b"the peer has restarted");
        }
    }

    fn close_all(&self, reason: &str) {
        self.inner.close_all(reason);
    }

    fn close_peer(&self, peer: NodeId, reason: &str) {
        if let Some(link) = self.inner.peers().connections.remove(&peer) {
            link.connection.close(0u32.into(), reason.as_bytes());
        }
    }
}

fn unauthorized(message: String) -> Response {
    Response::Error {
        code: ErrorCode::Unauthorized,
        message,
    }
}

/// Reads one frame from a stream: length prefix first, checked against the cap before the body
/// is read, so a hostile peer cannot make us allocate.
async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T, TransportError> {
    let lost = |e: &dyn std::fmt::Display| TransportError::ConnectionLost {
        peer: String::new(),
        reason: e.to_string(),
    };
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(|e| lost(&e))?;
    let len = frame::body_len(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| lost(&e))?;
    Ok(frame::decode_body(&body)?)
}

async fn write_frame<T: serde::Serialize>(
    send: &mut SendStream,
    message: &T,
    max: usize,
) -> Result<(), TransportError> {
    let bytes = frame::encode(message, max)?;
    let lost = |e: &dyn std::fmt::Display| TransportError::ConnectionLost {
        peer: String::new(),
        reason: e.to_string(),
    };
    send.write_all(&bytes).await.map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    Ok(())
}

fn expand_wildcards(bound: &[SocketAddr]) -> Vec<SocketAddr> {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let mut out = Vec::new();
    for addr in bound {
        if !addr.ip().is_unspecified() {
            out.push(*addr);
            continue;
        }
        for interface in interfaces.iter().filter(|i| !i.is_loopback()) {
            let ip = interface.ip();
            if ip.is_ipv4() == addr.is_ipv4()
                && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
            {
                out.push(SocketAddr::new(ip, addr.port()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
