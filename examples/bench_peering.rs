//! The attested control channel's handshake, for bench/peering.sh (root): the two-node cluster
//! of the demo and the tunnel tests (two network namespaces, swtpm + wardend each, a tenant
//! key on both), then `N` new channels, each after node-b's wardend restarts: node-a redials,
//! and both sides report `handshake_ms` (TCP connect until both attested) in `GET /v1/peers`.
//!
//! The reference, measured in the same run: what the handshake cannot avoid, a TLS 1.3
//! handshake with the same certificates, key-exchange groups and verifiers (rustls over
//! loopback, mutual authentication, no resumption), plus two evidence collections (TPM2_Quote +
//! PCR read + assembly) on a swtpm of the same build with an ECC AK, one per side.
//!
//! ```text
//! bench_peering [N]      prints one line of figures as JSON (progress on stderr)
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{peer, Bins, Cluster, Options, SiteLayout, POLICY_SECTION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden::config::PeeringConfig;
use warden_attest::binding::{purpose, Nonce};
use warden_attest::collect::{collect, Request};
use warden_attest::tpm::{AkAlgorithm, Tpm};

const TENANT: &str = "acme";
const KEY: &[u8] = b"acme east-west root key, 32 byte";
const WORKERS: usize = 2;
/// TLS handshakes and evidence collections in the reference.
const REFERENCE_SAMPLES: usize = 50;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn policy(ref_a: &toml::Table, ref_b: &toml::Table) -> String {
    let document = format!(
        r#"
version = 1
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
"#
    );
    cluster::with_references(&document, [ref_a, ref_b])
}

fn peering_config(pki: &Path, node: &str) -> PeeringConfig {
    PeeringConfig {
        listen: "127.0.0.1:4501".parse().unwrap(),
        port: 4501,
        cert: pki.join(format!("peer-{node}.crt")),
        key: pki.join(format!("peer-{node}.key")),
        ca: pki.join("ca.crt"),
        tenant_key: "east-west".into(),
        peers: Default::default(),
        rekey_interval: Duration::from_secs(3600),
        grace: Duration::from_secs(10),
        reattest_interval: Duration::from_secs(60),
        keepalive: Duration::from_secs(5),
        peer_timeout: Duration::from_secs(15),
    }
}

/// Median ms of a full mutual TLS 1.3 handshake (and one byte each way) between node-a's
/// client and node-b's server configurations, over loopback.
fn tls_handshake_ms(pki: &Path) -> (f64, String) {
    let a = warden::peering::tls::load(&peering_config(pki, "node-a"), "node-a").unwrap();
    let b = warden::peering::tls::load(&peering_config(pki, "node-b"), "node-b").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&b.server));
        tokio::spawn(async move {
            for _ in 0..REFERENCE_SAMPLES + 1 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.unwrap();
                tls.write_all(&byte).await.unwrap();
                tls.flush().await.unwrap();
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&a.client));
        let name = rustls::pki_types::ServerName::try_from("node-b").unwrap();
        let mut samples = Vec::new();
        let mut group = String::new();
        for i in 0..REFERENCE_SAMPLES + 1 {
            let t = Instant::now();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
            tls.write_all(b"x").await.unwrap();
            tls.flush().await.unwrap();
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            if i > 0 {
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
            group = tls
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default();
        }
        (median(samples), group)
    })
}

/// Median ms of one evidence collection with an ECC AK on a fresh swtpm.
fn quote_ms() -> f64 {
    const AK: u32 = 0x8101_0002;
    let swtpm = warden_testkit::Swtpm::start().unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ak_public = tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    let mut samples = Vec::new();
    for _ in 0..REFERENCE_SAMPLES {
        let nonce = Nonce::random().unwrap();
        let t = Instant::now();
        collect(
            &mut tpm,
            &Request {
                ak_handle: AK,
                ak_public: &ak_public,
                ek_certificate: None,
                nonce: &nonce,
                purpose: purpose::PEER_CHANNEL,
                bound_key: b"channel binding",
                pcrs: &[0, 1, 2, 3, 4, 5, 6, 7, 15],
                appliance_pcr: 15,
                appliance_log: &[],
                tcg_event_log: None,
            },
        )
        .unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(samples)
}

fn main() {
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N: a number of channels"))
        .unwrap_or(10);
    assert!(
        warden_testkit::running_as_root(),
        "bench_peering needs root (network namespaces)"
    );
    let bins = Bins {
        wardend: bin("wardend"),
        wardctl: bin("wardctl"),
    };
    for b in [&bins.wardend, &bins.wardctl] {
        assert!(
            b.exists(),
            "{} is missing: cargo build --release --bins",
            b.display()
        );
    }
    eprintln!("starting two nodes...");
    let mut c = Cluster::boot(&Options {
        bins,
        workers: WORKERS,
        extra: POLICY_SECTION.to_owned(),
        a: SiteLayout::new(&["203.0.113.1"], &["203.0.113.16/28"]),
        b: SiteLayout::new(&["203.0.113.17"], &["203.0.113.0/28"]),
    });
    let ref_a = c.a.capture_reference();
    let ref_b = c.b.capture_reference();
    c.a.put_tenant_key(TENANT, KEY, &ref_a).unwrap();
    c.b.put_tenant_key(TENANT, KEY, &ref_b).unwrap();
    let document = policy(&ref_a, &ref_b);
    c.a.apply_policy(&document).unwrap();
    c.b.apply_policy(&document).unwrap();
    c.wait_keyed(&[TENANT], WORKERS, 60)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    let (mut dialer, mut acceptor, mut restart_to_keyed) = (Vec::new(), Vec::new(), Vec::new());
    let mut group = String::new();
    for i in 0..n {
        let t = Instant::now();
        c.b.node.restart();
        let _ = c.b.configure_tun();
        c.wait_keyed(&[TENANT], WORKERS, 60)
            .unwrap_or_else(|e| panic!("channel {i}: {e}\n{}", c.logs()));
        restart_to_keyed.push(t.elapsed().as_secs_f64() * 1e3);
        let (ra, rb) = (c.a.peers().unwrap(), c.b.peers().unwrap());
        let (pa, pb) = (peer(&ra, "node-b").unwrap(), peer(&rb, "node-a").unwrap());
        dialer.push(pa.handshake_ms.expect("node-a reports handshake_ms") as f64);
        acceptor.push(pb.handshake_ms.expect("node-b reports handshake_ms") as f64);
        group = pa.kx_group.clone().unwrap_or_default();
        eprintln!(
            "channel {}/{n}: handshake {} ms (node-a), {} ms (node-b); restart to keyed {:.0} ms",
            i + 1,
            pa.handshake_ms.unwrap_or(0),
            pb.handshake_ms.unwrap_or(0),
            restart_to_keyed.last().unwrap()
        );
    }
    eprintln!("reference: TLS handshakes and evidence collections...");
    let (tls_ms, tls_group) = tls_handshake_ms(c.pki.path());
    let quote = quote_ms();
    println!(
        "{}",
        serde_json::json!({
            "channels": n,
            "kx_group": group,
            "handshake_ms_dialer": median(dialer),
            "handshake_ms_acceptor": median(acceptor),
            "restart_to_keyed_ms": median(restart_to_keyed),
            "tls_ms": tls_ms,
            "tls_group": tls_group,
            "quote_ms": quote,
        })
    );
}
