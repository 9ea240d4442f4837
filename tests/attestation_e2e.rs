//! End to end: wardend on swtpm, wardctl and the client library over real TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::path::Path;
use std::process::Output;

use cli::{text, wardctl};
use support::{tools_or_skip, Node};
use warden::client::{self, Client};
use warden_attest::binding::Nonce;
use warden_attest::verify::Check;

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn capture(node: &Node) -> std::path::PathBuf {
    let out = node.dir.path().join("reference.toml");
    let o = wardctl(&[
        "reference",
        "capture",
        "--url",
        &node.url(),
        "--ca",
        node.ca().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn attest(node: &Node, ca: &Path, reference: &Path) -> Output {
    wardctl(&[
        "attest",
        "--url",
        &node.url(),
        "--ca",
        ca.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
    ])
}

#[test]
fn wardctl_verifies_a_running_appliance() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let o = attest(&node, &node.ca(), &reference);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("verdict    PASS"), "{out}");
    assert!(out.contains("wardend-binary sha256:"), "{out}");
}

#[test]
fn wrong_ca_fails_with_a_clear_message() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let other = tempfile::tempdir().unwrap();
    let pki = warden::pki::generate_demo_pki(other.path(), &[]).unwrap();
    let o = attest(&node, &pki.ca_cert, &reference);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn changed_reference_values_fail_with_the_check_named() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let text_ref = std::fs::read_to_string(&reference).unwrap();
    let zero = "0".repeat(64);
    assert!(text_ref.contains(&zero));
    let strict = node.dir.path().join("strict.toml");
    std::fs::write(&strict, text_ref.replacen(&zero, &"a".repeat(64), 1)).unwrap();
    let o = attest(&node, &node.ca(), &strict);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL [reference-values]"), "{out}");
    assert!(out.contains("verdict    FAIL"), "{out}");
}

#[tokio::test]
async fn wrong_nonce_and_tampered_evidence_fail() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = client::load_reference(&capture(&node)).unwrap();
    let c = Client::new(&node.url(), &node.ca()).unwrap();
    let nonce = Nonce::random().unwrap();
    let fetched = c
        .evidence(&nonce, Some(reference.selection()))
        .await
        .unwrap();

    let wrong = client::verify_fetched(&fetched, Nonce::random().unwrap(), &reference).unwrap_err();
    assert!(wrong.failed(Check::Binding), "{wrong}");
    assert!(wrong.to_string().contains("nonce"), "{wrong}");

    let mut tampered = c
        .evidence(&nonce, Some(reference.selection()))
        .await
        .unwrap();
    tampered.evidence.appliance_log[0].detail = "sha256:0000".into();
    let r = client::verify_fetched(&tampered, nonce.clone(), &reference).unwrap_err();
    assert!(r.failed(Check::ApplianceLog), "{r}");

    let mut tampered = c
        .evidence(&nonce, Some(reference.selection()))
        .await
        .unwrap();
    let v = tampered
        .evidence
        .pcrs
        .get_mut("sha256")
        .unwrap()
        .get_mut(&0)
        .unwrap();
    *v = "11".repeat(32);
    let r = client::verify_fetched(&tampered, nonce.clone(), &reference).unwrap_err();
    assert!(r.failed(Check::PcrDigest), "{r}");

    let good = c
        .evidence(&nonce, Some(reference.selection()))
        .await
        .unwrap();
    client::verify_fetched(&good, nonce, &reference).unwrap();
}

#[tokio::test]
async fn attestation_key_survives_a_restart() {
    if !tools_or_skip() {
        return;
    }
    let mut node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let c = Client::new(&node.url(), &node.ca()).unwrap();
    let before = c.identity().await.unwrap();
    node.restart();
    // A new client: the old one's pooled connection went down with the old process.
    let c = Client::new(&node.url(), &node.ca()).unwrap();
    let after = c.identity().await.unwrap();
    assert_eq!(before.ak_public, after.ak_public);
    assert_eq!(before.ak_name, after.ak_name);
    assert_eq!(before.result_key, after.result_key);
    // The restarted daemon measured itself again; the same reference still verifies it.
    let o = attest(&node, &node.ca(), &reference);
    assert!(o.status.success(), "{}", text(&o));
}

#[tokio::test]
async fn bad_requests_get_a_4xx_with_a_message() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let http = warden::tls::client(&node.ca()).unwrap();
    let url = format!("{}/v1/attestation", node.url());
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (vec![b'x'; 70 * 1024], 413, ""),
        (b"{not json".to_vec(), 400, "invalid JSON"),
        (b"".to_vec(), 400, "empty"),
        (b"{}".to_vec(), 400, "nonce"),
        (br#"{"nonce": 5}"#.to_vec(), 400, "invalid JSON"),
        (br#"{"nonce": "AAAA"}"#.to_vec(), 400, "16 to 64"),
        (
            format!(r#"{{"nonce": "{}"}}"#, "A".repeat(100)).into_bytes(),
            400,
            "16 to 64",
        ),
        (br#"{"nonce": "!!!!"}"#.to_vec(), 400, "base64"),
        (
            br#"{"nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "pcrs": [99]}"#.to_vec(),
            400,
            "pcrs",
        ),
        (
            br#"{"nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "extra": 1}"#.to_vec(),
            400,
            "unknown field",
        ),
    ];
    for (body, status, needle) in cases {
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            status,
            "body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{text} should mention {needle}");
    }
    let resp = http
        .get(format!("{}/v1/nothing", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // Still serving.
    let resp = http
        .get(format!("{}/v1/health", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn remembered_clock_refuses_older_evidence() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(wardend(), "node-a");
    let reference = capture(&node);
    let state = node.dir.path().join("wardctl-state.json");
    let run = || {
        wardctl(&[
            "attest",
            "--url",
            &node.url(),
            "--ca",
            node.ca().to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ])
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("n/a clock"));
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok  clock"));
    // Pretend a newer quote was seen before (as if this one were a replay of an older one).
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    for (_, clock) in s["clocks"].as_object_mut().unwrap().iter_mut() {
        clock["reset_count"] = serde_json::json!(clock["reset_count"].as_u64().unwrap() + 1);
    }
    std::fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("FAIL [clock]"),
        "{}",
        text(&o)
    );
}
