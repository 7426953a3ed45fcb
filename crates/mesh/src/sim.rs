//! A deterministic, single-threaded simulation of many nodes running the real membership core,
//! with message loss, network latency and simulated time. Used by the scale tests and the
//! benchmark; every message is encoded with the real frame codec so byte counts are honest.
//!
//! Time is discrete events: each node ticks once per gossip interval at its own phase (as real
//! nodes, started at different moments, do), and every message arrives `latency + jitter·U(0,1)`
//! after it was sent, unless it is lost. A gossip exchange is the real three-way
//! Syn → SynAck → Ack, each leg delayed and each leg lost on its own.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use atmosphere_proto::gossip::GossipMsg;
use atmosphere_proto::record::NameKey;
use atmosphere_proto::{NodeId, Request, frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::membership::{Event, Membership, MembershipConfig, Status};

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub n_nodes: usize,
    pub membership: MembershipConfig,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// One-way delay every message takes.
    pub latency: Duration,
    /// Extra one-way delay, uniform in `[0, jitter)`, drawn per message.
    pub jitter: Duration,
    pub gossip_interval: Duration,
    pub seed: u64,
}

impl SimConfig {
    /// `n_nodes` on a perfect network: no loss, no delay.
    pub fn new(n_nodes: usize) -> Self {
        Self {
            n_nodes,
            membership: MembershipConfig::default(),
            loss: 0.0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            gossip_interval: Duration::from_millis(500),
            seed: 42,
        }
    }
}

/// What happens at a moment of simulated time.
#[derive(Debug)]
enum Action {
    Tick(usize),
    Deliver {
        from: usize,
        to: usize,
        message: GossipMsg,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    /// Breaks ties in the order things were scheduled, so runs are deterministic.
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
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
    index: HashMap<NodeId, usize>,
    /// When in each interval a node ticks.
    phase: Vec<Duration>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    /// Bytes sent by each node so far.
    pub bytes_sent: Vec<u64>,
    /// Messages sent and lost so far, over all nodes.
    pub messages_sent: u64,
    pub messages_lost: u64,
    /// "Down" verdicts reached about a node that was alive at the time: false positives.
    pub false_down_events: u64,
    pub rounds: u64,
}

impl Sim {
    /// Every node knows only node 0 (its bootstrap peer) at the start.
    pub fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let nodes: Vec<Membership> = (0..config.n_nodes)
            .map(|i| {
                let id = NodeId::from_bytes(rng.random());
                let mut node = Membership::new(id, 1, config.membership.clone(), now);
                node.set_local::<NameKey>(&format!("node-{i}"));
                node
            })
            .collect();
        let interval_us = config.gossip_interval.as_micros().max(1) as u64;
        let phase = (0..config.n_nodes)
            .map(|_| Duration::from_micros(rng.random_range(0..interval_us)))
            .collect();
        Self {
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.self_id(), i))
                .collect(),
            alive: vec![true; config.n_nodes],
            bytes_sent: vec![0; config.n_nodes],
            nodes,
            now,
            rng,
            phase,
            queue: BinaryHeap::new(),
            seq: 0,
            messages_sent: 0,
            messages_lost: 0,
            false_down_events: 0,
            rounds: 0,
            config,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn id(&self, index: usize) -> NodeId {
        self.nodes[index].self_id()
    }

