#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::packet::tests::{ipv4, ipv4_flags};
use super::*;

const POLICY: &str = r#"
version = 1
[[node]]
id = "node-a"
address = "192.0.2.1"
[[node]]
id = "node-b"
address = "192.0.2.2"
[[node]]
id = "node-c"
address = "192.0.2.3"
[[tenant]]
id = "acme"
[[tenant]]
id = "globex"
[[segment]]
name = "acme-web"
tenant = "acme"
cidrs = ["198.51.100.0/26"]
node = "node-a"
[[segment]]
name = "acme-db"
tenant = "acme"
cidrs = ["198.51.100.64/26"]
node = "node-b"
[[segment]]
name = "acme-c"
tenant = "acme"
cidrs = ["198.51.100.128/26"]
node = "node-c"
[[segment]]
name = "globex-b"
tenant = "globex"
cidrs = ["203.0.113.0/26"]
node = "node-b"
[[rule]]
from = "acme-web"
to = "acme-db"
proto = "tcp"
ports = [5432]
[[rule]]
from = "acme-c"
to = "acme-db"
proto = "tcp"
ports = [5432]
[[rule]]
from = "acme-db"
to = "acme-web"
proto = "any"
"#;

const TCP: u8 = 6;
const WEB: [u8; 4] = [198, 51, 100, 10];
const DB: [u8; 4] = [198, 51, 100, 70];
const C: [u8; 4] = [198, 51, 100, 130];

fn tunnel(node: &str, workers: u16, limits: Limits) -> Tunnel {
    let t = Tunnel::new(
        TunnelConfig {
            node: node.into(),
            engine: Engine::default(),
            workers,
            limits,
            esp_port: 4500,
        },
        None,
    );
    t.set_policy(&warden_policy::parse(POLICY, "test.toml").unwrap());
    t
}

fn keys(n: usize, epoch: u64) -> Vec<SaKeys> {
    (0..n)
        .map(|w| {
            derive_sa_keys(
                &[7; 32],
                b"acme-key",
                "acme",
                "node-a",
                "node-b",
                epoch,
                w as u16,
            )
            .unwrap()
        })
        .collect()
}

/// node-a sends acme traffic to node-b.
fn pair(workers: u16) -> (Tunnel, Tunnel) {
    let a = tunnel("node-a", workers, Limits::default());
    let b = tunnel("node-b", 1, Limits::default());
    let base = b
        .add_inbound("node-a", "acme", 1, keys(workers.into(), 1))
        .unwrap();
    a.set_outbound(
        "node-a-is-not-a-peer",
        "acme",
        1,
        base,
        keys(workers.into(), 1),
        Instant::now(),
    )
    .expect_err("unknown peer");
    a.set_outbound(
        "node-b",
        "acme",
        1,
        base,
        keys(workers.into(), 1),
        Instant::now(),
    )
    .unwrap();
    (a, b)
}

fn seal(t: &Tunnel, worker: u16, inner: &[u8]) -> Result<Vec<u8>, Drop> {
    let mut out = vec![0u8; 2048];
    let s = t
        .snapshot()
        .egress(worker, Instant::now(), inner, &mut out)?;
    out.truncate(s.len);
    Ok(out)
}

fn open(t: &Tunnel, packet: &mut [u8]) -> Result<Vec<u8>, Drop> {
    let d = t.snapshot().ingress(0, packet)?;
    Ok(packet[d.start..d.start + d.len].to_vec())
}

#[test]
fn allowed_traffic_round_trips_per_worker() {
    let (a, b) = pair(2);
    for w in 0..2 {
        let inner = ipv4(WEB, DB, TCP, 5432, b"select 1");
        let mut p = seal(&a, w, &inner).unwrap();
        assert_eq!(Inbound::spi_of(&p).unwrap() & 0xff, u32::from(w));
        assert_eq!(open(&b, &mut p).unwrap(), inner);
    }
    let snap = a.snapshot();
    let mut out = vec![0u8; 2048];
    let s = snap
        .egress(0, Instant::now(), &ipv4(WEB, DB, TCP, 5432, b"x"), &mut out)
        .unwrap();
    assert_eq!(s.dest, "192.0.2.2:4500".parse().unwrap());
    let info = b.sa_info();
    assert_eq!(info.len(), 2);
    assert_eq!(info[0].packets, 1);
    assert_eq!(info[0].direction, Direction::Inbound);
}

