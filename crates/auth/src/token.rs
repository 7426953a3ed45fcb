//! Join tokens: claims signed by the mesh authority, verified offline by every node.
//!
//! Wire form: `atmo1.` + base64url(postcard(Token)). The signature covers a domain-separation
//! tag and the exact claim bytes, so any change to any field breaks it.

use std::fmt;

use atmosphere_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::CLOCK_SKEW_SECS;
use crate::keys::{AuthorityKey, MeshId, hex, verify};
use crate::revocation::RevocationSet;

const PREFIX: &str = "atmo1.";
const SIGNING_TAG: &[u8] = b"atmosphere/token/v1";
/// Tokens longer than this (encoded) are refused before decoding.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// A token's unique id (random), what revocations name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl std::str::FromStr for TokenId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .map(Self)
            .ok_or_else(|| format!("a token id is 32 hex digits, got {text:?}"))
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub mesh: MeshId,
    pub token_id: TokenId,
    /// The node key (QUIC identity) the token is bound to.
    pub node: NodeId,
    pub name: String,
    /// Capability classes the node may offer; empty means any.
    pub capabilities: Vec<String>,
    /// Whether the node may admit others (it holds the authority key).
    pub authority: bool,
    pub issued_at: u64,
    pub not_before: u64,
    pub expires_at: u64,
}

/// Signed claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The exact bytes that were signed (postcard of [`Claims`]).
    claims: Vec<u8>,
    signature: Vec<u8>,
}

/// Why a token is refused. Every variant says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a token (expected atmo1.…): {0}")]
    Malformed(String),
    #[error("token signature is invalid: forged or tampered with")]
    BadSignature,
    #[error("token belongs to another mesh ({got}), this mesh is {expected}")]
    WrongMesh { expected: String, got: String },
    #[error(
        "token expired {ago_secs} s ago; ask the mesh authority for a new one (`atmosphere token issue`)"
    )]
    Expired { ago_secs: u64 },
    #[error("token is not valid for another {in_secs} s (check the clocks)")]
    NotYetValid { in_secs: u64 },
    #[error("token {0} has been revoked")]
    Revoked(TokenId),
    #[error("node {0} has been revoked")]
    NodeRevoked(String),
    #[error("token is bound to node {bound}, but was presented by {presenter}: a stolen token")]
    WrongNode { bound: String, presenter: String },
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub claims: Claims,
    pub token: Token,
}

impl VerifiedToken {
    /// Seconds left at `now`.
    pub fn remaining(&self, now: u64) -> u64 {
        self.claims.expires_at.saturating_sub(now)
    }

    /// True once 2/3 of the lifetime has passed since the authority's `issued_at`: time to renew.
    pub fn should_renew(&self, now: u64) -> bool {
        self.two_thirds_since(self.claims.issued_at, now)
    }

    /// Like [`VerifiedToken::should_renew`], and also true once 2/3 of the lifetime has passed
    /// since `received_at` by the holder's own clock: a holder whose clock runs behind the
    /// authority's renews on time instead of late by the skew.
    pub fn should_renew_since(&self, received_at: u64, now: u64) -> bool {
        self.should_renew(now) || self.two_thirds_since(received_at, now)
    }

    fn two_thirds_since(&self, start: u64, now: u64) -> bool {
        let lifetime = self.claims.expires_at.saturating_sub(self.claims.issued_at);
        now >= start.saturating_add(lifetime / 3 * 2 + lifetime % 3 * 2 / 3)
    }
}

impl Token {
    /// Signs `claims` with the authority key; the claims' mesh must be the authority's.
    pub fn issue(authority: &AuthorityKey, claims: &Claims) -> Self {
        let claims_bytes = postcard::to_allocvec(claims).unwrap_or_default();
        let signature = authority.sign(&signed_message(&claims_bytes)).to_vec();
        Self {
            claims: claims_bytes,
            signature,
        }
    }

    /// The claims, without checking anything (to display a token, or to learn its mesh).
    pub fn claims_unverified(&self) -> Result<Claims, TokenError> {
        postcard::from_bytes(&self.claims).map_err(|e| TokenError::Malformed(e.to_string()))
    }

