//! The whole appliance end to end, with the real parts: two network namespaces stand in for
//! two nodes joined by a veth "wire"; in each, swtpm and wardend run with `[dataplane]` (a TUN
//! device, two workers) and `[peering]` (the attested TLS 1.3 control channel that keys the
//! ESP SAs). The nodes attest each other against the reference values in the policy, key the
//! tenant's SAs from its east-west key, and real TCP and UDP between tenant addresses cross
//! the tunnel while tcpdump sees only ESP-in-UDP (and the TLS control channel) on the wire. A
//! peer whose measured state does not match the policy gets no SA and no traffic; a killed
//! peer loses its SAs and gets traffic back after a restart without any manual step but the
//! host's own TUN addresses.
//!
//! ```text
//!  ns A: wardend node-a, swtpm                                  ns B: wardend node-b, swtpm
//!   203.0.113.1/32 on warden0 ── wire 198.51.100.1 ═══ 198.51.100.2 wire ── warden0: 203.0.113.17/32
//!   route 203.0.113.16/28 dev warden0      ESP-in-UDP :4500,      route 203.0.113.0/28 dev warden0
//!                                           control TLS :4501 (node-a dials)
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use cli::text;
use support::capture::{tcpdump_or_skip, Capture};
use support::{tools_or_skip, Node};
use warden::peering::{PeerState, PeerStatus, PeersResponse, TenantSas};
use warden_attest::sealed::PolicyAuthority;
use warden_testkit::{skip_without_netns, veth, Netns};

const TENANT: &str = "acme";
/// The tenant's east-west key, provisioned on both appliances.
const EAST_WEST: &[u8] = b"acme east-west root key, 32 byte";
/// Timers of the control channel: seconds.
const KEEPALIVE: f64 = 0.5;
const PEER_TIMEOUT: f64 = 3.0;
const REATTEST: f64 = 2.0;
/// The control channel's port; the same in both namespaces.
const PEER_PORT: u16 = 4501;
const ESP_PORT: u16 = 4500;
const WORKERS: usize = 2;
const TUN: &str = "warden0";
/// Appears every 4 KiB of the tenant payload; must never appear on the wire.
const MARKER: &[u8] = b"warden-tunnel-e2e-payload-marker";
/// How long a connection attempt that must fail may take: past Linux's first SYN
/// retransmission (1 s), and far longer than a round trip through both data planes.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// With `[policy] wire_interface = "wire"`, nftables admits on the wire only ESP-in-UDP
/// between the policy's appliances, the appliance's own TCP services, and connections to the
/// other appliances' services (the control channel): the deployment as documented.
const POLICY_SECTION: &str = "\n[policy]\nnftables = true\nwire_interface = \"wire\"\n";

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// wardctl run inside the network namespace `ns` (where the node's API listens).
fn wardctl_in(ns: &Netns, args: &[&str]) -> Output {
    warden_testkit::command_in(ns.name())
        .arg(env!("CARGO_BIN_EXE_wardctl"))
        .args(args)
        .output()
        .expect("running wardctl")
}

/// `[keys]`: a PCR-policy authority and its signed policy for a fresh swtpm (PCRs 0 and 7 at
/// zero), shared by both nodes.
fn keys_section(dir: &Path) -> String {
    let (authority, _) = PolicyAuthority::generate().unwrap();
    std::fs::write(
        dir.join("authority.hex"),
        hex::encode(authority.public_sec1()),
    )
    .unwrap();
    let map: BTreeMap<u8, Vec<u8>> = [(0u8, vec![0u8; 32]), (7u8, vec![0u8; 32])]
        .into_iter()
        .collect();
    let signed = authority.approve_pcr_values(&map, b"").unwrap();
    std::fs::write(dir.join("pcr-policy.json"), signed.to_json().unwrap()).unwrap();
    format!(
        "\n[keys]\nauthority = \"{}\"\npcr_policy = \"{}\"\n",
        dir.join("authority.hex").display(),
        dir.join("pcr-policy.json").display()
    )
}

