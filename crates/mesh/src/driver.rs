//! The mesh actor: drives the membership, link and gradient cores with a transport and a timer.
//!
//! One task owns all mesh state. It takes [`Command`]s from its [`Mesh`] handle, requests from the
//! transport, results of the calls it spawned, and peers from discovery; every gossip interval it
//! runs a round. Calls to peers run in spawned tasks, never inline, so one slow peer cannot stall
//! the node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use atmosphere_proto::gossip::GossipMsg;
use atmosphere_proto::record::{AddrsKey, CapabilitiesKey, LinksKey, LoadKey, ModelsKey, NameKey};
use atmosphere_proto::{
    Capability, Control, ErrorCode, Load, NodeId, Request, Response, RoutedBody, RoutedReply,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::gradient::{CostWeights, GradientTable, MAX_HOPS};
use crate::links::LinkTracker;
use crate::membership::{Event, Membership, MembershipConfig, Status};
use crate::peer::PeerAddr;
use crate::transport::{Incoming, Transport, TransportError};

/// Settings of the mesh actor.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: String,
    pub capabilities: Vec<Capability>,
    /// Incarnation number, strictly greater at every start (persisted by the node).
    pub generation: u64,
    pub gossip_interval: Duration,
    /// Deadline of one gossip or control call.
    pub call_timeout: Duration,
    /// Deadline of a routed request, end to end.
    pub request_timeout: Duration,
    /// A direct link counts while the last exchange over it is younger than this.
    pub link_ttl: Duration,
    pub membership: MembershipConfig,
    pub weights: CostWeights,
    /// Peers to contact until they are members (static bootstrap).
    pub bootstrap: Vec<PeerAddr>,
    /// How often load is re-read and, when it moved, republished.
    pub load_interval: Duration,
}

impl MeshConfig {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            capabilities: Vec::new(),
            generation: 1,
            gossip_interval: Duration::from_millis(500),
            call_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            link_ttl: Duration::from_secs(5),
            membership: MembershipConfig::default(),
            weights: CostWeights::default(),
            bootstrap: Vec::new(),
            load_interval: Duration::from_secs(5),
        }
    }

    /// Fast timings for tests: 100 ms rounds, failures detected in about a second.
    pub fn for_test(name: impl Into<String>) -> Self {
        let mut config = Self::new(name);
        config.gossip_interval = Duration::from_millis(100);
        config.call_timeout = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(3);
        config.link_ttl = Duration::from_secs(1);
        config.load_interval = Duration::from_millis(500);
        config.membership.detector = crate::detector::DetectorConfig {
            initial_interval: Duration::from_millis(100),
            min_std_dev: Duration::from_millis(50),
            acceptable_pause: Duration::from_millis(400),
            ..crate::detector::DetectorConfig::default()
        };
        config
    }
}

/// Why a mesh operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("the mesh actor has stopped")]
    Stopped,
    #[error("no node named or with id {0:?} in the mesh (see `atmosphere mesh status`)")]
    UnknownNode(String),
    #[error("node {0} is unreachable: no route in the gradient table")]
    NoRoute(String),
    #[error("this node is disconnected (`atmosphere node reconnect` brings it back)")]
    Isolated,
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("peer answered with an error ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected answer from peer: {0}")]
    Protocol(String),
}

/// One node as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub status: Status,
    pub is_self: bool,
    pub generation: u64,
    pub heartbeat: u64,
    pub addrs: Vec<SocketAddr>,
    pub capabilities: Vec<Capability>,
    pub load: Load,
    /// Suspicion level of the failure detector (0 for this node).
    pub phi: f64,
    /// Milliseconds since its heartbeat last advanced.
    pub last_heartbeat_ms: u64,
    /// Milliseconds in the current status.
    pub status_age_ms: u64,
    /// Hops from this node, when reachable.
    pub hops: Option<u8>,
    pub next_hop: Option<NodeId>,
    /// Direct links it publishes.
    pub links: Vec<atmosphere_proto::Link>,
    /// The models it serves, with their health.
    #[serde(default)]
    pub models: Vec<atmosphere_proto::ModelAdvert>,
}

/// The whole view, as `mesh status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    pub self_id: NodeId,
    pub name: String,
    pub isolated: bool,
    /// Gossip rounds run by this node since it started.
    pub rounds: u64,
    pub nodes: Vec<NodeInfo>,
}

/// One route of the gradient table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub capability: Capability,
    pub provider: NodeId,
    pub provider_name: String,
    pub next_hop: NodeId,
    pub hops: u8,
    pub latency_us: u64,
    pub cost: f64,
}

/// A routed echo's result: the path it took and how long the round trip was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoResult {
    pub path: Vec<NodeId>,
    pub elapsed_us: u64,
}

