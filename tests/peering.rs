//! The attested control channel between two running appliances (wardend + swtpm each, on
//! loopback): they attest each other over TLS 1.3 with X25519MLKEM768 and key matching SAs for
//! a tenant whose east-west key both hold; a peer that fails its reference values is refused,
//! gets no SA, and gets in once the policy is fixed; a client with another node's certificate
//! is refused; a killed peer loses its SAs within peer_timeout and gets fresh ones after a
//! restart without manual steps; rekeys move the epoch forward and retire the old inbound SA
//! after the grace period, make-before-break.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::{capture_reference, text, wardctl};
use support::{tools_or_skip, Node};
use warden::peering::frame::{self, Message};
use warden::peering::{PeerState, PeerStatus, PeersResponse, TenantSas};
use warden_attest::sealed::PolicyAuthority;

const TENANT: &str = "acme";
/// The tenant's east-west key, provisioned on both appliances.
const EAST_WEST: &[u8] = b"acme east-west root key, 32 byte";
/// Timers for the tests: seconds.
const KEEPALIVE: f64 = 0.5;
const PEER_TIMEOUT: f64 = 3.0;
const REATTEST: f64 = 2.0;

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two appliances, node-a (127.0.0.1, dials) and node-b (127.0.0.2, accepts), with a shared
/// appliance CA, the tenant key on both and their captured reference values.
struct Pair {
    a: Node,
    b: Node,
    pki: tempfile::TempDir,
    ref_a: toml::Table,
    ref_b: toml::Table,
    b_listen: std::net::SocketAddr,
}

