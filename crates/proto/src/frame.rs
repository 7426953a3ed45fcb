//! The framed codec: `u32` big-endian length, one version byte, a postcard body.
//!
//! Decoding never panics and never allocates more than the declared length, which is checked
//! against a cap before anything is read.

use serde::{Serialize, de::DeserializeOwned};

/// The wire version this build speaks. A frame of another version is refused, not guessed at.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest frame accepted by default (length prefix excluded).
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame truncated: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("frame is empty: no version byte")]
    Empty,
    #[error("frame has protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    UnknownVersion { got: u8 },
    #[error("frame body does not decode: {reason}")]
    Malformed { reason: String },
    #[error("{trailing} bytes follow the frame body")]
    Trailing { trailing: usize },
}

/// Encodes `message` as one frame, refusing bodies over `max` bytes.
pub fn encode<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_BYTES];
    out.push(PROTOCOL_VERSION);
    let mut out = postcard::to_extend(message, out).map_err(|error| FrameError::Malformed {
        reason: error.to_string(),
    })?;
    let len = out.len() - HEADER_BYTES;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..HEADER_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Reads the length prefix of a frame and checks it against `max`: how many bytes follow.
pub fn body_len(header: [u8; HEADER_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the length prefix: version byte and postcard).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnknownVersion { got: version });
    }
    let (message, trailing) =
        postcard::take_from_bytes(rest).map_err(|error| FrameError::Malformed {
            reason: error.to_string(),
        })?;
    if !trailing.is_empty() {
        return Err(FrameError::Trailing {
            trailing: trailing.len(),
        });
    }
    Ok(message)
}

/// Decodes one whole frame (prefix included) that must span exactly `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    let header: [u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            needed: HEADER_BYTES,
            have: bytes.len(),
        })?;
    let len = body_len(header, max)?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() < len {
        return Err(FrameError::Truncated {
            needed: HEADER_BYTES + len,
            have: bytes.len(),
        });
    }
    if body.len() > len {
        return Err(FrameError::Trailing {
            trailing: body.len() - len,
        });
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::gossip::{Delta, Digest, DigestEntry, GossipMsg, NodeDelta, VersionedValue};
    use crate::id::NodeId;
    use crate::rpc::{Control, ErrorCode, Request, Response, RoutedBody, RoutedReply};

    fn node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId::from_bytes)
    }

    fn digest() -> impl Strategy<Value = Digest> {
        prop::collection::vec(
            (node_id(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(node, generation, heartbeat, max_version)| DigestEntry {
                    node,
                    generation,
                    heartbeat,
                    max_version,
                },
            ),
            0..8,
        )
        .prop_map(|entries| Digest { entries })
    }

    fn delta() -> impl Strategy<Value = Delta> {
        let value = (
            ".{0,12}",
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(key, version, value)| VersionedValue {
                key,
                version,
                value,
            });
        let node = (
            node_id(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(value, 0..4),
        )
            .prop_map(
                |(node, generation, heartbeat, from_version, max_version, values)| NodeDelta {
                    node,
                    generation,
                    heartbeat,
                    from_version,
                    max_version,
                    values,
                },
            );
        prop::collection::vec(node, 0..4).prop_map(|nodes| Delta { nodes })
    }

    fn gossip() -> impl Strategy<Value = GossipMsg> {
        prop_oneof![
            digest().prop_map(|digest| GossipMsg::Syn { digest }),
            (digest(), delta()).prop_map(|(digest, delta)| GossipMsg::SynAck { digest, delta }),
            delta().prop_map(|delta| GossipMsg::Ack { delta }),
            delta().prop_map(|delta| GossipMsg::Push { delta }),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            gossip().prop_map(Request::Gossip),
            any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
            prop_oneof![Just(Control::Disconnect), Just(Control::Reconnect)]
                .prop_map(Request::Control),
            (
                node_id(),
                any::<u8>(),
                prop::collection::vec(node_id(), 0..4),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(dest, ttl, path, payload)| Request::Routed {
                    dest,
                    ttl,
                    path,
                    body: RoutedBody::Echo { payload },
                }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            prop::option::of(gossip()).prop_map(Response::Gossip),
            any::<u64>().prop_map(|nonce| Response::Pong { nonce }),
            Just(Response::Done),
            (
                prop::collection::vec(node_id(), 0..4),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(path, payload)| Response::Routed {
                    path,
                    reply: RoutedReply::Echo { payload },
                }),
            ".{0,40}".prop_map(|message| Response::Error {
                code: ErrorCode::Unreachable,
                message,
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(message in request()) {
            let bytes = encode(&message, MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(decode::<Request>(&bytes, MAX_FRAME_BYTES).unwrap(), message);
        }

        #[test]
        fn responses_round_trip(message in response()) {
            let bytes = encode(&message, MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(decode::<Response>(&bytes, MAX_FRAME_BYTES).unwrap(), message);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes, MAX_FRAME_BYTES);
            let _ = decode::<Response>(&bytes, MAX_FRAME_BYTES);
            let _ = decode::<GossipMsg>(&bytes, MAX_FRAME_BYTES);
        }

        #[test]
        fn truncated_frames_are_refused(message in request(), cut in 0usize..64) {
            let bytes = encode(&message, MAX_FRAME_BYTES).unwrap();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode::<Request>(&bytes[..cut], MAX_FRAME_BYTES).is_err());
        }

        #[test]
        fn bodies_of_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![PROTOCOL_VERSION];
            framed.extend_from_slice(&body);
            let _ = decode_body::<Request>(&framed);
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_reading() {
        let header = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes();
        assert_eq!(
            body_len(header, MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_BYTES + 1,
                max: MAX_FRAME_BYTES
            })
        );
        let big = Request::Routed {
            dest: NodeId::from_bytes([1; 32]),
            ttl: 1,
            path: vec![],
            body: RoutedBody::Echo {
                payload: vec![0; 100],
            },
        };
        assert!(matches!(encode(&big, 50), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = encode(&Request::Ping { nonce: 7 }, MAX_FRAME_BYTES).unwrap();
        bytes[HEADER_BYTES] = 9;
        assert_eq!(
            decode::<Request>(&bytes, MAX_FRAME_BYTES),
            Err(FrameError::UnknownVersion { got: 9 })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Request::Ping { nonce: 7 }, MAX_FRAME_BYTES).unwrap();
        bytes.push(0);
        assert!(decode::<Request>(&bytes, MAX_FRAME_BYTES).is_err());
    }
}
