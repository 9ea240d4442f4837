//! A two-node Warden cluster for `tests/tunnel_e2e.rs` and the demo (`examples/demo/`), with
//! the real parts: two network namespaces stand in for two nodes joined by a veth "wire"; in
//! each, swtpm and wardend run with `[keys]` (a signed PCR policy), `[peering]` (the attested
//! TLS 1.3 control channel that keys the ESP SAs) and `[dataplane]` (a TUN device, two
//! workers). The host's part, the tenant addresses on the TUN and the routes to the other
//! node's segments, is done here too. Then the tools to drive and observe it: the API and
//! wardctl from inside a node's namespace, peer status, metrics, TCP and UDP between tenant
//! addresses, and a census of what a capture of the wire carried.
//!
//! ```text
//!  ns A: wardend node-a, swtpm                                  ns B: wardend node-b, swtpm
//!   tenant addresses on warden0 ── wire 198.51.100.1 ═══ 198.51.100.2 wire ── warden0: tenant addresses
//!   routes to node-b's segments             ESP-in-UDP :4500,      routes to node-a's segments
//!                                           control TLS :4501 (node-a dials)
//! ```
//!
//! Included with `#[path]` by both; the including crate has `mod support` (tests/support) at
//! its root. Everything here is bounded in time; every process and namespace goes on drop.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use warden::peering::{PeerState, PeerStatus, PeersResponse, TenantSas};
use warden_attest::sealed::PolicyAuthority;
use warden_testkit::{veth, Netns};

use crate::support::Node;

/// Timers of the control channel: seconds.
pub const KEEPALIVE: f64 = 0.5;
pub const PEER_TIMEOUT: f64 = 3.0;
pub const REATTEST: f64 = 2.0;
/// The control channel's port; the same in both namespaces.
pub const PEER_PORT: u16 = 4501;
pub const ESP_PORT: u16 = 4500;
pub const TUN: &str = "warden0";
/// The wire's interface name in both namespaces (`support::capture` listens on it).
pub const WIRE: &str = "wire";
pub const WIRE_A: &str = "198.51.100.1";
pub const WIRE_B: &str = "198.51.100.2";

/// With `[policy] wire_interface = "wire"`, nftables admits on the wire only ESP-in-UDP
/// between the policy's appliances, the appliance's own TCP services, and connections to the
/// other appliances' services (the control channel): the deployment as documented.
pub const POLICY_SECTION: &str = "\n[policy]\nnftables = true\nwire_interface = \"wire\"\n";

/// The programs: a test has them from `env!("CARGO_BIN_EXE_…")`, the demo next to itself.
#[derive(Clone, Debug)]
pub struct Bins {
    pub wardend: PathBuf,
    pub wardctl: PathBuf,
}

/// The host's side of one node's data plane.
#[derive(Clone, Debug)]
pub struct SiteLayout {
    /// Tenant addresses put on the TUN device (each as a /32).
    pub addresses: Vec<String>,
    /// The other node's segments, routed into the TUN device.
    pub routes: Vec<String>,
}

