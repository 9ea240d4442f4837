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
//!
//! The cluster itself is `tests/support/cluster.rs`, shared with the demo.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{
    census, connect_from, metric_sum, metric_value, no_sa, peer, poll_until, tcp_transfer, Bins,
    Cluster, Options, SiteLayout, WireCensus, PEER_PORT, PEER_TIMEOUT, POLICY_SECTION, TUN,
};
use support::capture::{tcpdump_or_skip, Capture};
use support::tools_or_skip;
use warden::peering::{PeerState, PeersResponse};
use warden_testkit::skip_without_netns;

const TENANT: &str = "acme";
/// The tenant's east-west key, provisioned on both appliances.
const EAST_WEST: &[u8] = b"acme east-west root key, 32 byte";
const WORKERS: usize = 2;
/// Appears every 4 KiB of the tenant payload; must never appear on the wire.
const MARKER: &[u8] = b"warden-tunnel-e2e-payload-marker";
/// How long a connection attempt that must fail may take: past Linux's first SYN
/// retransmission (1 s), and far longer than a round trip through both data planes.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// The policy: both nodes with reference values, tenant acme with a segment on each, and
/// acme-a may reach acme-b on TCP 5001 and UDP 5002.
fn policy(version: u64, ref_a: &toml::Table, ref_b: &toml::Table) -> String {
    let document = format!(
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
    );
    cluster::with_references(&document, [ref_a, ref_b])
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

/// Two nodes on a wire, each with its appliance, references captured and the tenant key
/// provisioned; the policy applied on both. `None` when the test must be skipped.
/// `policy_section` follows the `[dataplane]` table in both configurations; `policy_for`
/// makes the policy from the captured reference values (node-a's, node-b's).
fn start(
    test: &str,
    policy_section: &str,
    policy_for: impl Fn(&toml::Table, &toml::Table) -> String,
) -> Option<Cluster> {
    if skip_without_netns(test) || !tools_or_skip() || !tcpdump_or_skip(test) {
        return None;
    }
    let started = Instant::now();
    let c = Cluster::boot(&Options {
        bins: Bins {
            wardend: PathBuf::from(env!("CARGO_BIN_EXE_wardend")),
            wardctl: PathBuf::from(env!("CARGO_BIN_EXE_wardctl")),
        },
        workers: WORKERS,
        extra: policy_section.to_owned(),
        a: SiteLayout::new(&["203.0.113.1"], &["203.0.113.16/28"]),
        b: SiteLayout::new(&["203.0.113.17"], &["203.0.113.0/28"]),
    });
    let ref_a = c.a.capture_reference();
    let ref_b = c.b.capture_reference();
    c.a.put_tenant_key(TENANT, EAST_WEST, &ref_a).unwrap();
    c.b.put_tenant_key(TENANT, EAST_WEST, &ref_b).unwrap();
    let document = policy_for(&ref_a, &ref_b);
    c.a.apply_policy(&document).unwrap();
    c.b.apply_policy(&document).unwrap();
    eprintln!(
        "{test}: two appliances up, keys provisioned, policy applied in {} ms",
        started.elapsed().as_millis()
    );
    Some(c)
}

/// Wait until both sides attested each other and hold matching SAs for the tenant; returns
/// how long that took.
fn wait_keyed(c: &Cluster, secs: u64) -> Duration {
    c.wait_keyed(&[TENANT], WORKERS, secs)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
}

/// Poll `check` every 100 ms until it gives `Ok`, for at most `secs`; panics with its last
/// complaint and `context()`.
fn until<T>(
    secs: u64,
    what: &str,
    context: impl Fn() -> String,
    check: impl FnMut() -> Result<T, String>,
) -> T {
    poll_until(secs, check).unwrap_or_else(|why| panic!("{what}: {why}\n{}", context()))
}

/// Both attested each other and the tenant's SAs match.
fn keyed(ra: &PeersResponse, rb: &PeersResponse) -> Result<(), String> {
    cluster::keyed(ra, rb, &[TENANT], WORKERS)
}

/// A deterministic payload of `len` bytes with the marker every 4 KiB.
fn payload(len: usize) -> Vec<u8> {
    cluster::payload(len, MARKER)
}

fn udp_echo(
    from: &warden_testkit::Netns,
    src: &str,
    to: &warden_testkit::Netns,
    dst: &str,
    count: u8,
) {
    cluster::udp_echo(from, src, to, dst, count, MARKER)
}

/// Every frame on the wire is ARP, ESP-in-UDP (port 4500 on either side), the control
/// channel or the API (TCP with one of `tcp_ports` on either side), or IPv6 link-local
/// ICMPv6 (neighbour discovery, MLD); and the tenant's payload marker is nowhere.
fn assert_wire_carries_only_esp(pcap: &[u8], tcp_ports: &[u16]) -> WireCensus {
    let n = census(pcap, tcp_ports, MARKER);
    assert!(
        n.unexpected.is_empty(),
        "a frame on the wire is neither ESP-in-UDP nor the control channel: {:?}",
        n.unexpected
    );
    assert_eq!(
        n.marker_seen, 0,
        "the tenant's payload is visible on the wire"
    );
    n
}

#[test]
fn tenant_traffic_crosses_attested_tunnel_and_wire_shows_only_esp() {
    let test = "tenant_traffic_crosses_attested_tunnel_and_wire_shows_only_esp";
    let Some(c) = start(test, POLICY_SECTION, |a, b| policy(1, a, b)) else {
        return;
    };
    let keyed_in = wait_keyed(&c, 60);
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
    let Some(c) = start(
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
    let Some(mut c) = start(
        "a_killed_peer_loses_its_sas_and_traffic_resumes_after_restart",
        POLICY_SECTION,
        |a, b| policy(1, a, b),
    ) else {
        return;
    };
    wait_keyed(&c, 60);
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
    c.b.configure_tun().unwrap();
    let keyed_in = wait_keyed(&c, 60);
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
    let Some(c) = start(
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

/// Rekey by packet count under a continuous TCP transfer, through the control channel: the
/// sender's SAs reach `rekey_after_packets`, it asks the receiver, the receiver installs the
/// next epoch first and offers it, the sender switches. The stream arrives intact and no
/// packet meets an expired SA (the hard limit is twice the soft one). At 10,000 packets and
/// about 1 Gbit/s an SA lives about 100 ms, so the rekey must not wait for a control-channel
/// tick (250 ms), and a stale wish must not use up the next epoch's request.
#[test]
fn rekeys_by_packet_count_during_a_transfer_lose_nothing() {
    let test = "rekeys_by_packet_count_during_a_transfer_lose_nothing";
    // The line before POLICY_SECTION's `[policy]` header belongs to the `[dataplane]` table
    // the cluster writes just before it.
    let section = format!("rekey_after_packets = 10000\n{POLICY_SECTION}");
    let Some(c) = start(test, &section, |a, b| policy(1, a, b)) else {
        return;
    };
    wait_keyed(&c, 60);
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
    assert_eq!(expired, Some(0.0), "{a}\n{}", c.logs());
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

/// The tenant rotates its east-west key during a transfer, the way a tenant does: version 2
/// on node-b first, then on node-a. Each side announces its key versions, and a receiver keys
/// SAs with the older of both, so no offer ever names a version the sender lacks (none is
/// refused), and once both hold version 2 both directions move to it. The stream arrives
/// intact and no packet is dropped in the tunnel.
#[test]
fn a_tenant_key_rotation_during_a_transfer_loses_nothing() {
    let test = "a_tenant_key_rotation_during_a_transfer_loses_nothing";
    let Some(c) = start(test, POLICY_SECTION, |a, b| policy(1, a, b)) else {
        return;
    };
    wait_keyed(&c, 60);
    let (ref_a, ref_b) = (c.a.capture_reference(), c.b.capture_reference());
    let next: &[u8] = b"acme east-west key, version two!";
    let data = payload(320 << 20);
    let (got, took) = std::thread::scope(|sc| {
        let transfer =
            sc.spawn(|| tcp_transfer(&c.a.ns, "203.0.113.1", &c.b.ns, "203.0.113.17:5001", &data));
        std::thread::sleep(Duration::from_millis(300));
        c.b.rotate_tenant_key(TENANT, next, &ref_b).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.a.rotate_tenant_key(TENANT, next, &ref_a).unwrap();
        transfer.join().unwrap()
    });
    assert_eq!(got.len(), data.len(), "{}", c.logs());
    assert!(got == data, "the stream changed across the rotation");
    // Both directions end on version 2, and no SA was ever refused on the way.
    let on_v2 = |log: &str| {
        log.lines().any(|l| {
            l.contains("peering: outbound SAs installed") && l.contains("\"key_version\":2")
        })
    };
    until(
        20,
        "both directions keyed with version 2",
        || c.logs(),
        || {
            if on_v2(&c.a.node.log()) && on_v2(&c.b.node.log()) {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        },
    );
    for site in [&c.a, &c.b] {
        let log = site.node.log();
        assert!(!log.contains("peering: no SA for a tenant"), "{}", c.logs());
        let m = site.metrics();
        for (direction, reason) in [
            ("out", "expired"),
            ("in", "auth"),
            ("in", "replay"),
            ("in", "no-sa"),
        ] {
            let line = format!(
                "warden_dataplane_drops_total{{direction=\"{direction}\",reason=\"{reason}\"}}"
            );
            assert_eq!(metric_value(&m, &line), Some(0.0), "{line}: {m}");
        }
    }
    eprintln!(
        "320 MiB in {} ms across a tenant key rotation",
        took.as_millis()
    );
}
