//! The mesh authority key and the mesh id derived from it.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A mesh's id: its authority's Ed25519 public key. Whoever holds the matching secret key can
/// admit nodes; every member carries this public half and checks tokens against it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshId(pub [u8; 32]);

impl MeshId {
    /// A short, stable fingerprint safe to announce on the LAN (it grants nothing).
    pub fn fingerprint(&self) -> String {
        hex(&self.0[..8])
    }

    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({})", self.fingerprint())
    }
}

impl std::str::FromStr for MeshId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        unhex32(text)
            .map(Self)
            .ok_or_else(|| format!("a mesh id is 64 hex digits, got {text:?}"))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

pub(crate) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .ok()?;
    bytes.try_into().ok()
}

/// The authority's secret key. Never leaves the node that made it (stored 0600).
pub struct AuthorityKey(SigningKey);

impl fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorityKey({:?})", self.mesh_id())
    }
}

impl AuthorityKey {
    pub fn generate() -> Self {
        Self(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn mesh_id(&self) -> MeshId {
        MeshId(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// Checks an authority signature over `message` (strict verification: no malleable signatures).
pub(crate) fn verify(mesh: &MeshId, message: &[u8], signature: &[u8; 64]) -> bool {
    let Some(key) = mesh.verifying_key() else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature).is_ok()
}
