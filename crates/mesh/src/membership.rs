//! The gossip and membership core: scuttlebutt state merge plus failure detection, sans I/O.
//!
//! Every node owns a set of versioned key/values (its *record*) and a heartbeat counter; it alone
//! writes them. Peers exchange digests (`node → generation, heartbeat, max_version`) and send back
//! only what the other side lacks. Time is an argument; the async driver owns sockets and timers.
//! See PROTOCOL.md for the rules and their invariants.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use atmosphere_proto::NodeId;
use atmosphere_proto::gossip::{Delta, Digest, DigestEntry, GossipMsg, NodeDelta, VersionedValue};
use atmosphere_proto::record::{self, LeftKey, RecordKey};
use rand::Rng;
use rand::seq::IteratorRandom;

use crate::detector::{ArrivalWindow, DetectorConfig};

/// Tuning of the membership core.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Peers contacted per round.
    pub fanout: usize,
    pub detector: DetectorConfig,
    /// How long a node that is down keeps its state before it is forgotten.
    pub dead_node_grace: Duration,
    /// How long a node that left is remembered, so stale gossip cannot bring it back.
    pub left_node_grace: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            fanout: 3,
            detector: DetectorConfig::default(),
            dead_node_grace: Duration::from_secs(3600),
            left_node_grace: Duration::from_secs(3600),
        }
    }
}

/// Liveness of a node as this node judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Alive,
    Down,
    Left,
}

/// Something that changed in the membership view; the driver reacts to these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node was seen for the first time (or again after being forgotten).
    Joined(NodeId),
    /// A node restarted: it came back with a new generation.
    Restarted(NodeId),
    /// Some of a node's values changed; the keys are listed.
    Updated(NodeId, Vec<String>),
    Down(NodeId),
    /// A node that was down is heartbeating again.
    Up(NodeId),
    Left(NodeId),
    /// A node's state was dropped after its grace period.
    Forgotten(NodeId),
}

#[derive(Debug, Clone)]
struct NodeState {
    generation: u64,
    heartbeat: u64,
    max_version: u64,
    values: BTreeMap<String, (u64, Vec<u8>)>,
    status: Status,
    status_since: Instant,
    arrivals: ArrivalWindow,
}

impl NodeState {
    fn new(generation: u64, now: Instant) -> Self {
        Self {
            generation,
            heartbeat: 0,
            max_version: 0,
            values: BTreeMap::new(),
            status: Status::Alive,
            status_since: now,
            arrivals: ArrivalWindow::new(now),
        }
    }

    fn digest_entry(&self, node: NodeId) -> DigestEntry {
        DigestEntry {
            node,
            generation: self.generation,
            heartbeat: self.heartbeat,
            max_version: self.max_version,
        }
    }

    fn has_left(&self) -> bool {
        self.values
            .get(LeftKey::KEY)
            .and_then(|(_, bytes)| record::decode_value::<LeftKey>(bytes))
            .unwrap_or(false)
    }
}

/// A read-only view of one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub id: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    /// Highest version of the node's values held here.
    pub max_version: u64,
    pub status: Status,
    pub status_since: Instant,
    pub last_heartbeat: Instant,
    state: &'a NodeState,
}

impl NodeView<'_> {
    /// The typed value under key `K`, if present and decodable.
    pub fn get<K: RecordKey>(&self) -> Option<K::Value> {
        self.state
            .values
            .get(K::KEY)
            .and_then(|(_, bytes)| record::decode_value::<K>(bytes))
    }

    pub fn is_alive(&self) -> bool {
        self.status == Status::Alive
    }

    /// The raw bytes under `key`.
    pub fn raw(&self, key: &str) -> Option<&[u8]> {
        self.state
            .values
            .get(key)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Every key this node holds.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.state.values.keys().map(String::as_str)
    }
}

/// One node's whole view of the mesh.
#[derive(Debug, Clone)]
pub struct Membership {
    self_id: NodeId,
    config: MembershipConfig,
    nodes: BTreeMap<NodeId, NodeState>,
    /// Nodes refused admission (revoked, expired): their state is dropped and not relearned.
    banned: std::collections::BTreeSet<NodeId>,
    events: Vec<Event>,
}