    /// Every check a node makes before admitting `presenter`: signature by `mesh`'s authority,
    /// binding to the presenter's key, validity window, revocation. Pure and offline.
    pub fn verify(
        &self,
        mesh: &MeshId,
        presenter: &NodeId,
        now: u64,
        revocations: &RevocationSet,
    ) -> Result<VerifiedToken, TokenError> {
        let verified = self.verify_signature(mesh, now)?;
        let claims = &verified.claims;
        if claims.node != *presenter {
            return Err(TokenError::WrongNode {
                bound: claims.node.short(),
                presenter: presenter.short(),
            });
        }
        if revocations.is_token_revoked(&claims.token_id) {
            return Err(TokenError::Revoked(claims.token_id));
        }
        if revocations.is_node_revoked(&claims.node) {
            return Err(TokenError::NodeRevoked(claims.node.short()));
        }
        Ok(verified)
    }

    /// Signature, mesh and validity window only (no binding, no revocation).
    pub fn verify_signature(&self, mesh: &MeshId, now: u64) -> Result<VerifiedToken, TokenError> {
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::Malformed("signature is not 64 bytes".into()))?;
        let claims = self.claims_unverified()?;
        if claims.mesh != *mesh {
            return Err(TokenError::WrongMesh {
                expected: mesh.fingerprint(),
                got: claims.mesh.fingerprint(),
            });
        }
        if !verify(mesh, &signed_message(&self.claims), &signature) {
            return Err(TokenError::BadSignature);
        }
        if now + CLOCK_SKEW_SECS < claims.not_before {
            return Err(TokenError::NotYetValid {
                in_secs: claims.not_before - now,
            });
        }
        if now >= claims.expires_at {
            return Err(TokenError::Expired {
                ago_secs: now - claims.expires_at,
            });
        }
        Ok(VerifiedToken {
            claims,
            token: self.clone(),
        })
    }

    /// The copy-pasteable text form.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!("{PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
    }

    /// Parses the text form; never panics on any input.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed(format!(
                "{} characters, the limit is {MAX_TOKEN_CHARS}",
                text.len()
            )));
        }
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| TokenError::Malformed("missing the atmo1. prefix".into()))?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| TokenError::Malformed(format!("not base64url: {e}")))?;
        Self::from_bytes(&bytes)
    }

    /// The binary form, as carried in handshakes and gossip.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        let (token, rest): (Self, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TokenError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(token)
    }
}

