//! Audit export to a real syslog collector (rsyslogd with GnuTLS, RFC 5425 on loopback):
//! every entry arrives exactly once across restarts of either side, a kill -9 repeats at
//! most one batch and loses nothing, overflow of the backlog is reported as an export-gap
//! event, and a collector that is not trusted, or that refuses our certificate, receives and
//! confirms nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{tools_or_skip, Node};
use warden::audit_api::EntriesResponse;
use warden::export::ExportStatus;
use warden::identity::Identity;
use warden_attest::binding::Nonce;
use warden_testkit::{Rsyslog, RsyslogTls};

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

/// Skip (outside CI) without swtpm or rsyslog.
fn tools() -> bool {
    if !tools_or_skip() {
        return false;
    }
    if warden_testkit::rsyslog_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "rsyslog and rsyslog-gnutls are required in CI (scripts/deps.sh installs them)"
    );
    eprintln!("skipping: rsyslogd or its gtls driver is not installed (run scripts/deps.sh)");
    false
}

/// A collector and the PKI around it: its own CA, its server certificate, and a client
/// certificate for the exporter.
struct Collector {
    rsyslog: Rsyslog,
    _pki: tempfile::TempDir,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
}

impl Collector {
    fn start(require_client_cert: bool) -> Collector {
        let pki = tempfile::tempdir().unwrap();
        let tls = pki.path().join("tls");
        let paths = warden::pki::generate_demo_pki(&tls, &["localhost".to_owned()]).unwrap();
        let client =
            warden::pki::issue_client_cert(&tls, &Identity::Operator("exporter".into())).unwrap();
        let rsyslog = Rsyslog::start(
            warden_testkit::free_port_pair(),
            &RsyslogTls {
                ca: paths.ca_cert.clone(),
                cert: paths.server_cert,
                key: paths.server_key,
                require_client_cert,
            },
        )
        .unwrap();
        Collector {
            rsyslog,
            _pki: pki,
            ca: paths.ca_cert,
            client,
        }
    }

    /// The `[audit.syslog]` section for a node exporting here.
    fn config(&self, extra: &str) -> String {
        format!(
            "\n[audit.syslog]\naddress = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\n\
             ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            self.rsyslog.port(),
            self.ca.display(),
            self.client.0.display(),
            self.client.1.display()
        )
    }

    /// Every message received so far: seq → the messages carrying it.
    fn received(&self) -> BTreeMap<u64, Vec<Received>> {
        let mut out: BTreeMap<u64, Vec<Received>> = BTreeMap::new();
        for line in self.rsyslog.lines() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("collector line {line:?} is not JSON: {e}"));
            let r = Received::from_json(&v);
            out.entry(r.seq).or_default().push(r);
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    seq: u64,
    leaf: String,
    msgid: String,
    hostname: String,
    /// MSG without the BOM: the stored entry.
    data: String,
}

impl Received {
    fn from_json(v: &serde_json::Value) -> Received {
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let sd = field("sd");
        let param = |name: &str| {
            let start = sd
                .find(&format!(" {name}=\""))
                .unwrap_or_else(|| panic!("no {name} in {sd}"))
                + name.len()
                + 3;
            let len = sd[start..].find('"').unwrap();
            sd[start..start + len].to_owned()
        };
        assert!(sd.starts_with("[warden@32473 "), "{sd}");
        Received {
            seq: param("seq").parse().unwrap(),
            leaf: param("leaf"),
            msgid: field("msgid"),
            hostname: field("hostname"),
            data: field("msg").trim_start_matches('\u{feff}').to_owned(),
        }
    }
}

async fn operator_get(node: &Node, path: &str) -> reqwest::Response {
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    http.get(format!("{}{path}", node.url()))
        .send()
        .await
        .unwrap()
}

async fn status(node: &Node) -> ExportStatus {
    let v: serde_json::Value = operator_get(node, "/v1/audit/export")
        .await
        .json()
        .await
        .unwrap();
    serde_json::from_value(v["syslog"].clone()).unwrap()
}

/// The whole log as the API serves it (seq → stored entry).
async fn log(node: &Node) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    loop {
        let page: EntriesResponse =
            operator_get(node, &format!("/v1/audit/entries?start={}", out.len()))
                .await
                .json()
                .await
                .unwrap();
        if page.entries.is_empty() {
            return out;
        }
        for e in page.entries {
            out.insert(e.seq, e.data);
        }
    }
}

