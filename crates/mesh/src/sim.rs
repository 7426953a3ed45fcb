//! A deterministic, single-threaded simulation of many nodes running the real membership core,
//! with message loss and simulated time. Used by the scale tests and the benchmark; every message
//! is encoded with the real frame codec so byte counts are honest.

use std::time::{Duration, Instant};

use atmosphere_proto::gossip::GossipMsg;
use atmosphere_proto::record::NameKey;
use atmosphere_proto::{MAX_FRAME_BYTES, NodeId, Request, frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::membership::{Membership, MembershipConfig, Status};

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub n_nodes: usize,
    pub membership: MembershipConfig,
    /// Probability that any one message is lost.
    pub loss: f64,
    pub gossip_interval: Duration,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(n_nodes: usize) -> Self {
        Self {
            n_nodes,
            membership: MembershipConfig::default(),
            loss: 0.0,
            gossip_interval: Duration::from_millis(500),
            seed: 42,
        }
    }
}

/// N nodes and the network between them.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    pub nodes: Vec<Membership>,
    pub alive: Vec<bool>,
    pub now: Instant,
    rng: StdRng,
    /// Bytes sent by each node so far.
    pub bytes_sent: Vec<u64>,
    pub rounds: u64,
}

impl Sim {
    /// Every node knows only node 0 (its bootstrap peer) at the start.
    pub fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let nodes = (0..config.n_nodes)
            .map(|i| {
                let id = NodeId::from_bytes(rng.random());
                let mut node = Membership::new(id, 1, config.membership.clone(), now);
                node.set_local::<NameKey>(&format!("node-{i}"));
                node
            })
            .collect();
        Self {
            alive: vec![true; config.n_nodes],
            bytes_sent: vec![0; config.n_nodes],
            nodes,
            now,
            rng,
            rounds: 0,
            config,
        }
    }

    pub fn id(&self, index: usize) -> NodeId {
        self.nodes[index].self_id()
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.self_id() == *id)
    }

    fn deliver(&mut self, from: usize, message: &GossipMsg) -> bool {
        let bytes = frame::encode(&Request::Gossip(message.clone()), MAX_FRAME_BYTES)
            .map_or(0, |b| b.len());
        self.bytes_sent[from] += bytes as u64;
        !self.rng.random_bool(self.config.loss.clamp(0.0, 1.0))
    }

    /// One gossip round for every live node, in a random order.
    pub fn step(&mut self) {
        self.rounds += 1;
        self.now += self.config.gossip_interval;
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive[*i]).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        for a in order {
            let now = self.now;
            let mut rng = StdRng::seed_from_u64(self.rng.random());
            let mut targets = self.nodes[a].tick(now, &mut rng);
            if self.nodes[a].len() < 2 && a != 0 {
                targets.push(self.id(0)); // bootstrap
            }
            for target in targets {
                let Some(b) = self.index_of(&target) else {
                    continue;
                };
                if !self.alive[b] {
                    continue;
                }
                self.exchange(a, b);
            }
        }
    }

    fn exchange(&mut self, a: usize, b: usize) {
        let now = self.now;
        let syn = self.nodes[a].syn();
        if !self.deliver(a, &syn) {
            return;
        }
        let Some(syn_ack) = self.nodes[b].handle(syn, now) else {
            return;
        };
        if !self.deliver(b, &syn_ack) {
            return;
        }
        if let Some(ack) = self.nodes[a].handle(syn_ack, now)
            && self.deliver(a, &ack)
        {
            self.nodes[b].handle(ack, now);
        }
        self.nodes[a].drain_events();
        self.nodes[b].drain_events();
    }

    /// True when every live node holds every live node's latest state.
    pub fn converged(&self) -> bool {
        let live: Vec<&Membership> = self
            .nodes
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(n, _)| n)
            .collect();
        let truth: Vec<(NodeId, u64)> = live
            .iter()
            .map(|n| {
                let me = max_version(n, &n.self_id());
                (n.self_id(), me)
            })
            .collect();
        live.iter().all(|n| {
            truth
                .iter()
                .all(|(id, version)| n.get(id).is_some() && max_version(n, id) == *version)
        })
    }

    /// Runs rounds until converged; returns the number of rounds, or `None` after `limit`.
    pub fn run_until_converged(&mut self, limit: u64) -> Option<u64> {
        let start = self.rounds;
        while self.rounds - start < limit {
            self.step();
            if self.converged() {
                return Some(self.rounds - start);
            }
        }
        None
    }

    /// Stops a node (as kill -9 would).
    pub fn kill(&mut self, index: usize) {
        self.alive[index] = false;
    }

    /// How many live nodes see `id` as down.
    pub fn n_seeing_down(&self, id: &NodeId) -> usize {
        self.nodes
            .iter()
            .zip(&self.alive)
            .filter(|(n, alive)| **alive && n.get(id).is_some_and(|v| v.status == Status::Down))
            .count()
    }

    pub fn n_alive(&self) -> usize {
        self.alive.iter().filter(|a| **a).count()
    }

    /// Live nodes that see some *live* node as down: false positives.
    pub fn false_downs(&self) -> usize {
        let live_ids: Vec<NodeId> = (0..self.nodes.len())
            .filter(|i| self.alive[*i])
            .map(|i| self.id(i))
            .collect();
        self.nodes
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(n, _)| {
                live_ids
                    .iter()
                    .filter(|id| n.get(id).is_some_and(|v| v.status == Status::Down))
                    .count()
            })
            .sum()
    }
}

fn max_version(view: &Membership, id: &NodeId) -> u64 {
    view.get(id).map_or(0, |v| v.max_version)
}
