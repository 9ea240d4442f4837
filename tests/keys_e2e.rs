//! The key vault on a running appliance (swtpm): a tenant provisions a key only after
//! verifying the appliance, the key is sealed by the TPM under a signed PCR policy, survives a
//! restart, stops unsealing when the platform state leaves the signed policy and unseals
//! again under a newly signed one; stale, redirected, tampered and foreign uploads are refused
//! and audited; tenants never see each other's keys; operators never see material; the key
//! bytes appear in no log, error or audit entry.
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
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cli::{capture_reference, text, wardctl};
use support::{tools_or_skip, Node};
use warden::keys_api::ChallengeResponse;
use warden_attest::sealed::PolicyAuthority;
use warden_keys::{wrap, Binding, KeyKind, Label, Purpose};

/// The key the tenant provisions; searched for in every output afterwards.
const KEY: &[u8] = b"model-weights-key:5f1c0a9e7d3b2a6c";
/// PCRs the signed policy covers (a fresh swtpm has them all zero).
const SEAL_PCRS: [u8; 2] = [0, 7];

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An authority, its public key file and a policy for `values` of SEAL_PCRS.
fn approve(authority: &PolicyAuthority, dir: &Path, name: &str, values: [u8; 2]) -> PathBuf {
    let map: BTreeMap<u8, Vec<u8>> = SEAL_PCRS
        .iter()
        .zip(values)
        .map(|(pcr, v)| (*pcr, vec![v; 32]))
        .collect();
    let policy = authority.approve_pcr_values(&map, b"").unwrap();
    let path = dir.join(name);
    std::fs::write(&path, policy.to_json().unwrap()).unwrap();
    path
}

struct Setup {
    node: Node,
    authority: PolicyAuthority,
    keydir: tempfile::TempDir,
    reference: PathBuf,
}

fn start(name: &str) -> Setup {
    let keydir = tempfile::tempdir().unwrap();
    let (authority, _pkcs8) = PolicyAuthority::generate().unwrap();
    std::fs::write(
        keydir.path().join("authority.hex"),
        hex::encode(authority.public_sec1()),
    )
    .unwrap();
    let policy = approve(&authority, keydir.path(), "policy.json", [0, 0]);
    let extra = format!(
        "\n[keys]\nauthority = \"{}\"\npcr_policy = \"{}\"\n",
        keydir.path().join("authority.hex").display(),
        policy.display()
    );
    let node = Node::start_with_config(wardend(), name, None, &extra);
    let reference = node.dir.path().join("reference.toml");
    capture_reference(&node.url(), &node.ca(), &reference);
    Setup {
        node,
        authority,
        keydir,
        reference,
    }
}

