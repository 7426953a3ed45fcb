//! Revocations: statements signed by the mesh authority that a token, or every token of a node,
//! is void. They spread by gossip (any node relays them; each checks the signature) and persist.

use std::collections::HashSet;

use atmosphere_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::keys::{AuthorityKey, MeshId, verify};
use crate::token::TokenId;

const SIGNING_TAG: &[u8] = b"atmosphere/revocation/v1";
/// Refuse revocation lists larger than this when they arrive from a peer.
pub const MAX_REVOCATIONS: usize = 10_000;

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RevokedTarget {
    Token(TokenId),
    Node(NodeId),
}

impl std::fmt::Display for RevokedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(id) => write!(f, "token {id}"),
            Self::Node(id) => write!(f, "node {}", id.short()),
        }
    }
}

/// The statement the authority signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub mesh: MeshId,
    pub target: RevokedTarget,
    pub revoked_at: u64,
    pub reason: String,
}

/// A revocation with the authority's signature over its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRevocation {
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Why a revocation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    #[error("revocation does not decode: {0}")]
    Malformed(String),
    #[error("revocation is not signed by this mesh's authority")]
    BadSignature,
    #[error("revocation list too long ({0} entries)")]
    TooMany(usize),
}

impl Revocation {
    /// Signs a revocation of `target`.
    pub fn sign(
        authority: &AuthorityKey,
        target: RevokedTarget,
        now: u64,
        reason: &str,
    ) -> SignedRevocation {
        let body = Self {
            mesh: authority.mesh_id(),
            target,
            revoked_at: now,
            reason: reason.chars().take(200).collect(),
        };
        let body = postcard::to_allocvec(&body).unwrap_or_default();
        let signature = authority.sign(&message(&body)).to_vec();
        SignedRevocation { body, signature }
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    [SIGNING_TAG, body].concat()
}

impl SignedRevocation {
    /// Checks the signature against `mesh` and returns the statement.
    pub fn verify(&self, mesh: &MeshId) -> Result<Revocation, RevocationError> {
        let revocation: Revocation = postcard::from_bytes(&self.body)
            .map_err(|e| RevocationError::Malformed(e.to_string()))?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| RevocationError::Malformed("signature is not 64 bytes".into()))?;
        if revocation.mesh != *mesh || !verify(mesh, &message(&self.body), &signature) {
            return Err(RevocationError::BadSignature);
        }
        Ok(revocation)
    }
}

/// Every revocation this node knows, verified.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    tokens: HashSet<TokenId>,
    nodes: HashSet<NodeId>,
    signed: Vec<SignedRevocation>,
}

impl RevocationSet {
    /// Adds a revocation after checking its signature; `Ok(Some(target))` when it is new.
    pub fn insert(
        &mut self,
        mesh: &MeshId,
        signed: SignedRevocation,
    ) -> Result<Option<RevokedTarget>, RevocationError> {
        let revocation = signed.verify(mesh)?;
        let new = match revocation.target {
            RevokedTarget::Token(id) => self.tokens.insert(id),
            RevokedTarget::Node(id) => self.nodes.insert(id),
        };
        if new {
            self.signed.push(signed);
            Ok(Some(revocation.target))
        } else {
            Ok(None)
        }
    }

    /// Merges a list received from a peer (the `revocations` gossip value); returns what is new.
    /// Entries with a bad signature are skipped: a peer cannot revoke anything on its own.
    pub fn merge_bytes(
        &mut self,
        mesh: &MeshId,
        bytes: &[u8],
    ) -> Result<Vec<RevokedTarget>, RevocationError> {
        let list: Vec<SignedRevocation> =
            postcard::from_bytes(bytes).map_err(|e| RevocationError::Malformed(e.to_string()))?;
        if list.len() > MAX_REVOCATIONS {
            return Err(RevocationError::TooMany(list.len()));
        }
        let mut added = Vec::new();
        for signed in list {
            if let Ok(Some(target)) = self.insert(mesh, signed) {
                added.push(target);
            }
        }
        Ok(added)
    }

    /// The list as gossip and storage carry it.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.signed).unwrap_or_default()
    }

    pub fn is_token_revoked(&self, id: &TokenId) -> bool {
        self.tokens.contains(id)
    }

    pub fn is_node_revoked(&self, id: &NodeId) -> bool {
        self.nodes.contains(id)
    }

    pub fn len(&self) -> usize {
        self.signed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_authority_can_revoke_and_lists_merge() {
        let authority = AuthorityKey::generate();
        let mesh = authority.mesh_id();
        let target = RevokedTarget::Node(NodeId::from_bytes([3; 32]));
        let mut mine = RevocationSet::default();
        mine.insert(&mesh, Revocation::sign(&authority, target, 1, "gone"))
            .unwrap();

        let impostor = AuthorityKey::generate();
        let fake = Revocation::sign(&impostor, RevokedTarget::Token(TokenId([9; 16])), 1, "x");
        assert_eq!(
            mine.clone().insert(&mesh, fake.clone()),
            Err(RevocationError::BadSignature)
        );

        // A peer's list with one good and one forged entry: only the good one lands.
        let mut theirs = mine.clone();
        theirs.signed.push(fake);
        let mut fresh = RevocationSet::default();
        assert_eq!(
            fresh.merge_bytes(&mesh, &theirs.to_bytes()).unwrap(),
            vec![target]
        );
        assert!(fresh.is_node_revoked(&NodeId::from_bytes([3; 32])));
        assert!(!fresh.is_token_revoked(&TokenId([9; 16])));
        assert!(fresh.merge_bytes(&mesh, b"garbage").is_err());
    }
}