impl Membership {
    /// Starts a view holding only this node, in incarnation `generation` (strictly greater on
    /// every start of the same node: the node persists it).
    pub fn new(self_id: NodeId, generation: u64, config: MembershipConfig, now: Instant) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(self_id, NodeState::new(generation, now));
        Self {
            self_id,
            config,
            nodes,
            banned: Default::default(),
            events: Vec::new(),
        }
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    fn local(&mut self) -> &mut NodeState {
        self.nodes
            .entry(self.self_id)
            .or_insert_with(|| NodeState::new(1, Instant::now()))
    }

    /// Sets one of this node's own values; it spreads with the next rounds.
    pub fn set_local<K: RecordKey>(&mut self, value: &K::Value) {
        self.set_local_raw(K::KEY, record::encode_value::<K>(value));
    }

    /// Sets a raw value; unchanged bytes do not bump the version.
    pub fn set_local_raw(&mut self, key: &str, value: Vec<u8>) {
        let local = self.local();
        if local.values.get(key).is_some_and(|(_, old)| *old == value) {
            return;
        }
        local.max_version += 1;
        let version = local.max_version;
        local.values.insert(key.to_owned(), (version, value));
    }

    /// Marks this node as leaving and returns the delta to push to peers at once.
    pub fn leave(&mut self) -> Delta {
        self.set_local::<LeftKey>(&true);
        let self_id = self.self_id;
        let local = self.local();
        local.status = Status::Left;
        Delta {
            nodes: vec![full_delta(self_id, local)],
        }
    }

    /// One gossip round's housekeeping: beat our own heart, judge the others, forget the long
    /// gone. Returns the peers to gossip with this round.
    pub fn tick(&mut self, now: Instant, rng: &mut impl Rng) -> Vec<NodeId> {
        let self_id = self.self_id;
        self.local().heartbeat += 1;
        let config = self.config.clone();
        let mut forgotten = Vec::new();
        for (id, state) in self.nodes.iter_mut().filter(|(id, _)| **id != self_id) {
            match state.status {
                Status::Alive => {
                    if state.arrivals.phi(now, &config.detector) > config.detector.phi_threshold {
                        state.status = Status::Down;
                        state.status_since = now;
                        self.events.push(Event::Down(*id));
                    }
                }
                Status::Down => {
                    if now.saturating_duration_since(state.status_since) > config.dead_node_grace {
                        forgotten.push(*id);
                    }
                }
                Status::Left => {
                    if now.saturating_duration_since(state.status_since) > config.left_node_grace {
                        forgotten.push(*id);
                    }
                }
            }
        }
        for id in forgotten {
            self.nodes.remove(&id);
            self.events.push(Event::Forgotten(id));
        }
        self.gossip_targets(rng)
    }

