//! Shared configuration files (a LlamaFarm project's `llamafarm.yaml`) signed by the mesh
//! authority: each carries its project key and a version; a node keeps the highest version of each
//! project it has verified, so an edit spreads by gossip and a peer cannot forge or roll one back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{AuthorityKey, MeshId, verify};

const SIGNING_TAG: &[u8] = b"atmosphere/config/v1";
/// Largest configuration text accepted (a `llamafarm.yaml` is a few KiB; every
/// project's newest version rides in one gossip value, which must fit a frame).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Refuse config lists longer than this when they arrive from a peer.
pub const MAX_CONFIGS: usize = 32;

/// The statement the authority signs: "version `version` of project `project` is `text`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDoc {
    pub mesh: MeshId,
    /// `namespace/name`, as the file itself declares.
    pub project: String,
    pub version: u64,
    pub signed_at: u64,
    pub text: String,
}

/// A config with the authority's signature over its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedConfig {
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Why a config is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config does not decode: {0}")]
    Malformed(String),
    #[error("config is not signed by this mesh's authority")]
    BadSignature,
    #[error("config text is {0} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge(usize),
    #[error("config list too long ({0} entries)")]
    TooMany(usize),
}

impl ConfigDoc {
    /// Signs `text` as version `version` of `project`.
    pub fn sign(
        authority: &AuthorityKey,
        project: &str,
        version: u64,
        text: &str,
        now: u64,
    ) -> Result<SignedConfig, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(text.len()));
        }
        let body = Self {
            mesh: authority.mesh_id(),
            project: project.to_owned(),
            version,
            signed_at: now,
            text: text.to_owned(),
        };
        let body =
            postcard::to_allocvec(&body).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        let signature = authority.sign(&message(&body)).to_vec();
        Ok(SignedConfig { body, signature })
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    [SIGNING_TAG, body].concat()
}

impl SignedConfig {
    /// Checks the signature against `mesh` and returns the statement.
    pub fn verify(&self, mesh: &MeshId) -> Result<ConfigDoc, ConfigError> {
        if self.body.len() > MAX_CONFIG_BYTES + 1024 {
            return Err(ConfigError::TooLarge(self.body.len()));
        }
        let doc: ConfigDoc =
            postcard::from_bytes(&self.body).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ConfigError::Malformed("signature is not 64 bytes".into()))?;
        if doc.mesh != *mesh || !verify(mesh, &message(&self.body), &signature) {
            return Err(ConfigError::BadSignature);
        }
        Ok(doc)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        postcard::from_bytes(bytes).map_err(|e| ConfigError::Malformed(e.to_string()))
    }
}

/// The newest verified version of every project this node knows.
#[derive(Debug, Clone, Default)]
pub struct ConfigBook {
    latest: BTreeMap<String, (ConfigDoc, SignedConfig)>,
}

impl ConfigBook {
    /// Keeps `signed` if it verifies and is newer than what we hold for its project; returns the
    /// document when it was adopted.
    pub fn insert(
        &mut self,
        mesh: &MeshId,
        signed: SignedConfig,
    ) -> Result<Option<ConfigDoc>, ConfigError> {
        let doc = signed.verify(mesh)?;
        let newer = self
            .latest
            .get(&doc.project)
            .is_none_or(|(held, _)| (doc.version, doc.signed_at) > (held.version, held.signed_at));
        if !newer {
            return Ok(None);
        }
        self.latest
            .insert(doc.project.clone(), (doc.clone(), signed));
        Ok(Some(doc))
    }

    /// Merges a peer's list (the `configs` gossip value); returns what was adopted. Entries with a
    /// bad signature are skipped: a peer cannot change a project on its own.
    pub fn merge_bytes(
        &mut self,
        mesh: &MeshId,
        bytes: &[u8],
    ) -> Result<Vec<ConfigDoc>, ConfigError> {
        let list: Vec<SignedConfig> =
            postcard::from_bytes(bytes).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        if list.len() > MAX_CONFIGS {
            return Err(ConfigError::TooMany(list.len()));
        }
        Ok(list
            .into_iter()
            .filter_map(|signed| self.insert(mesh, signed).ok().flatten())
            .collect())
    }

    /// Every project's newest signed version, as gossip and storage carry them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let list: Vec<&SignedConfig> = self.latest.values().map(|(_, signed)| signed).collect();
        postcard::to_allocvec(&list).unwrap_or_default()
    }

    pub fn get(&self, project: &str) -> Option<&ConfigDoc> {
        self.latest.get(project).map(|(doc, _)| doc)
    }

    pub fn signed(&self, project: &str) -> Option<&SignedConfig> {
        self.latest.get(project).map(|(_, signed)| signed)
    }

    pub fn docs(&self) -> impl Iterator<Item = &ConfigDoc> {
        self.latest.values().map(|(doc, _)| doc)
    }

    /// The version the authority gives the next edit of `project`.
    pub fn next_version(&self, project: &str) -> u64 {
        self.get(project).map_or(1, |doc| doc.version + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_win_and_forgeries_and_rollbacks_do_not() {
        let authority = AuthorityKey::generate();
        let mesh = authority.mesh_id();
        let v1 = ConfigDoc::sign(&authority, "home/assist", 1, "version: v1\n", 10).unwrap();
        let v2 = ConfigDoc::sign(&authority, "home/assist", 2, "version: v1 # two\n", 20).unwrap();
        let mut book = ConfigBook::default();
        assert_eq!(book.insert(&mesh, v2.clone()).unwrap().unwrap().version, 2);
        // Rolling back to an older version is ignored, not adopted.
        assert_eq!(book.insert(&mesh, v1.clone()).unwrap(), None);
        assert_eq!(book.next_version("home/assist"), 3);

        let impostor = AuthorityKey::generate();
        let forged = ConfigDoc::sign(&impostor, "home/assist", 99, "evil", 30).unwrap();
        assert_eq!(
            book.insert(&mesh, forged.clone()),
            Err(ConfigError::BadSignature)
        );

        // A peer's list with a forged entry: only the genuine ones land.
        let list = postcard::to_allocvec(&vec![forged, v1]).unwrap();
        let mut fresh = ConfigBook::default();
        let adopted = fresh.merge_bytes(&mesh, &list).unwrap();
        assert_eq!(adopted.len(), 1);
        assert_eq!(fresh.get("home/assist").unwrap().version, 1);
        assert!(fresh.merge_bytes(&mesh, b"\xff\xff\xff").is_err());

        // Round trip through gossip bytes.
        let mut again = ConfigBook::default();
        again.merge_bytes(&mesh, &book.to_bytes()).unwrap();
        assert_eq!(
            again.get("home/assist").unwrap().text,
            "version: v1 # two\n"
        );
    }

    #[test]
    fn oversized_text_is_refused_before_signing() {
        let authority = AuthorityKey::generate();
        let text = "x".repeat(MAX_CONFIG_BYTES + 1);
        assert_eq!(
            ConfigDoc::sign(&authority, "a/b", 1, &text, 0),
            Err(ConfigError::TooLarge(MAX_CONFIG_BYTES + 1))
        );
    }
}