#[test]
fn egress_checks_policy_source_route_and_sa() {
    let (a, _b) = pair(1);
    let cases = [
        (ipv4(WEB, DB, TCP, 5433, b""), Drop::Policy),
        // The host sends as node-b's tenant: not this node's segment.
        (ipv4(DB, WEB, TCP, 5432, b""), Drop::Source),
        (ipv4([192, 0, 2, 99], DB, TCP, 5432, b""), Drop::Source),
        (vec![0x45, 0, 0], Drop::Malformed),
    ];
    for (inner, reason) in cases {
        assert_eq!(seal(&a, 0, &inner), Err(reason));
        assert!(a.counters().get(reason) >= 1);
    }
    // Allowed, but no SA to node-b for the reverse direction on node-b's side.
    let b = tunnel("node-b", 1, Limits::default());
    assert_eq!(seal(&b, 0, &ipv4(DB, WEB, TCP, 80, b"")), Err(Drop::NoSa));
    // node-b's own segment is not routed into the tunnel.
    let mut one = String::from(POLICY);
    one.push_str("[[rule]]\nfrom = \"acme-web\"\nto = \"acme-web\"\nproto = \"any\"\n");
    a.set_policy(&warden_policy::parse(&one, "t.toml").unwrap());
    assert_eq!(
        seal(&a, 0, &ipv4(WEB, [198, 51, 100, 11], TCP, 1, b"")),
        Err(Drop::NoRoute)
    );
}

#[test]
fn ingress_drops_each_bad_packet_under_its_reason() {
    let (a, b) = pair(1);
    let inner = ipv4(WEB, DB, TCP, 5432, b"payload bytes");
    let good = seal(&a, 0, &inner).unwrap();

    let mut p = good.clone();
    assert!(open(&b, &mut p).is_ok());
    let mut p = good.clone();
    assert_eq!(open(&b, &mut p), Err(Drop::Replay));

    for i in [0usize, 5, 12, 20, good.len() - 1] {
        let mut p = seal(&a, 0, &inner).unwrap();
        p[i] ^= 0x01;
        let want = if i < 4 { Drop::NoSa } else { Drop::Auth };
        assert_eq!(open(&b, &mut p), Err(want), "byte {i}");
    }
    let p = seal(&a, 0, &inner).unwrap();
    assert_eq!(open(&b, &mut p[..p.len() - 1].to_vec()), Err(Drop::Auth));
    assert_eq!(open(&b, &mut p[..10].to_vec()), Err(Drop::Malformed));
    assert_eq!(open(&b, &mut [0u8; 3]), Err(Drop::Malformed));

    // Reordered beyond the window.
    let old = seal(&a, 0, &inner).unwrap();
    for _ in 0..crate::esp::WINDOW + 1 {
        let mut p = seal(&a, 0, &inner).unwrap();
        open(&b, &mut p).unwrap();
    }
    assert_eq!(open(&b, &mut old.clone()), Err(Drop::TooOld));

    for d in [
        Drop::Replay,
        Drop::Auth,
        Drop::Malformed,
        Drop::TooOld,
        Drop::NoSa,
    ] {
        assert!(b.counters().get(d) >= 1, "{d:?} counted");
    }
}

#[test]
fn ingress_refuses_inner_sources_that_are_not_the_peers() {
    // node-b accepts from node-a under acme's SA, but the inner source sits behind node-c.
    let b = tunnel("node-b", 1, Limits::default());
    let base = b.add_inbound("node-a", "acme", 1, keys(1, 1)).unwrap();
    let mut forger = Outbound::new(spi(base, 0), &keys(1, 1)[0], Limits::default());
    let mut p = vec![0u8; 2048];
    let n = forger
        .seal(&ipv4(C, DB, TCP, 5432, b"x"), 4, &mut p)
        .unwrap();
    assert_eq!(open(&b, &mut p[..n].to_vec()), Err(Drop::Source));
    assert_eq!(b.counters().get(Drop::Source), 1);

    // Authentic, from the peer's segment, but not allowed by the policy.
    let n = forger
        .seal(&ipv4(WEB, DB, TCP, 22, b"x"), 4, &mut p)
        .unwrap();
    assert_eq!(open(&b, &mut p[..n].to_vec()), Err(Drop::Policy));

    // The next header must match the inner packet.
    let n = forger
        .seal(&ipv4(WEB, DB, TCP, 5432, b"x"), 41, &mut p)
        .unwrap();
    assert_eq!(open(&b, &mut p[..n].to_vec()), Err(Drop::Malformed));
}

