//! Fuzz the tunnel's packet checks with arbitrary inner packets: as a host packet on egress
//! (`Flow::parse`, source, route, policy, SA), and sealed under a genuine SA and fed to ingress,
//! so the checks after decryption (inner parse, next header, source, tenant, route, policy)
//! see arbitrary authenticated bytes. Nothing may panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use warden_enforcer::esp::{Engine, Limits, Outbound, SaKeys};
use warden_enforcer::tunnel::{spi, Tunnel, TunnelConfig};

const POLICY: &str = r#"
version = 1
[[node]]
id = "node-a"
address = "198.51.100.1"
[[node]]
id = "node-b"
address = "198.51.100.2"
[[tenant]]
id = "acme"
[[segment]]
name = "acme-a"
tenant = "acme"
cidrs = ["203.0.113.0/28", "2001:db8:a::/64"]
node = "node-a"
[[segment]]
name = "acme-b"
tenant = "acme"
cidrs = ["203.0.113.16/28", "2001:db8:b::/64"]
node = "node-b"
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "any"
"#;

fn keys() -> SaKeys {
    SaKeys {
        key: zeroize::Zeroizing::new([0x42; 32]),
        salt: [9, 8, 7, 6],
    }
}

/// node-b's tunnel with node-a's inbound SA, and node-a's tunnel sending to node-b.
fn tunnels() -> &'static (Tunnel, Tunnel, u32) {
    static T: OnceLock<(Tunnel, Tunnel, u32)> = OnceLock::new();
    T.get_or_init(|| {
        let policy = warden_policy::parse(POLICY, "fuzz.toml").expect("policy");
        let make = |node: &str| {
            let t = Tunnel::new(
                TunnelConfig {
                    node: node.into(),
                    engine: Engine::default(),
                    workers: 1,
                    limits: Limits::default(),
                    esp_port: 4500,
                },
                None,
            );
            t.set_policy(&policy);
            t
        };
        let (a, b) = (make("node-a"), make("node-b"));
        let base = b
            .add_inbound("node-a", "acme", 1, vec![keys()])
            .expect("inbound");
        a.set_outbound("node-b", "acme", 1, base, vec![keys()], Instant::now())
            .expect("outbound");
        (a, b, base)
    })
}

fuzz_target!(|data: &[u8]| {
    let (a, b, base) = tunnels();
    let mut out = vec![0u8; data.len() + 64];
    let _ = a.snapshot().egress(0, Instant::now(), data, &mut out);
    // A fresh sender per input at a sequence number above any earlier one, so the replay
    // window never refuses it: the checks after decryption always run.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 20);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut sender = Outbound::new(spi(*base, 0), &keys(), Limits::default()).with_sequence(seq);
    for next in [4u8, 41] {
        let mut packet = vec![0u8; Outbound::sealed_len(data.len())];
        if let Ok(n) = sender.seal(data, next, &mut packet) {
            if let Ok(d) = b.snapshot().ingress(0, &mut packet[..n]) {
                assert!(d.start + d.len <= n);
            }
        }
    }
});