fn keys_section(dir: &Path) -> String {
    let (authority, _) = PolicyAuthority::generate().unwrap();
    std::fs::write(
        dir.join("authority.hex"),
        hex::encode(authority.public_sec1()),
    )
    .unwrap();
    // A fresh swtpm has PCRs 0 and 7 at zero.
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

fn peering_section(pki: &Path, node: &str, listen: &str, port: u16, timers: &str) -> String {
    format!(
        "\n[peering]\nlisten = \"{listen}\"\nport = {port}\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         keepalive = {KEEPALIVE}\npeer_timeout = {PEER_TIMEOUT}\nreattest_interval = {REATTEST}\n{timers}\n",
        pki.join(format!("peer-{node}.crt")).display(),
        pki.join(format!("peer-{node}.key")).display(),
        pki.join("ca.crt").display(),
    )
}

fn read_reference(node: &Node) -> toml::Table {
    let path = node.dir.path().join("reference.toml");
    capture_reference(&node.url(), &node.ca(), &path);
    toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `wardctl keys put east-west --kind east-west` as the tenant, after verifying the node.
fn put_tenant_key(node: &Node, reference: &toml::Table) {
    let dir = node.dir.path();
    let reference_file = dir.join("tenant-reference.toml");
    std::fs::write(&reference_file, toml::to_string(reference).unwrap()).unwrap();
    let key_file = dir.join("east-west.bin");
    std::fs::write(&key_file, EAST_WEST).unwrap();
    let (cert, key) = node.client_cert(&format!("warden:tenant:{TENANT}"));
    let url = node.url();
    let ca = node.ca();
    let o = wardctl(&[
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
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The policy: both nodes with reference values, one tenant with a segment on each.
fn policy(version: u64, ref_a: &toml::Table, ref_b: &toml::Table) -> String {
    let mut doc: toml::Table = toml::from_str(&format!(
        r#"
version = {version}
description = "peering test"

[[node]]
id = "node-a"
address = "127.0.0.1"

[[node]]
id = "node-b"
address = "127.0.0.2"

[[tenant]]
id = "{TENANT}"

[[segment]]
name = "acme-a"
tenant = "{TENANT}"
cidrs = ["198.51.100.0/26"]
node = "node-a"

[[segment]]
name = "acme-b"
tenant = "{TENANT}"
cidrs = ["198.51.100.64/26"]
node = "node-b"

[[rule]]
from = "acme-a"
to = "acme-b"
proto = "tcp"
ports = [5432]
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

fn apply_policy(node: &Node, document: &str, name: &str) {
    let file = node.dir.path().join(name);
    std::fs::write(&file, document).unwrap();
    let (cert, key) = node.operator_cert();
    let url = node.url();
    let ca = node.ca();
    let o = wardctl(&[
        "policy",
        "apply",
        s(&file),
        "--url",
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

impl Pair {
    /// Start both nodes (peering configured with `timers`), capture references and provision
    /// the tenant key on both. No policy yet.
    fn start(timers: &str) -> Pair {
        let pki = tempfile::tempdir().unwrap();
        warden::pki::generate_demo_pki(pki.path(), &[]).unwrap();
        for node in ["node-a", "node-b", "node-c"] {
            warden::pki::issue_peer_cert(pki.path(), node).unwrap();
        }
        let keys = keys_section(pki.path());
        let port_a = warden_testkit::free_port_pair();
        let port_b = warden_testkit::free_port_pair();
        let b_listen: std::net::SocketAddr = format!("127.0.0.2:{port_b}").parse().unwrap();
        // node-a dials node-b at <policy address 127.0.0.2>:<port>.
        let extra_a = keys.clone()
            + &peering_section(
                pki.path(),
                "node-a",
                &format!("127.0.0.1:{port_a}"),
                port_b,
                timers,
            );
        let extra_b =
            keys + &peering_section(pki.path(), "node-b", &b_listen.to_string(), port_b, timers);
        let a = Node::start_with_config(wardend(), "node-a", None, &extra_a);
        let b = Node::start_with_config(wardend(), "node-b", None, &extra_b);
        let ref_a = read_reference(&a);
        let ref_b = read_reference(&b);
        put_tenant_key(&a, &ref_a);
        put_tenant_key(&b, &ref_b);
        Pair {
            a,
            b,
            pki,
            ref_a,
            ref_b,
            b_listen,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- node-a log ---\n{}\n--- node-b log ---\n{}",
            tail(&self.a.log()),
            tail(&self.b.log())
        )
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

async fn peers(node: &Node) -> PeersResponse {
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    http.get(format!("{}/v1/peers", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait (60 s at most) until both sides are attested with matching SAs; their statuses.
async fn wait_keyed(pair: &Pair, what: &str) -> (PeersResponse, PeersResponse) {
    until(
        60,
        what,
        || pair.logs(),
        move || async move {
            let (ra, rb) = both(pair).await;
            keyed(&ra, &rb).map(|_| (ra, rb))
        },
    )
    .await
}

/// Wait (10 s at most) until node-a no longer has node-b attested nor any SA with it.
async fn node_a_drops_node_b(pair: &Pair, what: &str) {
    until(
        10,
        what,
        || pair.logs(),
        move || async move {
            let ra = peers(&pair.a).await;
            let p = peer(&ra, "node-b")?;
            if p.state == PeerState::Attested || !p.tenants.is_empty() {
                return Err(format!("{p:?}"));
            }
            Ok(())
        },
    )
    .await;
}

async fn metrics(node: &Node) -> String {
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    let r = http
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn audit(node: &Node) -> Vec<serde_json::Value> {
    support::audit_kinds(node)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn of_kind<'a>(entries: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

/// Poll `check` every 100 ms until it gives `Ok`, for at most `secs`; panics with its last
/// complaint and `context()`.
async fn until<T, F, Fut>(secs: u64, what: &str, context: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(t) => return t,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {secs} s: {why}\n{}", context())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
/// sending worker) are the other's inbound SPIs of the same epoch. Returns the outbound
/// epochs (a→b, b→a).
fn keyed(ra: &PeersResponse, rb: &PeersResponse) -> Result<(u64, u64), String> {
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
    let mut epochs = Vec::new();
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
        if out.spis.len() != warden::peering::STANDALONE_WORKERS as usize {
            return Err(format!("one SA per worker expected: {out:?}"));
        }
        epochs.push(out.epoch);
    }
    Ok((epochs[0], epochs[1]))
}

async fn both(pair: &Pair) -> (PeersResponse, PeersResponse) {
    (peers(&pair.a).await, peers(&pair.b).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_peers_key_matching_sas_and_recover_from_a_killed_peer() {
    if !tools_or_skip() {
        return;
    }
    let mut pair = Pair::start("");
    // Before the policy names them, nobody is a peer.
    let r = peers(&pair.a).await;
    assert!(r.enabled && !r.in_policy && r.peers.is_empty(), "{r:?}");

    let text = policy(1, &pair.ref_a, &pair.ref_b);
    apply_policy(&pair.a, &text, "policy.toml");
    apply_policy(&pair.b, &text, "policy.toml");
    let applied = Instant::now();
    let (ra, rb) = wait_keyed(&pair, "both attested and keyed").await;
    let (pa, pb) = (peer(&ra, "node-b").unwrap(), peer(&rb, "node-a").unwrap());
    // Lexical order decides who dials.
    eprintln!(
        "policy applied -> SAs on both sides: {} ms; handshake (TCP to both attested): node-a {:?} ms, node-b {:?} ms",
        applied.elapsed().as_millis(),
        pa.handshake_ms,
        pb.handshake_ms
    );
    assert_eq!(pa.role, "dial");
    assert_eq!(pb.role, "accept");
    for p in [pa, pb] {
        assert_eq!(p.kx_group.as_deref(), Some("X25519MLKEM768"), "{p:?}");
        assert_eq!(p.policy_version, Some(1));
        assert_eq!(p.workers, Some(warden::peering::STANDALONE_WORKERS));
        let att = p.last_attestation.as_ref().unwrap();
        assert!(att.ok && att.failures.is_empty(), "{att:?}");
        assert_eq!(tenant(p).unwrap().inbound[0].epoch, 1);
    }
    assert_eq!(
        pa.address.as_deref(),
        Some(pair.b_listen.to_string().as_str())
    );

    // Prometheus: the peer's state, for operators only.
    let text = metrics(&pair.a).await;
    assert!(
        text.contains("warden_peer_attested{peer=\"node-b\"} 1"),
        "{text}"
    );
    assert!(text.contains("warden_peer_state{peer=\"node-b\",state=\"attested\"} 1"));
    assert!(text.contains("warden_peer_state{peer=\"node-b\",state=\"refused\"} 0"));
    let (cert, key) = pair.a.client_cert("warden:tenant:acme");
    let tenant = warden::tls::client_with_identity(&pair.a.ca(), &cert, &key).unwrap();
    let denied = tenant
        .get(format!("{}/metrics", pair.a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    // Re-attestation runs every 2 s over the open channel and keeps the same SAs.
    let first_at = pa.last_attestation.as_ref().unwrap().at_ms;
    let epochs = keyed(&ra, &rb).unwrap();
    let pr = &pair;
    until(
        20,
        "two re-attestations",
        || pr.logs(),
        move || async move {
            let (ra, rb) = both(pr).await;
            let at = peer(&ra, "node-b")?
                .last_attestation
                .as_ref()
                .map_or(0, |a| a.at_ms);
            if at < first_at + 3000 {
                return Err(format!("last attestation at {at}, first at {first_at}"));
            }
            let now = keyed(&ra, &rb)?;
            assert_eq!(now, epochs, "re-attestation must not rekey");
            Ok(())
        },
    )
    .await;
    let log_a = audit(&pair.a).await;
    assert_eq!(of_kind(&log_a, "peer.attested").len(), 1, "{log_a:#?}");
    assert!(of_kind(&log_a, "peer.attestation-failed").is_empty());
    // No secret in any log line: the tenant key is plain text here, easy to search for.
    let key_text = String::from_utf8_lossy(EAST_WEST).into_owned();
    assert!(!pair.a.log().contains(&key_text) && !pair.b.log().contains(&key_text));

    // node-b frozen (SIGSTOP: no FIN, no pong): node-a drops it within peer_timeout; thawed,
    // it gets back in.
    let pid = pid_of(&pair.b);
    signal("-STOP", &pid);
    let frozen = Instant::now();
    node_a_drops_node_b(&pair, "node-a drops the frozen node-b").await;
    let silent_for = frozen.elapsed();
    signal("-CONT", &pid);
    eprintln!(
        "node-b frozen -> node-a removed its SAs after {} ms",
        silent_for.as_millis()
    );
    // The property is "within peer_timeout" (plus the session's tick); the slack is for a
    // loaded machine, not a speed claim.
    assert!(
        silent_for <= Duration::from_secs_f64(PEER_TIMEOUT + 2.0),
        "{silent_for:?}"
    );
    let log_a = audit(&pair.a).await;
    let lost = of_kind(&log_a, "peer.lost");
    assert_eq!(lost.len(), 1, "{log_a:#?}");
    assert!(
        lost[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("peer_timeout"),
        "{:?}",
        lost[0]
    );
    wait_keyed(&pair, "keyed again after the thaw").await;

    // kill -9 node-b: node-a removes its SAs at once (the kernel closes the connection) and
    // records peer.lost.
    pair.b.kill9();
    let killed = Instant::now();
    node_a_drops_node_b(&pair, "node-a drops node-b").await;
    let lost_after = killed.elapsed();
    eprintln!(
        "node-b killed -> node-a removed its SAs after {} ms",
        lost_after.as_millis()
    );
    assert!(
        lost_after <= Duration::from_secs_f64(PEER_TIMEOUT + 2.0),
        "{lost_after:?}"
    );
    let log_a = audit(&pair.a).await;
    let lost = of_kind(&log_a, "peer.lost");
    assert_eq!(lost.len(), 2, "{log_a:#?}");
    assert_eq!(lost[1]["subject"], "node-b");

    // Restarted, node-b gets fresh SAs without anyone doing anything.
    let restarted = Instant::now();
    pair.b.start_again();
    wait_keyed(&pair, "keyed again after the restart").await;
    eprintln!(
        "node-b restarted -> keyed again after {} ms (wardend start included)",
        restarted.elapsed().as_millis()
    );
    let log_a = audit(&pair.a).await;
    assert_eq!(of_kind(&log_a, "peer.attested").len(), 3);
}

/// The pid of the node's wardend (found by its configuration path in /proc).
fn pid_of(node: &Node) -> String {
    use std::os::unix::ffi::OsStrExt;
    let config = node.config_path();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"wardend"))
            && args.contains(&config.as_os_str().as_bytes())
        {
            return entry.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no wardend with {}", config.display())
}

fn signal(sig: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A TLS client presenting `cert_node`'s peer certificate to `at`, saying Hello as `claims`;
/// returns the first message it gets back (a refusal is a verdict), or why none came.
async fn rogue_hello(
    pki: &Path,
    cert_node: &str,
    at: std::net::SocketAddr,
    claims: &str,
) -> Result<Message, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.join(format!("peer-{cert_node}.crt")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("peer-{cert_node}.key"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(warden::peering::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![warden::peering::tls::ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("node-b").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let hello = Message::Hello {
        node: claims.to_owned(),
        workers: 1,
        policy_version: 1,
    };
    tls.write_all(&frame::encode(&hello).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    if read.is_err() {
        return Err("the connection stayed open".into());
    }
    frame::decode(&buf)
        .map(|(m, _)| m)
        .map_err(|e| format!("{e} ({} bytes)", buf.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_failing_its_reference_values_is_refused_until_fixed_and_impostors_never_get_in() {
    if !tools_or_skip() {
        return;
    }
    let pair = Pair::start("");
    // The policy's reference for node-b does not match it: one PCR value is wrong.
    let mut wrong_b = pair.ref_b.clone();
    let pcrs = wrong_b["pcrs"].as_table_mut().unwrap();
    let first = pcrs.keys().next().unwrap().clone();
    pcrs.insert(first, toml::Value::String("11".repeat(32)));
    let text = policy(1, &pair.ref_a, &wrong_b);
    apply_policy(&pair.a, &text, "policy.toml");
    apply_policy(&pair.b, &text, "policy.toml");

    let pr = &pair;
    let ra = until(
        60,
        "node-a refuses node-b",
        || pr.logs(),
        move || async move {
            let ra = peers(&pr.a).await;
            let p = peer(&ra, "node-b")?;
            match (&p.state, &p.last_attestation) {
                (PeerState::Refused, Some(att)) if !att.ok => Ok(ra.clone()),
                _ => Err(format!("{p:?}")),
            }
        },
    )
    .await;
    let p = peer(&ra, "node-b").unwrap();
    let failures = &p.last_attestation.as_ref().unwrap().failures;
    assert!(
        failures.iter().any(|f| f.starts_with("[reference-values]")),
        "{failures:?}"
    );
    // Neither side has an SA, and both recorded the refusal.
    let (ra, rb) = both(&pair).await;
    for (r, other) in [(&ra, "node-b"), (&rb, "node-a")] {
        let p = peer(r, other).unwrap();
        assert!(p.tenants.is_empty(), "{p:?}");
        assert_ne!(p.state, PeerState::Attested);
    }
    let log_a = audit(&pair.a).await;
    // (node-b may also have refused node-a while its policy was not yet applied.)
    assert!(
        of_kind(&log_a, "peer.refused")
            .iter()
            .any(|e| e["subject"] == "node-b"
                && e["details"]["refused_by"] == "this appliance"
                && e["details"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("[reference-values]")),
        "{log_a:#?}"
    );
    assert!(of_kind(&log_a, "peer.attested").is_empty());
    let log_b = audit(&pair.b).await;
    let refused_b = of_kind(&log_b, "peer.refused");
    assert!(
        refused_b
            .iter()
            .any(|e| e["details"]["refused_by"] == "peer"),
        "{log_b:#?}"
    );

    // Fixed reference values in a newer policy: node-b gets in on the next retry.
    let fixed = policy(2, &pair.ref_a, &pair.ref_b);
    apply_policy(&pair.a, &fixed, "policy-v2.toml");
    apply_policy(&pair.b, &fixed, "policy-v2.toml");
    wait_keyed(&pair, "keyed after the fix").await;

    // Impostors: node-c's genuine certificate (same CA) claiming to be node-a, and claiming
    // to be itself (not in the policy). node-b refuses both, says why, and keeps node-a.
    for (claims, why) in [
        ("node-a", "does not carry the DNS name \"node-a\""),
        ("node-c", "not a node of the policy in force"),
    ] {
        match rogue_hello(pair.pki.path(), "node-c", pair.b_listen, claims).await {
            Ok(Message::Verdict { ok: false, reason }) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{claims}: {other:?}"),
        }
    }
    let log_b = audit(&pair.b).await;
    for (subject, why) in [
        ("node-a", "does not carry the DNS name"),
        ("node-c", "not a node of the policy"),
    ] {
        assert!(
            of_kind(&log_b, "peer.refused")
                .iter()
                .any(|e| e["subject"] == subject
                    && e["actor"].as_str().unwrap().starts_with("peer:127.0.0.1:")
                    && e["details"]["reason"].as_str().unwrap().contains(why)),
            "{subject}: {log_b:#?}"
        );
    }
    // A certificate from another CA does not even finish TLS.
    let other = tempfile::tempdir().unwrap();
    warden::pki::generate_demo_pki(other.path(), &[]).unwrap();
    warden::pki::issue_peer_cert(other.path(), "node-a").unwrap();
    std::fs::copy(pair.pki.path().join("ca.crt"), other.path().join("ca.crt")).unwrap();
    let r = rogue_hello(other.path(), "node-a", pair.b_listen, "node-a").await;
    assert!(r.is_err(), "{r:?}");
    let (ra, rb) = both(&pair).await;
    keyed(&ra, &rb).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekeys_move_the_epoch_forward_and_retire_the_old_sa_after_the_grace_period() {
    if !tools_or_skip() {
        return;
    }
    let pair = Pair::start("rekey_interval = 2\ngrace = 1\n");
    let text = policy(1, &pair.ref_a, &pair.ref_b);
    apply_policy(&pair.a, &text, "policy.toml");
    apply_policy(&pair.b, &text, "policy.toml");
    wait_keyed(&pair, "keyed").await;

    // Watch node-b's inbound SAs from node-a: a new epoch appears next to the old one
    // (make before break), then the old one goes after the grace period.
    let mut overlaps: Vec<(u64, u64)> = Vec::new();
    let mut retired = Vec::new();
    let mut last_seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && retired.len() < 2 {
        let rb = peers(&pair.b).await;
        let epochs: Vec<u64> = peer(&rb, "node-a")
            .ok()
            .and_then(tenant)
            .map(|t| t.inbound.iter().map(|g| g.epoch).collect())
            .unwrap_or_default();
        if let [old, new] = epochs[..] {
            if !overlaps.contains(&(old, new)) {
                overlaps.push((old, new));
            }
        }
        for e in &last_seen {
            if !epochs.contains(e) && epochs.iter().any(|n| n > e) && !retired.contains(e) {
                retired.push(*e);
            }
        }
        last_seen = epochs;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        overlaps.len() >= 2,
        "no make-before-break overlap seen: {overlaps:?}\n{}",
        pair.logs()
    );
    assert!(
        retired.len() >= 2,
        "old epochs did not go: {retired:?}\n{}",
        pair.logs()
    );
    assert!(overlaps.iter().all(|(old, new)| new > old));
    // And the two sides still agree, on an epoch past the first.
    let pr = &pair;
    let (ea, eb) = until(
        20,
        "keyed on a later epoch",
        || pr.logs(),
        move || async move {
            let (ra, rb) = both(pr).await;
            keyed(&ra, &rb).and_then(|e| {
                if e.0 > 1 && e.1 > 1 {
                    Ok(e)
                } else {
                    Err(format!("{e:?}"))
                }
            })
        },
    )
    .await;
    eprintln!("epochs after rekeys: a->b {ea}, b->a {eb}; overlaps seen {overlaps:?}");
    let log_a = audit(&pair.a).await;
    assert!(of_kind(&log_a, "peer.lost").is_empty(), "{log_a:#?}");
    assert_eq!(of_kind(&log_a, "peer.attested").len(), 1);
}

/// A peer that fails a periodic re-attestation loses its SAs within one interval and the
/// failure is audited: node-a's policy changes under a running channel to reference values
/// node-b no longer meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_re_attestation_removes_the_peers_sas_within_one_interval() {
    if !tools_or_skip() {
        return;
    }
    let pair = Pair::start("");
    let text = policy(1, &pair.ref_a, &pair.ref_b);
    apply_policy(&pair.a, &text, "policy.toml");
    apply_policy(&pair.b, &text, "policy.toml");
    wait_keyed(&pair, "keyed").await;

    let mut wrong_b = pair.ref_b.clone();
    let pcrs = wrong_b["pcrs"].as_table_mut().unwrap();
    let first = pcrs.keys().next().unwrap().clone();
    pcrs.insert(first, toml::Value::String("11".repeat(32)));
    apply_policy(&pair.a, &policy(2, &pair.ref_a, &wrong_b), "policy-v2.toml");
    let changed = Instant::now();
    node_a_drops_node_b(&pair, "node-a drops node-b at its next re-attestation").await;
    let took = changed.elapsed();
    eprintln!(
        "policy changed -> node-b's SAs removed after {} ms",
        took.as_millis()
    );
    // One re-attestation interval, plus the answer's deadline and the session's tick; the
    // slack is for a loaded machine, not a speed claim.
    assert!(
        took <= Duration::from_secs_f64(2.0 * REATTEST + 2.0),
        "{took:?}"
    );
    let log_a = audit(&pair.a).await;
    let failed = of_kind(&log_a, "peer.attestation-failed");
    assert!(!failed.is_empty(), "{log_a:#?}");
    assert!(
        failed[0].to_string().contains("reference-values"),
        "{:?}",
        failed[0]
    );
}
