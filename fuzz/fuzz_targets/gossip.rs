//! Fuzzes the gossip decoder: a frame body (version byte + postcard) as a `GossipMsg`, and every
//! record value a peer can publish, as a node decodes them when they arrive in a delta.
#![no_main]

use atmosphere_proto::gossip::GossipMsg;
use atmosphere_proto::record::{
    AddrsKey, CapabilitiesKey, ConfigsKey, DescriptorsKey, LeftKey, LinksKey, LoadKey, ModelsKey,
    NameKey, RecordKey, RevocationsKey, TokenKey, decode_value,
};
use atmosphere_proto::{MAX_FRAME_BYTES, frame};
use libfuzzer_sys::fuzz_target;

fn value<K: RecordKey>(bytes: &[u8]) {
    let _ = decode_value::<K>(bytes);
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = frame::decode_body::<GossipMsg>(bytes) {
        let again = frame::encode(&message, MAX_FRAME_BYTES).expect("a decoded message encodes");
        let back = frame::decode::<GossipMsg>(&again, MAX_FRAME_BYTES).expect("and decodes again");
        assert_eq!(back, message);
        // Values travel opaque inside deltas; a node decodes them by key.
        let delta = match &message {
            GossipMsg::Syn { .. } => None,
            GossipMsg::SynAck { delta, .. }
            | GossipMsg::Ack { delta }
            | GossipMsg::Push { delta } => Some(delta),
        };
        for node in delta.iter().flat_map(|d| d.nodes.iter()) {
            for entry in &node.values {
                decode_any(&entry.value);
            }
        }
    }
    decode_any(bytes);
});

fn decode_any(bytes: &[u8]) {
    value::<NameKey>(bytes);
    value::<AddrsKey>(bytes);
    value::<CapabilitiesKey>(bytes);
    value::<LoadKey>(bytes);
    value::<LinksKey>(bytes);
    value::<TokenKey>(bytes);
    value::<RevocationsKey>(bytes);
    value::<ConfigsKey>(bytes);
    value::<DescriptorsKey>(bytes);
    value::<LeftKey>(bytes);
    value::<ModelsKey>(bytes);
}
