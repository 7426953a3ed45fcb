//! Fuzzes every JSON body of the node's HTTP API (`atmosphere-api`): the first byte picks the
//! route, the rest is the body. Whatever decodes is checked as the node checks it before acting
//! (never a panic, whatever the verdict), and re-encodes to a body that decodes to itself and
//! gets the same verdict — the CLI's encoding of a body is what the node reads.
#![no_main]

use atmosphere_api::*;
use libfuzzer_sys::fuzz_target;

/// Decodes `bytes` as `T`; on success, checks and round-trips it. `exact`: the body holds no free
/// JSON numbers (serde_json may re-round a float by an ulp), so the round trip must be equal.
fn body<T: Body + PartialEq + std::fmt::Debug>(bytes: &[u8], exact: bool) {
    let Ok(body) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    let verdict = body.check();
    let json = serde_json::to_vec(&body).expect("a decoded body encodes");
    let again: T = serde_json::from_slice(&json).expect("an encoded body decodes");
    if exact {
        assert_eq!(again, body, "{}", T::ROUTE);
        assert_eq!(again.check(), verdict, "{}", T::ROUTE);
    } else {
        assert_eq!(again.check().is_ok(), verdict.is_ok(), "{}", T::ROUTE);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&route, json)) = bytes.split_first() else {
        return;
    };
    match route % 22 {
        0 => body::<NodeRequest>(json, true),
        1 => body::<InitRequest>(json, true),
        2 => body::<InviteRequest>(json, true),
        3 => body::<JoinRequest>(json, true),
        4 => body::<IssueRequest>(json, true),
        5 => body::<RevokeRequest>(json, true),
        6 => body::<IntentRequest>(json, false),
        7 => body::<RouteBatch>(json, true),
        8 => body::<CallRequest>(json, false),
        9 => body::<DeployRequest>(json, false),
        10 => body::<InvokeRequest>(json, true),
        11 => body::<atmosphere_agents::Event>(json, false),
        12 => body::<ConfigPush>(json, true),
        13 => body::<SealRequest>(json, true),
        14 => body::<ImportRequest>(json, true),
        15 => body::<PullRequest>(json, true),
        16 => body::<PushRequest>(json, true),
        17 => body::<KnowledgeAddRequest>(json, true),
        18 => body::<KnowledgeQuery>(json, true),
        19 => body::<CommissionRequest>(json, true),
        20 => body::<ChatRequest>(json, false),
        _ => body::<EmbeddingsRequest>(json, true),
    }
});
