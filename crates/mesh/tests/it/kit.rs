//! The multi-node test kit: start nodes, wait for conditions with a deadline.

use std::sync::Arc;
use std::time::Duration;

pub use atmosphere_mesh::testkit::eventually;
use atmosphere_mesh::transport::mem::MemNetwork;
use atmosphere_mesh::{Mesh, MeshConfig, MeshStatus, PeerAddr, Status};
use atmosphere_proto::{Capability, NodeId};

/// The status of `id` as seen by `observer`.
pub fn status_of(view: &MeshStatus, id: NodeId) -> Option<Status> {
    view.nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

pub fn caps(list: &[&str]) -> Vec<Capability> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

/// A node on the in-memory network.
pub struct MemNode {
    pub id: NodeId,
    pub mesh: Mesh,
}

pub fn mem_id(n: u8) -> NodeId {
    // Any 32 bytes are a fine id on the in-memory network.
    NodeId::from_bytes([n; 32])
}

pub fn start_mem(
    network: &MemNetwork,
    n: u8,
    name: &str,
    capabilities: &[&str],
    bootstrap: &[NodeId],
    generation: u64,
) -> MemNode {
    start_mem_with(
        network,
        n,
        name,
        capabilities,
        bootstrap,
        generation,
        Default::default(),
    )
}

/// [`start_mem`] with hooks (e.g. an `app_tx` that serves routed work).
pub fn start_mem_with(
    network: &MemNetwork,
    n: u8,
    name: &str,
    capabilities: &[&str],
    bootstrap: &[NodeId],
    generation: u64,
    hooks: atmosphere_mesh::Hooks,
) -> MemNode {
    let id = mem_id(n);
    let (transport, incoming_rx) = network.endpoint(id);
    let mut config = MeshConfig::for_test(name);
    config.capabilities = caps(capabilities);
    config.generation = generation;
    config.bootstrap = bootstrap
        .iter()
        .map(|peer| PeerAddr {
            id: *peer,
            addrs: vec![],
        })
        .collect();
    let (mesh, _join) = Mesh::spawn(Arc::clone(&transport), incoming_rx, hooks, config);
    MemNode { id, mesh }
}

/// Waits until every node sees exactly `ids` alive.
pub async fn all_see_alive(nodes: &[&Mesh], ids: &[NodeId], deadline: Duration) {
    eventually(deadline, "every node sees every node alive", || async {
        for mesh in nodes {
            let status = mesh.status().await.ok()?;
            for id in ids {
                if status_of(&status, *id) != Some(Status::Alive) {
                    return None;
                }
            }
        }
        Some(())
    })
    .await
}
