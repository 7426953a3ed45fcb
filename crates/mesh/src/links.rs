//! Direct-link tracking: which peers this node exchanged with recently, and how fast. Sans I/O.
//!
//! The links this node publishes (the `links` key) are the edges the gradient table routes over.
//! They are republished only when the set changes or a round-trip time moves a lot, so that
//! gossip does not churn on jitter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atmosphere_proto::{Link, NodeId};

#[derive(Debug, Clone, Copy)]
struct Observed {
    rtt_us: f64,
    last_seen: Instant,
}

/// Recent successful exchanges with direct peers.
#[derive(Debug, Clone)]
pub struct LinkTracker {
    ttl: Duration,
    observed: BTreeMap<NodeId, Observed>,
    published: Vec<Link>,
}

impl LinkTracker {
    /// A link counts while its last exchange is younger than `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            observed: BTreeMap::new(),
            published: Vec::new(),
        }
    }

    /// Records a successful exchange with `peer` that took `rtt`.
    pub fn observe(&mut self, peer: NodeId, rtt: Duration, now: Instant) {
        let sample = rtt.as_secs_f64() * 1e6;
        self.observed
            .entry(peer)
            .and_modify(|o| {
                o.rtt_us = 0.8 * o.rtt_us + 0.2 * sample;
                o.last_seen = now;
            })
            .or_insert(Observed {
                rtt_us: sample,
                last_seen: now,
            });
    }

    /// Records that `peer` reached us (an incoming exchange): the link is alive, the rtt unknown.
    pub fn touch(&mut self, peer: NodeId, now: Instant) {
        if let Some(observed) = self.observed.get_mut(&peer) {
            observed.last_seen = now;
        }
    }

    /// Drops a link at once (the peer failed or was cut).
    pub fn forget(&mut self, peer: &NodeId) {
        self.observed.remove(peer);
    }

    pub fn clear(&mut self) {
        self.observed.clear();
    }

    /// The current links, if they differ enough from what was last published; the caller then
    /// publishes them.
    pub fn refresh(&mut self, now: Instant) -> Option<Vec<Link>> {
        let ttl = self.ttl;
        self.observed
            .retain(|_, o| now.saturating_duration_since(o.last_seen) <= ttl);
        let current: Vec<Link> = self
            .observed
            .iter()
            .map(|(peer, o)| Link {
                peer: *peer,
                rtt_us: o.rtt_us.round().clamp(1.0, f64::from(u32::MAX)) as u32,
            })
            .collect();
        let same_peers = current.len() == self.published.len()
            && current
                .iter()
                .zip(&self.published)
                .all(|(a, b)| a.peer == b.peer);
        let rtt_moved = current.iter().zip(&self.published).any(|(a, b)| {
            let (a, b) = (f64::from(a.rtt_us), f64::from(b.rtt_us));
            (a - b).abs() > 1000.0 && (a - b).abs() > 0.5 * b
        });
        if same_peers && !rtt_moved {
            return None;
        }
        self.published = current.clone();
        Some(current)
    }

    pub fn is_linked(&self, peer: &NodeId) -> bool {
        self.observed.contains_key(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_on_change_only_and_expires() {
        let start = Instant::now();
        let peer = NodeId::from_bytes([9; 32]);
        let mut links = LinkTracker::new(Duration::from_secs(5));
        links.observe(peer, Duration::from_micros(300), start);
        assert_eq!(links.refresh(start).map(|l| l.len()), Some(1));
        links.observe(peer, Duration::from_micros(350), start);
        assert_eq!(links.refresh(start), None, "jitter is not news");
        assert_eq!(links.refresh(start + Duration::from_secs(6)), Some(vec![]));
        assert!(!links.is_linked(&peer));
    }
}
