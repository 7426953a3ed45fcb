//! Package seals: a node signs a model package's manifest with its own key and attaches the token
//! the mesh authority gave it, so any member — even one with no network at all — can check offline
//! who packed the package, that the authority vouched for that node, and that not one byte of the
//! manifest (and so, through its hashes, of the model) changed since.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use atmosphere_proto::NodeId;

use crate::keys::{MeshId, hex};
use crate::revocation::RevocationSet;
use crate::token::{Claims, Token, TokenError};

const SIGNING_TAG: &[u8] = b"atmosphere/package/v1";

/// A signature over a manifest's exact bytes, with the signer's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The packing node (its Ed25519 key).
    pub signer: NodeId,
    /// The signer's name, from its token (for people; not trusted on its own).
    pub signer_name: String,
    /// When it was signed (Unix seconds); the token must have been valid then.
    pub signed_at: u64,
    /// The signer's token, text form.
    pub token: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// Why a seal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("the package seal does not decode: {0}")]
    Malformed(String),
    #[error("the packing node's token is not good: {0}")]
    Token(#[from] TokenError),
    #[error("the seal names node {signer} but carries the token of node {bound}")]
    WrongSigner { signer: String, bound: String },
    #[error(
        "the package's signature does not match its manifest: the manifest was changed after packing, or the seal is forged"
    )]
    BadSignature,
}

fn message(manifest: &[u8], signed_at: u64) -> Vec<u8> {
    let digest = Sha256::digest(manifest);
    [SIGNING_TAG, &signed_at.to_le_bytes(), digest.as_slice()].concat()
}

impl Seal {
    /// Signs `manifest` with the node key `secret` (whose token is `token`) at `now`.
    pub fn sign(
        secret: &[u8; 32],
        token: &Token,
        manifest: &[u8],
        now: u64,
    ) -> Result<Self, SealError> {
        let key = SigningKey::from_bytes(secret);
        let claims = token.claims_unverified()?;
        let signer = NodeId::from_bytes(key.verifying_key().to_bytes());
        if claims.node != signer {
            return Err(SealError::WrongSigner {
                signer: signer.short(),
                bound: claims.node.short(),
            });
        }
        let signature = key.sign(&message(manifest, now)).to_bytes();
        Ok(Self {
            signer,
            signer_name: claims.name,
            signed_at: now,
            token: token.encode(),
            signature: hex(&signature),
        })
    }

    /// Every check, offline: the token was signed by `mesh`'s authority and valid when the seal was
    /// made, it belongs to the signer, neither is revoked now, and the signature covers exactly
    /// `manifest`. Returns the signer's claims.
    pub fn verify(
        &self,
        manifest: &[u8],
        mesh: &MeshId,
        revocations: &RevocationSet,
    ) -> Result<Claims, SealError> {
        let token = Token::decode(&self.token)?;
        let claims = token
            .verify(mesh, &self.signer, self.signed_at, revocations)?
            .claims;
        let signature: [u8; 64] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.signature.as_bytes())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| SealError::Malformed("the signature is not 64 hex bytes".into()))?;
        let key = VerifyingKey::from_bytes(self.signer.as_bytes())
            .map_err(|e| SealError::Malformed(format!("signer key: {e}")))?;
        key.verify_strict(
            &message(manifest, self.signed_at),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .map_err(|_| SealError::BadSignature)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AuthorityKey;
    use crate::revocation::Revocation;
    use crate::token::TokenId;

    fn token_for(authority: &AuthorityKey, secret: &[u8; 32], now: u64) -> Token {
        let node = NodeId::from_bytes(SigningKey::from_bytes(secret).verifying_key().to_bytes());
        Token::issue(
            authority,
            &Claims {
                mesh: authority.mesh_id(),
                token_id: TokenId::random(),
                node,
                name: "packer".into(),
                capabilities: Vec::new(),
                authority: false,
                issued_at: now,
                not_before: now,
                expires_at: now + 3600,
            },
        )
    }

    #[test]
    fn a_seal_verifies_and_every_forgery_is_refused() {
        let authority = AuthorityKey::generate();
        let mesh = authority.mesh_id();
        let secret = [7u8; 32];
        let now = 1_800_000_000;
        let token = token_for(&authority, &secret, now);
        let manifest = br#"{"name":"tiny","size":10}"#;
        let seal = Seal::sign(&secret, &token, manifest, now + 10).unwrap();
        let none = RevocationSet::default();
        let claims = seal.verify(manifest, &mesh, &none).unwrap();
        assert_eq!((claims.name.as_str(), seal.signer), ("packer", claims.node));

        // An edited manifest.
        let edited = br#"{"name":"tiny","size":11}"#;
        assert_eq!(
            seal.verify(edited, &mesh, &none),
            Err(SealError::BadSignature)
        );
        // Another mesh.
        let other = AuthorityKey::generate().mesh_id();
        assert!(matches!(
            seal.verify(manifest, &other, &none),
            Err(SealError::Token(TokenError::WrongMesh { .. }))
        ));
        // A seal made after the token expired.
        let late = Seal::sign(&secret, &token, manifest, now + 7200).unwrap();
        assert!(matches!(
            late.verify(manifest, &mesh, &none),
            Err(SealError::Token(TokenError::Expired { .. }))
        ));
        // Someone else's key under this token.
        assert!(matches!(
            Seal::sign(&[8u8; 32], &token, manifest, now),
            Err(SealError::WrongSigner { .. })
        ));
        // A seal whose signer was swapped for another node.
        let mut swapped = seal.clone();
        swapped.signer = NodeId::from_bytes([9u8; 32]);
        assert!(swapped.verify(manifest, &mesh, &none).is_err());
        // A revoked packer.
        let mut revoked = RevocationSet::default();
        let claims = token.claims_unverified().unwrap();
        let signed = Revocation::sign(
            &authority,
            crate::RevokedTarget::Node(claims.node),
            now,
            "stolen",
        );
        revoked.insert(&mesh, signed).unwrap();
        assert!(matches!(
            seal.verify(manifest, &mesh, &revoked),
            Err(SealError::Token(TokenError::NodeRevoked(_)))
        ));
        // Garbage.
        let mut garbage = seal.clone();
        garbage.signature = "zz".into();
        assert!(matches!(
            garbage.verify(manifest, &mesh, &none),
            Err(SealError::Malformed(_))
        ));
    }
}