#[test]
fn another_tenants_sa_cannot_carry_acme_traffic() {
    let b = tunnel("node-b", 1, Limits::default());
    let base = b.add_inbound("node-a", "globex", 1, keys(1, 1)).unwrap();
    let mut o = Outbound::new(spi(base, 0), &keys(1, 1)[0], Limits::default());
    let mut p = vec![0u8; 2048];
    let n = o.seal(&ipv4(WEB, DB, TCP, 5432, b"x"), 4, &mut p).unwrap();
    assert_eq!(open(&b, &mut p[..n].to_vec()), Err(Drop::Source));
}

#[test]
fn replies_pass_but_the_answering_side_cannot_open_connections() {
    // acme-web -> acme-db tcp/5432 only; node-b answers.
    let policy = POLICY.replace(
        "[[rule]]\nfrom = \"acme-db\"\nto = \"acme-web\"\nproto = \"any\"\n",
        "",
    );
    let b = tunnel("node-b", 1, Limits::default());
    b.set_policy(&warden_policy::parse(&policy, "t.toml").unwrap());
    let keys_ba =
        |e| vec![derive_sa_keys(&[7; 32], b"acme-key", "acme", "node-b", "node-a", e, 0).unwrap()];
    b.set_outbound("node-b-to-a", "acme", 1, 0x100, keys_ba(1), Instant::now())
        .expect_err("unknown node");
    b.set_outbound("node-a", "acme", 1, 0x100, keys_ba(1), Instant::now())
        .unwrap();
    const SYN_ACK: u8 = 0x12;
    const ACK: u8 = 0x10;
    // The SYN-ACK and data of the server's side of an allowed connection pass.
    for flags in [SYN_ACK, ACK] {
        let reply = ipv4_flags(DB, WEB, TCP, 5432, 40000, flags, b"");
        assert!(seal(&b, 0, &reply).is_ok(), "flags {flags:#x}");
    }
    // A SYN from the server's port is a new connection, which no rule allows.
    let syn = ipv4_flags(DB, WEB, TCP, 5432, 40000, 0x02, b"");
    assert_eq!(seal(&b, 0, &syn), Err(Drop::Policy));
    // A reply from another port is not a reply.
    let other = ipv4_flags(DB, WEB, TCP, 5433, 40000, ACK, b"");
    assert_eq!(seal(&b, 0, &other), Err(Drop::Policy));
}

#[test]
fn rekey_is_make_before_break() {
    let limits = Limits {
        soft_packets: 3,
        hard_packets: 1000,
        ..Limits::default()
    };
    let a = tunnel("node-a", 1, limits);
    let signals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&signals);
    a.on_rekey_wanted(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let b = tunnel("node-b", 1, Limits::default());
    let base1 = b.add_inbound("node-a", "acme", 1, keys(1, 1)).unwrap();
    a.set_outbound("node-b", "acme", 1, base1, keys(1, 1), Instant::now())
        .unwrap();
    let inner = ipv4(WEB, DB, TCP, 5432, b"x");
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        in_flight.push(seal(&a, 0, &inner).unwrap());
    }
    assert_eq!(
        a.rekey_wanted(Instant::now()),
        vec![("node-b".to_string(), "acme".to_string(), 1)]
    );
    assert_eq!(signals.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The receiver installs epoch 2 first; the sender switches; in-flight epoch-1 packets
    // still open until the receiver removes epoch 1.
    let base2 = b.add_inbound("node-a", "acme", 2, keys(1, 2)).unwrap();
    assert_ne!(base1, base2);
    a.set_outbound("node-b", "acme", 2, base2, keys(1, 2), Instant::now())
        .unwrap();
    assert_eq!(a.rekeys(), 1);
    assert_eq!(a.outbound_epoch("node-b", "acme"), Some(2));
    assert!(a.rekey_wanted(Instant::now()).is_empty());
    let mut fresh = seal(&a, 0, &inner).unwrap();
    assert_eq!(Inbound::spi_of(&fresh).unwrap() >> 8, base2 >> 8);
    assert!(open(&b, &mut fresh).is_ok());
    for mut p in in_flight {
        assert!(open(&b, &mut p).is_ok());
    }
    b.remove_inbound(base1);
    let mut late = seal(&a, 0, &inner).unwrap();
    assert!(open(&b, &mut late).is_ok());
}