    /// Up to `fanout` live peers, plus now and then a down one so that revivals and healed
    /// partitions are noticed even when nobody else talks to them.
    fn gossip_targets(&self, rng: &mut impl Rng) -> Vec<NodeId> {
        let live = self
            .nodes
            .iter()
            .filter(|(id, s)| **id != self.self_id && s.status == Status::Alive)
            .map(|(id, _)| *id);
        let mut targets = live.clone().choose_multiple(rng, self.config.fanout);
        let n_live = live.count();
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.status == Status::Down)
            .map(|(id, _)| *id)
            .collect();
        if !down.is_empty() {
            let p = down.len() as f64 / (n_live + 1) as f64;
            if rng.random_bool(p.min(1.0))
                && let Some(id) = down.iter().choose(rng)
            {
                targets.push(*id);
            }
        }
        targets
    }

    /// Everything this node knows, in brief.
    pub fn digest(&self) -> Digest {
        Digest {
            entries: self
                .nodes
                .iter()
                .map(|(id, state)| state.digest_entry(*id))
                .collect(),
        }
    }

    /// What a peer with digest `theirs` is missing.
    pub fn delta_for(&self, theirs: &Digest) -> Delta {
        let known: HashMap<NodeId, &DigestEntry> =
            theirs.entries.iter().map(|e| (e.node, e)).collect();
        let mut nodes = Vec::new();
        for (id, state) in &self.nodes {
            match known.get(id) {
                None => nodes.push(full_delta(*id, state)),
                Some(entry) if entry.generation < state.generation => {
                    nodes.push(full_delta(*id, state));
                }
                Some(entry) if entry.generation == state.generation => {
                    let values: Vec<VersionedValue> = state
                        .values
                        .iter()
                        .filter(|(_, (version, _))| *version > entry.max_version)
                        .map(|(key, (version, value))| VersionedValue {
                            key: key.clone(),
                            version: *version,
                            value: value.clone(),
                        })
                        .collect();
                    if !values.is_empty() || entry.heartbeat < state.heartbeat {
                        nodes.push(NodeDelta {
                            node: *id,
                            generation: state.generation,
                            heartbeat: state.heartbeat,
                            from_version: entry.max_version.min(state.max_version),
                            max_version: state.max_version,
                            values,
                        });
                    }
                }
                Some(_) => {} // they know a newer incarnation than we do
            }
        }
        Delta { nodes }
    }

    /// Applies a delta from a peer.
    pub fn apply_delta(&mut self, delta: Delta, now: Instant) {
        for node_delta in delta.nodes {
            self.apply_node_delta(node_delta, now);
        }
    }

    fn apply_node_delta(&mut self, delta: NodeDelta, now: Instant) {
        if delta.node == self.self_id || self.banned.contains(&delta.node) {
            return; // only we write our own state; banned nodes stay out
        }
        let detector = self.config.detector;
        let is_new = !self.nodes.contains_key(&delta.node);
        let state = self
            .nodes
            .entry(delta.node)
            .or_insert_with(|| NodeState::new(delta.generation, now));
        if delta.generation < state.generation {
            return;
        }
        let mut restarted = false;
        if delta.generation > state.generation {
            if delta.from_version != 0 {
                return; // a partial delta of an incarnation we have never seen: wait for a full one
            }
            *state = NodeState::new(delta.generation, now);
            restarted = !is_new;
        }
        if is_new && delta.from_version != 0 {
            self.nodes.remove(&delta.node);
            return;
        }
        let mut changed_keys = Vec::new();
        // Values are only applied when they continue what we have: no holes in the versions.
        if delta.from_version <= state.max_version && delta.max_version >= state.max_version {
            for value in delta.values {
                let newer = state
                    .values
                    .get(&value.key)
                    .is_none_or(|(version, _)| *version < value.version);
                if newer {
                    changed_keys.push(value.key.clone());
                    state.values.insert(value.key, (value.version, value.value));
                }
            }
            state.max_version = delta.max_version;
        }
        if delta.heartbeat > state.heartbeat {
            state.heartbeat = delta.heartbeat;
            if state.status == Status::Down {
                state.status = Status::Alive;
                state.status_since = now;
                state.arrivals.reset(now);
                self.events.push(Event::Up(delta.node));
            } else {
                state.arrivals.heartbeat(now, &detector);
            }
        }
        if state.status != Status::Left && state.has_left() {
            state.status = Status::Left;
            state.status_since = now;
            self.events.push(Event::Left(delta.node));
        }
        if is_new {
            self.events.push(Event::Joined(delta.node));
        } else if restarted {
            self.events.push(Event::Restarted(delta.node));
        }
        if !changed_keys.is_empty() {
            self.events.push(Event::Updated(delta.node, changed_keys));
        }
    }

    /// Handles one gossip message from a peer; returns the reply to send, if any.
    pub fn handle(&mut self, message: GossipMsg, now: Instant) -> Option<GossipMsg> {
        match message {
            GossipMsg::Syn { digest } => Some(GossipMsg::SynAck {
                delta: self.delta_for(&digest),
                digest: self.digest(),
            }),
            GossipMsg::SynAck { digest, delta } => {
                self.apply_delta(delta, now);
                Some(GossipMsg::Ack {
                    delta: self.delta_for(&digest),
                })
            }
            GossipMsg::Ack { delta } | GossipMsg::Push { delta } => {
                self.apply_delta(delta, now);
                None
            }
        }
    }

    /// The opening message of a round.
    pub fn syn(&self) -> GossipMsg {
        GossipMsg::Syn {
            digest: self.digest(),
        }
    }

    /// Drops a node and refuses any further state about it, until [`Membership::unban`].
    pub fn ban(&mut self, id: NodeId) {
        if id == self.self_id {
            return;
        }
        self.banned.insert(id);
        if self.nodes.remove(&id).is_some() {
            self.events.push(Event::Forgotten(id));
        }
    }

    pub fn unban(&mut self, id: &NodeId) {
        self.banned.remove(id);
    }

    pub fn is_banned(&self, id: &NodeId) -> bool {
        self.banned.contains(id)
    }

    /// This node's own values as a delta, to push to peers at once (urgent changes).
    pub fn own_delta(&self) -> Delta {
        self.nodes
            .get(&self.self_id)
            .map(|state| Delta {
                nodes: vec![full_delta(self.self_id, state)],
            })
            .unwrap_or_default()
    }

    /// Events since the last call.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn get(&self, id: &NodeId) -> Option<NodeView<'_>> {
        self.nodes.get(id).map(|state| view(*id, state))
    }

    /// Every known node, this one included, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeView<'_>> {
        self.nodes.iter().map(|(id, state)| view(*id, state))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The current suspicion level of a peer (0 for this node).
    pub fn phi(&self, id: &NodeId, now: Instant) -> f64 {
        if *id == self.self_id {
            return 0.0;
        }
        self.nodes.get(id).map_or(f64::INFINITY, |s| {
            s.arrivals.phi(now, &self.config.detector)
        })
    }
}

