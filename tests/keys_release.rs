//! Release of a tenant key to an attested workload: only under the tenant's release policy,
//! only to evidence that meets it and is bound to a fresh challenge and the workload's own
//! key, wrapped to that key with the result id and a TTL, rate-limited per tenant, every
//! release and refusal audited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cli::{capture_reference, text, wardctl};
use support::workload::Workload;
use support::{tools_or_skip, Node};
use warden::keys_api::{ReleasePolicyRequest, ReleaseRequest, ReleaseResponse};
use warden_attest::binding::Nonce;
use warden_attest::sealed::PolicyAuthority;
use warden_keys::{Binding, Expected, Purpose, RecipientKey};

const KEY: &[u8] = b"release-me:0c1d2e3f4a5b6c7d8e9f";

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn start() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (authority, _) = PolicyAuthority::generate().unwrap();
    std::fs::write(
        dir.path().join("a.hex"),
        hex::encode(authority.public_sec1()),
    )
    .unwrap();
    let map: BTreeMap<u8, Vec<u8>> = [(0u8, vec![0u8; 32])].into_iter().collect();
    let policy = authority.approve_pcr_values(&map, b"").unwrap();
    std::fs::write(dir.path().join("p.json"), policy.to_json().unwrap()).unwrap();
    let extra = format!(
        "\n[keys]\nauthority = \"{}\"\npcr_policy = \"{}\"\n",
        dir.path().join("a.hex").display(),
        dir.path().join("p.json").display()
    );
    (
        Node::start_with_config(wardend(), "node-a", None, &extra),
        dir,
    )
}