#[test]
fn hard_limit_stops_the_sa_and_age_asks_for_rekey() {
    let limits = Limits {
        soft_packets: 1,
        hard_packets: 2,
        soft_age: Duration::from_secs(10),
        ..Limits::default()
    };
    let a = tunnel("node-a", 1, limits);
    let start = Instant::now();
    a.set_outbound("node-b", "acme", 1, 0x100, keys(1, 1), start)
        .unwrap();
    assert!(a.rekey_wanted(start).is_empty());
    assert_eq!(a.rekey_wanted(start + Duration::from_secs(11)).len(), 1);
    let inner = ipv4(WEB, DB, TCP, 5432, b"x");
    seal(&a, 0, &inner).unwrap();
    seal(&a, 0, &inner).unwrap();
    assert_eq!(seal(&a, 0, &inner), Err(Drop::Expired));
}

#[test]
fn removing_a_peer_removes_its_sas() {
    let (a, b) = pair(1);
    let mut p = seal(&a, 0, &ipv4(WEB, DB, TCP, 5432, b"x")).unwrap();
    assert_eq!(b.remove_peer("node-a"), 1);
    assert_eq!(open(&b, &mut p), Err(Drop::NoSa));
    assert_eq!(a.remove_peer("node-b"), 1);
    assert_eq!(
        seal(&a, 0, &ipv4(WEB, DB, TCP, 5432, b"x")),
        Err(Drop::NoSa)
    );
    assert!(a.sa_info().is_empty());
}

#[test]
fn bad_control_requests_are_refused() {
    let a = tunnel("node-a", 2, Limits::default());
    assert!(matches!(
        a.set_outbound("node-b", "acme", 1, 0x100, keys(1, 1), Instant::now()),
        Err(TunnelError::Workers { .. })
    ));
    for base in [0u32, 0x1ff, 0x80] {
        assert!(matches!(
            a.set_outbound("node-b", "acme", 1, base, keys(2, 1), Instant::now()),
            Err(TunnelError::SpiBase(_))
        ));
    }
    assert!(matches!(
        a.add_inbound("node-b", "acme", 1, Vec::new()),
        Err(TunnelError::Workers { .. })
    ));
    let fresh = Tunnel::new(a.config().clone(), None);
    assert!(matches!(
        fresh.set_outbound("node-b", "acme", 1, 0x100, keys(2, 1), Instant::now()),
        Err(TunnelError::NoPolicy)
    ));
    // No policy: everything drops.
    assert_eq!(
        seal(&fresh, 0, &ipv4(WEB, DB, TCP, 5432, b"")),
        Err(Drop::Policy)
    );
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn key_log_has_one_line_per_sa() {
    let log = Shared::default();
    let a = Tunnel::new(
        TunnelConfig {
            node: "node-a".into(),
            engine: Engine::default(),
            workers: 2,
            limits: Limits::default(),
            esp_port: 4500,
        },
        Some(Box::new(log.clone())),
    );
    a.set_policy(&warden_policy::parse(POLICY, "t.toml").unwrap());
    a.set_outbound("node-b", "acme", 1, 0x300, keys(2, 1), Instant::now())
        .unwrap();
    let base = a.add_inbound("node-b", "acme", 1, keys(1, 1)).unwrap();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("\"IPv4\",\"192.0.2.1\",\"192.0.2.2\",\"0x00000300\""));
    assert!(lines[1].contains("\"0x00000301\""));
    assert!(lines[2].starts_with(&format!(
        "\"IPv4\",\"192.0.2.2\",\"192.0.2.1\",\"{base:#010x}\""
    )));
}

/// Both tunnels with `extra` (limits) appended to the policy.
fn pair_with(extra: &str) -> (Tunnel, Tunnel) {
    let (a, b) = pair(1);
    let p = warden_policy::parse(&format!("{POLICY}\n{extra}"), "test.toml").unwrap();
    a.set_policy(&p);
    b.set_policy(&p);
    (a, b)
}