fn peering_section(pki: &Path, node: &str) -> String {
    format!(
        "\n[peering]\nlisten = \"0.0.0.0:{PEER_PORT}\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         keepalive = {KEEPALIVE}\npeer_timeout = {PEER_TIMEOUT}\nreattest_interval = {REATTEST}\n",
        pki.join(format!("peer-{node}.crt")).display(),
        pki.join(format!("peer-{node}.key")).display(),
        pki.join("ca.crt").display(),
    )
}

fn dataplane_section() -> String {
    format!("\n[dataplane]\ntun = \"{TUN}\"\nworkers = {WORKERS}\n")
}

/// The policy: both nodes with reference values, tenant acme with a segment on each, and
/// acme-a may reach acme-b on TCP 5001 and UDP 5002.
fn policy(version: u64, ref_a: &toml::Table, ref_b: &toml::Table) -> String {
    let mut doc: toml::Table = toml::from_str(&format!(
        r#"
version = {version}
description = "tunnel end-to-end test"

[[node]]
id = "node-a"
address = "198.51.100.1"

[[node]]
id = "node-b"
address = "198.51.100.2"

[[tenant]]
id = "{TENANT}"

[[segment]]
name = "acme-a"
tenant = "{TENANT}"
cidrs = ["203.0.113.0/28"]
node = "node-a"

[[segment]]
name = "acme-b"
tenant = "{TENANT}"
cidrs = ["203.0.113.16/28"]
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
"#
    ))
    .unwrap();
    let nodes = doc["node"].as_array_mut().unwrap();
    for (i, r) in [ref_a, ref_b].into_iter().enumerate() {
        nodes[i]
            .as_table_mut()
            .unwrap()
            .insert("reference".into(), toml::Value::Table(r.clone()));
    }
    toml::to_string(&doc).unwrap()
}

/// `reference` with one PCR digest changed in its last hex digit: a measured state that is
/// not the node's.
fn with_one_pcr_flipped(reference: &toml::Table) -> toml::Table {
    let mut wrong = reference.clone();
    let pcrs = wrong["pcrs"].as_table_mut().unwrap();
    let first = pcrs.keys().next().unwrap().clone();
    let mut digest = pcrs[&first].as_str().unwrap().to_owned();
    let last = digest.pop().unwrap();
    digest.push(if last == '0' { '1' } else { '0' });
    pcrs.insert(first, toml::Value::String(digest));
    wrong
}

/// One node: its namespace and its appliance.
struct Site {
    node: Node,
    ns: Netns,
    /// The tenant address on the TUN and the other node's tenant segment.
    address: &'static str,
    route: &'static str,
}

impl Site {
    /// The host's side of the data plane: wardend created the TUN; the tenant address and
    /// the route to the other node's segment are the host's configuration.
    fn configure_tun(&self) {
        self.ns
            .ip(&["addr", "add", &format!("{}/32", self.address), "dev", TUN])
            .unwrap();
        self.ns
            .ip(&["route", "add", self.route, "dev", TUN])
            .unwrap();
    }

