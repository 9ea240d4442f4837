//! Fuzz the ESP decode and open path (`warden_enforcer::esp::Inbound::open`) with arbitrary
//! packets against a fixed SA, and a few genuine packets first so the window has state.
//! Nothing may panic; nothing forged may open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_enforcer::esp::{Inbound, Limits, Outbound, SaKeys};

fn keys() -> SaKeys {
    SaKeys {
        key: zeroize::Zeroizing::new([0x42; 32]),
        salt: [9, 8, 7, 6],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inbound = Inbound::new(0x0102_0304, &keys());
    let mut outbound = Outbound::new(0x0102_0304, &keys(), Limits::default());
    let mut buf = [0u8; 128];
    for _ in 0..3 {
        if let Ok(n) = outbound.seal(b"genuine", 4, &mut buf) {
            let _ = inbound.open(&mut buf[..n]);
        }
    }
    let mut packet = data.to_vec();
    if let Ok(opened) = inbound.open(&mut packet) {
        // Only a byte-exact genuine packet could open; the fuzzer has no key.
        assert!(opened.start + opened.len <= packet.len());
    }
});
