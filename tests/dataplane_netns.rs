//! The data path on real kernel parts, without the control channel: two network namespaces
//! stand in for two nodes joined by a veth "wire"; in each, the data plane (TUN with
//! offloads, wire sockets with GSO/GRO, one worker per queue) runs in this process, with SAs
//! installed directly from keys derived as the control channel derives them. Real TCP and UDP
//! flows between tenant addresses cross it; tcpdump watches the wire; crafted ESP packets are
//! injected on the wire to check every drop reason. The attested control channel that
//! installs SAs in production is tested in tests/peering.rs and tests/tunnel_e2e.rs.
//!
//! ```text
//!  ns A: 203.0.113.1 (acme), .33 (globex) on wtun ── wire 198.51.100.1 ═══ 198.51.100.2 wire ── wtun: 203.0.113.17 (acme), .49 (globex) :ns B
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::capture::{tcpdump_or_skip, Capture};
use warden::config::DataplaneConfig;
use warden::dataplane_io::Io;
use warden_enforcer::esp::{Engine, Limits, Outbound, SaKeys};
use warden_enforcer::tunnel::{
    derive_sa_keys, spi, Direction, Drop as Reason, Tunnel, TunnelConfig,
};
use warden_testkit::{skip_without_netns, veth, Netns};

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
[[tenant]]
id = "globex"
[[segment]]
name = "acme-a"
tenant = "acme"
cidrs = ["203.0.113.0/28"]
node = "node-a"
[[segment]]
name = "acme-b"
tenant = "acme"
cidrs = ["203.0.113.16/28"]
node = "node-b"
[[segment]]
name = "globex-a"
tenant = "globex"
cidrs = ["203.0.113.32/28"]
node = "node-a"
[[segment]]
name = "globex-b"
tenant = "globex"
cidrs = ["203.0.113.48/28"]
node = "node-b"
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "tcp"
ports = [5001]
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "udp"
ports = [5002]
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "icmp"
[[rule]]
from = "globex-a"
to = "globex-b"
proto = "tcp"
ports = [5001]
"#;

const WORKERS: u16 = 2;
const SECRET: [u8; 32] = [0x5a; 32];
const MARKER: &[u8] = b"warden-dataplane-marker";

fn tenant_key(tenant: &str) -> Vec<u8> {
    format!("{tenant}-east-west-key").into_bytes()
}

fn keys(tenant: &str, from: &str, to: &str, epoch: u64, workers: u16) -> Vec<SaKeys> {
    (0..workers)
        .map(|w| derive_sa_keys(&SECRET, &tenant_key(tenant), tenant, from, to, epoch, w).unwrap())
        .collect()
}

fn config() -> DataplaneConfig {
    DataplaneConfig {
        tun: "wtun".into(),
        mtu: 1420,
        engine: Engine::default(),
        workers: WORKERS,
        offloads: true,
        rekey_after_packets: Limits::default().soft_packets,
        rekey_after_bytes: Limits::default().soft_bytes,
        rekey_after_secs: Limits::default().soft_age.as_secs(),
        insecure_sa_key_log: None,
    }
}

struct Node {
    ns: Netns,
    tunnel: Arc<Tunnel>,
    io: Option<Io>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            io.stop();
        }
    }
}

struct Cluster {
    a: Node,
    b: Node,
}

fn node(ns: Netns, id: &str, local: &[&str], remote: &[&str]) -> Node {
    let tunnel = Arc::new(Tunnel::new(
        TunnelConfig {
            node: id.into(),
            engine: Engine::default(),
            workers: WORKERS,
            limits: Limits::default(),
            esp_port: 4500,
        },
        None,
    ));
    tunnel.set_policy(&warden_policy::parse(POLICY, "policy.toml").unwrap());
    let t = Arc::clone(&tunnel);
    let io = ns.run(move || Io::start(&config(), 4500, t)).unwrap();
    for addr in local {
        ns.ip(&["addr", "add", addr, "dev", "wtun"]).unwrap();
    }
    for net in remote {
        ns.ip(&["route", "add", net, "dev", "wtun"]).unwrap();
    }
    Node {
        ns,
        tunnel,
        io: Some(io),
    }
}

