//! Byte payloads as one block (`serialize_bytes`) rather than a sequence of `u8`: the same
//! postcard wire form (a varint length, then the bytes), encoded and decoded with one copy
//! instead of a call per byte — what makes moving model chunks through frames cheap.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    /// Self-describing formats (JSON) write bytes as an array of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(byte) = seq.next_element()? {
            out.push(byte);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Response, RoutedReply, frame};

    #[test]
    fn byte_payloads_keep_the_wire_form_of_a_u8_sequence() {
        #[derive(serde::Serialize)]
        enum Old {
            #[allow(dead_code)]
            Echo {
                payload: Vec<u8>,
            },
            Work {
                payload: Vec<u8>,
            },
        }
        let payload: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let new = RoutedReply::Work {
            payload: payload.clone(),
        };
        let old = postcard::to_allocvec(&Old::Work {
            payload: payload.clone(),
        })
        .unwrap();
        assert_eq!(postcard::to_allocvec(&new).unwrap(), old);
        let back: RoutedReply = postcard::from_bytes(&old).unwrap();
        assert_eq!(back, new);

        let response = Response::Routed {
            path: Vec::new(),
            reply: new,
        };
        let framed = frame::encode(&response, frame::MAX_FRAME_BYTES).unwrap();
        let decoded: Response = frame::decode_body(&framed[frame::HEADER_BYTES..]).unwrap();
        assert_eq!(decoded, response);
    }
}
