//! Steps 1 to 5: the appliances attest to each other, tenants provision keys, tenant traffic
//! crosses the wire encrypted, a cross-tenant flow is denied, and SAs rekey and a tenant key rotates under traffic.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{AddrParseError, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warden::peering::PeersResponse;

use crate::cluster::{
    census, connect_from, metric_sum, payload, peer, tcp_transfer, tenant_sas, udp_echo, Cluster,
    PEER_PORT,
};
use crate::show::{self, say, As};
use crate::support::capture::Capture;

pub const ACME: &str = "acme";
pub const GLOBEX: &str = "globex";
pub const TENANTS: [&str; 2] = [ACME, GLOBEX];
pub const WORKERS: usize = 2;
/// Tenant addresses: acme and globex each have a /28 segment on each node.
pub const ACME_A: &str = "203.0.113.1";
pub const ACME_B: &str = "203.0.113.17";
pub const GLOBEX_A: &str = "203.0.113.33";
pub const GLOBEX_B: &str = "203.0.113.49";
/// Appears every 4 KiB of acme's traffic: it must never be seen on the wire.
pub const MARKER: &[u8] = b"ACME-CONFIDENTIAL-INFERENCE-DATA";
pub const GLOBEX_MARKER: &[u8] = b"GLOBEX-CONFIDENTIAL-MODEL-WEIGHT";
/// `[dataplane] rekey_after_packets` on both nodes: a rekey every few hundred milliseconds at
/// the demo's rates. The sender may send as many again before its SA stops (hard limit); the
/// receiver answers a rekey request at once, so the next epoch is in place within a round trip.
pub const REKEY_AFTER_PACKETS: u64 = 20_000;
/// How long a connection attempt that must fail may take (past the first SYN retransmit).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Transfer sizes and waits: `--short` for CI, or the full story.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub acme_mib: usize,
    pub globex_mib: usize,
    pub rekey_mib: usize,
    pub wait_secs: u64,
}

impl Sizes {
    pub fn new(short: bool) -> Sizes {
        if short {
            Sizes {
                acme_mib: 16,
                globex_mib: 4,
                rekey_mib: 384,
                wait_secs: 30,
            }
        } else {
            Sizes {
                acme_mib: 128,
                globex_mib: 32,
                rekey_mib: 768,
                wait_secs: 60,
            }
        }
    }
}

/// Everything the story works with.
pub struct Demo {
    pub c: Cluster,
    pub root: PathBuf,
    pub sizes: Sizes,
    /// The vendor's release keys and repository (`wardctl release`).
    pub vendor: PathBuf,
    /// The security team's reference values per node (node-a, node-b), as the policy lists
    /// them, and their files.
    pub golden: [toml::Table; 2],
    /// Reference values published to tenants (with the policy measurement), per node.
    pub published: [PathBuf; 2],
    pub policy_version: u64,
}

pub fn ensure(cond: bool, why: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why.into())
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

impl Demo {
    pub fn dir(&self, sub: &str) -> PathBuf {
        let d = self.root.join(sub);
        let _ = std::fs::create_dir_all(&d);
        d
    }

    pub fn golden_file(&self, i: usize) -> PathBuf {
        self.dir("security")
            .join(format!("node-{}.toml", ["a", "b"][i]))
    }

    /// The policy: both nodes with the security team's reference values, two tenants with a
    /// segment on each node, and each tenant's rules inside its own segments only.
    pub fn policy_document(&self) -> String {
        let mut doc: toml::Table = toml::from_str(&format!(
            r#"
version = {version}
description = "Warden demo: two nodes, tenants acme and globex"

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
from = "globex-a"
to = "globex-b"
proto = "tcp"
ports = [5001]
"#,
            version = self.policy_version
        ))
        .unwrap_or_default();
        if let Some(nodes) = doc.get_mut("node").and_then(|n| n.as_array_mut()) {
            for (node, reference) in nodes.iter_mut().zip(&self.golden) {
                if let Some(t) = node.as_table_mut() {
                    t.insert("reference".into(), toml::Value::Table(reference.clone()));
                }
            }
        }
        toml::to_string(&doc).unwrap_or_default()
    }

