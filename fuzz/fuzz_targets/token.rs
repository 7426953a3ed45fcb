//! Fuzzes the token parser and verifier: arbitrary text and bytes as tokens (refused with an
//! error, never a panic), and arbitrary claims signed by a real authority, whose verdict must
//! agree with what the claims say.
#![no_main]

use atmosphere_auth::keys::AuthorityKey;
use atmosphere_auth::revocation::RevocationSet;
use atmosphere_auth::token::{Claims, Token};
use atmosphere_proto::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let authority = AuthorityKey::from_bytes(&[7; 32]);
    let mesh = authority.mesh_id();
    let revocations = RevocationSet::default();
    let presenter = NodeId::from_bytes([1; 32]);
    let now = 1_800_000_000;

    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(token) = Token::decode(text)
    {
        let _ = token.claims_unverified();
        let _ = token.verify(&mesh, &presenter, now, &revocations);
        assert_eq!(Token::decode(&token.encode()).as_ref(), Ok(&token));
    }
    if let Ok(token) = Token::from_bytes(bytes) {
        // Nobody but the authority below holds its key: a token from bytes alone is a forgery
        // unless it is a re-encoding of a real one, which the fuzzer cannot produce.
        assert!(token.verify(&mesh, &presenter, now, &revocations).is_err());
    }
    if let Ok(claims) = postcard::from_bytes::<Claims>(bytes) {
        let token = Token::issue(&authority, &claims);
        let verdict = token.verify(&mesh, &claims.node, now, &revocations);
        let in_window =
            claims.not_before <= now + atmosphere_auth::CLOCK_SKEW_SECS && now < claims.expires_at;
        if claims.mesh == mesh && in_window {
            assert_eq!(verdict.map(|v| v.claims), Ok(claims));
        } else {
            assert!(verdict.is_err());
        }
    }
});