fn signed_message(claims: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_TAG.len() + claims.len());
    message.extend_from_slice(SIGNING_TAG);
    message.extend_from_slice(claims);
    message
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::revocation::{Revocation, RevokedTarget};

    const NOW: u64 = 1_800_000_000;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    fn claims(authority: &AuthorityKey, n: u8, ttl: u64) -> Claims {
        Claims {
            mesh: authority.mesh_id(),
            token_id: TokenId([n; 16]),
            node: node(n),
            name: format!("node-{n}"),
            capabilities: vec!["llm".into()],
            authority: false,
            issued_at: NOW,
            not_before: NOW,
            expires_at: NOW + ttl,
        }
    }

    #[test]
    fn a_valid_token_verifies_offline() {
        let authority = AuthorityKey::generate();
        let token = Token::issue(&authority, &claims(&authority, 1, 3600));
        let text = token.encode();
        assert!(text.starts_with("atmo1."));
        let parsed = Token::decode(&text).unwrap();
        let verified = parsed
            .verify(
                &authority.mesh_id(),
                &node(1),
                NOW + 10,
                &RevocationSet::default(),
            )
            .unwrap();
        assert_eq!(verified.claims.name, "node-1");
        assert_eq!(verified.remaining(NOW + 10), 3590);
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let authority = AuthorityKey::generate();
        let mesh = authority.mesh_id();
        let none = RevocationSet::default();
        let good = Token::issue(&authority, &claims(&authority, 1, 3600));

        // Forged: signed by a key that is not the authority, claiming this mesh.
        let forger = AuthorityKey::generate();
        let forged = Token::issue(&forger, &claims(&authority, 1, 3600));
        assert_eq!(
            forged.verify(&mesh, &node(1), NOW, &none),
            Err(TokenError::BadSignature)
        );

        // Another mesh's token.
        let other = Token::issue(&forger, &claims(&forger, 1, 3600));
        assert!(matches!(
            other.verify(&mesh, &node(1), NOW, &none),
            Err(TokenError::WrongMesh { .. })
        ));

        // Tampered: flip each byte of the claims in turn.
        for i in 0..good.claims.len() {
            let mut tampered = good.clone();
            tampered.claims[i] ^= 0x01;
            assert!(
                tampered.verify(&mesh, &node(1), NOW, &none).is_err(),
                "byte {i}"
            );
        }
        let mut tampered = good.clone();
        tampered.signature[0] ^= 0x80;
        assert_eq!(
            tampered.verify(&mesh, &node(1), NOW, &none),
            Err(TokenError::BadSignature)
        );

        // Expired, and not yet valid beyond the tolerated skew.
        assert!(matches!(
            good.verify(&mesh, &node(1), NOW + 3600, &none),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            good.verify(&mesh, &node(1), NOW - CLOCK_SKEW_SECS - 1, &none),
            Err(TokenError::NotYetValid { .. })
        ));
        assert!(
            good.verify(&mesh, &node(1), NOW - CLOCK_SKEW_SECS, &none)
                .is_ok(),
            "skew tolerated"
        );

        // Stolen: presented by another key.
        assert!(matches!(
            good.verify(&mesh, &node(2), NOW, &none),
            Err(TokenError::WrongNode { .. })
        ));

        // Revoked, by token id and by node.
        let mut revoked = RevocationSet::default();
        let by_token = Revocation::sign(
            &authority,
            RevokedTarget::Token(TokenId([1; 16])),
            NOW,
            "lost",
        );
        revoked.insert(&mesh, by_token).unwrap();
        assert_eq!(
            good.verify(&mesh, &node(1), NOW, &revoked),
            Err(TokenError::Revoked(TokenId([1; 16])))
        );
        let mut revoked = RevocationSet::default();
        revoked
            .insert(
                &mesh,
                Revocation::sign(&authority, RevokedTarget::Node(node(1)), NOW, "stolen"),
            )
            .unwrap();
        assert!(matches!(
            good.verify(&mesh, &node(1), NOW, &revoked),
            Err(TokenError::NodeRevoked(_))
        ));

        // Truncated and garbage.
        let text = good.encode();
        for cut in [0, 5, 6, 10, text.len() / 2, text.len() - 1] {
            assert!(
                Token::decode(&text[..cut])
                    .and_then(|t| t.verify(&mesh, &node(1), NOW, &none))
                    .is_err(),
                "cut {cut}"
            );
        }
        assert!(Token::decode("atmo1.!!!").is_err());
        assert!(Token::decode(&"a".repeat(MAX_TOKEN_CHARS + 1)).is_err());
    }

    #[test]
    fn renewal_is_due_after_two_thirds() {
        let authority = AuthorityKey::generate();
        let token = Token::issue(&authority, &claims(&authority, 1, 300));
        let verified = token.verify_signature(&authority.mesh_id(), NOW).unwrap();
        assert!(!verified.should_renew(NOW + 199));
        assert!(verified.should_renew(NOW + 200));
        // A token that never expires (the longest TTL the API takes) has no overflow in it.
        let forever = Token::issue(&authority, &claims(&authority, 2, u64::MAX - NOW));
        let verified = forever.verify_signature(&authority.mesh_id(), NOW).unwrap();
        assert!(!verified.should_renew(NOW + 1_000_000_000));
        assert!(verified.should_renew(u64::MAX));
    }

    #[test]
    fn a_holder_behind_the_authority_renews_by_its_own_clock() {
        let authority = AuthorityKey::generate();
        // The authority's clock is 10 minutes ahead of the holder's: issued "in the future".
        let mut ahead = claims(&authority, 1, 300);
        ahead.issued_at = NOW + 600;
        ahead.not_before = NOW + 600;
        ahead.expires_at = NOW + 900;
        let verified = Token::issue(&authority, &ahead)
            .verify_signature(&authority.mesh_id(), NOW + 600)
            .unwrap();
        // Received at NOW by the holder's clock: due 200 s later, not 800 s later.
        assert!(!verified.should_renew(NOW + 200));
        assert!(!verified.should_renew_since(NOW, NOW + 199));
        assert!(verified.should_renew_since(NOW, NOW + 200));
        // A holder ahead of the authority renews by the authority's clock, as before.
        assert!(verified.should_renew_since(NOW + 5_000, NOW + 800));
    }

    proptest! {
        #[test]
        fn the_parser_never_panics(text in ".{0,300}") {
            let _ = Token::decode(&text);
            let prefixed = format!("atmo1.{text}");
            let _ = Token::decode(&prefixed);
        }

        #[test]
        fn binary_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(token) = Token::from_bytes(&bytes) {
                let mesh = MeshId([7; 32]);
                let _ = token.verify(&mesh, &node(1), NOW, &RevocationSet::default());
            }
        }
    }
}