/// `n` attestations (one `attestation.served` entry each).
async fn activity(node: &Node, n: usize) {
    let http = warden::tls::client(&node.ca()).unwrap();
    for _ in 0..n {
        use base64::Engine as _;
        let nonce =
            base64::engine::general_purpose::STANDARD.encode(Nonce::random().unwrap().as_bytes());
        let resp = http
            .post(format!("{}/v1/attestation", node.url()))
            .json(&serde_json::json!({ "nonce": nonce }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

/// Wait until the exporter has delivered the whole log (at least `min` entries).
async fn caught_up(node: &Node, min: u64) -> ExportStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(node).await;
        if s.delivered == s.log_size && s.log_size >= min {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "export did not catch up: {s:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry of the log arrived, intact; returns how many arrived more than once.
fn check_arrived(
    log: &BTreeMap<u64, String>,
    got: &BTreeMap<u64, Vec<Received>>,
    name: &str,
) -> usize {
    let mut repeated = 0;
    for (seq, data) in log {
        let copies = got
            .get(seq)
            .unwrap_or_else(|| panic!("entry {seq} never arrived ({} received)", got.len()));
        let first = &copies[0];
        assert_eq!(&first.data, data, "entry {seq} arrived altered");
        let leaf = hex::encode(warden_audit::merkle::leaf_hash(data.as_bytes()));
        assert_eq!(first.leaf, leaf, "entry {seq}: wrong leaf hash");
        assert_eq!(first.hostname, name);
        let event = warden_audit::event::Event::from_leaf(data.as_bytes()).unwrap();
        assert_eq!(first.msgid, event.kind.name());
        assert!(
            copies.iter().all(|c| c == first),
            "entry {seq}: repeated copies differ"
        );
        repeated += usize::from(copies.len() > 1);
    }
    let extra: Vec<_> = got.keys().filter(|s| !log.contains_key(s)).collect();
    assert!(
        extra.is_empty(),
        "received entries the log does not have: {extra:?}"
    );
    repeated
}

fn assert_exactly_once(
    log: &BTreeMap<u64, String>,
    got: &BTreeMap<u64, Vec<Received>>,
    name: &str,
) {
    let repeated = check_arrived(log, got, name);
    assert_eq!(repeated, 0, "{repeated} entries arrived more than once");
}

#[tokio::test]
async fn every_entry_arrives_exactly_once_across_restarts_of_either_side() {
    if !tools() {
        return;
    }
    let mut collector = Collector::start(true);
    let mut node = Node::start_with_config(wardend(), "node-a", None, &collector.config(""));
    activity(&node, 20).await;
    let first = caught_up(&node, 21).await;
    assert!(
        first.batches >= 1 && first.last_error.is_none(),
        "{first:?}"
    );
    // The export status is for operators.
    {
        let (cert, key) = node.client_cert("warden:tenant:acme");
        let tenant = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
        let url = format!("{}/v1/audit/export", node.url());
        assert_eq!(
            tenant.get(&url).send().await.unwrap().status().as_u16(),
            403
        );
        let anonymous = warden::tls::client(&node.ca()).unwrap();
        assert_eq!(
            anonymous.get(&url).send().await.unwrap().status().as_u16(),
            401
        );
    }
    assert_exactly_once(&log(&node).await, &collector.received(), "node-a");

    // wardend restarts: the stop event goes out before it exits, the start event after.
    node.restart();
    activity(&node, 10).await;
    let size = caught_up(&node, 33).await.log_size;
    let got = collector.received();
    assert_exactly_once(&log(&node).await, &got, "node-a");
    let kinds: Vec<_> = got.values().map(|c| c[0].msgid.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "wardend.stop").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "wardend.start").count(), 2);

    // The collector goes away: entries wait, the failure is visible, nothing is skipped.
    collector.rsyslog.stop();
    activity(&node, 15).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let s = status(&node).await;
        if s.last_error.is_some() && s.log_size >= size + 15 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery failure reported: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(waiting.delivered, size, "{waiting:?}");
    assert_eq!(waiting.skipped, 0);
    // ... and arrive once it is back.
    collector.rsyslog.start_again().unwrap();
    let done = caught_up(&node, size + 15).await;
    assert_eq!(done.skipped, 0);
    assert_exactly_once(&log(&node).await, &collector.received(), "node-a");
}

/// Attestations in the background until `n` are done or the node stops answering.
fn burst(node: &Node, n: usize) -> tokio::task::JoinHandle<()> {
    let url = node.url();
    let ca = node.ca();
    tokio::spawn(async move {
        let http = warden::tls::client(&ca).unwrap();
        for _ in 0..n {
            use base64::Engine as _;
            let nonce = base64::engine::general_purpose::STANDARD
                .encode(Nonce::random().unwrap().as_bytes());
            let sent = http
                .post(format!("{url}/v1/attestation"))
                .json(&serde_json::json!({ "nonce": nonce }))
                .send()
                .await;
            if sent.is_err() {
                break;
            }
        }
    })
}

#[tokio::test]
async fn failures_mid_batch_repeat_at_most_that_batch_and_lose_nothing() {
    if !tools() {
        return;
    }
    const BATCH: usize = 4;
    let mut collector = Collector::start(true);
    let mut node = Node::start_with_config(
        wardend(),
        "node-b",
        None,
        &collector.config(&format!("batch = {BATCH}\n")),
    );
    caught_up(&node, 1).await;

    // kill -9 of wardend in the middle of a burst.
    let background = burst(&node, 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kill9();
    let _ = background.await;
    node.start_again();
    activity(&node, 3).await;
    caught_up(&node, 5).await;
    let repeated = check_arrived(&log(&node).await, &collector.received(), "node-b");
    assert!(
        repeated <= BATCH,
        "{repeated} entries repeated; batch is {BATCH}"
    );

    // The collector restarts in the middle of a burst.
    let background = burst(&node, 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    collector.rsyslog.stop();
    collector.rsyslog.start_again().unwrap();
    background.await.unwrap();
    caught_up(&node, 60).await;
    let again = check_arrived(&log(&node).await, &collector.received(), "node-b");
    eprintln!(
        "entries repeated: {repeated} after kill -9, {} after the collector restart",
        again - repeated
    );
    assert!(
        again - repeated <= BATCH,
        "{} more entries repeated; batch is {BATCH}",
        again - repeated
    );
}

#[tokio::test]
async fn backlog_overflow_is_an_exported_gap_event() {
    if !tools() {
        return;
    }
    let mut collector = Collector::start(true);
    collector.rsyslog.stop();
    let node = Node::start_with_config(
        wardend(),
        "node-c",
        None,
        &collector.config("max_backlog = 5\nbatch = 3\n"),
    );
    // Two overflows while the collector is down: the second skips the first one's gap event.
    let mut skipped_so_far = 0;
    for _ in 0..2 {
        activity(&node, 12).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = status(&node).await;
            if s.skipped > skipped_so_far {
                skipped_so_far = s.skipped;
                break;
            }
            assert!(Instant::now() < deadline, "no overflow: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    collector.rsyslog.start_again().unwrap();
    let done = caught_up(&node, 25).await;
    assert!(done.skipped > 0, "{done:?}");
    let log = log(&node).await;
    let got = collector.received();
    // Gap events name the skipped ranges (a later one repeats every range whose gap event was
    // itself skipped); everything else arrived exactly once.
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    for c in got.values().filter(|c| c[0].msgid == "audit.export-gap") {
        let e = warden_audit::event::Event::from_leaf(c[0].data.as_bytes()).unwrap();
        let d = |k: &str| -> u64 { e.details[k].parse().unwrap() };
        assert_eq!(d("count"), d("end") - d("first"));
        for r in e.details["ranges"].split(',') {
            let (a, b) = r.split_once('-').unwrap();
            gaps.push((a.parse().unwrap(), b.parse().unwrap()));
        }
        assert!(
            gaps.contains(&(d("first"), d("end")))
                || gaps.iter().any(|(a, b)| *a <= d("first") && d("end") <= *b)
        );
    }
    assert!(!gaps.is_empty(), "no export-gap event arrived");
    let skipped = log
        .keys()
        .filter(|seq| gaps.iter().any(|(a, b)| (a..b).contains(seq)))
        .count() as u64;
    assert_eq!(skipped, done.skipped, "{gaps:?}");
    // Overflow struck again while a gap event was waiting: that gap event was skipped too,
    // and a later one still named its range.
    let skipped_gap_events = log
        .iter()
        .filter(|(seq, data)| {
            data.contains("\"audit.export-gap\"") && gaps.iter().any(|(a, b)| (a..b).contains(seq))
        })
        .count();
    assert!(
        skipped_gap_events > 0,
        "the test did not exercise a skipped gap event: {gaps:?}"
    );
    for (seq, data) in &log {
        let in_gap = gaps.iter().any(|(a, b)| (a..b).contains(&seq));
        match got.get(seq) {
            Some(copies) => {
                assert!(!in_gap, "entry {seq} is in a gap and arrived");
                assert_eq!(
                    copies.len(),
                    1,
                    "entry {seq} arrived {} times",
                    copies.len()
                );
                assert_eq!(&copies[0].data, data);
            }
            None => assert!(in_gap, "entry {seq} neither arrived nor is in a gap"),
        }
    }
}

#[tokio::test]
async fn an_untrusted_or_refusing_collector_gets_and_confirms_nothing() {
    if !tools() {
        return;
    }
    // The node trusts another CA than the one that issued the collector's certificate.
    let collector = Collector::start(false);
    let other = tempfile::tempdir().unwrap();
    let other_ca = warden::pki::generate_demo_pki(other.path(), &[])
        .unwrap()
        .ca_cert;
    let config = collector.config("").replace(
        &collector.ca.display().to_string(),
        &other_ca.display().to_string(),
    );
    let node = Node::start_with_config(wardend(), "node-d", None, &config);
    let s = wait_for_error(&node).await;
    assert!(
        s.last_error.as_deref().unwrap().contains("TLS handshake"),
        "{s:?}"
    );
    assert_eq!(s.delivered, 0);
    assert!(collector.received().is_empty());
    drop(node);

    // The collector requires a client certificate from its CA; the node presents none.
    let collector = Collector::start(true);
    let config = collector.config("");
    let config = config
        .lines()
        .filter(|l| !l.starts_with("cert =") && !l.starts_with("key ="))
        .collect::<Vec<_>>()
        .join("\n");
    let node = Node::start_with_config(wardend(), "node-e", None, &config);
    let s = wait_for_error(&node).await;
    assert_eq!(s.delivered, 0, "{s:?}");
    assert!(collector.received().is_empty());
}

async fn wait_for_error(node: &Node) -> ExportStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(node).await;
        if s.last_error.is_some() {
            return s;
        }
        assert!(Instant::now() < deadline, "no delivery error: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
