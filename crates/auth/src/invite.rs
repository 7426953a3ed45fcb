//! Invites: a copy-pasteable string that lets one new node join. It names the mesh and where its
//! authority listens, and carries a one-time secret whose hash the authority keeps; the first join
//! that presents it consumes it.

use std::net::SocketAddr;

use atmosphere_proto::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::MeshId;

const PREFIX: &str = "atmo-invite1.";

/// An invitation to join a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub mesh: MeshId,
    pub mesh_name: String,
    /// The node that holds the authority key and where to reach it.
    pub authority_node: NodeId,
    pub addrs: Vec<SocketAddr>,
    /// One-time secret: grants exactly one join.
    pub secret: [u8; 16],
    pub expires_at: u64,
}

/// Why an invite string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    #[error("not an invite (expected atmo-invite1.… or a token atmo1.…): {0}")]
    Malformed(String),
}

impl Invite {
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!("{PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
    }

    pub fn decode(text: &str) -> Result<Self, InviteError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| InviteError::Malformed("missing the atmo-invite1. prefix".into()))?;
        if body.len() > 4096 {
            return Err(InviteError::Malformed("too long".into()));
        }
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| InviteError::Malformed(e.to_string()))?;
        postcard::from_bytes(&bytes).map_err(|e| InviteError::Malformed(e.to_string()))
    }

    pub fn is_invite(text: &str) -> bool {
        text.trim().starts_with(PREFIX)
    }
}

/// What the authority stores for an open invite: the secret's hash, never the secret.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"atmosphere/invite/v1");
    hasher.update(secret);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let invite = Invite {
            mesh: MeshId([1; 32]),
            mesh_name: "home".into(),
            authority_node: NodeId::from_bytes([2; 32]),
            addrs: vec!["127.0.0.1:7400".parse().unwrap()],
            secret: [3; 16],
            expires_at: 99,
        };
        let text = invite.encode();
        assert!(Invite::is_invite(&text));
        assert_eq!(Invite::decode(&text).unwrap(), invite);
        assert!(Invite::decode("atmo-invite1.zz").is_err());
        assert!(Invite::decode(&text[..text.len() - 3]).is_err());
        assert_ne!(secret_hash(&[3; 16]), secret_hash(&[4; 16]));
    }
}
