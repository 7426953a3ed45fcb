//! The gradient table: for each capability, which provider to use and which neighbour to send
//! the work to. Sans I/O; rebuilt from the membership view whenever it changes.
//!
//! It is link-state over gossip: every node publishes its direct links (with measured round-trip
//! times) and its capabilities; each node runs Dijkstra from itself over the live part of that
//! graph, then ranks providers by path latency, load, health and recent failures. See PROTOCOL.md
//! ("Gradient table") for why link-state rather than distance-vector.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use atmosphere_proto::record::{CapabilitiesKey, LinksKey, LoadKey};
use atmosphere_proto::{Capability, Load, NodeId};

use crate::membership::Membership;

/// Microseconds charged per hop on top of the measured link latency (forwarding work: a relay
/// decodes, looks up and re-sends). A detour must save more than this per extra hop, so a busy
/// moment on a direct link (RTT samples of a few ms on a loaded machine) does not reroute through
/// a relay that is just as busy.
pub const HOP_COST_US: u64 = 2_000;
/// Longest path considered (loop and runaway guard for relayed requests too).
pub const MAX_HOPS: u8 = 8;

/// How the cost of a route is put together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostWeights {
    /// Cost units per millisecond of path latency.
    pub per_latency_ms: f64,
    /// Cost per request in flight at the provider.
    pub per_inflight: f64,
    /// Cost of a fully loaded CPU (load average per core of 1.0).
    pub per_cpu_load: f64,
    /// Cost per unit of phi (suspicion) of the provider.
    pub per_phi: f64,
    /// Cost of one recent failure (decays with `failure_half_life`).
    pub per_failure: f64,
    pub failure_half_life: Duration,
    /// Cost per second of the provider's measured service time (moving average of the work it
    /// answered for this node): slow providers get less of the work that has a choice.
    pub per_service_s: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        Self {
            per_latency_ms: 1.0,
            per_inflight: 2.0,
            per_cpu_load: 10.0,
            per_phi: 2.0,
            per_failure: 50.0,
            failure_half_life: Duration::from_secs(30),
            per_service_s: 1.0,
        }
    }
}

/// One way to reach a capability.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub capability: Capability,
    pub provider: NodeId,
    /// The neighbour to hand the work to (the provider itself when direct, this node when local).
    pub next_hop: NodeId,
    pub hops: u8,
    /// Sum of the measured round-trip times along the path.
    pub latency_us: u64,
    pub load: Load,
    pub phi: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    score: f64,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct PathInfo {
    next_hop: NodeId,
    hops: u8,
    latency_us: u64,
}

/// Routes per capability name, best first.
#[derive(Debug, Clone)]
pub struct GradientTable {
    self_id: NodeId,
    weights: CostWeights,
    routes: BTreeMap<String, Vec<Route>>,
    paths: HashMap<NodeId, PathInfo>,
    penalties: HashMap<NodeId, Penalty>,
    /// Moving average of each provider's service time, in seconds.
    service_s: HashMap<NodeId, f64>,
    built_at: Option<Instant>,
}

impl GradientTable {
    pub fn new(self_id: NodeId, weights: CostWeights) -> Self {
        Self {
            self_id,
            weights,
            routes: BTreeMap::new(),
            paths: HashMap::new(),
            penalties: HashMap::new(),
            service_s: HashMap::new(),
            built_at: None,
        }
    }

    /// Recomputes every route from the membership view. Down and departed nodes, and links to
    /// them, drop out here: that is the table's invalidation on failure.
    pub fn rebuild(&mut self, membership: &Membership, now: Instant) {
        self.paths = shortest_paths(self.self_id, membership);
        let mut routes: BTreeMap<String, Vec<Route>> = BTreeMap::new();
        for node in membership.nodes().filter(|n| n.is_alive()) {
            let Some(path) = self.paths.get(&node.id).copied() else {
                continue;
            };
            let load = node.get::<LoadKey>().unwrap_or_default();
            let phi = membership.phi(&node.id, now).min(100.0);
            let penalty = self.penalty(&node.id, now);
            let w = &self.weights;
            let cost = w.per_latency_ms * path.latency_us as f64 / 1000.0
                + w.per_inflight * f64::from(load.inflight)
                + w.per_cpu_load * f64::from(load.cpu_milli) / 1000.0
                + w.per_phi * phi
                + w.per_failure * penalty
                + w.per_service_s * self.service_s.get(&node.id).copied().unwrap_or(0.0);
            for capability in node.get::<CapabilitiesKey>().unwrap_or_default() {
                routes
                    .entry(capability.name.clone())
                    .or_default()
                    .push(Route {
                        capability,
                        provider: node.id,
                        next_hop: path.next_hop,
                        hops: path.hops,
                        latency_us: path.latency_us,
                        load,
                        phi,
                        cost,
                    });
            }
        }
        for candidates in routes.values_mut() {
            candidates.sort_by(|a, b| {
                a.cost
                    .total_cmp(&b.cost)
                    .then(a.hops.cmp(&b.hops))
                    .then(a.provider.cmp(&b.provider))
            });
        }
        self.routes = routes;
        self.built_at = Some(now);
    }