#[test]
fn a_tenant_over_its_packet_rate_is_dropped_before_encryption_and_counted() {
    let (a, b) =
        pair_with("[[limit]]\ntenant = \"acme\"\npackets_per_second = 10\nburst_packets = 3\n");
    let inner = ipv4(WEB, DB, TCP, 5432, b"select 1");
    let results: Vec<_> = (0..6).map(|_| seal(&a, 0, &inner)).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(results[5].as_ref().unwrap_err(), &Drop::RateLimit);
    assert_eq!(a.counters().get(Drop::RateLimit), 3);
    // Nothing over the limit was sealed: the SA's sequence numbers moved by 3 only.
    let sent: u64 = a
        .sa_info()
        .iter()
        .filter(|i| i.direction == Direction::Outbound)
        .map(|i| i.packets)
        .sum();
    assert_eq!(sent, 3);
    let acme = &a.tenant_traffic()[0];
    assert_eq!(acme.tenant, "acme");
    assert_eq!(
        (acme.packets_out, acme.bytes_out),
        (3, 3 * inner.len() as u64)
    );
    assert_eq!(acme.dropped[0], (limits::Over::Rate, 3));
    // The receiver counts what it accepted for the tenant.
    let mut p = results[0].clone().unwrap();
    open(&b, &mut p).unwrap();
    assert_eq!(b.tenant_traffic()[0].packets_in, 1);
}

#[test]
fn a_new_connection_flood_is_cut_while_established_traffic_flows() {
    let (a, _b) = pair_with(
        "[[limit]]\nfrom = \"acme-web\"\nto = \"acme-db\"\nnew_connections_per_second = 1\nburst_connections = 2\n",
    );
    let syn = ipv4_flags(WEB, DB, TCP, 40000, 5432, 0x02, b"");
    assert!(seal(&a, 0, &syn).is_ok());
    assert!(seal(&a, 0, &syn).is_ok());
    assert_eq!(seal(&a, 0, &syn), Err(Drop::ConnectionLimit));
    let ack = ipv4_flags(WEB, DB, TCP, 40000, 5432, 0x10, b"data");
    for _ in 0..100 {
        assert!(seal(&a, 0, &ack).is_ok());
    }
}

#[test]
fn a_mark_limit_sends_over_limit_packets_with_dscp_lower_effort() {
    let (a, b) = pair_with(
        "[[limit]]\ntenant = \"acme\"\npackets_per_second = 10\nburst_packets = 1\naction = \"mark\"\n",
    );
    let inner = ipv4(WEB, DB, TCP, 5432, b"select 1");
    let mut first = seal(&a, 0, &inner).unwrap();
    let mut second = seal(&a, 0, &inner).unwrap();
    let first = open(&b, &mut first).unwrap();
    let second = open(&b, &mut second).unwrap();
    assert_eq!(first, inner, "within the limit: untouched");
    assert_eq!(second[1] >> 2, limits::DSCP_LE, "over the limit: marked");
    assert_eq!(second[20..], inner[20..], "only the header changed");
    let acme = &a.tenant_traffic()[0];
    assert_eq!(acme.marked[0], (limits::Over::Rate, 1));
    assert_eq!(acme.packets_out, 2);
}

#[test]
fn limits_and_counters_survive_sa_changes_and_counters_survive_policy_changes() {
    let (a, _b) =
        pair_with("[[limit]]\ntenant = \"acme\"\npackets_per_second = 1\nburst_packets = 2\n");
    let inner = ipv4(WEB, DB, TCP, 5432, b"x");
    assert!(seal(&a, 0, &inner).is_ok());
    // A rekey republishes the snapshot: the bucket is the same one.
    a.set_outbound("node-b", "acme", 2, 1 << 8, keys(1, 2), Instant::now())
        .unwrap();
    assert!(seal(&a, 0, &inner).is_ok());
    assert_eq!(seal(&a, 0, &inner), Err(Drop::RateLimit));
    // A new policy without the limit: traffic flows, and acme's counters carry on.
    a.set_policy(&warden_policy::parse(POLICY, "test.toml").unwrap());
    assert!(seal(&a, 0, &inner).is_ok());
    assert_eq!(a.tenant_traffic()[0].packets_out, 3);
}
