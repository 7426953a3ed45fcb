//! Fuzzes the frame decoder with whole frames (length prefix included) as a peer would send them:
//! decoding never panics, and whatever decodes re-encodes to the very same bytes.
#![no_main]

use atmosphere_proto::{MAX_FRAME_BYTES, Request, Response, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = frame::decode::<Request>(bytes, MAX_FRAME_BYTES) {
        let again = frame::encode(&request, MAX_FRAME_BYTES).expect("a decoded request encodes");
        let back = frame::decode::<Request>(&again, MAX_FRAME_BYTES).expect("and decodes again");
        assert_eq!(back, request);
    }
    if let Ok(response) = frame::decode::<Response>(bytes, MAX_FRAME_BYTES) {
        let again = frame::encode(&response, MAX_FRAME_BYTES).expect("a decoded response encodes");
        let back = frame::decode::<Response>(&again, MAX_FRAME_BYTES).expect("and decodes again");
        assert_eq!(back, response);
    }
    // The streaming path reads the prefix first: it must agree with the one-shot decoder.
    if let Some(header) = bytes.get(..frame::HEADER_BYTES) {
        let header: [u8; frame::HEADER_BYTES] = header.try_into().expect("four bytes");
        if let Ok(len) = frame::body_len(header, MAX_FRAME_BYTES)
            && bytes.len() == frame::HEADER_BYTES + len
        {
            let body = &bytes[frame::HEADER_BYTES..];
            assert_eq!(
                frame::decode_body::<Request>(body).is_ok(),
                frame::decode::<Request>(bytes, MAX_FRAME_BYTES).is_ok()
            );
        }
    }
});
