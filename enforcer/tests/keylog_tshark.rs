//! The insecure SA key log against real tshark: Warden seals packets, the test writes them as
//! a capture of the wire (outer IPv4 + UDP to port 4500 + ESP), and tshark, given nothing but
//! the key log as its `esp_sa` table, must show every inner packet in clear. With a wrong key
//! it must not.
//!
//! Needs `tshark` on PATH (scripts/deps.sh installs it). Skips with a message only when it is
//! missing, the process is not root and `CI` is unset; otherwise a missing tshark fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use warden_enforcer::esp::sa::NEXT_IPV4;
use warden_enforcer::esp::{Engine, Limits, Outbound, SaKeys};
use warden_enforcer::tunnel::{derive_sa_keys, spi, Tunnel, TunnelConfig};

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
cidrs = ["203.0.113.0/26"]
node = "node-a"
[[segment]]
name = "acme-b"
tenant = "acme"
cidrs = ["203.0.113.64/26"]
node = "node-b"
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "tcp"
ports = [5432]
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "udp"
ports = [40001]
"#;

const MARKER: &[u8] = b"warden-keylog-marker";
const WIRE_A: [u8; 4] = [198, 51, 100, 1];
const WIRE_B: [u8; 4] = [198, 51, 100, 2];
const HOST_A: [u8; 4] = [203, 0, 113, 10];
const HOST_B: [u8; 4] = [203, 0, 113, 70];
const TCP: u8 = 6;
const UDP: u8 = 17;
const WORKERS: u16 = 2;

/// Whether tshark is on PATH.
fn tshark_available() -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        use std::os::unix::fs::PermissionsExt;
        dir.join("tshark")
            .metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The repository's skip policy (as `warden_testkit::skip_without_swtpm`): skip only when
/// tshark is missing, the process is not root and `CI` is unset.
fn skip_without_tshark(test: &str) -> bool {
    if tshark_available() {
        return false;
    }
    if std::env::var_os("CI").is_some() || warden_testkit::running_as_root() {
        panic!(
            "{test}: tshark is not on PATH (scripts/deps.sh installs it); it is required when \
             CI is set or as root"
        );
    }
    eprintln!(
        "SKIPPED {test}: needs tshark on PATH (Debian: apt install tshark); never skipped when \
         CI is set or as root"
    );
    true
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "warden-keylog-tshark-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(worker: u16) -> SaKeys {
    derive_sa_keys(
        &[7; 32],
        b"acme-tenant-key",
        "acme",
        "node-a",
        "node-b",
        1,
        worker,
    )
    .unwrap()
}

fn all_keys() -> Vec<SaKeys> {
    (0..WORKERS).map(keys).collect()
}

fn tunnel(node: &str, workers: u16, key_log: &Path) -> Tunnel {
    let log = File::create(key_log).unwrap();
    let t = Tunnel::new(
        TunnelConfig {
            node: node.into(),
            engine: Engine::default(),
            workers,
            limits: Limits::default(),
            esp_port: 4500,
        },
        Some(Box::new(log)),
    );
    t.set_policy(&warden_policy::parse(POLICY, "keylog.toml").unwrap());
    t
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header for `payload_len` bytes of protocol `proto`, with its checksum.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&u16::try_from(20 + payload_len).unwrap().to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An inner IPv4 packet from tenant host A to tenant host B: TCP (PSH|ACK, 20-byte header)
/// or UDP to `dport`, carrying `payload`.
fn inner(proto: u8, sport: u16, dport: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes()); // seq
        l4.extend_from_slice(&1u32.to_be_bytes()); // ack
        l4.extend_from_slice(&[0x50, 0x18]); // data offset 5, PSH|ACK
        l4.extend_from_slice(&64240u16.to_be_bytes()); // window
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum (unchecked), urgent pointer
    } else {
        l4.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let mut p = ipv4_header(HOST_A, HOST_B, proto, id, l4.len());
    p.extend_from_slice(&l4);
    p
}

