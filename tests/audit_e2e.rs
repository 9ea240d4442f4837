//! The audit log of a running appliance: actions are recorded, consumers verify the log with
//! wardctl, tampering with the stored log is detected, tenants see only their own entries, and
//! the live stream resumes without loss or duplicates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli::{capture_reference, text, wardctl};
use support::{tools_or_skip, Node};
use warden::audit_api::EntriesResponse;
use warden_attest::binding::Nonce;

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Reference values captured from the node (they name the audit key).
fn capture(node: &Node) -> PathBuf {
    let out = node.dir.path().join("reference.toml");
    let url = node.url();
    capture_reference(&url, &node.ca(), &out);
    out
}

fn verify(
    node: &Node,
    cert: &(PathBuf, PathBuf),
    reference: &Path,
    saved: &Path,
    all: bool,
) -> Output {
    let url = node.url();
    let ca = node.ca();
    let mut args = vec![
        "audit",
        "verify",
        "--url",
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert.0),
        "--key",
        s(&cert.1),
        "--reference",
        s(reference),
        "--saved",
        s(saved),
    ];
    if all {
        args.push("--all");
    }
    wardctl(&args)
}

/// Fetch evidence as `cert`'s holder (so the attestation is recorded as theirs).
async fn attest_as(node: &Node, cert: &(PathBuf, PathBuf)) {
    let http = warden::tls::client_with_identity(&node.ca(), &cert.0, &cert.1).unwrap();
    let body = serde_json::json!({"nonce": base64_nonce(&Nonce::random().unwrap())});
    let resp = http
        .post(format!("{}/v1/attestation", node.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

fn base64_nonce(nonce: &Nonce) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(nonce.as_bytes())
}

async fn entries(node: &Node, cert: &(PathBuf, PathBuf)) -> EntriesResponse {
    let http = warden::tls::client_with_identity(&node.ca(), &cert.0, &cert.1).unwrap();
    http.get(format!("{}/v1/audit/entries?start=0", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn actions_are_recorded_and_the_log_verifies() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let op = node.operator_cert();
    let saved = node.dir.path().join("saved.note");
    let o = verify(&node, &op, &reference, &saved, true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict     PASS"));
    // More activity; the log must extend the saved checkpoint.
    attest_as(&node, &node.client_cert("warden:tenant:acme")).await;
    let o = verify(&node, &op, &reference, &saved, true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("extends the saved checkpoint"),
        "{}",
        text(&o)
    );
    let page = entries(&node, &op).await;
    let kinds: Vec<String> = page
        .entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds[0], "wardend.start", "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "attestation.served"), "{kinds:?}");
}

#[tokio::test]
async fn tenants_see_only_their_own_entries_on_every_route() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let a = node.client_cert("warden:tenant:alpha");
    let b = node.client_cert("warden:tenant:bravo");
    attest_as(&node, &a).await;
    attest_as(&node, &b).await;
    attest_as(&node, &a).await;

    let mine = |page: &EntriesResponse, tenant: &str| {
        page.entries.iter().all(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["tenant"] == tenant
        })
    };
    let pa = entries(&node, &a).await;
    assert_eq!(pa.entries.len(), 2);
    assert!(mine(&pa, "alpha"));
    let pb = entries(&node, &b).await;
    assert_eq!(pb.entries.len(), 1);
    assert!(mine(&pb, "bravo"));
    let all = entries(&node, &node.operator_cert()).await;
    assert!(all.entries.len() >= 4);

    let http_a = warden::tls::client_with_identity(&node.ca(), &a.0, &a.1).unwrap();
    let get = |url: String| {
        let http = http_a.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    // Bravo's entry is not found for alpha: inclusion proof and stream.
    let bravo_seq = pb.entries[0].seq;
    let r = get(format!(
        "{}/v1/audit/proof/inclusion?seq={bravo_seq}&size={}",
        node.url(),
        all.size
    ))
    .await;
    assert_eq!(r.status().as_u16(), 404);
    let alpha_seq = pa.entries[0].seq;
    let r = get(format!(
        "{}/v1/audit/proof/inclusion?seq={alpha_seq}&size={}",
        node.url(),
        all.size
    ))
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let mut stream = get(format!("{}/v1/audit/stream?from=0", node.url())).await;
    let mut seen = String::new();
    while seen.lines().count() < 2 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await
            .expect("stream stalled")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("bravo"), "{seen}");

    // Without a certificate: 401 on every audit route.
    let anon = warden::tls::client(&node.ca()).unwrap();
    for route in [
        "checkpoint",
        "entries?start=0",
        "proof/inclusion?seq=0&size=1",
        "proof/consistency?old=1&new=1",
        "stream?from=0",
    ] {
        let r = anon
            .get(format!("{}/v1/audit/{route}", node.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{route}");
    }
}

/// Flip one byte of the first stored event; with `fix_crc` also recompute its checksum, as an
/// attacker with write access to the disk would.
fn tamper(audit_dir: &Path, fix_crc: bool) {
    let seg = audit_dir.join("segments/00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let payload = 8..8 + len;
    let text = String::from_utf8(bytes[payload.clone()].to_vec()).unwrap();
    let at = text.find("\"time_ms\":").unwrap() + "\"time_ms\":".len();
    bytes[8 + at] = if bytes[8 + at] == b'1' { b'2' } else { b'1' };
    if fix_crc {
        let crc = warden_audit::store::record::crc32c(&bytes[payload]);
        bytes[4..8].copy_from_slice(&crc.to_be_bytes());
    }
    std::fs::write(&seg, bytes).unwrap();
}

#[tokio::test]
async fn a_changed_byte_in_the_stored_log_is_detected() {
    if !tools_or_skip() {
        return;
    }
    for fix_crc in [false, true] {
        let mut node = Node::start(wardend(), "node-a");
        let reference = capture(&node);
        let op = node.operator_cert();
        let saved = node.dir.path().join("saved.note");
        let o = verify(&node, &op, &reference, &saved, true);
        assert!(o.status.success(), "{}", text(&o));
        node.stop();
        tamper(&node.audit_dir(), fix_crc);
        node.restart();
        let o = verify(&node, &op, &reference, &saved, true);
        assert_eq!(o.status.code(), Some(1), "fix_crc={fix_crc}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("FAIL"),
            "{}",
            text(&o)
        );
    }
}

/// Read JSON lines from a stream until `want` lines arrived (bounded by a timeout).
async fn read_lines(resp: &mut reqwest::Response, want: usize) -> Vec<serde_json::Value> {
    let mut buf = String::new();
    while buf.lines().count() < want || !buf.ends_with('\n') {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
            .await
            .expect("stream stalled")
            .unwrap()
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn stream_resumes_exactly_once_and_exports_ocsf() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let op = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &op.0, &op.1).unwrap();
    let tenant = node.client_cert("warden:tenant:acme");
    for _ in 0..3 {
        attest_as(&node, &tenant).await;
    }
    // First connection: read three entries, then drop it.
    let mut resp = http
        .get(format!("{}/v1/audit/stream?from=0", node.url()))
        .send()
        .await
        .unwrap();
    let first = read_lines(&mut resp, 3).await;
    drop(resp);
    let mut seqs: Vec<u64> = first.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    // Activity while disconnected.
    for _ in 0..2 {
        attest_as(&node, &tenant).await;
    }
    let len = entries(&node, &op).await.size;
    let from = seqs.last().unwrap() + 1;
    let mut resp = http
        .get(format!("{}/v1/audit/stream?from={from}", node.url()))
        .send()
        .await
        .unwrap();
    let rest = read_lines(&mut resp, (len - from) as usize).await;
    seqs.extend(rest.iter().map(|v| v["seq"].as_u64().unwrap()));
    assert_eq!(seqs, (0..len).collect::<Vec<_>>());

    // OCSF: class, time, severity, actor, tenant, seq, leaf hash and a signed checkpoint.
    let mut resp = http
        .get(format!("{}/v1/audit/stream?from=1&format=ocsf", node.url()))
        .send()
        .await
        .unwrap();
    let v = read_lines(&mut resp, 1).await.remove(0);
    let page = entries(&node, &op).await;
    let entry = page.entries.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!(v["class_uid"], 6003, "{v}");
    assert!(v["time"].as_i64().unwrap() > 0);
    assert_eq!(v["severity_id"], 1);
    assert_eq!(v["actor"]["user"]["name"], "tenant:acme");
    assert_eq!(v["metadata"]["tenant_uid"], "acme");
    let w = &v["unmapped"]["warden"];
    assert_eq!(w["seq"], 1);
    assert_eq!(
        w["leaf_hash"],
        hex::encode(warden_audit::merkle::leaf_hash(entry.data.as_bytes()))
    );
    assert_eq!(w["checkpoint"]["origin"], "node-a");
    assert!(w["checkpoint"]["size"].as_u64().unwrap() >= 2);
    // A bad format is refused.
    let r = http
        .get(format!("{}/v1/audit/stream?format=xml", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn kill_9_during_a_burst_loses_no_acknowledged_entry() {
    if !tools_or_skip() {
        return;
    }
    let mut node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let tenant = node.client_cert("warden:tenant:acme");
    let http = warden::tls::client_with_identity(&node.ca(), &tenant.0, &tenant.1).unwrap();
    // A burst of attestations from 8 clients; each 200 means its audit entry was durable.
    let url = format!("{}/v1/attestation", node.url());
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, acked) = (http.clone(), url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let nonce = Nonce::random().unwrap();
                let body = serde_json::json!({ "nonce": base64_nonce(&nonce) });
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().unwrap().push(hex::encode(nonce.as_bytes()))
                    }
                    _ => break,
                }
            }
        }));
    }
    // Let the burst run, then pull the plug.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "no attestation was acknowledged before the kill"
    );
    node.start_again();
    // Every acknowledged attestation is in the log, and the log verifies end to end.
    let op = node.operator_cert();
    let saved = node.dir.path().join("saved.note");
    let o = verify(&node, &op, &reference, &saved, true);
    assert!(o.status.success(), "{}", text(&o));
    let http = warden::tls::client_with_identity(&node.ca(), &op.0, &op.1).unwrap();
    let mut logged = std::collections::HashSet::new();
    let mut start = 0;
    loop {
        let page: EntriesResponse = http
            .get(format!("{}/v1/audit/entries?start={start}", node.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in &page.entries {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            if let Some(n) = v["details"]["nonce"].as_str() {
                logged.insert(n.to_owned());
            }
        }
        start += 1000;
        if start >= page.size {
            break;
        }
    }
    let missing: Vec<_> = acked.iter().filter(|n| !logged.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged attestations are not in the log",
        missing.len()
    );
}
