//! Atmosphere's admission layer ("Rownd Local"): a mesh authority key signs join tokens that any
//! node verifies offline; signed revocations spread by gossip. Pure: no I/O, time is an argument
//! (Unix seconds).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod invite;
pub mod keys;
pub mod revocation;
pub mod seal;
pub mod token;

pub use config::{ConfigBook, ConfigDoc, ConfigError, SignedConfig};
pub use invite::{Invite, InviteError};
pub use keys::{AuthorityKey, MeshId};
pub use revocation::{Revocation, RevocationError, RevocationSet, RevokedTarget, SignedRevocation};
pub use seal::{Seal, SealError};
pub use token::{Claims, Token, TokenError, TokenId, VerifiedToken};

/// Clock skew tolerated between nodes when checking "not yet valid": two clocks each within five
/// minutes of true time disagree by up to ten, and a token issued by one must work on the other
/// (with five minutes to spare: accepting a token early gains a holder nothing, the authority
/// signed it).
pub const CLOCK_SKEW_SECS: u64 = 900;

/// Now, in Unix seconds (the one clock read in this crate's callers' convenience).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