/// One captured packet: the outer IPv4 + UDP headers Warden's I/O puts around the ESP bytes.
fn wire_packet(dest: SocketAddr, flow_hash: u32, id: u16, esp: &[u8]) -> Vec<u8> {
    let IpAddr::V4(dst) = dest.ip() else {
        panic!("IPv4 wire expected, got {dest}")
    };
    let mut udp = Vec::new();
    let sport = 49152 | (flow_hash & 0x3fff) as u16;
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dest.port().to_be_bytes());
    udp.extend_from_slice(&u16::try_from(8 + esp.len()).unwrap().to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (RFC 768, allowed by RFC 3948 §3.1.1)
    udp.extend_from_slice(esp);
    let mut p = ipv4_header(WIRE_A, dst.octets(), UDP, id, udp.len());
    p.extend_from_slice(&udp);
    p
}

/// A classic pcap file (microsecond timestamps) with linktype 101, LINKTYPE_RAW (IPv4/IPv6).
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    f.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    f.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    f.extend_from_slice(&101u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        let len = u32::try_from(p.len()).unwrap();
        f.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        f.extend_from_slice(&u32::try_from(i * 1000).unwrap().to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(p);
    }
    f
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One frame as tshark decoded it (`-T fields`, all occurrences, comma-separated).
#[derive(Debug)]
struct Decoded {
    spi: String,
    seq: String,
    ip_src: String,
    ip_dst: String,
    payloads: String,
}

/// Run tshark on `capture` with `config` as its personal configuration directory (holding
/// the `esp_sa` table): the command docs/dataplane.md shows. Fails on any complaint about the
/// table.
fn tshark(config: &Path, capture: &Path) -> Vec<Decoded> {
    let out = Command::new("tshark")
        .env("WIRESHARK_CONFIG_DIR", config)
        .arg("-r")
        .arg(capture)
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"])
        .args([
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ])
        .args(["-e", "udp.payload", "-e", "tcp.payload"])
        .output()
        .expect("run tshark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    assert!(
        !stderr.contains("UAT") && !stderr.contains("esp_sa") && !stderr.contains("Error"),
        "tshark did not take the key log as it is: {stderr}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 6, "unexpected tshark line {line:?}");
            Decoded {
                spi: f[0].to_owned(),
                seq: f[1].to_owned(),
                ip_src: f[2].to_owned(),
                ip_dst: f[3].to_owned(),
                payloads: format!("{},{}", f[4], f[5]),
            }
        })
        .collect()
}

/// The key log with one hex digit of every key changed.
fn wrong_keys(log: &str) -> String {
    log.lines()
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            let key = fields[5].trim_matches('"');
            let (head, last) = key.split_at(key.len() - 1);
            let flipped = if last == "0" { "1" } else { "0" };
            let mut f: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
            f[5] = format!("\"{head}{flipped}\"");
            f.join(",") + "\n"
        })
        .collect()
}