/// The answer to [`Mesh::work`]: the service's reply, the path it took, the round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkResult {
    pub path: Vec<NodeId>,
    pub payload: Vec<u8>,
    pub elapsed_us: u64,
}

/// How long a hop waits for a routed request: work carries its own bound.
fn work_timeout(body: &RoutedBody, default: Duration) -> Duration {
    match body {
        RoutedBody::Work { timeout_ms, .. } => {
            default.max(Duration::from_millis(u64::from(*timeout_ms)))
        }
        RoutedBody::Echo { .. } => default,
    }
}

/// Optional channels a node connects to the mesh actor.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Peers found by discovery.
    pub discovered_rx: Option<mpsc::Receiver<PeerAddr>>,
    /// Where requests the mesh does not handle itself go (`Join`, `Renew`, later tool calls).
    /// Without it they are refused.
    pub app_tx: Option<mpsc::Sender<Incoming>>,
}

/// A value of some node's record changed (or was first learned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueChanged {
    pub node: NodeId,
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug)]
enum Command {
    Call {
        peer: NodeId,
        request: Request,
        reply_tx: oneshot::Sender<Result<Response, MeshError>>,
    },
    SetValue {
        key: String,
        value: Vec<u8>,
        push: bool,
    },
    Ban(NodeId, String),
    Unban(NodeId),
    Status(oneshot::Sender<MeshStatus>),
    Routes(oneshot::Sender<Vec<RouteInfo>>),
    Resolve(String, oneshot::Sender<Option<NodeId>>),
    Control {
        target: NodeId,
        control: Control,
        reply_tx: oneshot::Sender<Result<(), MeshError>>,
    },
    Echo {
        dest: NodeId,
        payload: Vec<u8>,
        reply_tx: oneshot::Sender<Result<EchoResult, MeshError>>,
    },
    Work {
        dest: NodeId,
        body: RoutedBody,
        reply_tx: oneshot::Sender<Result<WorkResult, MeshError>>,
    },
    AddPeer(PeerAddr),
    SetCapabilities(Vec<Capability>),
    Leave(oneshot::Sender<()>),
}

/// Results of spawned calls, back to the actor.
#[derive(Debug)]
enum Internal {
    Gossiped {
        peer: NodeId,
        reply: GossipMsg,
        rtt: Duration,
    },
    CallFailed {
        peer: NodeId,
        error: TransportError,
    },
    Outcome {
        provider: NodeId,
        success: bool,
        /// Round trip of a successful request.
        elapsed: Option<Duration>,
    },
}

/// Handle to a running mesh actor. Cloning it is cheap; the actor stops on [`Mesh::shutdown`].
#[derive(Debug, Clone)]
pub struct Mesh {
    cmd_tx: mpsc::Sender<Command>,
    changes_tx: tokio::sync::broadcast::Sender<ValueChanged>,
    cancel: CancellationToken,
    id: NodeId,
    inflight: Arc<AtomicU32>,
}

