//! Durable node state in redb (`node.redb` in the data dir): the incarnation counter and the
//! peers last seen, so a restarted node supersedes its old gossip and finds the mesh again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use atmosphere_mesh::PeerAddr;
use atmosphere_proto::NodeId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub const DB_FILE: &str = "node.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const PEERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("peers");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "cannot open the node database {path}: {message} (is another node running on this data dir?)"
    )]
    Open { path: PathBuf, message: String },
    #[error("node database error: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { db })
    }

    /// Increments and returns the incarnation number: strictly greater on every start.
    pub fn next_generation(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let generation = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let previous = meta
                .get("generation")
                .map_err(db_err)?
                .map_or(0, |v| v.value());
            let next = previous + 1;
            meta.insert("generation", next).map_err(db_err)?;
            next
        };
        txn.commit().map_err(db_err)?;
        Ok(generation)
    }

    /// Replaces the remembered peers.
    pub fn save_peers(&self, peers: &[PeerAddr]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(PEERS).map_err(db_err)?;
            table.retain(|_, _| false).map_err(db_err)?;
            for peer in peers {
                let addrs = postcard::to_allocvec(&peer.addrs).map_err(db_err)?;
                table
                    .insert(peer.id.as_bytes(), addrs.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// The peers remembered from the last run; undecodable rows are skipped.
    pub fn load_peers(&self) -> Result<Vec<PeerAddr>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(PEERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut peers = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (id, addrs) = row.map_err(db_err)?;
            if let Ok(addrs) = postcard::from_bytes::<Vec<SocketAddr>>(addrs.value()) {
                peers.push(PeerAddr {
                    id: NodeId::from_bytes(*id.value()),
                    addrs,
                });
            }
        }
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_grows_and_peers_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerAddr {
            id: NodeId::from_bytes([4; 32]),
            addrs: vec!["127.0.0.1:7400".parse().unwrap()],
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.next_generation().unwrap(), 1);
            assert_eq!(store.next_generation().unwrap(), 2);
            store.save_peers(std::slice::from_ref(&peer)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_generation().unwrap(), 3);
        assert_eq!(store.load_peers().unwrap(), vec![peer]);
    }
}