impl SiteLayout {
    pub fn new(addresses: &[&str], routes: &[&str]) -> SiteLayout {
        SiteLayout {
            addresses: addresses.iter().map(|s| (*s).to_owned()).collect(),
            routes: routes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// What [`Cluster::boot`] builds.
#[derive(Clone, Debug)]
pub struct Options {
    pub bins: Bins,
    /// `[dataplane] workers` on both nodes.
    pub workers: usize,
    /// TOML appended to both configurations right after the `[dataplane]` table: a first line
    /// without a header still belongs to `[dataplane]` (e.g. `rekey_after_packets = 40000`).
    pub extra: String,
    pub a: SiteLayout,
    pub b: SiteLayout,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// stdout then stderr of a finished command.
pub fn output_text(o: &Output) -> String {
    let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
    t.push_str(&String::from_utf8_lossy(&o.stderr));
    t
}

/// `Ok(stdout + stderr)` if the command succeeded, else `Err` with its status too.
fn checked(o: Output) -> Result<String, String> {
    if o.status.success() {
        Ok(output_text(&o))
    } else {
        Err(format!(
            "exit status {:?}\n{}",
            o.status.code(),
            output_text(&o)
        ))
    }
}

/// `[keys]`: a PCR-policy authority and its signed policy for a fresh swtpm (PCRs 0 and 7 at
/// zero), shared by both nodes.
pub fn keys_section(dir: &Path) -> String {
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

/// A policy for two tenants on the two nodes: node-a (198.51.100.1) and node-b
/// (198.51.100.2), tenants acme and globex with a /28 on each node (acme-a 203.0.113.0/28,
/// acme-b .16/28, globex-a .32/28, globex-b .48/28), then `rest` (rules, limits, `[wire]`).
pub fn two_tenant_policy(version: u64, rest: &str) -> String {
    let mut doc = format!(
        "version = {version}\n\n[[node]]\nid = \"node-a\"\naddress = \"198.51.100.1\"\n\n\
         [[node]]\nid = \"node-b\"\naddress = \"198.51.100.2\"\n\n\
         [[tenant]]\nid = \"acme\"\n\n[[tenant]]\nid = \"globex\"\n"
    );
    for (i, (tenant, node)) in [
        ("acme", "a"),
        ("acme", "b"),
        ("globex", "a"),
        ("globex", "b"),
    ]
    .into_iter()
    .enumerate()
    {
        doc.push_str(&format!(
            "\n[[segment]]\nname = \"{tenant}-{node}\"\ntenant = \"{tenant}\"\n\
             cidrs = [\"203.0.113.{}/28\"]\nnode = \"node-{node}\"\n",
            16 * i
        ));
    }
    doc.push('\n');
    doc.push_str(rest);
    doc
}

/// A policy document (TOML, its nodes in order node-a, node-b) with each node's captured
/// reference values inserted as `[node.reference]`.
pub fn with_references(document: &str, refs: [&toml::Table; 2]) -> String {
    let mut doc: toml::Table = toml::from_str(document).unwrap();
    let nodes = doc["node"].as_array_mut().unwrap();
    for (node, r) in nodes.iter_mut().zip(refs) {
        node.as_table_mut()
            .unwrap()
            .insert("reference".into(), toml::Value::Table(r.clone()));
    }
    toml::to_string(&doc).unwrap()
}

pub fn peering_section(pki: &Path, node: &str) -> String {
    format!(
        "\n[peering]\nlisten = \"0.0.0.0:{PEER_PORT}\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         keepalive = {KEEPALIVE}\npeer_timeout = {PEER_TIMEOUT}\nreattest_interval = {REATTEST}\n",
        pki.join(format!("peer-{node}.crt")).display(),
        pki.join(format!("peer-{node}.key")).display(),
        pki.join("ca.crt").display(),
    )
}

pub fn dataplane_section(workers: usize) -> String {
    format!("\n[dataplane]\ntun = \"{TUN}\"\nworkers = {workers}\n")
}

/// One node: its namespace and its appliance.
pub struct Site {
    pub node: Node,
    pub ns: Netns,
    pub layout: SiteLayout,
    wardctl: PathBuf,
}

impl Site {
    /// The host's side of the data plane: wardend created the TUN; the tenant addresses and
    /// the routes to the other node's segments are the host's configuration.
    pub fn configure_tun(&self) -> std::io::Result<()> {
        for a in &self.layout.addresses {
            self.ns
                .ip(&["addr", "add", &format!("{a}/32"), "dev", TUN])?;
        }
        for r in &self.layout.routes {
            self.ns.ip(&["route", "add", r, "dev", TUN])?;
        }
        Ok(())
    }

    /// A client for this node's API with the operator's certificate, used from a thread
    /// inside the node's namespace.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, String> {
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
                let mut req = http.request(method.clone(), &url);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let r = req
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| format!("{method} {url}: {e}"))?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(format!("{method} {url}: {status}: {body}"))
                }
            })
        })
    }

    /// `GET <path>` as the operator, from a thread inside the node's namespace.
    pub fn get(&self, path: &str) -> Result<String, String> {
        self.request(reqwest::Method::GET, path, None)
    }

    pub fn peers(&self) -> Result<PeersResponse, String> {
        let body = self.get("/v1/peers")?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    pub fn try_metrics(&self) -> Result<String, String> {
        self.get("/metrics")
    }

    pub fn metrics(&self) -> String {
        self.try_metrics().unwrap()
    }

    /// Fresh evidence (`POST /v1/attestation` with a random nonce), as JSON.
    pub fn evidence(&self) -> Result<serde_json::Value, String> {
        use base64::Engine as _;
        let nonce = warden_attest::binding::Nonce::random().map_err(|e| e.to_string())?;
        let nonce = base64::engine::general_purpose::STANDARD.encode(nonce.as_bytes());
        let body = self.request(
            reqwest::Method::POST,
            "/v1/attestation",
            Some(serde_json::json!({ "nonce": nonce })),
        )?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// The wardctl the cluster was built with, run inside the node's namespace.
    pub fn wardctl(&self, args: &[&str]) -> Output {
        warden_testkit::command_in(self.ns.name())
            .arg(&self.wardctl)
            .args(args)
            .output()
            .expect("running wardctl")
    }

    /// `--url … --ca …`, and `--cert … --key …` for `identity` ("warden:tenant:acme"), or
    /// the operator's when `None`.
    pub fn connection(&self, identity: Option<&str>) -> Vec<String> {
        let (cert, key) = match identity {
            Some(id) => self.node.client_cert(id),
            None => self.node.operator_cert(),
        };
        [
            "--url".to_owned(),
            self.node.url(),
            "--ca".to_owned(),
            s(&self.node.ca()).to_owned(),
            "--cert".to_owned(),
            s(&cert).to_owned(),
            "--key".to_owned(),
            s(&key).to_owned(),
        ]
        .into()
    }

    /// `wardctl reference capture` into `path`, parsed.
    pub fn capture_reference_to(&self, path: &Path) -> Result<toml::Table, String> {
        checked(self.wardctl(&[
            "reference",
            "capture",
            "--url",
            &self.node.url(),
            "--ca",
            s(&self.node.ca()),
            "--out",
            s(path),
        ]))?;
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    /// `wardctl reference capture` into the node's directory.
    pub fn capture_reference(&self) -> toml::Table {
        let path = self.node.dir.path().join("reference.toml");
        self.capture_reference_to(&path).unwrap()
    }

    /// `wardctl keys put east-west --kind east-west` as `tenant`, after verifying the node
    /// against `reference`; `key` is the tenant's east-west key.
    pub fn put_tenant_key(
        &self,
        tenant: &str,
        key: &[u8],
        reference: &toml::Table,
    ) -> Result<String, String> {
        self.tenant_key(
            &["put", "east-west", "--kind", "east-west"],
            tenant,
            key,
            reference,
        )
    }

    /// `wardctl keys rotate east-west` as `tenant`, after verifying the node against
    /// `reference`: the next version of the tenant's east-west key is `key`.
    pub fn rotate_tenant_key(
        &self,
        tenant: &str,
        key: &[u8],
        reference: &toml::Table,
    ) -> Result<String, String> {
        self.tenant_key(&["rotate", "east-west"], tenant, key, reference)
    }

    /// `wardctl keys <verb…> --reference --key-file` as `tenant`.
    fn tenant_key(
        &self,
        verb: &[&str],
        tenant: &str,
        key: &[u8],
        reference: &toml::Table,
    ) -> Result<String, String> {
        let dir = self.node.dir.path();
        let reference_file = dir.join(format!("{tenant}-reference.toml"));
        std::fs::write(&reference_file, toml::to_string(reference).unwrap()).unwrap();
        let key_file = dir.join(format!("{tenant}-east-west.bin"));
        std::fs::write(&key_file, key).unwrap();
        let mut args: Vec<String> = std::iter::once("keys")
            .chain(verb.iter().copied())
            .chain([
                "--reference",
                s(&reference_file),
                "--key-file",
                s(&key_file),
            ])
            .map(str::to_owned)
            .collect();
        args.extend(self.connection(Some(&format!("warden:tenant:{tenant}"))));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        checked(self.wardctl(&args))
    }

    /// `wardctl policy apply` of `document` (written to `policy-<name>.toml`) as the operator.
    pub fn apply_policy_named(&self, name: &str, document: &str) -> Result<String, String> {
        let file = self.node.dir.path().join(format!("policy-{name}.toml"));
        std::fs::write(&file, document).unwrap();
        let mut args = vec!["policy".to_owned(), "apply".to_owned(), s(&file).to_owned()];
        args.extend(self.connection(None));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        checked(self.wardctl(&args))
    }

    pub fn apply_policy(&self, document: &str) -> Result<String, String> {
        self.apply_policy_named("current", document)
    }
}

/// Two nodes on a wire, each with its appliance. Fields drop in order: the appliances first
/// (wardend, then swtpm), then the namespaces, then the PKI.
pub struct Cluster {
    pub a: Site,
    pub b: Site,
    pub pki: tempfile::TempDir,
}

impl Cluster {
    /// Namespaces and wire, PKI (the API's per node, the peers' shared), both appliances
    /// started at once, their TUN devices addressed and routed. No policy, no keys yet.
    /// Panics if any of it fails.
    pub fn boot(opts: &Options) -> Cluster {
        let (na, nb) = (Netns::new().unwrap(), Netns::new().unwrap());
        veth(
            &na,
            WIRE,
            &[&format!("{WIRE_A}/24")],
            &nb,
            WIRE,
            &[&format!("{WIRE_B}/24")],
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
                + &dataplane_section(opts.workers)
                + &opts.extra
        };
        let (extra_a, extra_b) = (extra("node-a"), extra("node-b"));
        let wardend = opts.bins.wardend.as_path();
        // Both appliances start at once (swtpm manufacturing dominates).
        let (node_a, node_b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| Node::start_in_netns(wardend, "node-a", na.name(), &extra_a));
            let b = sc.spawn(|| Node::start_in_netns(wardend, "node-b", nb.name(), &extra_b));
            (a.join().unwrap(), b.join().unwrap())
        });
        let a = Site {
            node: node_a,
            ns: na,
            layout: opts.a.clone(),
            wardctl: opts.bins.wardctl.clone(),
        };
        let b = Site {
            node: node_b,
            ns: nb,
            layout: opts.b.clone(),
            wardctl: opts.bins.wardctl.clone(),
        };
        a.configure_tun().unwrap();
        b.configure_tun().unwrap();
        Cluster { a, b, pki }
    }

    /// The last lines of both wardend logs.
    pub fn logs(&self) -> String {
        format!(
            "--- node-a log ---\n{}\n--- node-b log ---\n{}",
            tail(&self.a.node.log(), 60),
            tail(&self.b.node.log(), 60)
        )
    }

    /// Wait until both sides attested each other and hold matching SAs for every tenant of
    /// `tenants`; returns how long that took.
    pub fn wait_keyed(
        &self,
        tenants: &[&str],
        workers: usize,
        secs: u64,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        poll_until(secs, || {
            keyed(&self.a.peers()?, &self.b.peers()?, tenants, workers)
        })
        .map_err(|e| format!("both attested and keyed: {e}"))?;
        Ok(t.elapsed())
    }

    /// acme and globex on both nodes, as [`two_tenant_policy`] lays them out: each tenant's
    /// east-west key put on both nodes, the policy of `version` with `rest` (rules, limits)
    /// and the captured reference values applied on both, and both tenants keyed.
    pub fn provision_two_tenants(&self, version: u64, rest: &str, workers: usize) {
        let ref_a = self.a.capture_reference();
        let ref_b = self.b.capture_reference();
        for tenant in ["acme", "globex"] {
            let key = [tenant.len() as u8; 32];
            self.a.put_tenant_key(tenant, &key, &ref_a).unwrap();
            self.b.put_tenant_key(tenant, &key, &ref_b).unwrap();
        }
        let document = with_references(&two_tenant_policy(version, rest), [&ref_a, &ref_b]);
        self.a.apply_policy(&document).unwrap();
        self.b.apply_policy(&document).unwrap();
        self.wait_keyed(&["acme", "globex"], workers, 60)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Wait until both sides attested each other (SAs or not).
    pub fn wait_attested(&self, secs: u64) -> Result<Duration, String> {
        let t = Instant::now();
        poll_until(secs, || {
            for (r, other) in [(self.a.peers()?, "node-b"), (self.b.peers()?, "node-a")] {
                let p = peer(&r, other)?;
                if p.state != PeerState::Attested {
                    return Err(format!("{} is {:?}: {:?}", p.node, p.state, p.last_error));
                }
            }
            Ok(())
        })
        .map_err(|e| format!("both attested: {e}"))?;
        Ok(t.elapsed())
    }
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Poll `check` every 100 ms until it gives `Ok`, for at most `secs`; `Err` with its last
/// complaint.
pub fn poll_until<T>(secs: u64, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(t) => return Ok(t),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!("not within {secs} s: {why}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn peer<'a>(r: &'a PeersResponse, node: &str) -> Result<&'a PeerStatus, String> {
    r.peers
        .iter()
        .find(|p| p.node == node)
        .ok_or_else(|| format!("{} has no peer {node}: {r:?}", r.node))
}

pub fn tenant_sas<'a>(p: &'a PeerStatus, tenant: &str) -> Option<&'a TenantSas> {
    p.tenants.iter().find(|t| t.tenant == tenant)
}

/// Both attested each other and each tenant's SAs match: each side's outbound SPIs (one per
/// sending worker) are the other's inbound SPIs of the same epoch.
pub fn keyed(
    ra: &PeersResponse,
    rb: &PeersResponse,
    tenants: &[&str],
    workers: usize,
) -> Result<(), String> {
    let (pa, pb) = (peer(ra, "node-b")?, peer(rb, "node-a")?);
    for p in [pa, pb] {
        if p.state != PeerState::Attested {
            return Err(format!("{} is {:?}: {:?}", p.node, p.state, p.last_error));
        }
    }
    for tenant in tenants {
        let (ta, tb) = match (tenant_sas(pa, tenant), tenant_sas(pb, tenant)) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(format!(
                    "no SAs for {tenant} yet: {:?} / {:?}",
                    pa.tenants, pb.tenants
                ))
            }
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
            if out.spis.len() != workers {
                return Err(format!("one SA per worker expected: {out:?}"));
            }
        }
    }
    Ok(())
}