/// Install the SAs of `tenant` in both directions, epoch `epoch`; returns (a→b base, b→a base).
fn install(c: &Cluster, tenant: &str, epoch: u64) -> (u32, u32) {
    let now = Instant::now();
    let ab =
        c.b.tunnel
            .add_inbound(
                "node-a",
                tenant,
                epoch,
                keys(tenant, "node-a", "node-b", epoch, WORKERS),
            )
            .unwrap();
    c.a.tunnel
        .set_outbound(
            "node-b",
            tenant,
            epoch,
            ab,
            keys(tenant, "node-a", "node-b", epoch, WORKERS),
            now,
        )
        .unwrap();
    let ba =
        c.a.tunnel
            .add_inbound(
                "node-b",
                tenant,
                epoch,
                keys(tenant, "node-b", "node-a", epoch, WORKERS),
            )
            .unwrap();
    c.b.tunnel
        .set_outbound(
            "node-a",
            tenant,
            epoch,
            ba,
            keys(tenant, "node-b", "node-a", epoch, WORKERS),
            now,
        )
        .unwrap();
    (ab, ba)
}

fn cluster(test: &str) -> Option<Cluster> {
    if skip_without_netns(test) {
        return None;
    }
    let (na, nb) = (Netns::new().unwrap(), Netns::new().unwrap());
    veth(
        &na,
        "wire",
        &["198.51.100.1/24"],
        &nb,
        "wire",
        &["198.51.100.2/24"],
    )
    .unwrap();
    let a = node(
        na,
        "node-a",
        &["203.0.113.1/32", "203.0.113.33/32"],
        &["203.0.113.16/28", "203.0.113.48/28"],
    );
    let b = node(
        nb,
        "node-b",
        &["203.0.113.17/32", "203.0.113.49/32"],
        &["203.0.113.0/28", "203.0.113.32/28"],
    );
    let c = Cluster { a, b };
    install(&c, "acme", 1);
    install(&c, "globex", 1);
    Some(c)
}

/// A deterministic payload of `len` bytes with the marker every 4 KiB.
fn payload(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in v.chunks_mut(4096) {
        let n = MARKER.len().min(chunk.len());
        chunk[..n].copy_from_slice(&MARKER[..n]);
    }
    v
}