impl Mesh {
    /// Starts the actor over `transport`; `incoming_rx` is the transport's request stream and
    /// `discovered_rx` (optional) the peers found by discovery.
    pub fn spawn<T: Transport>(
        transport: Arc<T>,
        incoming_rx: mpsc::Receiver<Incoming>,
        hooks: Hooks,
        config: MeshConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let Hooks {
            discovered_rx,
            app_tx,
        } = hooks;
        let (changes_tx, _) = tokio::sync::broadcast::channel(1024);
        let id = transport.local_id();
        let now = Instant::now();
        let mut membership = Membership::new(id, config.generation, config.membership.clone(), now);
        membership.set_local::<NameKey>(&config.name);
        membership.set_local::<AddrsKey>(&transport.local_addrs());
        membership.set_local::<CapabilitiesKey>(&config.capabilities);
        membership.set_local::<LoadKey>(&Load::default());
        membership.set_local::<LinksKey>(&Vec::new());
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let inflight = Arc::new(AtomicU32::new(0));
        let mut seeds = HashMap::new();
        for peer in &config.bootstrap {
            transport.add_peer_addrs(peer.id, &peer.addrs);
            seeds.insert(peer.id, 0);
        }
        let actor = Actor {
            gradient: GradientTable::new(id, config.weights),
            links: LinkTracker::new(config.link_ttl),
            transport,
            membership,
            rng: StdRng::from_os_rng(),
            isolated: false,
            close_pending: false,
            seeds,
            rounds: 0,
            last_load_at: now,
            internal_tx,
            tasks: JoinSet::new(),
            inflight: inflight.clone(),
            app_tx,
            changes_tx: changes_tx.clone(),
            config,
        };
        let join = tokio::spawn(actor.run(
            cmd_rx,
            internal_rx,
            incoming_rx,
            discovered_rx,
            cancel.clone(),
        ));
        (
            Self {
                cmd_tx,
                changes_tx,
                cancel,
                id,
                inflight,
            },
            join,
        )
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, MeshError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(make(reply_tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        reply_rx.await.map_err(|_| MeshError::Stopped)
    }

    pub async fn status(&self) -> Result<MeshStatus, MeshError> {
        self.ask(Command::Status).await
    }

    pub async fn routes(&self) -> Result<Vec<RouteInfo>, MeshError> {
        self.ask(Command::Routes).await
    }

    /// Finds a node by name (case-insensitive), full id, or id prefix.
    pub async fn resolve(&self, name_or_id: &str) -> Result<NodeId, MeshError> {
        self.ask(|tx| Command::Resolve(name_or_id.to_owned(), tx))
            .await?
            .ok_or_else(|| MeshError::UnknownNode(name_or_id.to_owned()))
    }

    /// Sends a control command to `target` (this node included).
    pub async fn control(&self, target: NodeId, control: Control) -> Result<(), MeshError> {
        self.ask(|reply_tx| Command::Control {
            target,
            control,
            reply_tx,
        })
        .await?
    }

    /// Sends an echo to `dest` along the gradient table, hop by hop.
    pub async fn echo(&self, dest: NodeId, payload: Vec<u8>) -> Result<EchoResult, MeshError> {
        self.ask(|reply_tx| Command::Echo {
            dest,
            payload,
            reply_tx,
        })
        .await?
    }

    /// Sends work of `kind` to `dest` (this node included) along the gradient table and waits
    /// for its service's reply; the outcome feeds the table's costs.
    pub async fn work(
        &self,
        dest: NodeId,
        kind: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<WorkResult, MeshError> {
        let body = RoutedBody::Work {
            kind: kind.to_owned(),
            payload,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        self.ask(|reply_tx| Command::Work {
            dest,
            body,
            reply_tx,
        })
        .await?
    }

    pub async fn add_peer(&self, peer: PeerAddr) -> Result<(), MeshError> {
        self.cmd_tx
            .send(Command::AddPeer(peer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    pub async fn set_capabilities(&self, capabilities: Vec<Capability>) -> Result<(), MeshError> {
        self.cmd_tx
            .send(Command::SetCapabilities(capabilities))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Announces an orderly leave to the peers (best effort, bounded by the call timeout).
    pub async fn leave(&self) -> Result<(), MeshError> {
        self.ask(Command::Leave).await
    }

    /// Sends `request` to a directly reachable `peer` and returns its answer.
    pub async fn call(&self, peer: NodeId, request: Request) -> Result<Response, MeshError> {
        self.ask(|reply_tx| Command::Call {
            peer,
            request,
            reply_tx,
        })
        .await?
    }

    /// Sets a raw value of this node's record; `push` sends it to every live peer at once instead
    /// of waiting for gossip rounds (revocations).
    pub async fn set_value(&self, key: &str, value: Vec<u8>, push: bool) -> Result<(), MeshError> {
        self.cmd_tx
            .send(Command::SetValue {
                key: key.to_owned(),
                value,
                push,
            })
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Drops `peer` from the mesh view, closes its connection and ignores its gossip.
    pub async fn ban(&self, peer: NodeId, reason: &str) -> Result<(), MeshError> {
        self.cmd_tx
            .send(Command::Ban(peer, reason.to_owned()))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    pub async fn unban(&self, peer: NodeId) -> Result<(), MeshError> {
        self.cmd_tx
            .send(Command::Unban(peer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Every value change learned from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ValueChanged> {
        self.changes_tx.subscribe()
    }

    /// Requests in flight on this node (published as load).
    pub fn inflight(&self) -> Arc<AtomicU32> {
        self.inflight.clone()
    }

    /// Stops the actor; pending requests are dropped.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

struct Actor<T: Transport> {
    transport: Arc<T>,
    membership: Membership,
    gradient: GradientTable,
    links: LinkTracker,
    rng: StdRng,
    isolated: bool,
    /// Connections are closed at the next tick after `disconnect`, once its answer has left.
    close_pending: bool,
    /// Bootstrap and discovered peers not (yet) known as members, with the number of rounds
    /// they were tried in.
    seeds: HashMap<NodeId, u32>,
    rounds: u64,
    last_load_at: Instant,
    internal_tx: mpsc::Sender<Internal>,
    tasks: JoinSet<()>,
    inflight: Arc<AtomicU32>,
    app_tx: Option<mpsc::Sender<Incoming>>,
    changes_tx: tokio::sync::broadcast::Sender<ValueChanged>,
    config: MeshConfig,
}

impl<T: Transport> Actor<T> {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut internal_rx: mpsc::Receiver<Internal>,
        mut incoming_rx: mpsc::Receiver<Incoming>,
        mut discovered_rx: Option<mpsc::Receiver<PeerAddr>>,
        cancel: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(self.config.gossip_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(command) = cmd_rx.recv() => self.on_command(command).await,
                Some(internal) = internal_rx.recv() => self.on_internal(internal),
                Some(incoming) = incoming_rx.recv() => self.on_incoming(incoming),
                Some(peer) = recv_opt(&mut discovered_rx) => self.add_seed(peer),
                _ = ticker.tick() => self.round(),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
        self.tasks.shutdown().await;
    }

    fn add_seed(&mut self, peer: PeerAddr) {
        if peer.id == self.membership.self_id() {
            return;
        }
        self.transport.add_peer_addrs(peer.id, &peer.addrs);
        if self.membership.get(&peer.id).is_none() {
            // A fresh sighting (mDNS, a command) resets the backoff.
            self.seeds.insert(peer.id, 0);
        }
    }

    /// One gossip round: heartbeat, failure detection, links, load, and a Syn to each target.
    fn round(&mut self) {
        if self.close_pending {
            self.close_pending = false;
            self.transport.close_all("node disconnected");
        }
        let now = Instant::now();
        self.rounds += 1;
        let mut targets = self.membership.tick(now, &mut self.rng);
        if self.isolated {
            // Cut off, this node still judges the others (they fall silent) but sends nothing.
            self.process_events();
            self.gradient.rebuild(&self.membership, now);
            return;
        }
        self.seeds.retain(|id, _| self.membership.get(id).is_none());
        // Seeds are tried every round at first, then every 10th round: a remembered peer that is
        // gone for good costs little.
        let round = self.rounds;
        for (id, tries) in &mut self.seeds {
            if *tries < 10 || round.is_multiple_of(10) {
                *tries = tries.saturating_add(1);
                targets.push(*id);
            }
        }
        targets.sort();
        targets.dedup();
        if let Some(links) = self.links.refresh(now) {
            self.membership.set_local::<LinksKey>(&links);
        }
        if now.saturating_duration_since(self.last_load_at) >= self.config.load_interval {
            self.last_load_at = now;
            let load = Load {
                inflight: self.inflight.load(Ordering::Relaxed),
                cpu_milli: cpu_load_milli(),
            };
            self.membership.set_local::<LoadKey>(&load);
        }
        self.process_events();
        self.gradient.rebuild(&self.membership, now);
        let syn = Request::Gossip(self.membership.syn());
        for peer in targets {
            let transport = self.transport.clone();
            let internal_tx = self.internal_tx.clone();
            let request = syn.clone();
            let timeout = self.config.call_timeout;
            self.tasks.spawn(async move {
                let started = Instant::now();
                let result = transport.call(peer, &request, timeout).await;
                let internal = match result {
                    Ok(Response::Gossip(Some(reply))) => Internal::Gossiped {
                        peer,
                        reply,
                        rtt: started.elapsed(),
                    },
                    Ok(other) => Internal::CallFailed {
                        peer,
                        error: TransportError::Unreachable {
                            peer: peer.short(),
                            reason: format!("answered {}", describe(&other)),
                        },
                    },
                    Err(error) => Internal::CallFailed { peer, error },
                };
                let _ = internal_tx.send(internal).await;
            });
        }
    }

    fn on_internal(&mut self, internal: Internal) {
        let now = Instant::now();
        match internal {
            Internal::Gossiped { peer, reply, rtt } => {
                if self.isolated {
                    return;
                }
                self.links.observe(peer, rtt, now);
                if let Some(ack) = self.membership.handle(reply, now) {
                    let has_news = matches!(&ack, GossipMsg::Ack { delta } if !delta.is_empty());
                    if has_news {
                        self.spawn_send(peer, Request::Gossip(ack));
                    }
                }
                self.process_events();
            }
            Internal::CallFailed { peer, error } => {
                debug!(peer = %peer.short(), "gossip call failed: {error}");
                self.links.forget(&peer);
            }
            Internal::Outcome {
                provider,
                success,
                elapsed,
            } => {
                self.gradient.record_outcome(provider, success, now);
                if let Some(elapsed) = elapsed {
                    self.gradient.record_latency(provider, elapsed);
                }
            }
        }
    }

    /// Fire-and-forget request (Ack, Push).
    fn spawn_send(&mut self, peer: NodeId, request: Request) {
        let transport = self.transport.clone();
        let timeout = self.config.call_timeout;
        self.tasks.spawn(async move {
            if let Err(e) = transport.call(peer, &request, timeout).await {
                debug!(peer = %peer.short(), "send failed: {e}");
            }
        });
    }

    fn process_events(&mut self) {
        let mut changed = false;
        for event in self.membership.drain_events() {
            changed = true;
            match &event {
                Event::Joined(id) | Event::Restarted(id) | Event::Updated(id, _) => {
                    self.publish_changes(&event);
                    if let Some(addrs) = self.membership.get(id).and_then(|n| n.get::<AddrsKey>()) {
                        self.transport.add_peer_addrs(*id, &addrs);
                    }
                    if let (Event::Restarted(_), Some(node)) = (&event, self.membership.get(id)) {
                        self.transport.peer_restarted(*id, node.generation);
                    }
                    self.seeds.remove(id);
                    if !matches!(event, Event::Updated(..)) {
                        info!(node = %self.node_name(id), "node joined (generation {})",
                            self.membership.get(id).map_or(0, |n| n.generation));
                    }
                }
                Event::Down(id) => {
                    warn!(node = %self.node_name(id), "node is down");
                    self.links.forget(id);
                    // Calls in flight to it fail now, not when QUIC's idle timeout gives up on
                    // a peer that died without a word (kill -9): callers fail over in seconds.
                    self.transport
                        .close_peer(*id, "judged down by the failure detector");
                }
                Event::Up(id) => info!(node = %self.node_name(id), "node is back up"),
                Event::Left(id) => {
                    info!(node = %self.node_name(id), "node left the mesh");
                    self.links.forget(id);
                }
                Event::Forgotten(id) => debug!(node = %id.short(), "node forgotten"),
            }
        }
        if changed {
            self.gradient.rebuild(&self.membership, Instant::now());
        }
    }

    fn publish_changes(&self, event: &Event) {
        if self.changes_tx.receiver_count() == 0 {
            return;
        }
        let (id, keys): (&NodeId, Vec<String>) = match event {
            Event::Updated(id, keys) => (id, keys.clone()),
            Event::Joined(id) | Event::Restarted(id) => {
                let Some(node) = self.membership.get(id) else {
                    return;
                };
                (id, node.keys().map(str::to_owned).collect())
            }
            _ => return,
        };
        let Some(node) = self.membership.get(id) else {
            return;
        };
        for key in keys {
            if let Some(value) = node.raw(&key) {
                let _ = self.changes_tx.send(ValueChanged {
                    node: *id,
                    key,
                    value: value.to_vec(),
                });
            }
        }
    }

    fn node_name(&self, id: &NodeId) -> String {
        self.membership
            .get(id)
            .and_then(|n| n.get::<NameKey>())
            .unwrap_or_else(|| id.short())
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        let Incoming {
            from,
            request,
            reply_tx,
        } = incoming;
        if self.membership.is_banned(&from) && !matches!(request, Request::Join { .. }) {
            let _ = reply_tx.send(Response::Error {
                code: ErrorCode::Unauthorized,
                message: "this node is not admitted to the mesh".into(),
            });
            return;
        }
        let isolated_error = || Response::Error {
            code: ErrorCode::Isolated,
            message: "node is disconnected".into(),
        };
        let response = match request {
            Request::Control(Control::Reconnect) => {
                if self.isolated {
                    info!("reconnecting to the mesh");
                }
                self.isolated = false;
                Response::Done
            }
            _ if self.isolated => isolated_error(),
            Request::Gossip(message) => {
                let now = Instant::now();
                self.links.touch(from, now);
                let reply = self.membership.handle(message, now);
                self.process_events();
                Response::Gossip(reply)
            }
            Request::Ping { nonce } => Response::Pong { nonce },
            // Reaches the actor only on transports without admission control.
            Request::Hello { .. } => Response::Welcome {
                token: Vec::new(),
                generation: self.config.generation,
            },
            request @ (Request::Join { .. }
            | Request::Renew { .. }
            | Request::SignConfig { .. }) => {
                self.hand_to_app(from, request, reply_tx);
                return;
            }
            Request::Control(Control::Disconnect) => {
                self.isolate();
                Response::Done
            }
            Request::Routed {
                dest,
                ttl,
                mut path,
                body,
            } => {
                path.push(self.membership.self_id());
                if dest == self.membership.self_id() {
                    if let RoutedBody::Work { .. } = body {
                        let request = Request::Routed {
                            dest,
                            ttl,
                            path,
                            body,
                        };
                        self.hand_to_app(from, request, reply_tx);
                        return;
                    }
                    answer_locally(path, body)
                } else if ttl == 0 {
                    Response::Error {
                        code: ErrorCode::Unreachable,
                        message: "hop limit reached".into(),
                    }
                } else {
                    return self.forward(dest, ttl - 1, path, body, reply_tx);
                }
            }
        };
        let _ = reply_tx.send(response);
    }

    /// Hands a request the mesh does not answer itself to the node's services.
    fn hand_to_app(&mut self, from: NodeId, request: Request, reply_tx: oneshot::Sender<Response>) {
        let Some(app_tx) = self.app_tx.clone() else {
            let _ = reply_tx.send(Response::Error {
                code: ErrorCode::Unauthorized,
                message: "this node runs no services for that request".into(),
            });
            return;
        };
        let incoming = Incoming {
            from,
            request,
            reply_tx,
        };
        self.tasks.spawn(async move {
            let _ = app_tx.send(incoming).await;
        });
    }

    fn isolate(&mut self) {
        warn!("disconnecting from the mesh on request");
        self.isolated = true;
        self.close_pending = true;
        self.links.clear();
    }

    /// Relays a routed request to the next hop in a task; the answer goes back on `reply_tx`.
    fn forward(
        &mut self,
        dest: NodeId,
        ttl: u8,
        path: Vec<NodeId>,
        body: RoutedBody,
        reply_tx: oneshot::Sender<Response>,
    ) {
        let Some((next_hop, _)) = self.gradient.next_hop(&dest) else {
            let _ = reply_tx.send(Response::Error {
                code: ErrorCode::Unreachable,
                message: format!("no route to {}", dest.short()),
            });
            return;
        };
        let transport = self.transport.clone();
        let internal_tx = self.internal_tx.clone();
        let timeout = work_timeout(&body, self.config.request_timeout);
        let inflight = self.inflight.clone();
        self.tasks.spawn(async move {
            inflight.fetch_add(1, Ordering::Relaxed);
            let request = Request::Routed {
                dest,
                ttl,
                path,
                body,
            };
            let response = match transport.call(next_hop, &request, timeout).await {
                Ok(response) => response,
                Err(e) => Response::Error {
                    code: ErrorCode::Unreachable,
                    message: format!("next hop {}: {e}", next_hop.short()),
                },
            };
            inflight.fetch_sub(1, Ordering::Relaxed);
            let success = matches!(response, Response::Routed { .. });
            let _ = internal_tx
                .send(Internal::Outcome {
                    provider: dest,
                    success,
                    elapsed: None,
                })
                .await;
            let _ = reply_tx.send(response);
        });
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply_tx) => {
                let _ = reply_tx.send(self.status());
            }
            Command::Routes(reply_tx) => {
                let _ = reply_tx.send(self.route_infos());
            }
            Command::Resolve(query, reply_tx) => {
                let _ = reply_tx.send(self.resolve(&query));
            }
            Command::Control {
                target,
                control,
                reply_tx,
            } => {
                if target == self.membership.self_id() {
                    match control {
                        Control::Disconnect => self.isolate(),
                        Control::Reconnect => self.isolated = false,
                    }
                    let _ = reply_tx.send(Ok(()));
                    return;
                }
                // A reconnect must reach a node that is, by design, down: call it directly.
                let transport = self.transport.clone();
                let timeout = self.config.call_timeout * 3;
                self.tasks.spawn(async move {
                    let result = transport
                        .call(target, &Request::Control(control), timeout)
                        .await
                        .map_err(MeshError::from)
                        .and_then(expect_done);
                    let _ = reply_tx.send(result);
                });
            }
            Command::Echo {
                dest,
                payload,
                reply_tx,
            } => self.echo(dest, payload, reply_tx),
            Command::Work {
                dest,
                body,
                reply_tx,
            } => self.work(dest, body, reply_tx),
            Command::AddPeer(peer) => self.add_seed(peer),
            Command::Call {
                peer,
                request,
                reply_tx,
            } => {
                let transport = self.transport.clone();
                let timeout = self.config.request_timeout;
                self.tasks.spawn(async move {
                    let result = transport
                        .call(peer, &request, timeout)
                        .await
                        .map_err(MeshError::from);
                    let _ = reply_tx.send(result);
                });
            }
            Command::SetValue { key, value, push } => {
                self.membership.set_local_raw(&key, value);
                if push {
                    let request = Request::Gossip(GossipMsg::Push {
                        delta: self.membership.own_delta(),
                    });
                    let peers: Vec<NodeId> = self
                        .membership
                        .nodes()
                        .filter(|n| n.id != self.membership.self_id() && n.is_alive())
                        .map(|n| n.id)
                        .collect();
                    for peer in peers {
                        self.spawn_send(peer, request.clone());
                    }
                }
            }
            Command::Ban(peer, reason) => {
                warn!(node = %self.node_name(&peer), "refusing node: {reason}");
                self.membership.ban(peer);
                self.links.forget(&peer);
                self.seeds.remove(&peer);
                self.transport.close_peer(peer, &reason);
                self.process_events();
            }
            Command::Unban(peer) => self.membership.unban(&peer),
            Command::SetCapabilities(capabilities) => {
                self.membership.set_local::<CapabilitiesKey>(&capabilities);
                self.gradient.rebuild(&self.membership, Instant::now());
            }
            Command::Leave(reply_tx) => {
                let delta = self.membership.leave();
                let peers: Vec<NodeId> = self
                    .membership
                    .nodes()
                    .filter(|n| !n.is_self_of(&self.membership) && n.is_alive())
                    .map(|n| n.id)
                    .collect();
                let request = Request::Gossip(GossipMsg::Push { delta });
                let transport = self.transport.clone();
                let timeout = self.config.call_timeout;
                self.tasks.spawn(async move {
                    let mut pushes = JoinSet::new();
                    for peer in peers {
                        let transport = transport.clone();
                        let request = request.clone();
                        pushes.spawn(async move { transport.call(peer, &request, timeout).await });
                    }
                    while pushes.join_next().await.is_some() {}
                    let _ = reply_tx.send(());
                });
            }
        }
    }

    /// Runs `body` on `dest`: this node's own services directly, else along the gradient table.
    fn work(
        &mut self,
        dest: NodeId,
        body: RoutedBody,
        reply_tx: oneshot::Sender<Result<WorkResult, MeshError>>,
    ) {
        let self_id = self.membership.self_id();
        let timeout = work_timeout(&body, self.config.request_timeout);
        let internal_tx = self.internal_tx.clone();
        let started = Instant::now();
        if dest == self_id {
            let (tx, rx) = oneshot::channel();
            let request = Request::Routed {
                dest,
                ttl: 0,
                path: vec![self_id],
                body,
            };
            self.hand_to_app(self_id, request, tx);
            self.tasks.spawn(async move {
                let result = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(response)) => work_reply(response, started),
                    Ok(Err(_)) => Err(MeshError::Stopped),
                    Err(_) => Err(MeshError::Remote {
                        code: ErrorCode::Internal,
                        message: format!("no answer within {timeout:?}"),
                    }),
                };
                let _ = reply_tx.send(result);
            });
            return;
        }
        // Before the table has a path (links are published a round after a join), a live
        // member is tried directly.
        let next_hop = match self.gradient.next_hop(&dest) {
            Some((next_hop, _)) => next_hop,
            None if self.membership.get(&dest).is_some_and(|n| n.is_alive()) => dest,
            None => {
                let _ = reply_tx.send(Err(MeshError::NoRoute(self.node_name(&dest))));
                return;
            }
        };
        let transport = self.transport.clone();
        let inflight = self.inflight.clone();
        self.tasks.spawn(async move {
            inflight.fetch_add(1, Ordering::Relaxed);
            let request = Request::Routed {
                dest,
                ttl: MAX_HOPS,
                path: vec![self_id],
                body,
            };
            let result = match transport.call(next_hop, &request, timeout).await {
                Ok(response) => work_reply(response, started),
                Err(e) => Err(MeshError::Transport(e)),
            };
            inflight.fetch_sub(1, Ordering::Relaxed);
            let _ = internal_tx
                .send(Internal::Outcome {
                    provider: dest,
                    success: result.is_ok(),
                    elapsed: result
                        .as_ref()
                        .ok()
                        .map(|r| Duration::from_micros(r.elapsed_us)),
                })
                .await;
            let _ = reply_tx.send(result);
        });
    }

    fn echo(
        &mut self,
        dest: NodeId,
        payload: Vec<u8>,
        reply_tx: oneshot::Sender<Result<EchoResult, MeshError>>,
    ) {
        let self_id = self.membership.self_id();
        if self.isolated {
            let _ = reply_tx.send(Err(MeshError::Isolated));
            return;
        }
        if dest == self_id {
            let _ = reply_tx.send(Ok(EchoResult {
                path: vec![self_id],
                elapsed_us: 0,
            }));
            return;
        }
        let Some((next_hop, _)) = self.gradient.next_hop(&dest) else {
            let _ = reply_tx.send(Err(MeshError::NoRoute(self.node_name(&dest))));
            return;
        };
        let transport = self.transport.clone();
        let timeout = self.config.request_timeout;
        let internal_tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let request = Request::Routed {
                dest,
                ttl: MAX_HOPS,
                path: vec![self_id],
                body: RoutedBody::Echo {
                    payload: payload.clone(),
                },
            };
            let result = match transport.call(next_hop, &request, timeout).await {
                Ok(Response::Routed {
                    path,
                    reply: RoutedReply::Echo { payload: echoed },
                }) if echoed == payload => Ok(EchoResult {
                    path,
                    elapsed_us: started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
                }),
                Ok(Response::Error { code, message }) => Err(MeshError::Remote { code, message }),
                Ok(other) => Err(MeshError::Protocol(describe(&other))),
                Err(e) => Err(MeshError::Transport(e)),
            };
            let _ = internal_tx
                .send(Internal::Outcome {
                    provider: dest,
                    success: result.is_ok(),
                    elapsed: None,
                })
                .await;
            let _ = reply_tx.send(result);
        });
    }

    fn resolve(&self, query: &str) -> Option<NodeId> {
        let query = query.trim();
        if let Ok(id) = query.parse::<NodeId>() {
            return self.membership.get(&id).map(|n| n.id);
        }
        let by_name: Vec<NodeId> = self
            .membership
            .nodes()
            .filter(|n| {
                n.get::<NameKey>()
                    .is_some_and(|name| name.eq_ignore_ascii_case(query))
            })
            .map(|n| n.id)
            .collect();
        if by_name.len() == 1 {
            return by_name.first().copied();
        }
        let lowered = query.to_ascii_lowercase();
        let by_prefix: Vec<NodeId> = self
            .membership
            .nodes()
            .filter(|n| lowered.len() >= 4 && n.id.to_string().starts_with(&lowered))
            .map(|n| n.id)
            .collect();
        (by_prefix.len() == 1).then(|| by_prefix[0])
    }

    fn status(&self) -> MeshStatus {
        let now = Instant::now();
        let self_id = self.membership.self_id();
        let nodes = self
            .membership
            .nodes()
            .map(|n| {
                let hop = self.gradient.next_hop(&n.id);
                NodeInfo {
                    id: n.id,
                    name: n.get::<NameKey>().unwrap_or_else(|| n.id.short()),
                    status: n.status,
                    is_self: n.id == self_id,
                    generation: n.generation,
                    heartbeat: n.heartbeat,
                    addrs: n.get::<AddrsKey>().unwrap_or_default(),
                    capabilities: n.get::<CapabilitiesKey>().unwrap_or_default(),
                    load: n.get::<LoadKey>().unwrap_or_default(),
                    phi: finite(self.membership.phi(&n.id, now)),
                    last_heartbeat_ms: if n.id == self_id {
                        0
                    } else {
                        millis(now.saturating_duration_since(n.last_heartbeat))
                    },
                    status_age_ms: millis(now.saturating_duration_since(n.status_since)),
                    hops: hop.map(|(_, hops)| hops),
                    next_hop: hop.map(|(next, _)| next),
                    links: n.get::<LinksKey>().unwrap_or_default(),
                    models: n.get::<ModelsKey>().unwrap_or_default(),
                }
            })
            .collect();
        MeshStatus {
            self_id,
            name: self.config.name.clone(),
            isolated: self.isolated,
            rounds: self.rounds,
            nodes,
        }
    }

    fn route_infos(&self) -> Vec<RouteInfo> {
        self.gradient
            .routes()
            .values()
            .flatten()
            .map(|route| RouteInfo {
                capability: route.capability.clone(),
                provider: route.provider,
                provider_name: self.node_name(&route.provider),
                next_hop: route.next_hop,
                hops: route.hops,
                latency_us: route.latency_us,
                cost: finite(route.cost),
            })
            .collect()
    }
}

trait SelfCheck {
    fn is_self_of(&self, membership: &Membership) -> bool;
}

impl SelfCheck for crate::membership::NodeView<'_> {
    fn is_self_of(&self, membership: &Membership) -> bool {
        self.id == membership.self_id()
    }
}

fn work_reply(response: Response, started: Instant) -> Result<WorkResult, MeshError> {
    match response {
        Response::Routed {
            path,
            reply: RoutedReply::Work { payload },
        } => Ok(WorkResult {
            path,
            payload,
            elapsed_us: started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
        }),
        Response::Error { code, message } => Err(MeshError::Remote { code, message }),
        other => Err(MeshError::Protocol(describe(&other))),
    }
}

fn answer_locally(path: Vec<NodeId>, body: RoutedBody) -> Response {
    match body {
        RoutedBody::Echo { payload } => Response::Routed {
            path,
            reply: RoutedReply::Echo { payload },
        },
        // Work goes to the node's services before this point.
        RoutedBody::Work { kind, .. } => Response::Error {
            code: ErrorCode::BadRequest,
            message: format!("no service for {kind:?} work here"),
        },
    }
}

fn expect_done(response: Response) -> Result<(), MeshError> {
    match response {
        Response::Done => Ok(()),
        Response::Error { code, message } => Err(MeshError::Remote { code, message }),
        other => Err(MeshError::Protocol(describe(&other))),
    }
}

fn describe(response: &Response) -> String {
    match response {
        Response::Error { code, message } => format!("error {code:?}: {message}"),
        Response::Gossip(_) => "gossip".into(),
        Response::Pong { .. } => "pong".into(),
        Response::Done => "done".into(),
        Response::Welcome { .. } => "welcome".into(),
        Response::Token { .. } => "token".into(),
        Response::Config { .. } => "config".into(),
        Response::Routed { .. } => "routed reply".into(),
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn finite(value: f64) -> f64 {
    if value.is_finite() { value } else { 1e9 }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// One-minute load average per core, in thousandths; 0 where the OS does not say.
fn cpu_load_milli() -> u32 {
    let Ok(text) = std::fs::read_to_string("/proc/loadavg") else {
        return 0;
    };
    let load: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (load / cores * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32
}