    /// `GET <path>` as the operator, from a thread inside the node's namespace.
    fn get(&self, path: &str) -> Result<String, String> {
        let (cert, key) = self.node.operator_cert();
        let ca = self.node.ca();
        let url = format!("{}{path}", self.node.url());
        self.ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let http = warden::tls::client_with_identity(&ca, &cert, &key)
                    .map_err(|e| e.to_string())?;
                let r = http
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(format!("GET {url}: {status}: {body}"))
                }
            })
        })
    }

    fn peers(&self) -> Result<PeersResponse, String> {
        let body = self.get("/v1/peers")?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    fn metrics(&self) -> String {
        self.get("/metrics").unwrap()
    }

    fn capture_reference(&self) -> toml::Table {
        let path = self.node.dir.path().join("reference.toml");
        let o = wardctl_in(
            &self.ns,
            &[
                "reference",
                "capture",
                "--url",
                &self.node.url(),
                "--ca",
                s(&self.node.ca()),
                "--out",
                s(&path),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// `wardctl keys put east-west --kind east-west` as the tenant, after verifying the node
    /// against its reference values.
    fn put_tenant_key(&self, reference: &toml::Table) {
        let dir = self.node.dir.path();
        let reference_file = dir.join("tenant-reference.toml");
        std::fs::write(&reference_file, toml::to_string(reference).unwrap()).unwrap();
        let key_file = dir.join("east-west.bin");
        std::fs::write(&key_file, EAST_WEST).unwrap();
        let (cert, key) = self.node.client_cert(&format!("warden:tenant:{TENANT}"));
        let o = wardctl_in(
            &self.ns,
            &[
                "keys",
                "put",
                "east-west",
                "--kind",
                "east-west",
                "--reference",
                s(&reference_file),
                "--key-file",
                s(&key_file),
                "--url",
                &self.node.url(),
                "--ca",
                s(&self.node.ca()),
                "--cert",
                s(&cert),
                "--key",
                s(&key),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }

    fn apply_policy(&self, document: &str) {
        let file = self.node.dir.path().join("policy.toml");
        std::fs::write(&file, document).unwrap();
        let (cert, key) = self.node.operator_cert();
        let o = wardctl_in(
            &self.ns,
            &[
                "policy",
                "apply",
                s(&file),
                "--url",
                &self.node.url(),
                "--ca",
                s(&self.node.ca()),
                "--cert",
                s(&cert),
                "--key",
                s(&key),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// Two nodes on a wire, each with its appliance, references captured and the tenant key
/// provisioned; the policy applied on both. Fields drop in order: the appliances first
/// (wardend, then swtpm), then the namespaces.
struct Cluster {
    a: Site,
    b: Site,
    _pki: tempfile::TempDir,
}

impl Cluster {
    /// `None` when the test must be skipped. `policy_for` makes the policy from the captured
    /// reference values (node-a's, node-b's).
    fn start(
        test: &str,
        policy_section: &str,
        policy_for: impl Fn(&toml::Table, &toml::Table) -> String,
    ) -> Option<Cluster> {
        if skip_without_netns(test) || !tools_or_skip() || !tcpdump_or_skip(test) {
            return None;
        }
        let started = Instant::now();
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
        let pki = tempfile::tempdir().unwrap();
        warden::pki::generate_demo_pki(pki.path(), &[]).unwrap();
        for node in ["node-a", "node-b"] {
            warden::pki::issue_peer_cert(pki.path(), node).unwrap();
        }
        let keys = keys_section(pki.path());
        let extra = |node: &str| {
            keys.clone()
                + &peering_section(pki.path(), node)
                + &dataplane_section()
                + policy_section
        };
        let (extra_a, extra_b) = (extra("node-a"), extra("node-b"));
        // Both appliances start at once (swtpm manufacturing dominates).
        let (node_a, node_b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| Node::start_in_netns(wardend(), "node-a", na.name(), &extra_a));
            let b = sc.spawn(|| Node::start_in_netns(wardend(), "node-b", nb.name(), &extra_b));
            (a.join().unwrap(), b.join().unwrap())
        });
        let a = Site {
            node: node_a,
            ns: na,
            address: "203.0.113.1",
            route: "203.0.113.16/28",
        };
        let b = Site {
            node: node_b,
            ns: nb,
            address: "203.0.113.17",
            route: "203.0.113.0/28",
        };
        a.configure_tun();
        b.configure_tun();
        let ref_a = a.capture_reference();
        let ref_b = b.capture_reference();
        a.put_tenant_key(&ref_a);
        b.put_tenant_key(&ref_b);
        let document = policy_for(&ref_a, &ref_b);
        a.apply_policy(&document);
        b.apply_policy(&document);
        eprintln!(
            "{test}: two appliances up, keys provisioned, policy applied in {} ms",
            started.elapsed().as_millis()
        );
        Some(Cluster { a, b, _pki: pki })
    }

    fn logs(&self) -> String {
        format!(
            "--- node-a log ---\n{}\n--- node-b log ---\n{}",
            tail(&self.a.node.log()),
            tail(&self.b.node.log())
        )
    }

    /// Wait until both sides attested each other and hold matching SAs for the tenant;
    /// returns how long that took.
    fn wait_keyed(&self, secs: u64) -> Duration {
        let t = Instant::now();
        until(
            secs,
            "both attested and keyed",
            || self.logs(),
            || keyed(&self.a.peers()?, &self.b.peers()?),
        );
        t.elapsed()
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Poll `check` every 100 ms until it gives `Ok`, for at most `secs`; panics with its last
/// complaint and `context()`.
fn until<T>(
    secs: u64,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(t) => return t,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {secs} s: {why}\n{}", context())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn peer<'a>(r: &'a PeersResponse, node: &str) -> Result<&'a PeerStatus, String> {
    r.peers
        .iter()
        .find(|p| p.node == node)
        .ok_or_else(|| format!("{} has no peer {node}: {r:?}", r.node))
}

fn tenant(p: &PeerStatus) -> Option<&TenantSas> {
    p.tenants.iter().find(|t| t.tenant == TENANT)
}

/// Both attested each other and the tenant's SAs match: each side's outbound SPIs (one per
/// sending worker) are the other's inbound SPIs of the same epoch.
fn keyed(ra: &PeersResponse, rb: &PeersResponse) -> Result<(), String> {
    let (pa, pb) = (peer(ra, "node-b")?, peer(rb, "node-a")?);
    for p in [pa, pb] {
        if p.state != PeerState::Attested {
            return Err(format!("{} is {:?}: {:?}", p.node, p.state, p.last_error));
        }
    }
    let (ta, tb) = match (tenant(pa), tenant(pb)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(format!("no SAs yet: {:?} / {:?}", pa.tenants, pb.tenants)),
    };
    for (from, to) in [(ta, tb), (tb, ta)] {
        let out = match from.outbound.as_slice() {
            [one] => one,
            other => return Err(format!("expected one outbound group: {other:?}")),
        };
        let inb = to
            .inbound
            .iter()
            .find(|g| g.epoch == out.epoch)
            .ok_or_else(|| format!("no inbound SA of epoch {} on the other side", out.epoch))?;
        if inb.spis != out.spis || inb.spi_base != out.spi_base {
            return Err(format!("SPIs differ: out {out:?} in {inb:?}"));
        }
        if out.spis.len() != WORKERS {
            return Err(format!("one SA per worker expected: {out:?}"));
        }
    }
    Ok(())
}

/// Neither attested nor any SA with `other`, as `r`'s node sees it.
fn no_sa(r: &PeersResponse, other: &str) -> Result<(), String> {
    let p = peer(r, other)?;
    if p.state == PeerState::Attested || !p.tenants.is_empty() {
        return Err(format!("{p:?}"));
    }
    Ok(())
}

/// The sum of the samples of `name` whose labels include every `k="v"` of `labels`.
fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> Option<u64> {
    let mut found = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(parts) => parts,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels.iter().all(|l| label_text.contains(l)) {
            let v: u64 = value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            found = Some(found.unwrap_or(0) + v);
        }
    }
    found
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

/// A TCP connection from `src` to `dst` (std cannot bind before connecting), giving up after
/// `timeout` (a blocking connect honours SO_SNDTIMEO on Linux).
fn connect_from(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use nix::sys::time::TimeVal;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = TimeVal::new(
        timeout.as_secs().try_into().unwrap(),
        timeout.subsec_micros().into(),
    );
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// Send `data` over TCP from `src` (in `from`) to `dst` (in `to`); returns what arrived and
/// how long it took. Every step is bounded.
fn tcp_transfer(
    from: &Netns,
    src: &str,
    to: &Netns,
    dst: &str,
    data: &[u8],
) -> (Vec<u8>, Duration) {
    let dst: SocketAddrV4 = dst.parse().unwrap();
    let src: SocketAddrV4 = format!("{src}:0").parse().unwrap();
    let listener = to.run(|| TcpListener::bind(dst)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    std::thread::scope(|sc| {
        let server = sc.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept on {dst}: {e}"),
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::with_capacity(data.len());
            stream.read_to_end(&mut got).unwrap();
            got
        });
        from.run(|| {
            let mut s = connect_from(src, dst, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let got = server.join().unwrap();
        (got, started.elapsed())
    })
}

/// `count` UDP datagrams from `src` (in `from`) to `dst` (in `to`), each echoed back (the
/// reply passes as the reverse of an allowed flow); every one must arrive intact.
fn udp_echo(from: &Netns, src: &str, to: &Netns, dst: &str, count: u8) {
    let server = to.run(|| UdpSocket::bind(dst)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = from.run(|| UdpSocket::bind(format!("{src}:0"))).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let msg = [MARKER, &[i]].concat();
        client.send_to(&msg, dst).unwrap();
        let (n, peer) = server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} did not arrive: {e}"));
        assert_eq!(&buf[..n], &msg[..]);
        server.send_to(&buf[..n], peer).unwrap();
        let (n, _) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the echo of datagram {i} did not arrive: {e}"));
        assert_eq!(&buf[..n], &msg[..]);
    }
}

/// What one Ethernet frame of the capture is.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Arp,
    /// IPv4: protocol, source and destination port (0 if none).
    V4(u8, u16, u16),
    /// IPv6: next header, link-local source.
    V6(u8, bool),
    Other(u16),
}

/// The frames of an Ethernet pcap (little-endian, as tcpdump writes it here), each with its
/// length on the wire. With GSO on the veth, one frame may carry many ESP packets.
fn frames(pcap: &[u8]) -> Vec<(Frame, usize)> {
    assert!(pcap.len() >= 24, "not a pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(pcap[at + 12..at + 16].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ip = &frame[14..];
        let f = match ethertype {
            0x0806 => Frame::Arp,
            0x0800 if ip.len() >= 20 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let (sp, dp) = if ip.len() >= ihl + 4 {
                    (
                        u16::from_be_bytes([ip[ihl], ip[ihl + 1]]),
                        u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]),
                    )
                } else {
                    (0, 0)
                };
                Frame::V4(ip[9], sp, dp)
            }
            0x86dd if ip.len() >= 40 => Frame::V6(ip[6], ip[8] == 0xfe && ip[9] & 0xc0 == 0x80),
            other => Frame::Other(other),
        };
        out.push((f, len));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    hay.iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| hay.get(i..i + needle.len()) == Some(needle))
}

/// What the capture saw: ESP-in-UDP and control-channel frames and bytes.
#[derive(Debug, Default)]
struct WireCounts {
    esp_frames: usize,
    esp_bytes: usize,
    control_frames: usize,
}

/// Every frame on the wire is ARP, ESP-in-UDP (port 4500 on either side), the control
/// channel or the API (TCP with one of `tcp_ports` on either side), or IPv6 link-local
/// ICMPv6 (neighbour discovery, MLD); and the tenant's payload marker is nowhere.
fn assert_wire_carries_only_esp(pcap: &[u8], tcp_ports: &[u16]) -> WireCounts {
    let mut n = WireCounts::default();
    for (f, len) in frames(pcap) {
        match f {
            Frame::Arp => {}
            Frame::V4(17, sp, dp) if sp == ESP_PORT || dp == ESP_PORT => {
                n.esp_frames += 1;
                n.esp_bytes += len;
            }
            Frame::V4(6, sp, dp) if tcp_ports.contains(&sp) || tcp_ports.contains(&dp) => {
                n.control_frames += 1
            }
            // ICMPv6, or a hop-by-hop header (MLD reports), from a link-local address.
            Frame::V6(58 | 0, true) => {}
            other => panic!(
                "a frame on the wire is neither ESP-in-UDP nor the control channel: {other:?}"
            ),
        }
    }
    assert!(
        !contains(pcap, MARKER),
        "the tenant's payload is visible on the wire"
    );
    n
}

#[test]
fn tenant_traffic_crosses_attested_tunnel_and_wire_shows_only_esp() {
    let test = "tenant_traffic_crosses_attested_tunnel_and_wire_shows_only_esp";
    let Some(c) = Cluster::start(test, POLICY_SECTION, |a, b| policy(1, a, b)) else {
        return;
    };
    let keyed_in = c.wait_keyed(60);
    let (ra, rb) = (c.a.peers().unwrap(), c.b.peers().unwrap());
    let (pa, pb) = (peer(&ra, "node-b").unwrap(), peer(&rb, "node-a").unwrap());
    assert_eq!(pa.role, "dial");
    assert_eq!(pb.role, "accept");
    assert_eq!(pa.address.as_deref(), Some("198.51.100.2:4501"));
    for p in [pa, pb] {
        assert_eq!(p.kx_group.as_deref(), Some("X25519MLKEM768"), "{p:?}");
        assert_eq!(p.policy_version, Some(1));
        assert_eq!(p.workers, Some(WORKERS as u16));
    }

    let capture = Capture::start(&c.b.ns);
    let data = payload(16 << 20);
    let (got, took) = tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data);
    assert_eq!(got.len(), data.len(), "{}", c.logs());
    assert!(got == data, "the TCP stream arrived changed");
    udp_echo(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5002", 20);
    let pcap = capture.stop();
    let wire = assert_wire_carries_only_esp(&pcap, &[PEER_PORT, c.b.node.port]);
    // The stream crossed the wire, all of it as ESP (GSO: a frame may carry many packets).
    assert!(
        wire.esp_bytes > data.len(),
        "only {wire:?} ESP-in-UDP on the wire"
    );
    eprintln!(
        "policy applied -> keyed: {} ms; 16 MiB over the tunnel in {} ms ({:.0} Mbit/s); \
         wire: {} ESP-in-UDP frames ({} bytes), {} control-channel frames",
        keyed_in.as_millis(),
        took.as_millis(),
        (data.len() * 8) as f64 / took.as_secs_f64() / 1e6,
        wire.esp_frames,
        wire.esp_bytes,
        wire.control_frames
    );

    let m = c.b.metrics();
    let inbound = metric_sum(
        &m,
        "warden_esp_bytes_total",
        &["direction=\"in\"", "peer=\"node-a\"", "tenant=\"acme\""],
    )
    .unwrap_or_else(|| panic!("no inbound SA in the metrics:\n{m}"));
    assert!(
        inbound >= data.len() as u64,
        "inbound ESP bytes {inbound} < {}:\n{m}",
        data.len()
    );
    assert!(
        m.lines()
            .any(|l| l == "warden_dataplane_engine_info{engine=\"aws-lc-rs\"} 1"),
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "warden_dataplane_workers", &[]),
        Some(WORKERS as u64)
    );
    // Nothing forged, replayed or unknown arrived; nothing was refused on the way.
    for reason in [
        "auth",
        "replay",
        "too-old",
        "no-sa",
        "source",
        "policy",
        "malformed",
    ] {
        let label = format!("reason=\"{reason}\"");
        let drops = metric_sum(
            &m,
            "warden_dataplane_drops_total",
            &["direction=\"in\"", &label],
        );
        assert_eq!(drops, Some(0), "inbound drops for {reason}:\n{m}");
    }
    let ma = c.a.metrics();
    let outbound = metric_sum(
        &ma,
        "warden_esp_bytes_total",
        &["direction=\"out\"", "peer=\"node-b\"", "tenant=\"acme\""],
    )
    .unwrap();
    assert!(outbound >= data.len() as u64, "{ma}");
    // The tenant key never shows up in a log.
    let key_text = String::from_utf8_lossy(EAST_WEST).into_owned();
    assert!(!c.a.node.log().contains(&key_text) && !c.b.node.log().contains(&key_text));
}

#[test]
fn a_peer_with_a_wrong_measured_state_gets_no_sa() {
    let Some(c) = Cluster::start(
        "a_peer_with_a_wrong_measured_state_gets_no_sa",
        POLICY_SECTION,
        |a, b| policy(1, a, &with_one_pcr_flipped(b)),
    ) else {
        return;
    };
    // node-a appraises node-b's evidence against the wrong value and refuses it.
    let ra = until(
        60,
        "node-a refuses node-b",
        || c.logs(),
        || {
            let ra = c.a.peers()?;
            let p = peer(&ra, "node-b")?;
            match (&p.state, &p.last_attestation) {
                (PeerState::Refused, Some(att)) if !att.ok => Ok(ra.clone()),
                _ => Err(format!("{p:?}")),
            }
        },
    );
    let failures = &peer(&ra, "node-b")
        .unwrap()
        .last_attestation
        .as_ref()
        .unwrap()
        .failures;
    assert!(
        failures.iter().any(|f| f.starts_with("[reference-values]")),
        "{failures:?}"
    );
    // Let node-a's dialer retry a few times: it is refused every time, and neither side
    // ever holds an SA.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        no_sa(&c.a.peers().unwrap(), "node-b").unwrap();
        no_sa(&c.b.peers().unwrap(), "node-a").unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    for site in [&c.a, &c.b] {
        let m = site.metrics();
        assert_eq!(metric_sum(&m, "warden_esp_bytes_total", &[]), None, "{m}");
    }

    // A connection between the tenant's segments goes nowhere.
    let before = metric_sum(
        &c.a.metrics(),
        "warden_dataplane_drops_total",
        &["direction=\"out\"", "reason=\"no-sa\""],
    )
    .unwrap();
    let listener =
        c.b.ns
            .run(|| TcpListener::bind("203.0.113.17:5001"))
            .unwrap();
    let t = Instant::now();
    let r = c.a.ns.run(|| {
        connect_from(
            "203.0.113.1:0".parse().unwrap(),
            "203.0.113.17:5001".parse().unwrap(),
            CONNECT_TIMEOUT,
        )
    });
    assert!(r.is_err(), "connected to node-b without an SA");
    assert!(
        t.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    // node-a's data plane dropped the SYN for want of an SA.
    let drops = until(
        5,
        "no-sa drops on node-a",
        || c.a.metrics(),
        || {
            let n = metric_sum(
                &c.a.metrics(),
                "warden_dataplane_drops_total",
                &["direction=\"out\"", "reason=\"no-sa\""],
            )
            .unwrap();
            if n > before {
                Ok(n)
            } else {
                Err(format!("{n}"))
            }
        },
    );
    eprintln!(
        "wrong reference values: refused with {failures:?}; no-sa egress drops {before} -> {drops}"
    );
}

#[test]
fn a_killed_peer_loses_its_sas_and_traffic_resumes_after_restart() {
    let Some(mut c) = Cluster::start(
        "a_killed_peer_loses_its_sas_and_traffic_resumes_after_restart",
        POLICY_SECTION,
        |a, b| policy(1, a, b),
    ) else {
        return;
    };
    c.wait_keyed(60);
    let data = payload(4 << 20);
    let (got, _) = tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data);
    assert!(got == data, "the first transfer failed");

    // kill -9 node-b's wardend: its TUN device goes with it, and node-a removes its SAs.
    c.b.node.kill9();
    let killed = Instant::now();
    until(
        10,
        "node-a drops node-b's SAs",
        || c.logs(),
        || no_sa(&c.a.peers()?, "node-b"),
    );
    let lost_after = killed.elapsed();
    assert!(
        lost_after <= Duration::from_secs_f64(PEER_TIMEOUT + 2.0),
        "{lost_after:?}"
    );
    let m = c.a.metrics();
    assert_eq!(metric_sum(&m, "warden_esp_bytes_total", &[]), None, "{m}");
    let gone = c.b.ns.exec(&["ip", "link", "show", TUN]).unwrap();
    assert!(!gone.status.success(), "{TUN} outlived its wardend");

    // Restarted, node-b creates its TUN device again (the host adds its address and route
    // again) and both sides key fresh SAs without anyone doing anything.
    let restarted = Instant::now();
    c.b.node.start_again();
    c.b.configure_tun();
    let keyed_in = c.wait_keyed(60);
    let restart_to_keyed = restarted.elapsed();
    let data = payload(8 << 20);
    let (got, took) = tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data);
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "the transfer after the restart arrived changed"
    );
    udp_echo(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5002", 5);
    eprintln!(
        "node-b killed -> node-a removed its SAs after {} ms; restart -> keyed again after {} ms \
         ({} ms after wardend listened); 8 MiB after the restart in {} ms",
        lost_after.as_millis(),
        restart_to_keyed.as_millis(),
        keyed_in.as_millis(),
        took.as_millis()
    );
}

/// The wire firewall admits the dialing node's control channel to its peer (a regression:
/// the output checks once admitted TCP only from the appliance's own ports), and with it the
/// tunnel: data crosses and the wire shows only ESP.
#[test]
fn with_the_wire_firewall_the_dialer_reaches_its_peer() {
    let Some(c) = Cluster::start(
        "with_the_wire_firewall_the_dialer_reaches_its_peer",
        "\n[policy]\nnftables = true\nwire_interface = \"wire\"\n",
        |a, b| policy(1, a, b),
    ) else {
        return;
    };
    until(
        20,
        "both attested and keyed behind the wire firewall",
        || {
            let chain =
                c.a.ns
                    .exec_ok(&["nft", "list", "chain", "inet", "warden", "wire_out_checks"])
                    .unwrap_or_else(|e| e.to_string());
            format!("node-a's wire_out_checks:\n{chain}\n{}", c.logs())
        },
        || keyed(&c.a.peers()?, &c.b.peers()?),
    );
    let capture = Capture::start(&c.b.ns);
    let data = payload(4 << 20);
    let (got, _) = tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data);
    assert!(got == data, "the TCP stream arrived changed");
    udp_echo(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5002", 5);
    let wire = assert_wire_carries_only_esp(&capture.stop(), &[PEER_PORT, c.b.node.port]);
    assert!(wire.esp_bytes > data.len(), "{wire:?}");
}

/// The value of one metric line `name` (exact labels) in a text exposition.
fn metric_value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Rekey by packet count under a continuous TCP transfer, through the control channel: the
/// sender's SAs reach `rekey_after_packets`, it asks the receiver, the receiver installs the
/// next epoch first and offers it, the sender switches. The stream arrives intact and no
/// packet meets an expired SA (the hard limit is twice the soft one).
#[test]
fn rekeys_by_packet_count_during_a_transfer_lose_nothing() {
    let test = "rekeys_by_packet_count_during_a_transfer_lose_nothing";
    // The line before POLICY_SECTION's `[policy]` header belongs to the `[dataplane]` table
    // the cluster writes just before it.
    let section = format!("rekey_after_packets = 40000\n{POLICY_SECTION}");
    let Some(c) = Cluster::start(test, &section, |a, b| policy(1, a, b)) else {
        return;
    };
    c.wait_keyed(60);
    let data = payload(320 << 20);
    let (got, took) = tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data);
    assert_eq!(got.len(), data.len(), "{}", c.logs());
    assert!(got == data, "the stream changed across rekeys");
    let a = c.a.metrics();
    let rekeys = metric_value(&a, "warden_dataplane_rekeys_total ").unwrap_or(0.0);
    assert!(rekeys >= 2.0, "only {rekeys} rekeys:\n{a}");
    let expired = metric_value(
        &a,
        "warden_dataplane_drops_total{direction=\"out\",reason=\"expired\"}",
    );
    assert_eq!(expired, Some(0.0), "{a}");
    let b = c.b.metrics();
    for reason in ["auth", "replay", "no-sa"] {
        let line = format!("warden_dataplane_drops_total{{direction=\"in\",reason=\"{reason}\"}}");
        assert_eq!(metric_value(&b, &line), Some(0.0), "{reason}: {b}");
    }
    eprintln!(
        "320 MiB in {} ms with {rekeys} rekeys by packet count",
        took.as_millis()
    );
}