    /// The best route to a capability.
    pub fn best(&self, capability: &str) -> Option<&Route> {
        self.routes.get(capability).and_then(|r| r.first())
    }

    /// Every route to a capability, best first: the failover order.
    pub fn candidates(&self, capability: &str) -> &[Route] {
        self.routes.get(capability).map_or(&[], Vec::as_slice)
    }

    /// All routes, by capability name.
    pub fn routes(&self) -> &BTreeMap<String, Vec<Route>> {
        &self.routes
    }

    /// The neighbour to forward to for `dest`, and the hop count; `None` when unreachable.
    pub fn next_hop(&self, dest: &NodeId) -> Option<(NodeId, u8)> {
        self.paths.get(dest).map(|p| (p.next_hop, p.hops))
    }

    /// Feeds a request's outcome back into the costs: failures make a provider dearer for a
    /// while. Takes effect at the next rebuild.
    pub fn record_outcome(&mut self, provider: NodeId, success: bool, now: Instant) {
        let current = self.penalty(&provider, now);
        let score = if success {
            current * 0.5
        } else {
            current + 1.0
        };
        if score < 0.01 {
            self.penalties.remove(&provider);
        } else {
            self.penalties.insert(provider, Penalty { score, at: now });
        }
    }

    /// Feeds a successful request's round-trip time into the provider's service-time average.
    pub fn record_latency(&mut self, provider: NodeId, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64().min(600.0);
        let average = self.service_s.entry(provider).or_insert(seconds);
        *average = 0.7 * *average + 0.3 * seconds;
    }

    fn penalty(&self, node: &NodeId, now: Instant) -> f64 {
        self.penalties.get(node).map_or(0.0, |p| {
            let age = now.saturating_duration_since(p.at).as_secs_f64();
            let half_life = self.weights.failure_half_life.as_secs_f64().max(1e-3);
            p.score * 0.5f64.powf(age / half_life)
        })
    }

    pub fn built_at(&self) -> Option<Instant> {
        self.built_at
    }
}

