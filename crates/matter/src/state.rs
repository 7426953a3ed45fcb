//! Where the controller keeps what must survive a restart — its fabric (rs-matter's key-value
//! blobs) and its own records — behind a small trait the node implements over its database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rs_matter::error::{Error, ErrorCode};
use rs_matter::persist::KvBlobStore;

/// Durable key → bytes storage; every write is durable when it returns.
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn store(&self, key: &str, bytes: &[u8]) -> Result<(), String>;
    fn remove(&self, key: &str) -> Result<(), String>;
}

/// An in-memory store (tests; a controller whose state may be lost).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<HashMap<String, Vec<u8>>>);

impl StateStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().map_err(|e| e.to_string())?.get(key).cloned())
    }

    fn store(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.remove(key);
        Ok(())
    }
}

/// rs-matter's blob store over a [`StateStore`]: blob `k` is key `kv/{k:04x}`.
#[derive(Debug, Clone)]
pub(crate) struct Blobs(pub(crate) Arc<dyn StateStore>);

fn key(k: u16) -> String {
    format!("kv/{k:04x}")
}

fn failed(what: &str, e: String) -> Error {
    log::warn!("matter state: {what}: {e}");
    ErrorCode::StdIoError.into()
}

impl KvBlobStore for Blobs {
    fn load<'a>(&mut self, k: u16, buf: &'a mut [u8]) -> Result<Option<&'a [u8]>, Error> {
        match self.0.load(&key(k)).map_err(|e| failed("load", e))? {
            Some(bytes) if bytes.len() > buf.len() => Err(ErrorCode::NoSpace.into()),
            Some(bytes) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(Some(&buf[..bytes.len()]))
            }
            None => Ok(None),
        }
    }

    fn store(&mut self, k: u16, data: &[u8], _buf: &mut [u8]) -> Result<(), Error> {
        self.0.store(&key(k), data).map_err(|e| failed("store", e))
    }

    fn remove(&mut self, k: u16, _buf: &mut [u8]) -> Result<(), Error> {
        self.0.remove(&key(k)).map_err(|e| failed("remove", e))
    }
}
