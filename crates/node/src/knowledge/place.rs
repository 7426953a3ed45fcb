//! Where chunks live: rendezvous (highest-random-weight) hashing. Each chunk goes to the
//! `replicas` nodes with the highest `blake3(chunk id ‖ node id)`; when a node joins or leaves,
//! only the chunks it ranks among its top places move, and every node computes the same owners
//! from the same membership, with no coordinator. No I/O.

use atmosphere_proto::NodeId;

/// The default number of copies of each chunk (capped by the number of nodes).
pub const DEFAULT_REPLICAS: usize = 2;

/// A chunk's 16-byte id.
pub type ChunkId = [u8; 16];

fn weight(chunk: &ChunkId, node: &NodeId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(chunk);
    hasher.update(node.as_bytes());
    *hasher.finalize().as_bytes()
}

/// The nodes that should hold `chunk`, best first: `replicas` of `nodes` (fewer if there are
/// fewer nodes).
pub fn owners(chunk: &ChunkId, nodes: &[NodeId], replicas: usize) -> Vec<NodeId> {
    let mut ranked: Vec<([u8; 32], NodeId)> =
        nodes.iter().map(|n| (weight(chunk, n), *n)).collect();
    ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked
        .into_iter()
        .take(replicas.max(1))
        .map(|(_, n)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes([i; 32])
    }

    fn chunk(i: u32) -> ChunkId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id
    }

    #[test]
    fn owners_spread_evenly_and_move_little_when_a_node_joins() {
        let three: Vec<NodeId> = (1..=3).map(node).collect();
        let mut per_node = [0usize; 3];
        for i in 0..3000 {
            let owners = owners(&chunk(i), &three, 2);
            assert_eq!(owners.len(), 2);
            assert_ne!(owners[0], owners[1]);
            for o in owners {
                per_node[three.iter().position(|n| *n == o).unwrap()] += 1;
            }
        }
        // 2 copies of 3000 chunks over 3 nodes: 2000 each, within a few percent.
        assert!(
            per_node.iter().all(|c| (1850..2150).contains(c)),
            "{per_node:?}"
        );

        let four: Vec<NodeId> = (1..=4).map(node).collect();
        let moved = (0..3000)
            .filter(|i| {
                let before = owners(&chunk(*i), &three, 2);
                let after = owners(&chunk(*i), &four, 2);
                before != after
            })
            .count();
        // The new node takes about half its share from each chunk's owners: ~50% of chunks
        // change one owner, none change both.
        assert!((1200..1800).contains(&moved), "{moved}");
        for i in 0..3000 {
            let before = owners(&chunk(i), &three, 2);
            let after = owners(&chunk(i), &four, 2);
            assert!(
                after.iter().any(|n| before.contains(n)),
                "chunk {i} lost every owner"
            );
        }
        assert_eq!(owners(&chunk(1), &three[..1], 2), [three[0]]);
        assert!(owners(&chunk(1), &[], 2).is_empty());
    }
}
