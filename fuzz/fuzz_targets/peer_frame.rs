//! Fuzz the control channel's frame decoder (`src/peering/frame.rs`, included as it is) with
//! arbitrary bytes: nothing may panic, a decoded frame never claims more bytes than it was
//! given, and whatever decodes encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/peering/frame.rs"]
#[allow(dead_code)]
mod frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((message, used)) = frame::decode(data) {
        assert!(used <= data.len());
        if let Ok(again) = frame::encode(&message) {
            assert_eq!(frame::decode(&again).map(|(m, _)| m), Ok(message));
        }
    }
    let _ = frame::decode_body(data);
    if let Some(header) = data.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) {
        let _ = frame::body_len(header);
    }
});