    /// Apply the next policy version on both nodes (the security team, as operator).
    pub fn apply_next_policy(&mut self) -> Result<(), String> {
        self.policy_version += 1;
        let file = self
            .dir("security")
            .join(format!("policy-v{}.toml", self.policy_version));
        std::fs::write(&file, self.policy_document()).map_err(|e| e.to_string())?;
        for site in [&self.c.a, &self.c.b] {
            let (ok, out) = show::wardctl(site, As::Operator, &["policy", "apply", path(&file)], 4);
            ensure(
                ok,
                format!("policy v{} refused: {out}", self.policy_version),
            )?;
        }
        Ok(())
    }

    pub fn peers(&self) -> Result<(PeersResponse, PeersResponse), String> {
        Ok((self.c.a.peers()?, self.c.b.peers()?))
    }

    /// One line per tenant and direction: epoch, key version and SPIs.
    pub fn show_sas(&self) -> Result<(), String> {
        let (ra, rb) = self.peers()?;
        let (pa, pb) = (peer(&ra, "node-b")?, peer(&rb, "node-a")?);
        for tenant in TENANTS {
            for (from, to, p) in [("node-a", "node-b", pa), ("node-b", "node-a", pb)] {
                if let Some(t) = tenant_sas(p, tenant) {
                    for g in &t.outbound {
                        let spis: Vec<String> =
                            g.spis.iter().map(|s| format!("{s:#010x}")).collect();
                        let version = g
                            .key_version
                            .map(|v| format!("key v{v}, "))
                            .unwrap_or_default();
                        say(&format!(
                            "  {tenant:<7} {from} → {to}: epoch {}, {version}one SA per worker, SPIs {}",
                            g.epoch,
                            spis.join(" ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The data-plane drops of `reason` in `direction` on node `i` (0: node-a).
    pub fn drops(&self, i: usize, direction: &str, reason: &str) -> Result<u64, String> {
        let site = [&self.c.a, &self.c.b][i];
        let m = site.try_metrics()?;
        Ok(metric_sum(
            &m,
            "warden_dataplane_drops_total",
            &[
                &format!("direction=\"{direction}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
        .unwrap_or(0))
    }

    /// Packets lost in the tunnel, per node, direction and reason (expired SA, unknown SPI,
    /// failed ICV, replay, too old).
    pub fn losses(&self) -> Result<BTreeMap<String, u64>, String> {
        let mut n = BTreeMap::new();
        for (i, node) in ["node-a", "node-b"].into_iter().enumerate() {
            for reason in ["expired", "no-sa", "auth", "replay", "too-old"] {
                for direction in ["out", "in"] {
                    n.insert(
                        format!("{node} {direction} {reason}"),
                        self.drops(i, direction, reason)?,
                    );
                }
            }
        }
        Ok(n)
    }

    pub fn rekeys(&self) -> Result<u64, String> {
        let mut n = 0;
        for site in [&self.c.a, &self.c.b] {
            let m = site.try_metrics()?;
            n += metric_sum(&m, "warden_dataplane_rekeys_total", &[]).unwrap_or(0);
        }
        Ok(n)
    }

    /// The key version of acme's newest outbound SAs on both nodes (node-a → node-b,
    /// node-b → node-a).
    pub fn acme_key_versions(&self) -> Result<(Option<u32>, Option<u32>), String> {
        let (ra, rb) = self.peers()?;
        let newest = |r: &PeersResponse, to: &str| -> Result<Option<u32>, String> {
            Ok(tenant_sas(peer(r, to)?, ACME)
                .and_then(|t| t.outbound.iter().max_by_key(|g| g.epoch))
                .and_then(|g| g.key_version))
        };
        Ok((newest(&ra, "node-b")?, newest(&rb, "node-a")?))
    }

    /// acme's current outbound epoch from node-a to node-b.
    pub fn acme_epoch(&self) -> Result<u64, String> {
        let ra = self.c.a.peers()?;
        let p = peer(&ra, "node-b")?;
        tenant_sas(p, ACME)
            .and_then(|t| t.outbound.iter().map(|g| g.epoch).max())
            .ok_or_else(|| "acme has no outbound SA on node-a".to_owned())
    }

    /// acme sends `mib` MiB from node-a to node-b; `Ok(seconds)` if it arrived intact.
    pub fn acme_transfer(&self, mib: usize) -> Result<f64, String> {
        let data = payload(mib << 20, MARKER);
        let (got, took) = tcp_transfer(
            &self.c.a.ns,
            ACME_A,
            &self.c.b.ns,
            &format!("{ACME_B}:5001"),
            &data,
        );
        ensure(
            got == data,
            format!(
                "the stream arrived changed: {} of {} bytes",
                got.len(),
                data.len()
            ),
        )?;
        Ok(took.as_secs_f64())
    }
}

fn rate(mib: usize, secs: f64) -> String {
    format!(
        "{:.0} Mbit/s",
        (mib as f64) * 8.0 * 1.048_576 / secs.max(1e-6)
    )
}

/// 1. The appliances attest to each other; a tenant verifies one itself.
pub fn attest(d: &mut Demo) -> Result<String, String> {
    say("The security team records each appliance's known-good state as reference values: PCRs,");
    say("the attestation key, and what wardend measured (its binary, its result and audit keys).");
    for i in 0..2 {
        let file = d.golden_file(i);
        let site = [&d.c.a, &d.c.b][i];
        let (ok, out) = show::wardctl(
            site,
            As::Anyone,
            &["reference", "capture", "--out", path(&file)],
            2,
        );
        ensure(ok, format!("reference capture failed: {out}"))?;
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        d.golden[i] = toml::from_str(&text).map_err(|e| e.to_string())?;
    }
    say("Policy v1 lists both nodes with those values, the tenants acme and globex with a /28");
    say("on each node, and three rules: acme-a → acme-b tcp/5001 and udp/5002, globex-a →");
    say("globex-b tcp/5001. Nothing else; crossing tenants would need both tenants' grant.");
    d.apply_next_policy()?;
    say("Each appliance now dials or accepts its peer over TLS 1.3 and both present TPM evidence");
    say("bound to that TLS session, appraised against the policy's reference values:");
    let took = d.c.wait_attested(d.sizes.wait_secs)?;
    let (ra, rb) = d.peers()?;
    let mut groups = Vec::new();
    for (r, other) in [(&ra, "node-b"), (&rb, "node-a")] {
        let p = peer(r, other)?;
        let group = p.kx_group.clone().unwrap_or_default();
        say(&format!(
            "  {} → {other}: {} ({}), key exchange {group}, attested policy v{}, handshake {} ms",
            r.node,
            p.state.as_str(),
            p.role,
            p.policy_version.unwrap_or(0),
            p.handshake_ms.unwrap_or(0)
        ));
        groups.push(group);
    }
    ensure(
        groups.iter().all(|g| g == "X25519MLKEM768"),
        format!("key exchange groups {groups:?}"),
    )?;
    say("No SA exists yet: no tenant has given the appliances a key.");

    say("");
    say("Tenant acme does not take the security team's word for it: it verifies node-b itself");
    say("(fresh nonce, TPM quote, every check) against the reference values published for it:");
    for i in 0..2 {
        let site = [&d.c.a, &d.c.b][i];
        site.capture_reference_to(&d.published[i])?;
    }
    let reference = d.published[1].clone();
    let (ok, out) = show::wardctl(
        &d.c.b,
        As::Tenant(ACME),
        &["attest", "--reference", path(&reference)],
        30,
    );
    ensure(
        ok && out.contains("PASS"),
        "wardctl attest did not pass for node-b",
    )?;
    // Kept for step 8: the log must extend this checkpoint.
    let saved = d.dir("security").join("node-b-checkpoint.note");
    let golden = d.golden_file(1);
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--reference".to_owned(),
        path(&golden).to_owned(),
        "--saved".to_owned(),
        path(&saved).to_owned(),
    ];
    args.extend(d.c.b.connection(None));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = d.c.b.wardctl(&args);
    ensure(
        o.status.success(),
        "saving node-b's audit checkpoint failed",
    )?;
    Ok(format!(
        "attested both ways in {} ms (X25519MLKEM768); acme's wardctl attest: PASS",
        took.as_millis()
    ))
}

/// 2. The tenants provision their east-west keys on both appliances.
pub fn provision(d: &mut Demo) -> Result<String, String> {
    say("Each tenant verifies each appliance against the published reference values, then sends");
    say("its east-west key wrapped (HPKE) to the appliance's attested one-use key; the TPM seals");
    say("it under the signed PCR policy. The key never exists in the clear outside the two.");
    let rng = ring::rand::SystemRandom::new();
    let mut first = true;
    for tenant in TENANTS {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut key).map_err(|_| "no randomness")?;
        let file = d.dir(&format!("tenants/{tenant}")).join("east-west.key");
        std::fs::write(&file, key).map_err(|e| e.to_string())?;
        for i in 0..2 {
            let site = [&d.c.a, &d.c.b][i];
            let reference = d.published[i].clone();
            let (ok, out) = show::wardctl(
                site,
                As::Tenant(tenant),
                &[
                    "keys",
                    "put",
                    "east-west",
                    "--kind",
                    "east-west",
                    "--reference",
                    path(&reference),
                    "--key-file",
                    path(&file),
                ],
                if first { 12 } else { 2 },
            );
            first = false;
            ensure(ok, format!("{tenant}'s key on {}: {out}", site.node.name))?;
        }
    }
    say("The operator sees the keys, their versions and states, never the material:");
    let (ok, _) = show::wardctl(&d.c.a, As::Operator, &["keys", "list"], 8);
    ensure(ok, "wardctl keys list failed")?;
    say("With a key on both sides, the appliances key each tenant's SAs from the attested");
    say("channel's secret and the tenant's key:");
    let took =
        d.c.wait_keyed(&TENANTS, WORKERS, d.sizes.wait_secs)
            .map_err(|e| format!("{e}\n{}", d.c.logs()))?;
    d.show_sas()?;
    Ok(format!(
        "4 keys sealed (2 tenants x 2 nodes); SAs for both tenants both ways {} ms later",
        took.as_millis()
    ))
}

/// 3. Tenant traffic crosses the wire as ESP-in-UDP only.
pub fn traffic(d: &mut Demo) -> Result<String, String> {
    let s = d.sizes;
    say(&format!(
        "tcpdump listens on node-b's end of the wire. acme sends {} MiB over TCP from {ACME_A}",
        s.acme_mib
    ));
    say(&format!(
        "(node-a) to {ACME_B}:5001 (node-b), \"{}\" every 4 KiB, and 10 UDP",
        String::from_utf8_lossy(MARKER)
    ));
    say(&format!(
        "datagrams that are echoed back; globex sends {} MiB between its own segments.",
        s.globex_mib
    ));
    let capture = Capture::start(&d.c.b.ns);
    let acme = d.acme_transfer(s.acme_mib);
    let udp = std::panic::catch_unwind(|| {
        udp_echo(
            &d.c.a.ns,
            ACME_A,
            &d.c.b.ns,
            &format!("{ACME_B}:5002"),
            10,
            MARKER,
        )
    });
    let globex_data = payload(s.globex_mib << 20, GLOBEX_MARKER);
    let (globex_got, globex_took) = tcp_transfer(
        &d.c.a.ns,
        GLOBEX_A,
        &d.c.b.ns,
        &format!("{GLOBEX_B}:5001"),
        &globex_data,
    );
    let pcap = capture.stop();
    let acme_secs = acme?;
    ensure(udp.is_ok(), "the UDP datagrams did not all come back")?;
    ensure(globex_got == globex_data, "globex's stream arrived changed")?;
    say(&format!(
        "  acme:   {} MiB arrived intact in {acme_secs:.2} s ({}); 10/10 datagrams echoed",
        s.acme_mib,
        rate(s.acme_mib, acme_secs)
    ));
    say(&format!(
        "  globex: {} MiB arrived intact in {:.2} s ({})",
        s.globex_mib,
        globex_took.as_secs_f64(),
        rate(s.globex_mib, globex_took.as_secs_f64())
    ));

    let file = d.root.join("wire.pcap");
    std::fs::write(&file, &pcap).map_err(|e| e.to_string())?;
    let n = census(&pcap, &[PEER_PORT, d.c.b.node.port], MARKER);
    let globex_seen = crate::cluster::occurrences(&pcap, GLOBEX_MARKER);
    let sent = (s.acme_mib << 20) / 4096 + 10;
    say(&format!(
        "What the wire carried ($DEMO/wire.pcap, {} bytes):",
        pcap.len()
    ));
    say(&format!(
        "  {:>7} ESP-in-UDP frames to/from port 4500 ({} bytes; with GSO a frame holds several packets)",
        n.esp_frames, n.esp_bytes
    ));
    say(&format!(
        "  {:>7} control-channel frames (TLS 1.3 on port {PEER_PORT})",
        n.control_frames
    ));
    say(&format!(
        "  {:>7} ARP and IPv6 neighbour discovery",
        n.link_frames
    ));
    say(&format!(
        "  {:>7} anything else (cleartext tenant packets would be here)",
        n.unexpected.len()
    ));
    say(&format!(
        "  acme's marker: sent {sent} times, seen {} times; globex's: seen {globex_seen} times",
        n.marker_seen
    ));
    say("A few ESP frames as tcpdump shows them:");
    if let Ok(o) = Command::new("tcpdump")
        .args(["-nn", "-r", path(&file), "-c", "3", "udp port 4500"])
        .output()
    {
        show::output(&String::from_utf8_lossy(&o.stdout), 3);
    }
    let m = d.c.b.try_metrics()?;
    for tenant in TENANTS {
        let bytes = metric_sum(
            &m,
            "warden_esp_bytes_total",
            &[
                "direction=\"in\"",
                "peer=\"node-a\"",
                &format!("tenant=\"{tenant}\""),
            ],
        )
        .unwrap_or(0);
        say(&format!(
            "  node-b's inbound SAs for {tenant}: {bytes} bytes decrypted (warden_esp_bytes_total)"
        ));
    }
    ensure(
        n.unexpected.is_empty(),
        format!("frames other than ESP on the wire: {:?}", n.unexpected),
    )?;
    ensure(
        n.marker_seen == 0 && globex_seen == 0,
        "a tenant's payload is visible on the wire",
    )?;
    ensure(
        n.esp_bytes > s.acme_mib << 20,
        format!("only {} bytes of ESP for {} MiB", n.esp_bytes, s.acme_mib),
    )?;
    Ok(format!(
        "{} + {} MiB and 10 datagrams intact; wire: {} ESP-in-UDP frames, {} control, 0 other; \
         marker seen 0 of {sent} times",
        s.acme_mib, s.globex_mib, n.esp_frames, n.control_frames
    ))
}

/// 4. A cross-tenant flow is denied, and counted.
pub fn cross_tenant(d: &mut Demo) -> Result<String, String> {
    say(&format!(
        "globex's host at {GLOBEX_A} (node-a) tries acme's service at {ACME_B}:5001 (node-b)."
    ));
    say("No rule allows globex → acme (and acme granted nothing to globex):");
    let before = d.drops(0, "out", "policy")?;
    let listener =
        d.c.b
            .ns
            .run(|| TcpListener::bind(format!("{ACME_B}:5001")))
            .map_err(|e| e.to_string())?;
    let src: SocketAddrV4 = format!("{GLOBEX_A}:0")
        .parse()
        .map_err(|e: AddrParseError| e.to_string())?;
    let dst: SocketAddrV4 = format!("{ACME_B}:5001")
        .parse()
        .map_err(|e: AddrParseError| e.to_string())?;
    let attempt = d.c.a.ns.run(|| connect_from(src, dst, CONNECT_TIMEOUT));
    let refused = match &attempt {
        Ok(_) => false,
        Err(e) => {
            say(&format!(
                "  connect {GLOBEX_A} → {ACME_B}:5001: no answer within {} ms ({e})",
                CONNECT_TIMEOUT.as_millis()
            ));
            true
        }
    };
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let accepted = !matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock);
    say(&format!(
        "  acme's listener on {ACME_B}:5001 accepted {} connections",
        usize::from(accepted)
    ));
    let after = crate::cluster::poll_until(5, || {
        let n = d.drops(0, "out", "policy")?;
        if n > before {
            Ok(n)
        } else {
            Err(format!("still {n}"))
        }
    })?;
    say(&format!(
        "  node-a: warden_dataplane_drops_total{{direction=\"out\",reason=\"policy\"}} {before} → {after}"
    ));
    say("  (node-a's data plane dropped the SYN and its retransmission before any SA: the");
    say("  packet never reached the wire, let alone node-b)");
    ensure(refused, "the connection succeeded")?;
    ensure(
        !accepted,
        "acme's listener accepted a connection from globex",
    )?;
    Ok(format!(
        "connection refused; node-a counted {} policy drops",
        after - before
    ))
}

/// Step 5: under a running TCP transfer, SAs rekey by packet count and acme rotates its
/// east-west key; nothing is lost.
pub fn rekey(d: &mut Demo) -> Result<String, String> {
    let mib = d.sizes.rekey_mib;
    say(&format!(
        "Both nodes run with [dataplane] rekey_after_packets = {REKEY_AFTER_PACKETS}: an outbound SA asks"
    ));
    say("for a new epoch after that many packets (it stops at twice that). The receiver installs");
    say("the next epoch's inbound SA first, then offers it; the sender switches at once; the old");
    say("inbound SA goes after a grace period. Meanwhile acme rotates its east-west key: version");
    say("2 goes to node-b first, then to node-a. Each side announces the key versions it holds,");
    say("and SAs use the older of both, so they move to version 2 once both nodes have it.");
    say(&format!(
        "acme sends {mib} MiB in one TCP stream, and rotates while it runs:"
    ));
    let rng = ring::rand::SystemRandom::new();
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&rng, &mut key).map_err(|_| "no randomness")?;
    let next = d.dir("tenants/acme").join("east-west-v2.key");
    std::fs::write(&next, key).map_err(|e| e.to_string())?;
    let (epoch0, rekeys0, losses0) = (d.acme_epoch()?, d.rekeys()?, d.losses()?);
    let d: &Demo = d;
    let (secs, rotated) = std::thread::scope(|sc| {
        let transfer = sc.spawn(|| d.acme_transfer(mib));
        std::thread::sleep(Duration::from_millis(300));
        let mut rotated = Ok(());
        for i in [1, 0] {
            let site = [&d.c.a, &d.c.b][i];
            let (ok, out) = show::wardctl(
                site,
                As::Tenant(ACME),
                &[
                    "keys",
                    "rotate",
                    "east-west",
                    "--reference",
                    path(&d.published[i]),
                    "--key-file",
                    path(&next),
                ],
                2,
            );
            if !ok {
                rotated = Err(format!("rotating on {}: {out}", site.node.name));
                break;
            }
        }
        let secs = transfer
            .join()
            .unwrap_or_else(|_| Err("the transfer panicked".into()));
        (secs, rotated)
    });
    let secs = secs?;
    rotated?;
    let versions =
        crate::cluster::poll_until(d.sizes.wait_secs, || match d.acme_key_versions()? {
            (Some(2), Some(2)) => Ok(()),
            other => Err(format!("acme's newest SAs are keyed with {other:?}")),
        });
    let (epoch1, rekeys1, losses1) = (d.acme_epoch()?, d.rekeys()?, d.losses()?);
    say(&format!(
        "  {mib} MiB arrived intact in {secs:.2} s ({}), byte for byte",
        rate(mib, secs)
    ));
    say(&format!(
        "  acme's epoch node-a → node-b: {epoch0} → {epoch1}; rekeys on both nodes \
         (warden_dataplane_rekeys_total): {rekeys0} → {rekeys1}"
    ));
    let lost: Vec<String> = losses1
        .iter()
        .filter_map(|(k, v)| {
            let delta = v - losses0.get(k).copied().unwrap_or(0);
            (delta > 0).then(|| format!("{k}: {delta}"))
        })
        .collect();
    let total: u64 = losses1.values().sum::<u64>() - losses0.values().sum::<u64>();
    say(&format!(
        "  packets dropped in the tunnel meanwhile (expired SA, unknown SPI, ICV, replay, too \
         old): {total}{}",
        if lost.is_empty() {
            String::new()
        } else {
            format!(" ({})", lost.join(", "))
        }
    ));
    d.show_sas()?;
    versions?;
    ensure(
        epoch1 >= epoch0 + 2,
        format!("only {} rekeys during the transfer", epoch1 - epoch0),
    )?;
    ensure(
        total == 0,
        format!("{total} packets dropped: {}", lost.join(", ")),
    )?;
    Ok(format!(
        "{mib} MiB intact across {} rekeys (epoch {epoch0} → {epoch1}) and acme's key \
         rotation to v2; 0 packets dropped",
        epoch1 - epoch0
    ))
}

/// The reference values' appliance events as (kind, detail), for printing.
pub fn events_of(evidence: &serde_json::Value) -> Vec<(String, String)> {
    evidence["appliance_log"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or_default().to_owned(),
                        e["detail"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Counts of each kind, in first-seen order.
pub fn kinds(list: impl IntoIterator<Item = String>) -> Vec<(String, usize)> {
    let mut order: Vec<String> = Vec::new();
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for k in list {
        if !n.contains_key(&k) {
            order.push(k.clone());
        }
        *n.entry(k).or_default() += 1;
    }
    order
        .into_iter()
        .map(|k| {
            let c = n.get(&k).copied().unwrap_or(0);
            (k, c)
        })
        .collect()
}
