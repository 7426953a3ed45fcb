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
/// Mesh membership: `mesh_id`, `mesh_name`, `token`, `revocations`.
const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
/// Open invites: hash of the one-time secret → expiry (Unix seconds).
const INVITES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("invites");
/// Agents deployed on this node: name → JSON `{def, state}`.
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
/// The Matter controller's state: its fabric's blobs and its device records.
const MATTER: TableDefinition<&str, &[u8]> = TableDefinition::new("matter");

/// Knowledge chunks held here: chunk id → postcard `StoredChunk` (text, embedding, origin).
const CHUNKS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("chunks");

/// A stored chunk: its id and its encoding.
pub type ChunkRow = ([u8; 16], Vec<u8>);

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

impl Store {
    /// A value of the auth table.
    pub fn auth_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(AUTH) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Writes several auth values in one transaction.
    pub fn auth_put(&self, values: &[(&str, &[u8])]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(AUTH).map_err(db_err)?;
            for (key, value) in values {
                table.insert(*key, *value).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every agent deployed here, as stored (`{def, state}` JSON).
    pub fn agents(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(AGENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut agents = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (name, value) = row.map_err(db_err)?;
            agents.push((name.value().to_owned(), value.value().to_vec()));
        }
        Ok(agents)
    }

    /// Stores (or replaces) an agent.
    pub fn put_agent(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(AGENTS).map_err(db_err)?;
            table.insert(name, value).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Stores chunks (id, encoded) not held yet; returns which of them were new (by position).
    pub fn put_chunks(&self, chunks: &[ChunkRow]) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut new = Vec::with_capacity(chunks.len());
        {
            let mut table = txn.open_table(CHUNKS).map_err(db_err)?;
            for (id, bytes) in chunks {
                let fresh = table.get(id).map_err(db_err)?.is_none();
                if fresh {
                    table.insert(id, bytes.as_slice()).map_err(db_err)?;
                }
                new.push(fresh);
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(new)
    }

    /// Removes chunks; returns how many were there.
    pub fn remove_chunks(&self, ids: &[[u8; 16]]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(CHUNKS).map_err(db_err)?;
            for id in ids {
                if table.remove(id).map_err(db_err)?.is_some() {
                    removed += 1;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// The chunks asked for that are held here, encoded.
    pub fn chunks(&self, ids: &[[u8; 16]]) -> Result<Vec<ChunkRow>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(CHUNKS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(value) = table.get(id).map_err(db_err)? {
                out.push((*id, value.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Every chunk held here, encoded, to `each`.
    pub fn each_chunk(&self, mut each: impl FnMut([u8; 16], &[u8])) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(CHUNKS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(db_err(e)),
        };
        for row in table.iter().map_err(db_err)? {
            let (id, value) = row.map_err(db_err)?;
            each(*id.value(), value.value());
        }
        Ok(())
    }

    /// A value of the Matter controller's state.
    pub fn matter_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(MATTER) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Sets (`Some`) or removes (`None`) a value of the Matter controller's state.
    pub fn matter_put(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(MATTER).map_err(db_err)?;
            match value {
                Some(value) => {
                    table.insert(key, value).map_err(db_err)?;
                }
                None => {
                    table.remove(key).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Records an open invite by the hash of its secret.
    pub fn add_invite(&self, secret_hash: &[u8; 32], expires_at: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(INVITES).map_err(db_err)?;
            table.insert(secret_hash, expires_at).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Consumes an invite: true exactly once for an open, unexpired invite (atomic).
    pub fn take_invite(&self, secret_hash: &[u8; 32], now: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let valid = {
            let mut table = txn.open_table(INVITES).map_err(db_err)?;
            let expires_at = table
                .remove(secret_hash)
                .map_err(db_err)?
                .map(|v| v.value());
            expires_at.is_some_and(|at| now < at)
        };
        txn.commit().map_err(db_err)?;
        Ok(valid)
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

    #[test]
    fn invites_are_one_time_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_invite(&[1; 32], 100).unwrap();
        store.add_invite(&[2; 32], 100).unwrap();
        assert!(store.take_invite(&[1; 32], 50).unwrap());
        assert!(!store.take_invite(&[1; 32], 50).unwrap(), "replayed");
        assert!(!store.take_invite(&[2; 32], 100).unwrap(), "expired");
        assert!(!store.take_invite(&[3; 32], 50).unwrap(), "unknown");
        store.auth_put(&[("token", b"abc")]).unwrap();
        assert_eq!(
            store.auth_get("token").unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(store.auth_get("nothing").unwrap(), None);
    }
}

/// The Matter controller's state in the node's database.
#[derive(Debug)]
pub struct MatterState(pub std::sync::Arc<Store>);

impl atmosphere_matter::StateStore for MatterState {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.matter_get(key).map_err(|e| e.to_string())
    }

    fn store(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        self.0
            .matter_put(key, Some(bytes))
            .map_err(|e| e.to_string())
    }

    fn remove(&self, key: &str) -> Result<(), String> {
        self.0.matter_put(key, None).map_err(|e| e.to_string())
    }
}