/// `wardctl keys <args> --url … --ca … --cert … --key …`
fn keys(node: &Node, cert: &(PathBuf, PathBuf), args: &[&str]) -> Output {
    let url = node.url();
    let ca = node.ca();
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend([
        "--url",
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert.0),
        "--key",
        s(&cert.1),
    ]);
    wardctl(&all)
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A raw challenge and an envelope built from it, to send by hand.
async fn challenge(node: &Node, cert: &(PathBuf, PathBuf)) -> ChallengeResponse {
    let http = warden::tls::client_with_identity(&node.ca(), &cert.0, &cert.1).unwrap();
    http.post(format!("{}/v1/keys/challenges", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn envelope(
    c: &ChallengeResponse,
    appliance: &str,
    ak_name: &[u8],
    key_id: &str,
) -> serde_json::Value {
    let env = wrap(
        Purpose::Provision,
        &B64.decode(&c.recipient).unwrap(),
        &Binding {
            appliance: appliance.to_owned(),
            appliance_key: ak_name.to_vec(),
            nonce: B64.decode(&c.nonce).unwrap(),
        },
        &Label {
            tenant: "acme".into(),
            key_id: key_id.into(),
            kind: KeyKind::Secret,
            version: 1,
            not_after: 0,
        },
        KEY,
    )
    .unwrap();
    serde_json::to_value(env).unwrap()
}

async fn upload(
    node: &Node,
    cert: &(PathBuf, PathBuf),
    key_id: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let http = warden::tls::client_with_identity(&node.ca(), &cert.0, &cert.1).unwrap();
    let resp = http
        .put(format!("{}/v1/keys/{key_id}", node.url()))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn ak_name(node: &Node) -> Vec<u8> {
    let o = wardctl(&["identity", "--url", &node.url(), "--ca", s(&node.ca())]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    hex::decode(v["ak_name"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn tenants_provision_keys_that_only_signed_states_unseal() {
    if !tools_or_skip() {
        return;
    }
    let mut setup = start("node-a");
    let node = &mut setup.node;
    let acme = node.client_cert("warden:tenant:acme");
    let globex = node.client_cert("warden:tenant:globex");
    let op = node.operator_cert();
    let key_file = setup.keydir.path().join("key.bin");
    std::fs::write(&key_file, KEY).unwrap();
    let mut outputs = String::new();

    // Provision after verifying the appliance.
    let o = keys(
        node,
        &acme,
        &[
            "put",
            "model",
            "--reference",
            s(&setup.reference),
            "--key-file",
            s(&key_file),
        ],
    );
    outputs += &out(&o);
    assert!(o.status.success(), "{}", text(&o));
    let o = keys(node, &acme, &["list"]);
    outputs += &out(&o);
    assert!(
        out(&o).contains("acme/model secret  v1 current"),
        "{}",
        text(&o)
    );

    // A reference the appliance does not meet: the tenant's wardctl does not send the key.
    let bad_reference = std::fs::read_to_string(&setup.reference).unwrap().replacen(
        "[pcrs]",
        "[pcrs]\n# changed",
        1,
    );
    let mut doc: toml::Table = toml::from_str(&bad_reference).unwrap();
    let pcrs = doc["pcrs"].as_table_mut().unwrap();
    let first = pcrs.keys().next().unwrap().clone();
    pcrs.insert(first, toml::Value::String("11".repeat(32)));
    let bad = node.dir.path().join("bad-reference.toml");
    std::fs::write(&bad, toml::to_string(&doc).unwrap()).unwrap();
    let o = keys(
        node,
        &acme,
        &[
            "put",
            "other",
            "--reference",
            s(&bad),
            "--key-file",
            s(&key_file),
        ],
    );
    outputs += &out(&o);
    assert!(!o.status.success());
    assert!(out(&o).contains("the key was not sent"), "{}", text(&o));

    // Hand-made uploads: each refusal has its reason.
    let ak = ak_name(node);
    let c = challenge(node, &acme).await;
    let good = envelope(&c, "node-a", &ak, "hand");
    let (st, _) = upload(node, &acme, "hand", &good).await;
    assert_eq!(st, 200);
    let (st, body) = upload(node, &acme, "hand", &good).await;
    assert_eq!(st, 409, "replayed: {body}");
    assert!(body.contains("no open challenge"), "{body}");
    let c = challenge(node, &acme).await;
    let (st, body) = upload(
        node,
        &acme,
        "wrong-ak",
        &envelope(&c, "node-a", b"\x00\x0bnot-the-ak", "wrong-ak"),
    )
    .await;
    assert_eq!(
        (st, body.contains("another attestation key")),
        (422, true),
        "{body}"
    );
    let c = challenge(node, &acme).await;
    let (st, body) = upload(node, &acme, "redir", &envelope(&c, "node-b", &ak, "redir")).await;
    assert_eq!(
        (st, body.contains("another appliance")),
        (422, true),
        "{body}"
    );
    let c = challenge(node, &acme).await;
    let mut tampered = envelope(&c, "node-a", &ak, "tamper");
    let mut ct = B64
        .decode(tampered["ciphertext"].as_str().unwrap())
        .unwrap();
    ct[3] ^= 0x40;
    tampered["ciphertext"] = serde_json::json!(B64.encode(ct));
    let (st, body) = upload(node, &acme, "tamper", &tampered).await;
    assert_eq!(
        (st, body.contains("does not decrypt")),
        (422, true),
        "{body}"
    );
    // Another tenant cannot use acme's challenge.
    let c = challenge(node, &acme).await;
    let (st, _) = upload(node, &globex, "hand", &envelope(&c, "node-a", &ak, "hand")).await;
    assert!(st == 409 || st == 422, "{st}");
    outputs += &format!("{good}");

    // Isolation: globex sees and touches none of acme's keys.
    let o = keys(node, &globex, &["list"]);
    assert!(!out(&o).contains("acme"), "{}", text(&o));
    let o = keys(node, &globex, &["delete", "model"]);
    assert!(
        !o.status.success() && out(&o).contains("404"),
        "{}",
        text(&o)
    );
    let o = keys(node, &globex, &["retire", "model", "--version", "1"]);
    assert!(!o.status.success(), "{}", text(&o));

    // Tenants cannot use the operators' routes, even on their own keys.
    for args in [
        ["rotate", "model", "--tenant", "acme"].as_slice(),
        ["disable", "model", "--tenant", "acme"].as_slice(),
        ["disable", "model", "--tenant", "acme", "--enable"].as_slice(),
    ] {
        let o = keys(node, &acme, args);
        assert!(
            !o.status.success() && out(&o).contains("403"),
            "{args:?}: {}",
            text(&o)
        );
    }

    // Rotation by the tenant; the old version stays until retired.
    let o = keys(
        node,
        &acme,
        &[
            "rotate",
            "model",
            "--reference",
            s(&setup.reference),
            "--key-file",
            s(&key_file),
        ],
    );
    outputs += &out(&o);
    assert!(o.status.success(), "{}", text(&o));
    let o = keys(node, &acme, &["retire", "model", "--version", "2"]);
    assert!(
        !o.status.success(),
        "the current version cannot be retired: {}",
        text(&o)
    );
    let o = keys(node, &acme, &["retire", "model", "--version", "1"]);
    assert!(o.status.success(), "{}", text(&o));

    // Operators: see every tenant's keys (no material), rotate and disable; never provision.
    let o = keys(node, &op, &["list"]);
    outputs += &out(&o);
    assert!(
        out(&o).contains("acme/model secret  v1 retired, v2 current"),
        "{}",
        text(&o)
    );
    let o = keys(node, &op, &["rotate", "model", "--tenant", "acme"]);
    assert!(
        o.status.success() && out(&o).contains("version 3"),
        "{}",
        text(&o)
    );
    let o = keys(node, &op, &["disable", "model", "--tenant", "acme"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = keys(
        node,
        &acme,
        &[
            "rotate",
            "model",
            "--reference",
            s(&setup.reference),
            "--key-file",
            s(&key_file),
        ],
    );
    assert!(
        !o.status.success() && out(&o).contains("disabled"),
        "{}",
        text(&o)
    );
    let o = keys(
        node,
        &op,
        &["disable", "model", "--tenant", "acme", "--enable"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = keys(
        node,
        &op,
        &["put", "opkey", "--reference", s(&setup.reference)],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let resp = warden::tls::client_with_identity(&node.ca(), &op.0, &op.1)
        .unwrap()
        .post(format!("{}/v1/keys/challenges", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // Sealed blobs survive a restart and unseal.
    node.restart();
    let o = keys(node, &acme, &["list"]);
    assert!(
        out(&o).contains("v3 current") && !out(&o).contains("unavailable"),
        "{}",
        text(&o)
    );

    // The platform leaves the signed state: the keys no longer unseal.
    node.stop();
    let pcr = Command::new("tpm2_pcrextend")
        .env("TSS2_LOG", "esys+none,tcti+none")
        .arg("-T")
        .arg(node.swtpm.tcti())
        .arg(format!("7:sha256={}", "ab".repeat(32)))
        .status()
        .unwrap();
    assert!(pcr.success());
    node.start_again();
    let o = keys(node, &acme, &["list"]);
    assert!(
        out(&o).contains("v3 current (sealed, unavailable)"),
        "{}",
        text(&o)
    );

    // The authority signs the new state: the same blobs unseal, without re-sealing.
    let new_pcr7 = {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&[0u8; 32]);
        h.update(&hex::decode("ab".repeat(32)).unwrap());
        h.finish().as_ref().to_vec()
    };
    let map: BTreeMap<u8, Vec<u8>> = [(0u8, vec![0u8; 32]), (7u8, new_pcr7)]
        .into_iter()
        .collect();
    let signed = setup.authority.approve_pcr_values(&map, b"").unwrap();
    std::fs::write(
        setup.keydir.path().join("policy.json"),
        signed.to_json().unwrap(),
    )
    .unwrap();
    node.restart();
    let o = keys(node, &acme, &["list"]);
    outputs += &out(&o);
    assert!(
        out(&o).contains("v3 current") && !out(&o).contains("unavailable"),
        "{}",
        text(&o)
    );

    // Deletion is final, also across a restart.
    let o = keys(node, &acme, &["delete", "model"]);
    assert!(o.status.success(), "{}", text(&o));
    node.restart();
    let o = keys(node, &acme, &["list"]);
    assert!(!out(&o).contains("model"), "{}", text(&o));

    // The audit log has every step and refusal, and no key bytes.
    let http = warden::tls::client_with_identity(&node.ca(), &op.0, &op.1).unwrap();
    let page: warden::audit_api::EntriesResponse = http
        .get(format!("{}/v1/audit/entries?start=0", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: String = page.entries.iter().map(|e| e.data.clone() + "\n").collect();
    for kind in [
        "key.provisioned",
        "key.refused",
        "key.retired",
        "key.rotated",
        "key.disabled",
        "key.enabled",
        "key.unseal-failed",
        "key.deleted",
    ] {
        assert!(
            all.contains(&format!("\"{kind}\"")),
            "no {kind} in the audit log"
        );
    }
    outputs += &all;
    outputs += &node.log();
    let needles = [
        String::from_utf8_lossy(KEY).into_owned(),
        hex::encode(KEY),
        B64.encode(KEY),
    ];
    for n in &needles {
        assert!(!outputs.contains(n.as_str()), "key bytes leaked as {n}");
    }
}