async fn nonce(http: &reqwest::Client, url: &str) -> Nonce {
    let c: serde_json::Value = http
        .post(format!("{url}/v1/challenges"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Nonce::try_from(B64.decode(c["nonce"].as_str().unwrap()).unwrap().as_slice()).unwrap()
}

async fn release(
    http: &reqwest::Client,
    url: &str,
    nonce: &Nonce,
    recipient: &[u8],
    evidence: warden_attest::Evidence,
) -> (u16, String) {
    let resp = http
        .post(format!("{url}/v1/release/acme/model"))
        .json(&ReleaseRequest {
            nonce: B64.encode(nonce.as_bytes()),
            recipient: B64.encode(recipient),
            evidence,
            tenant_share: None,
            version: None,
        })
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn keys_go_only_to_workloads_that_meet_the_tenants_policy() {
    if !tools_or_skip() {
        return;
    }
    let (node, dir) = start();
    let url = node.url();
    let acme: (PathBuf, PathBuf) = node.client_cert("warden:tenant:acme");
    // The tenant provisions the key after verifying the appliance.
    let reference = node.dir.path().join("reference.toml");
    capture_reference(&url, &node.ca(), &reference);
    let key_file = dir.path().join("k.bin");
    std::fs::write(&key_file, KEY).unwrap();
    let o = wardctl(&[
        "keys",
        "put",
        "model",
        "--reference",
        s(&reference),
        "--key-file",
        s(&key_file),
        "--url",
        &url,
        "--ca",
        s(&node.ca()),
        "--cert",
        s(&acme.0),
        "--key",
        s(&acme.1),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let anonymous = warden::tls::client(&node.ca()).unwrap();
    let mut workload = Workload::start();
    let recipient = RecipientKey::generate();

    // No release policy yet: nothing is released.
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &recipient.public());
    let (st, _) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 404);

    // The tenant allows workloads in the state it knows, 2 releases a minute, 60 s each.
    let policy = ReleasePolicyRequest {
        reference: workload.reference().to_toml(),
        ttl_secs: 60,
        per_minute: 2,
        tenant_share_sha256: None,
    };
    let tenant_http = warden::tls::client_with_identity(&node.ca(), &acme.0, &acme.1).unwrap();
    let resp = tenant_http
        .put(format!("{url}/v1/keys/model/release-policy"))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (oc, ok) = node.operator_cert();
    let op_http = warden::tls::client_with_identity(&node.ca(), &oc, &ok).unwrap();
    let resp = op_http
        .put(format!("{url}/v1/keys/model/release-policy"))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "operators do not set release policies"
    );

    // A workload that meets it gets the key, wrapped to its own key, bound to the result id.
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &recipient.public());
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev.clone()).await;
    assert_eq!(st, 200, "{body}");
    let r: ReleaseResponse = serde_json::from_str(&body).unwrap();
    let appliance_ak = {
        let o = wardctl(&["identity", "--url", &url, "--ca", s(&node.ca())]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        hex::decode(v["ak_name"].as_str().unwrap()).unwrap()
    };
    let binding = Binding {
        appliance: "node-a".into(),
        appliance_key: appliance_ak,
        nonce: hex::decode(&r.result_id).unwrap(),
    };
    let now = r.not_after - 60;
    let (label, key) = r
        .envelope
        .check()
        .unwrap()
        .open(
            &recipient,
            &Expected {
                purpose: Purpose::Release,
                binding: &binding,
                tenant: "acme",
                now,
            },
        )
        .unwrap();
    assert_eq!(key.expose(), KEY);
    assert_eq!(label.version, 1);
    // The TTL is in the envelope: after not_after the workload's own check refuses it.
    let late = r.envelope.check().unwrap().open(
        &recipient,
        &Expected {
            purpose: Purpose::Release,
            binding: &binding,
            tenant: "acme",
            now: r.not_after + 1,
        },
    );
    assert_eq!(late.err(), Some(warden_keys::EnvelopeError::Expired));
    // Another workload key cannot open it.
    let other = RecipientKey::generate();
    assert!(r
        .envelope
        .check()
        .unwrap()
        .open(
            &other,
            &Expected {
                purpose: Purpose::Release,
                binding: &binding,
                tenant: "acme",
                now
            }
        )
        .is_err());

    // Replayed: the challenge is used up.
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 409, "{body}");
    // A nonce this appliance never issued (or that expired).
    let stale = Nonce::random().unwrap();
    let ev = workload.evidence(&stale, &recipient.public());
    let (st, _) = release(&anonymous, &url, &stale, &recipient.public(), ev).await;
    assert_eq!(st, 409);
    // Evidence bound to another key than the one the key would be wrapped to.
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &other.public());
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("does not meet the release policy"), "{body}");

    // The rate limit: one more release this minute, then 429.
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &recipient.public());
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 200, "{body}");
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &recipient.public());
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 429, "{body}");

    // Another tenant cannot set a policy on acme's key (its own namespace has no such key).
    let globex = node.client_cert("warden:tenant:globex");
    let globex_http = warden::tls::client_with_identity(&node.ca(), &globex.0, &globex.1).unwrap();
    let resp = globex_http
        .put(format!("{url}/v1/keys/model/release-policy"))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // A workload whose state changed no longer meets the policy.
    let changed =
        warden_attest::applog::ApplianceEvent::new("workload", "sha256:tampered").unwrap();
    workload
        .tpm
        .pcr_extend_sha256(15, changed.computed_digest().unwrap())
        .unwrap();
    let n = nonce(&anonymous, &url).await;
    let ev = workload.evidence(&n, &recipient.public());
    let (st, body) = release(&anonymous, &url, &n, &recipient.public(), ev).await;
    assert_eq!(st, 403, "{body}");

    // Audited: two releases with their result ids, the refusals with reasons; no key bytes.
    let page: warden::audit_api::EntriesResponse = op_http
        .get(format!("{url}/v1/audit/entries?start=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let released: Vec<_> = page
        .entries
        .iter()
        .filter(|e| e.data.contains("\"key.released\""))
        .collect();
    assert_eq!(released.len(), 2);
    assert!(released[0].data.contains(&r.result_id));
    let refused = page
        .entries
        .iter()
        .filter(|e| e.data.contains("\"key.refused\""))
        .count();
    assert!(refused >= 4, "{refused} refusals audited");
    assert!(page
        .entries
        .iter()
        .any(|e| e.data.contains("\"key.release-policy\"")));
    let all: String = page
        .entries
        .iter()
        .map(|e| e.data.clone())
        .collect::<String>()
        + &node.log();
    for needle in [
        String::from_utf8_lossy(KEY).into_owned(),
        hex::encode(KEY),
        B64.encode(KEY),
    ] {
        assert!(!all.contains(&needle), "key bytes leaked");
    }
}

#[tokio::test]
async fn a_two_party_key_needs_the_tenants_share_at_release() {
    if !tools_or_skip() {
        return;
    }
    let (node, dir) = start();
    let url = node.url();
    let acme = node.client_cert("warden:tenant:acme");
    let reference = node.dir.path().join("reference.toml");
    capture_reference(&url, &node.ca(), &reference);
    // The key is A xor T; the appliance gets only A, the tenant keeps T.
    let appliance_share = [0x5au8; 32];
    let tenant_share = [0xc3u8; 32];
    let key: Vec<u8> = appliance_share
        .iter()
        .zip(tenant_share)
        .map(|(a, t)| a ^ t)
        .collect();
    let share_file = dir.path().join("a.bin");
    std::fs::write(&share_file, appliance_share).unwrap();
    let o = wardctl(&[
        "keys",
        "put",
        "model",
        "--reference",
        s(&reference),
        "--key-file",
        s(&share_file),
        "--url",
        &url,
        "--ca",
        s(&node.ca()),
        "--cert",
        s(&acme.0),
        "--key",
        s(&acme.1),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut workload = Workload::start();
    let tenant_http = warden::tls::client_with_identity(&node.ca(), &acme.0, &acme.1).unwrap();
    let resp = tenant_http
        .put(format!("{url}/v1/keys/model/release-policy"))
        .json(&ReleasePolicyRequest {
            reference: workload.reference().to_toml(),
            ttl_secs: 60,
            per_minute: 10,
            tenant_share_sha256: Some(hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &tenant_share,
            ))),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let anonymous = warden::tls::client(&node.ca()).unwrap();
    let recipient = RecipientKey::generate();
    // Without the tenant's share, or with another one: refused.
    let (st, body) = attempt(&anonymous, &url, &mut workload, &recipient, None).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs the tenant's share"), "{body}");
    let (st, body) = attempt(
        &anonymous,
        &url,
        &mut workload,
        &recipient,
        Some(vec![0x11; 32]),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    // With it: the whole key, and only for the workload.
    let (st, body) = attempt(
        &anonymous,
        &url,
        &mut workload,
        &recipient,
        Some(tenant_share.to_vec()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let r: ReleaseResponse = serde_json::from_str(&body).unwrap();
    let parsed = r.envelope.check().unwrap();
    let binding = Binding {
        appliance: "node-a".into(),
        appliance_key: parsed.binding.appliance_key.clone(),
        nonce: hex::decode(&r.result_id).unwrap(),
    };
    let (_, k) = parsed
        .open(
            &recipient,
            &Expected {
                purpose: Purpose::Release,
                binding: &binding,
                tenant: "acme",
                now: r.not_after - 1,
            },
        )
        .unwrap();
    assert_eq!(k.expose(), key.as_slice());
}

/// One release attempt of acme's "model" with fresh evidence, and optionally the tenant's share.
async fn attempt(
    http: &reqwest::Client,
    url: &str,
    workload: &mut Workload,
    recipient: &RecipientKey,
    share: Option<Vec<u8>>,
) -> (u16, String) {
    let n = nonce(http, url).await;
    let pk = recipient.public();
    let evidence = workload.evidence(&n, &pk);
    let resp = http
        .post(format!("{url}/v1/release/acme/model"))
        .json(&ReleaseRequest {
            nonce: B64.encode(n.as_bytes()),
            recipient: B64.encode(pk),
            evidence,
            tenant_share: share.map(|b| B64.encode(b)),
            version: None,
        })
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}