/// Neither attested nor any SA with `other`, as `r`'s node sees it.
pub fn no_sa(r: &PeersResponse, other: &str) -> Result<(), String> {
    let p = peer(r, other)?;
    if p.state == PeerState::Attested || !p.tenants.is_empty() {
        return Err(format!("{p:?}"));
    }
    Ok(())
}

/// The sum of the samples of `name` whose labels include every `k="v"` of `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> Option<u64> {
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

/// The value of the first metric line that starts with `line_start` (name and exact labels).
pub fn metric_value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A deterministic payload of `len` bytes with `marker` every 4 KiB.
pub fn payload(len: usize, marker: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in v.chunks_mut(4096) {
        let n = marker.len().min(chunk.len());
        chunk[..n].copy_from_slice(&marker[..n]);
    }
    v
}

/// A TCP connection from `src` to `dst` (std cannot bind before connecting), giving up after
/// `timeout` (a blocking connect honours SO_SNDTIMEO on Linux).
pub fn connect_from(
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
/// how long it took. Every step is bounded (30 s without progress).
pub fn tcp_transfer(
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

/// `count` UDP datagrams (`marker` and a counter) from `src` (in `from`) to `dst` (in `to`),
/// each echoed back (the reply passes as the reverse of an allowed flow); every one must
/// arrive intact.
pub fn udp_echo(from: &Netns, src: &str, to: &Netns, dst: &str, count: u8, marker: &[u8]) {
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
        let msg = [marker, &[i]].concat();
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
pub enum Frame {
    Arp,
    /// IPv4: protocol, source and destination port (0 if none).
    V4(u8, u16, u16),
    /// IPv6: next header, link-local source.
    V6(u8, bool),
    Other(u16),
}

/// The frames of an Ethernet pcap (little-endian, as tcpdump writes it here), each with its
/// length on the wire. With GSO on the veth, one frame may carry many ESP packets.
pub fn frames(pcap: &[u8]) -> Vec<(Frame, usize)> {
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

/// How many times `needle` occurs in `hay` (overlapping occurrences count).
pub fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    let Some(&first) = needle.first() else {
        return 0;
    };
    hay.iter()
        .enumerate()
        .filter(|(i, b)| **b == first && hay.get(*i..*i + needle.len()) == Some(needle))
        .count()
}

/// What a capture of the wire saw.
#[derive(Debug, Default)]
pub struct WireCensus {
    /// ESP-in-UDP (port 4500 on either side): frames and bytes.
    pub esp_frames: usize,
    pub esp_bytes: usize,
    /// TCP to or from one of the given ports (the control channel, the API).
    pub control_frames: usize,
    /// ARP, and IPv6 link-local ICMPv6 (neighbour discovery, MLD).
    pub link_frames: usize,
    /// Anything else, described.
    pub unexpected: Vec<String>,
    /// Occurrences of the tenant's payload marker anywhere in the capture.
    pub marker_seen: usize,
}

/// Sort every frame of `pcap` into ESP-in-UDP, control (TCP with one of `tcp_ports` on either
/// side), link-level, or unexpected; and look for `marker` in all of it.
pub fn census(pcap: &[u8], tcp_ports: &[u16], marker: &[u8]) -> WireCensus {
    let mut n = WireCensus::default();
    for (f, len) in frames(pcap) {
        match f {
            Frame::Arp => n.link_frames += 1,
            Frame::V4(17, sp, dp) if sp == ESP_PORT || dp == ESP_PORT => {
                n.esp_frames += 1;
                n.esp_bytes += len;
            }
            Frame::V4(6, sp, dp) if tcp_ports.contains(&sp) || tcp_ports.contains(&dp) => {
                n.control_frames += 1
            }
            // ICMPv6, or a hop-by-hop header (MLD reports), from a link-local address.
            Frame::V6(58 | 0, true) => n.link_frames += 1,
            other => n.unexpected.push(format!("{other:?}")),
        }
    }
    n.marker_seen = occurrences(pcap, marker);
    n
}