/// Send `data` over TCP from `src` (in A) to `dst` (in B); returns what B received.
fn tcp_transfer(c: &Cluster, src: &str, dst: &str, data: &[u8]) -> Vec<u8> {
    let dst: SocketAddr = dst.parse().unwrap();
    let listener = c.b.ns.run(|| TcpListener::bind(dst)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    c.a.ns.run(|| {
        let sock = nix_tcp_connect(src, dst);
        let mut s = sock;
        s.write_all(data).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    server.join().unwrap()
}

/// A TCP connection from `src` to `dst` (std cannot bind before connect; a short-lived
/// listener on `src` reserves nothing, so use socket2-free binding via a connect from a
/// bound std socket through `TcpStream::connect` after setting the route's preferred source).
fn nix_tcp_connect(src: SocketAddr, dst: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let to_in = |a: SocketAddr| match a {
        SocketAddr::V4(v) => SockaddrIn::from(v),
        SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &to_in(src)).unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &to_in(dst)).unwrap();
    let s = TcpStream::from(fd);
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// The IPv4 packets of an Ethernet pcap: (protocol, src port, dst port) per packet.
fn ipv4_packets(pcap: &[u8]) -> Vec<(u8, u16, u16)> {
    assert!(pcap.len() >= 24, "not a pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let proto = ip[9];
        let (sp, dp) = if ip.len() >= ihl + 4 {
            (
                u16::from_be_bytes([ip[ihl], ip[ihl + 1]]),
                u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]),
            )
        } else {
            (0, 0)
        };
        out.push((proto, sp, dp));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn tcp_and_udp_cross_the_tunnel_and_the_wire_carries_only_esp() {
    let test = "tcp_and_udp_cross_the_tunnel_and_the_wire_carries_only_esp";
    let Some(c) = cluster(test) else { return };
    if !tcpdump_or_skip(test) {
        return;
    }
    let capture = Capture::start(&c.b.ns);

    let data = payload(8 << 20);
    let got = tcp_transfer(&c, "203.0.113.1", "203.0.113.17:5001", &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the TCP stream arrived changed");

    // UDP, both ways (the reply is allowed as the reverse of an allowed flow).
    let server = c.b.ns.run(|| UdpSocket::bind("203.0.113.17:5002")).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = c.a.ns.run(|| UdpSocket::bind("203.0.113.1:0")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..20u8 {
        let msg = [MARKER, &[i]].concat();
        client.send_to(&msg, "203.0.113.17:5002").unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &msg[..]);
        server.send_to(&buf[..n], from).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &msg[..]);
    }

    let pcap = capture.stop();
    let packets = ipv4_packets(&pcap);
    assert!(
        packets.len() > 100,
        "the capture saw {} packets",
        packets.len()
    );
    for (proto, sp, dp) in &packets {
        assert!(
            *proto == 17 && (*sp == 4500 || *dp == 4500),
            "a packet on the wire is not ESP-in-UDP: proto {proto}, ports {sp} -> {dp}"
        );
    }
    assert!(
        !contains(&pcap, MARKER),
        "a payload byte sequence is visible on the wire"
    );

    let sas = c.b.tunnel.sa_info();
    let inbound: u64 = sas
        .iter()
        .filter(|s| s.tenant == "acme" && s.direction.as_str() == "in")
        .map(|s| s.bytes)
        .sum();
    assert!(inbound >= data.len() as u64, "inbound SA bytes {inbound}");
    for t in [&c.a.tunnel, &c.b.tunnel] {
        for d in Reason::ALL {
            assert_eq!(t.counters().get(d), 0, "unexpected drops: {d:?}");
        }
    }
}

#[test]
fn policy_denied_flows_never_leave_the_node() {
    let Some(c) = cluster("policy_denied_flows_never_leave_the_node") else {
        return;
    };
    let before = c.a.tunnel.counters().get(Reason::Policy);
    // A port no rule allows, and a tenant crossing no grant allows.
    for (src, dst) in [
        ("203.0.113.1:0", "203.0.113.17:5003"),
        ("203.0.113.1:0", "203.0.113.49:5001"),
        ("203.0.113.33:0", "203.0.113.17:5001"),
    ] {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        c.a.ns.run(|| {
            let s = UdpSocket::bind(src).unwrap();
            s.send_to(b"denied", dst).unwrap();
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.a.tunnel.counters().get(Reason::Policy) < before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.a.tunnel.counters().get(Reason::Policy), before + 3);
    assert!(c.b.tunnel.sa_info().iter().all(|s| s.packets == 0));
}

/// A sender of hand-made ESP on the wire, under an SA that node B has installed.
struct Injector {
    sa: Outbound,
    sock: UdpSocket,
}

impl Injector {
    fn new(c: &Cluster, seq: u64) -> Injector {
        let k = keys("acme", "node-a", "node-b", 99, 1);
        let base = c.b.tunnel.add_inbound("node-a", "acme", 99, k).unwrap();
        let k = keys("acme", "node-a", "node-b", 99, 1);
        let sa = Outbound::new(spi(base, 0), &k[0], Limits::default()).with_sequence(seq);
        let sock = c.a.ns.run(|| UdpSocket::bind("198.51.100.1:0")).unwrap();
        Injector { sa, sock }
    }

    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; Outbound::sealed_len(inner.len())];
        let n = self.sa.seal(inner, 4, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn send(&self, packet: &[u8]) {
        self.sock.send_to(packet, "198.51.100.2:4500").unwrap();
    }
}

/// An IPv4/UDP packet (checksum 0: not checked on the way to the classifier).
fn udp(src: [u8; 4], dst: [u8; 4], dport: u16, body: &[u8]) -> Vec<u8> {
    let total = 28 + body.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(body);
    let sum = ip_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn wait_count(t: &Tunnel, d: Reason, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = || t.counters().get_dir(Direction::Inbound, d);
    while count() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    count()
}

#[test]
fn bad_wire_packets_are_dropped_and_counted_by_reason() {
    let Some(c) = cluster("bad_wire_packets_are_dropped_and_counted_by_reason") else {
        return;
    };
    let server = c.b.ns.run(|| UdpSocket::bind("203.0.113.17:5002")).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut inj = Injector::new(&c, 10_000);
    let good = udp([203, 0, 113, 1], [203, 0, 113, 17], 5002, b"genuine");
    let first = inj.seal(&good);
    inj.send(&first);
    let mut buf = [0u8; 64];
    let (n, _) = server
        .recv_from(&mut buf)
        .expect("the genuine packet arrives");
    assert_eq!(&buf[..n], b"genuine");

    let t = &c.b.tunnel;
    // Replayed.
    inj.send(&first);
    assert_eq!(wait_count(t, Reason::Replay, 1), 1);
    // Bit-flipped (in the ciphertext).
    let mut flipped = inj.seal(&good);
    flipped[30] ^= 0x40;
    inj.send(&flipped);
    assert_eq!(wait_count(t, Reason::Auth, 1), 1);
    // Truncated: without the last ICV byte, and to a bare header.
    let p = inj.seal(&good);
    inj.send(&p[..p.len() - 1]);
    assert_eq!(wait_count(t, Reason::Auth, 2), 2);
    inj.send(&p[..12]);
    assert_eq!(wait_count(t, Reason::Malformed, 1), 1);
    // Reordered beyond the window: an old packet after 3000 newer ones.
    let mut old_sa = Injector {
        sa: Outbound::new(
            spi(
                u32::from_be_bytes(first[..4].try_into().unwrap()) & !0xff,
                0,
            ),
            &keys("acme", "node-a", "node-b", 99, 1)[0],
            Limits::default(),
        )
        .with_sequence(20_000),
        sock: c.a.ns.run(|| UdpSocket::bind("198.51.100.1:0")).unwrap(),
    };
    let old = old_sa.seal(&good);
    inj.sa = Outbound::new(
        spi(
            u32::from_be_bytes(first[..4].try_into().unwrap()) & !0xff,
            0,
        ),
        &keys("acme", "node-a", "node-b", 99, 1)[0],
        Limits::default(),
    )
    .with_sequence(23_000);
    let newer = inj.seal(&good);
    inj.send(&newer);
    server
        .recv_from(&mut buf)
        .expect("the newer packet arrives");
    old_sa.send(&old);
    assert_eq!(wait_count(t, Reason::TooOld, 1), 1);
    // An inner source that is not the peer's: node B's own segment, and no segment at all.
    for src in [[203, 0, 113, 18], [192, 0, 2, 9]] {
        let spoofed = inj.seal(&udp(src, [203, 0, 113, 17], 5002, b"spoofed"));
        inj.send(&spoofed);
    }
    assert_eq!(wait_count(t, Reason::Source, 2), 2);
    // An unknown SPI.
    let mut unknown = inj.seal(&good);
    unknown[..4].copy_from_slice(&0x7fff_ff00u32.to_be_bytes());
    inj.send(&unknown);
    assert_eq!(wait_count(t, Reason::NoSa, 1), 1);
    // Nothing bad reached the tenant's socket.
    server
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a dropped packet was delivered"
    );
}

#[test]
fn rekey_during_a_transfer_loses_nothing() {
    let Some(c) = cluster("rekey_during_a_transfer_loses_nothing") else {
        return;
    };
    let data = payload(64 << 20);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (got, rekeys) = std::thread::scope(|s| {
        let rekeyer = s.spawn(|| {
            let mut epoch = 1;
            let mut bases = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && epoch < 40 {
                std::thread::sleep(Duration::from_millis(100));
                epoch += 1;
                bases.push(install(&c, "acme", epoch));
                // Make before break: the epoch before last goes once the new one carries.
                if bases.len() > 2 {
                    let (ab, ba) = bases.remove(0);
                    c.b.tunnel.remove_inbound(ab);
                    c.a.tunnel.remove_inbound(ba);
                }
            }
            epoch - 1
        });
        let got = tcp_transfer(&c, "203.0.113.1", "203.0.113.17:5001", &data);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (got, rekeyer.join().unwrap())
    });
    assert!(
        rekeys >= 2,
        "only {rekeys} rekeys happened during the transfer"
    );
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the stream changed across rekeys");
    assert!(c.a.tunnel.rekeys() >= rekeys);
}