fn view(id: NodeId, state: &NodeState) -> NodeView<'_> {
    NodeView {
        id,
        generation: state.generation,
        heartbeat: state.heartbeat,
        max_version: state.max_version,
        status: state.status,
        status_since: state.status_since,
        last_heartbeat: state.arrivals.last_arrival(),
        state,
    }
}

fn full_delta(id: NodeId, state: &NodeState) -> NodeDelta {
    NodeDelta {
        node: id,
        generation: state.generation,
        heartbeat: state.heartbeat,
        from_version: 0,
        max_version: state.max_version,
        values: state
            .values
            .iter()
            .map(|(key, (version, value))| VersionedValue {
                key: key.clone(),
                version: *version,
                value: value.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use atmosphere_proto::record::NameKey;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    /// A full round A → B: Syn, SynAck, Ack.
    fn round(a: &mut Membership, b: &mut Membership, now: Instant) {
        let syn = a.syn();
        let syn_ack = b.handle(syn, now).unwrap();
        if let Some(ack) = a.handle(syn_ack, now) {
            assert!(b.handle(ack, now).is_none());
        }
    }

    #[test]
    fn two_nodes_learn_each_other_in_one_round() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        a.set_local::<NameKey>(&"a".into());
        b.set_local::<NameKey>(&"b".into());
        round(&mut a, &mut b, now);
        assert_eq!(
            a.get(&id(2)).unwrap().get::<NameKey>().as_deref(),
            Some("b")
        );
        assert_eq!(
            b.get(&id(1)).unwrap().get::<NameKey>().as_deref(),
            Some("a")
        );
        assert!(a.drain_events().contains(&Event::Joined(id(2))));
    }

    #[test]
    fn only_newer_values_travel() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        a.set_local::<NameKey>(&"a".into());
        round(&mut a, &mut b, now);
        // Nothing new: B's delta for A is empty, A's for B holds no values.
        let delta = a.delta_for(&b.digest());
        assert!(delta.nodes.iter().all(|n| n.values.is_empty()), "{delta:?}");
        a.set_local::<NameKey>(&"a2".into());
        let delta = a.delta_for(&b.digest());
        assert_eq!(delta.nodes.len(), 1);
        assert_eq!(delta.nodes[0].values.len(), 1);
        b.apply_delta(delta, now);
        assert_eq!(
            b.get(&id(1)).unwrap().get::<NameKey>().as_deref(),
            Some("a2")
        );
    }

    #[test]
    fn silent_node_goes_down_and_comes_back() {
        let mut rng = StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), start);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), start);
        let mut now = start;
        for _ in 0..10 {
            now += Duration::from_millis(500);
            a.tick(now, &mut rng);
            b.tick(now, &mut rng);
            round(&mut a, &mut b, now);
        }
        assert_eq!(a.get(&id(2)).unwrap().status, Status::Alive);
        a.drain_events();
        // B stops talking.
        let mut down_after = None;
        for step in 1..40 {
            now += Duration::from_millis(500);
            a.tick(now, &mut rng);
            if a.get(&id(2)).unwrap().status == Status::Down {
                down_after = Some(step * 500);
                break;
            }
        }
        let down_after = down_after.expect("B is marked down");
        assert!(down_after <= 5_000, "took {down_after} ms");
        assert_eq!(a.drain_events(), vec![Event::Down(id(2))]);
        // B returns: one round brings it back.
        b.tick(now, &mut rng);
        round(&mut a, &mut b, now);
        assert_eq!(a.get(&id(2)).unwrap().status, Status::Alive);
        assert!(a.drain_events().contains(&Event::Up(id(2))));
    }

    #[test]
    fn a_node_that_left_is_not_resurrected_by_stale_gossip() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        let mut c = Membership::new(id(3), 1, MembershipConfig::default(), now);
        round(&mut a, &mut b, now);
        round(&mut c, &mut b, now);
        round(&mut a, &mut b, now);
        // C holds an old view of B; B leaves and tells A.
        let stale = c.delta_for(&Digest::default());
        let leave = b.leave();
        a.apply_delta(leave, now);
        assert_eq!(a.get(&id(2)).unwrap().status, Status::Left);
        a.apply_delta(stale, now);
        assert_eq!(a.get(&id(2)).unwrap().status, Status::Left);
        // And the leave spreads on from A to C.
        round(&mut c, &mut a, now);
        assert_eq!(c.get(&id(2)).unwrap().status, Status::Left);
    }

    #[test]
    fn a_restart_supersedes_the_old_incarnation() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        b.set_local::<NameKey>(&"old".into());
        round(&mut a, &mut b, now);
        let mut b2 = Membership::new(id(2), 2, MembershipConfig::default(), now);
        b2.set_local::<NameKey>(&"new".into());
        round(&mut a, &mut b2, now);
        assert_eq!(a.get(&id(2)).unwrap().generation, 2);
        assert_eq!(
            a.get(&id(2)).unwrap().get::<NameKey>().as_deref(),
            Some("new")
        );
        // The old incarnation's gossip no longer applies.
        a.apply_delta(b.delta_for(&Digest::default()), now);
        assert_eq!(
            a.get(&id(2)).unwrap().get::<NameKey>().as_deref(),
            Some("new")
        );
    }

    #[test]
    fn banned_nodes_are_dropped_and_not_relearned() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        round(&mut a, &mut b, now);
        a.ban(id(2));
        assert!(a.get(&id(2)).is_none());
        round(&mut a, &mut b, now);
        assert!(
            a.get(&id(2)).is_none(),
            "gossip does not bring a banned node back"
        );
        a.unban(&id(2));
        round(&mut a, &mut b, now);
        assert!(a.get(&id(2)).is_some());
    }

    #[test]
    fn replayed_stale_state_rolls_nothing_back_and_keeps_no_dead_node_alive() {
        let mut rng = StdRng::seed_from_u64(3);
        let start = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), start);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), start);
        b.set_local::<NameKey>(&"old".into());
        round(&mut a, &mut b, start);
        // A peer keeps what B said then, and sends it again and again.
        let stale = b.delta_for(&Digest::default());
        let mut now = start;
        for _ in 0..10 {
            now += Duration::from_millis(500);
            a.tick(now, &mut rng);
            b.tick(now, &mut rng);
            round(&mut a, &mut b, now);
        }
        b.set_local::<NameKey>(&"new".into());
        round(&mut a, &mut b, now);
        // B dies; the replayed state neither renames it back nor counts as its heartbeat.
        let mut down = false;
        for _ in 0..40 {
            now += Duration::from_millis(500);
            a.apply_delta(stale.clone(), now);
            a.tick(now, &mut rng);
            assert_eq!(
                a.get(&id(2)).unwrap().get::<NameKey>().as_deref(),
                Some("new")
            );
            if a.get(&id(2)).unwrap().status == Status::Down {
                down = true;
                break;
            }
        }
        assert!(down, "a replayed heartbeat kept a dead node alive");
    }

    #[test]
    fn partial_deltas_with_holes_are_not_applied() {
        let now = Instant::now();
        let mut a = Membership::new(id(1), 1, MembershipConfig::default(), now);
        let mut b = Membership::new(id(2), 1, MembershipConfig::default(), now);
        b.set_local::<NameKey>(&"one".into());
        round(&mut a, &mut b, now);
        let digest_v1 = a.digest();
        b.set_local_raw("x", vec![1]);
        b.set_local_raw("y", vec![2]);
        // A delta that starts after what A has (from_version 2 while A has 1) is refused.
        let mut delta = b.delta_for(&digest_v1);
        delta.nodes[0].from_version = 2;
        delta.nodes[0].values.retain(|v| v.key == "y");
        a.apply_delta(delta, now);
        assert_eq!(a.get(&id(2)).unwrap().state.max_version, 1);
    }
}