    fn schedule(&mut self, at: Instant, action: Action) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            action,
        });
    }

    /// Puts a message on the wire: counted, then lost or delivered after its delay.
    fn send(&mut self, from: usize, to: usize, message: GossipMsg) {
        // The frame's exact size, counted without building it: prefix, version byte, body.
        let bytes = postcard::serialize_with_flavor(
            &Request::Gossip(message.clone()),
            postcard::ser_flavors::Size::default(),
        )
        .map_or(0, |body: usize| frame::HEADER_BYTES + 1 + body);
        self.bytes_sent[from] += bytes as u64;
        self.messages_sent += 1;
        if self.rng.random_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.messages_lost += 1;
            return;
        }
        let jitter_us = self.config.jitter.as_micros() as u64;
        let extra = if jitter_us > 0 {
            Duration::from_micros(self.rng.random_range(0..jitter_us))
        } else {
            Duration::ZERO
        };
        let at = self.now + self.config.latency + extra;
        self.schedule(at, Action::Deliver { from, to, message });
    }

    /// One gossip interval: every live node ticks once, at its phase, and every message due
    /// before the interval ends is delivered.
    pub fn step(&mut self) {
        self.rounds += 1;
        let start = self.now;
        let end = start + self.config.gossip_interval;
        for i in 0..self.nodes.len() {
            if self.alive[i] {
                self.schedule(start + self.phase[i], Action::Tick(i));
            }
        }
        while self.queue.peek().is_some_and(|next| next.at < end) {
            let Some(next) = self.queue.pop() else { break };
            self.now = next.at;
            match next.action {
                Action::Tick(i) => self.tick(i),
                Action::Deliver { from, to, message } => self.deliver(from, to, message),
            }
        }
        self.now = end;
    }

    fn tick(&mut self, a: usize) {
        if !self.alive[a] {
            return;
        }
        let now = self.now;
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        let mut targets = self.nodes[a].tick(now, &mut rng);
        if self.nodes[a].len() < 2 && a != 0 {
            targets.push(self.id(0)); // bootstrap
        }
        self.count_events(a);
        let syn = self.nodes[a].syn();
        for target in targets {
            if let Some(&b) = self.index.get(&target) {
                self.send(a, b, syn.clone());
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, message: GossipMsg) {
        if !self.alive[to] {
            return;
        }
        let reply = self.nodes[to].handle(message, self.now);
        self.count_events(to);
        if let Some(reply) = reply {
            self.send(to, from, reply);
        }
    }

    /// Drains a node's events, counting its verdicts of "down" about nodes that are alive.
    fn count_events(&mut self, i: usize) {
        for event in self.nodes[i].drain_events() {
            if let Event::Down(id) = event
                && self.index.get(&id).is_some_and(|&j| self.alive[j])
            {
                self.false_down_events += 1;
            }
        }
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

    /// Stops a node (as kill -9 would): it neither ticks nor answers, and what is on its way to
    /// it is lost.
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

    /// Live nodes that see some *live* node as down, right now.
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

    /// Kills node `index` and steps until every live node sees it down; returns the simulated
    /// time that took, or `None` if some node still had not noticed after `limit` rounds.
    pub fn time_to_detect(&mut self, index: usize, limit: u64) -> Option<Duration> {
        let victim = self.id(index);
        self.kill(index);
        let killed_at = self.now;
        for _ in 0..limit {
            self.step();
            if self.n_seeing_down(&victim) == self.n_alive() {
                return Some(self.now.duration_since(killed_at));
            }
        }
        None
    }
}

/// Rounds an epidemic push with `fanout` peers a round needs to reach all of `n` nodes, by
/// Pittel's estimate: `log_{fanout+1}(n) + ln(n) / fanout`. Our exchange is push–pull, which
/// does no worse; the figure is what the scale test and the bench compare against.
pub fn epidemic_rounds(n: usize, fanout: usize) -> f64 {
    let n = n.max(2) as f64;
    let fanout = fanout.max(1) as f64;
    n.ln() / (fanout + 1.0).ln() + n.ln() / fanout
}

fn max_version(view: &Membership, id: &NodeId) -> u64 {
    view.get(id).map_or(0, |v| v.max_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epidemic_estimate_grows_with_the_log_of_n() {
        assert!((epidemic_rounds(1000, 1) - (1000f64.log2() + 1000f64.ln())).abs() < 1e-9);
        assert!(epidemic_rounds(2000, 3) < 2.0 * epidemic_rounds(50, 3));
    }

    #[test]
    fn a_message_arrives_after_its_latency_and_not_before() {
        let mut config = SimConfig::new(2);
        config.latency = Duration::from_millis(300);
        config.gossip_interval = Duration::from_millis(500);
        let mut sim = Sim::new(config);
        let b = sim.id(1);
        // Node 1 sends its Syn to node 0 at its phase; node 0 cannot know node 1 before
        // 300 ms later, and the whole exchange (three legs) takes 900 ms.
        let started = sim.now;
        while sim.nodes[0].get(&b).is_none() {
            sim.step();
            assert!(sim.rounds < 10, "node 0 never heard of node 1");
        }
        assert!(sim.now.duration_since(started) >= Duration::from_millis(300));
        assert_eq!(sim.messages_lost, 0);
    }

    #[test]
    fn bytes_counted_are_the_frames_sizes() {
        let mut sim = Sim::new(SimConfig::new(5));
        sim.run_until_converged(20).expect("converges");
        let before = sim.bytes_sent[2];
        let syn = sim.nodes[2].syn();
        let framed = frame::encode(
            &Request::Gossip(syn.clone()),
            atmosphere_proto::MAX_FRAME_BYTES,
        )
        .unwrap()
        .len();
        sim.send(2, 3, syn);
        assert_eq!(sim.bytes_sent[2] - before, framed as u64);
    }

    #[test]
    fn runs_are_deterministic_for_a_seed() {
        let run = || {
            let mut config = SimConfig::new(30);
            config.loss = 0.05;
            config.jitter = Duration::from_millis(40);
            let mut sim = Sim::new(config);
            let rounds = sim.run_until_converged(100);
            (rounds, sim.bytes_sent.clone(), sim.messages_lost)
        };
        assert_eq!(run(), run());
    }
}