#[test]
fn tshark_decrypts_a_capture_with_the_key_log() {
    if skip_without_tshark("tshark_decrypts_a_capture_with_the_key_log") {
        return;
    }
    let dir = TempDir::new();
    let (log_a, log_b) = (dir.0.join("keys-a.txt"), dir.0.join("keys-b.txt"));

    // node-b installs the inbound SAs first and hands node-a the SPI base (make before break).
    let a = tunnel("node-a", WORKERS, &log_a);
    let b = tunnel("node-b", 1, &log_b);
    let base = b.add_inbound("node-a", "acme", 1, all_keys()).unwrap();
    a.set_outbound("node-b", "acme", 1, base, all_keys(), Instant::now())
        .unwrap();

    let key_log = std::fs::read_to_string(&log_a).unwrap();
    assert_eq!(
        key_log,
        std::fs::read_to_string(&log_b).unwrap(),
        "both ends log the same SAs"
    );
    assert_eq!(key_log.lines().count(), usize::from(WORKERS));

    // (inner packet, worker) sealed by the tunnel, on both workers, TCP and UDP.
    let mut sent = Vec::new();
    let mut wire = Vec::new();
    let snap = a.snapshot();
    let flows = [
        (TCP, 40000, 5432, 0u16),
        (UDP, 40001, 40001, 0),
        (TCP, 40002, 5432, 1),
        (UDP, 40003, 40001, 1),
        (TCP, 40004, 5432, 0),
    ];
    for (i, (proto, sport, dport, worker)) in flows.into_iter().enumerate() {
        let id = u16::try_from(i).unwrap();
        let mut payload = format!("packet {i}: ").into_bytes();
        payload.extend_from_slice(MARKER);
        let packet = inner(proto, sport, dport, id, &payload);
        let mut esp = vec![0u8; 2048];
        let sealed = snap
            .egress(worker, Instant::now(), &packet, &mut esp)
            .unwrap();
        esp.truncate(sealed.len);
        assert_eq!(sealed.dest, SocketAddr::from((WIRE_B, 4500)));
        wire.push(wire_packet(sealed.dest, sealed.flow_hash, id, &esp));
        sent.push((esp, spi(base, worker), packet));
    }

    // A sequence number above 2^32: the tunnel's SAs start at 1 and offer no way to move
    // the counter, so this one is sealed by an `esp::Outbound` with worker 0's keys and SPI
    // (the same SA the key log describes), as if it had carried 2^32 + 6 packets.
    let high = (1u64 << 32) + 7;
    let mut out = Outbound::new(spi(base, 0), &keys(0), Limits::default()).with_sequence(high - 1);
    let mut payload = b"high sequence: ".to_vec();
    payload.extend_from_slice(MARKER);
    let packet = inner(UDP, 40005, 40001, 99, &payload);
    let mut esp = vec![0u8; 2048];
    let len = out.seal(&packet, NEXT_IPV4, &mut esp).unwrap();
    esp.truncate(len);
    assert_eq!(
        &esp[8..16],
        &high.to_be_bytes(),
        "the IV is the 64-bit sequence number"
    );
    wire.push(wire_packet(SocketAddr::from((WIRE_B, 4500)), 0, 99, &esp));
    sent.push((esp, spi(base, 0), packet));

    // Each is a genuine Warden packet: node-b accepts it.
    for (esp, _, packet) in &sent {
        let mut p = esp.clone();
        let d = b.snapshot().ingress(0, &mut p).unwrap();
        assert_eq!(&p[d.start..d.start + d.len], packet.as_slice());
    }

    let capture = dir.0.join("wire.pcap");
    let bytes = pcap(&wire);
    assert!(
        !contains(&bytes, MARKER),
        "the capture carries the marker in clear"
    );
    std::fs::write(&capture, &bytes).unwrap();
    let marker_hex = hex::encode(MARKER);

    // With the key log as the `esp_sa` table, tshark shows every inner packet.
    let config = dir.0.join("wireshark");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("esp_sa"), &key_log).unwrap();
    let decoded = tshark(&config, &capture);
    assert_eq!(decoded.len(), sent.len(), "{decoded:?}");
    for (d, (esp, spi, packet)) in decoded.iter().zip(&sent) {
        let seq = u32::from_be_bytes(esp[4..8].try_into().unwrap());
        assert_eq!(d.spi, format!("{spi:#010x}"), "{d:?}");
        assert_eq!(d.seq, seq.to_string(), "{d:?}");
        assert_eq!(
            d.ip_src, "198.51.100.1,203.0.113.10",
            "outer and inner source: {d:?}"
        );
        assert_eq!(
            d.ip_dst, "198.51.100.2,203.0.113.70",
            "outer and inner destination: {d:?}"
        );
        let payload = &packet[if packet[9] == TCP { 40 } else { 28 }..];
        assert!(
            d.payloads.contains(&hex::encode(payload)) && d.payloads.contains(&marker_hex),
            "the inner payload is not visible: {d:?}"
        );
    }

    // With a wrong key the ESP headers are still there, the inner packets are not.
    std::fs::write(config.join("esp_sa"), wrong_keys(&key_log)).unwrap();
    let decoded = tshark(&config, &capture);
    assert_eq!(decoded.len(), sent.len(), "{decoded:?}");
    for (d, (_, spi, _)) in decoded.iter().zip(&sent) {
        assert_eq!(d.spi, format!("{spi:#010x}"), "{d:?}");
        assert_eq!(d.ip_src, "198.51.100.1", "no inner packet: {d:?}");
        assert!(
            !d.payloads.contains(&marker_hex),
            "decrypted with a wrong key: {d:?}"
        );
    }
}