/// Dijkstra from `origin` over the links published by live nodes; an edge counts only when both
/// ends are alive. Returns, for every reachable node, the first hop, hop count and latency.
fn shortest_paths(origin: NodeId, membership: &Membership) -> HashMap<NodeId, PathInfo> {
    let alive: HashMap<NodeId, Vec<(NodeId, u64)>> = membership
        .nodes()
        .filter(|n| n.is_alive())
        .map(|n| {
            let links = n
                .get::<LinksKey>()
                .unwrap_or_default()
                .into_iter()
                .map(|l| (l.peer, u64::from(l.rtt_us) + HOP_COST_US))
                .collect();
            (n.id, links)
        })
        .collect();
    let mut best: HashMap<NodeId, PathInfo> = HashMap::new();
    best.insert(
        origin,
        PathInfo {
            next_hop: origin,
            hops: 0,
            latency_us: 0,
        },
    );
    let mut queue = BinaryHeap::new();
    queue.push(Reverse((0u64, 0u8, origin)));
    while let Some(Reverse((latency, hops, node))) = queue.pop() {
        if best.get(&node).is_some_and(|p| p.latency_us < latency) || hops >= MAX_HOPS {
            continue;
        }
        let Some(edges) = alive.get(&node) else {
            continue;
        };
        for (peer, weight) in edges {
            if !alive.contains_key(peer) {
                continue;
            }
            let candidate = latency + weight;
            let next_hop = if node == origin {
                *peer
            } else {
                best[&node].next_hop
            };
            let better = best.get(peer).is_none_or(|p| {
                candidate < p.latency_us || (candidate == p.latency_us && hops + 1 < p.hops)
            });
            if better {
                best.insert(
                    *peer,
                    PathInfo {
                        next_hop,
                        hops: hops + 1,
                        latency_us: candidate,
                    },
                );
                queue.push(Reverse((candidate, hops + 1, *peer)));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use atmosphere_proto::Link;
    use atmosphere_proto::gossip::Delta;

    use super::*;
    use crate::membership::MembershipConfig;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    /// (node, its links as (peer, rtt µs), its capabilities).
    type Spec<'a> = (u8, &'a [(u8, u32)], &'a [&'a str]);

    /// A view as seen from node 1 where each node has the given links and capabilities.
    fn view(nodes: &[Spec<'_>], now: Instant) -> Membership {
        let mut me = Membership::new(id(1), 1, MembershipConfig::default(), now);
        for (n, links, caps) in nodes {
            let mut other = Membership::new(id(*n), 1, MembershipConfig::default(), now);
            let links: Vec<Link> = links
                .iter()
                .map(|(p, rtt)| Link {
                    peer: id(*p),
                    rtt_us: *rtt,
                })
                .collect();
            let caps: Vec<Capability> = caps.iter().map(|c| c.parse().unwrap()).collect();
            if *n == 1 {
                me.set_local::<LinksKey>(&links);
                me.set_local::<CapabilitiesKey>(&caps);
            } else {
                other.set_local::<LinksKey>(&links);
                other.set_local::<CapabilitiesKey>(&caps);
                let delta: Delta = other.delta_for(&Default::default());
                me.apply_delta(delta, now);
            }
        }
        me
    }

    #[test]
    fn local_capability_is_zero_hops() {
        let now = Instant::now();
        let membership = view(
            &[
                (1, &[(2, 100)], &["llm/7B"]),
                (2, &[(1, 100)], &["llm/70B"]),
            ],
            now,
        );
        let mut table = GradientTable::new(id(1), CostWeights::default());
        table.rebuild(&membership, now);
        let best = table.best("llm").unwrap();
        assert_eq!((best.provider, best.hops), (id(1), 0));
        assert_eq!(table.candidates("llm").len(), 2);
        assert_eq!(table.candidates("llm")[1].next_hop, id(2));
    }

    #[test]
    fn multi_hop_when_only_a_relay_reaches_the_provider() {
        let now = Instant::now();
        // 1 — 2 — 3, no 1 — 3 link; 3 has vision.
        let membership = view(
            &[
                (1, &[(2, 200)], &[]),
                (2, &[(1, 200), (3, 200)], &[]),
                (3, &[(2, 200)], &["vision"]),
            ],
            now,
        );
        let mut table = GradientTable::new(id(1), CostWeights::default());
        table.rebuild(&membership, now);
        let route = table.best("vision").unwrap();
        assert_eq!(
            (route.provider, route.next_hop, route.hops),
            (id(3), id(2), 2)
        );
        assert_eq!(table.next_hop(&id(3)), Some((id(2), 2)));
    }

    #[test]
    fn failures_make_a_provider_dearer_and_decay() {
        let now = Instant::now();
        let membership = view(
            &[
                (1, &[(2, 100), (3, 150)], &[]),
                (2, &[(1, 100)], &["llm"]),
                (3, &[(1, 150)], &["llm"]),
            ],
            now,
        );
        let mut table = GradientTable::new(id(1), CostWeights::default());
        table.rebuild(&membership, now);
        assert_eq!(table.best("llm").unwrap().provider, id(2));
        table.record_outcome(id(2), false, now);
        table.rebuild(&membership, now);
        assert_eq!(table.best("llm").unwrap().provider, id(3));
        let later = now + Duration::from_secs(600);
        table.rebuild(&membership, later);
        assert_eq!(table.best("llm").unwrap().provider, id(2));
    }

    #[test]
    fn slow_providers_get_dearer_as_their_service_time_is_measured() {
        let now = Instant::now();
        let membership = view(
            &[
                (1, &[(2, 100), (3, 150)], &[]),
                (2, &[(1, 100)], &["llm"]),
                (3, &[(1, 150)], &["llm"]),
            ],
            now,
        );
        let mut table = GradientTable::new(id(1), CostWeights::default());
        table.rebuild(&membership, now);
        let before = table.best("llm").unwrap().cost;
        assert_eq!(table.best("llm").unwrap().provider, id(2));
        for _ in 0..5 {
            table.record_latency(id(2), Duration::from_secs(3));
            table.record_latency(id(3), Duration::from_millis(200));
        }
        table.rebuild(&membership, now);
        assert_eq!(table.best("llm").unwrap().provider, id(3));
        assert!(table.candidates("llm")[1].cost > before + 2.0);
    }

    #[test]
    fn unreachable_providers_are_absent() {
        let now = Instant::now();
        let membership = view(&[(1, &[], &[]), (2, &[], &["llm"])], now);
        let mut table = GradientTable::new(id(1), CostWeights::default());
        table.rebuild(&membership, now);
        assert!(table.best("llm").is_none());
    }
}
