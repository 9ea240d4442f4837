//! A peer's evidence appraised by a running appliance: a signed result (EAR JWT) that verifies
//! with the key the appliance publishes, single-use challenges, and a contraindicated verdict
//! for evidence that does not bind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use support::workload::Workload;
use support::{tools_or_skip, Node};
use warden::wire::{AppraisalRequest, AppraisalResponse, Challenge, Identity};
use warden_attest::binding::Nonce;
use warden_attest::ear::Status;
use warden_attest::Evidence;

const KEY: &[u8] = b"workload ephemeral public key";

async fn challenge(http: &reqwest::Client, url: &str) -> Nonce {
    let c: Challenge = http
        .post(format!("{url}/v1/challenges"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Nonce::try_from(B64.decode(c.nonce).unwrap().as_slice()).unwrap()
}

async fn appraise(
    http: &reqwest::Client,
    url: &str,
    nonce: &Nonce,
    key: &[u8],
    evidence: &Evidence,
) -> reqwest::Response {
    http.post(format!("{url}/v1/appraisals"))
        .json(&AppraisalRequest {
            nonce: B64.encode(nonce.as_bytes()),
            bound_key: B64.encode(key),
            evidence: evidence.clone(),
        })
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn appraisal_signs_a_result_and_challenges_are_single_use() {
    if !tools_or_skip() {
        return;
    }
    let mut peer = Workload::start();
    let reference = peer.reference().to_toml();
    let node = Node::start_with_reference(
        Path::new(env!("CARGO_BIN_EXE_wardend")),
        "node-a",
        Some(&reference),
    );
    let url = node.url();
    let http = warden::tls::client(&node.ca()).unwrap();
    let identity: Identity = http
        .get(format!("{url}/v1/identity"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = identity.result_key.verifier().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };

    // Good evidence for an issued challenge: affirming, and the token verifies.
    let nonce = challenge(&http, &url).await;
    let evidence = peer.evidence(&nonce, KEY);
    let resp = appraise(&http, &url, &nonce, KEY, &evidence).await;
    assert_eq!(resp.status().as_u16(), 200);
    let a: AppraisalResponse = resp.json().await.unwrap();
    assert_eq!(a.status, Status::Affirming, "{:?}", a.failures);
    let claims = results
        .verify(&a.token, now(), Some(nonce.as_bytes()))
        .unwrap();
    assert!(claims.all_affirming());
    assert!(claims.sub.starts_with("ak:000b"), "{}", claims.sub);
    // The token is bound to that nonce.
    assert!(results
        .verify(&a.token, now(), Some(Nonce::random().unwrap().as_bytes()))
        .is_err());

    // The same challenge again is a replay.
    let resp = appraise(&http, &url, &nonce, KEY, &evidence).await;
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.text().await.unwrap().contains("already used"));

    // A nonce the appliance never issued.
    let made_up = Nonce::random().unwrap();
    let e = peer.evidence(&made_up, KEY);
    let resp = appraise(&http, &url, &made_up, KEY, &e).await;
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.text().await.unwrap().contains("never issued"));

    // Evidence bound to another key: contraindicated, and the signed result says so.
    let nonce = challenge(&http, &url).await;
    let e = peer.evidence(&nonce, b"some other key");
    let a: AppraisalResponse = appraise(&http, &url, &nonce, KEY, &e)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a.status, Status::Contraindicated);
    assert!(
        a.failures.iter().any(|f| f.starts_with("[binding]")),
        "{:?}",
        a.failures
    );
    let claims = results.verify(&a.token, now(), None).unwrap();
    assert!(!claims.all_affirming());
}

#[tokio::test]
async fn appraisal_without_reference_values_is_refused() {
    if !tools_or_skip() {
        return;
    }
    let node = Node::start(Path::new(env!("CARGO_BIN_EXE_wardend")), "node-a");
    let url = node.url();
    let http = warden::tls::client(&node.ca()).unwrap();
    let mut peer = Workload::start();
    let nonce = challenge(&http, &url).await;
    let e = peer.evidence(&nonce, KEY);
    let resp = appraise(&http, &url, &nonce, KEY, &e).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.text().await.unwrap().contains("reference"));
}
