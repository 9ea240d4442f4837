//! Signed firmware updates on a running appliance with a real TPM (swtpm), through wardctl:
//! the release tool signs, operators publish, stage and commit; the boot measures the slot into
//! the appliance PCR before it runs; the TPM counter refuses rollback even with the trusted
//! metadata wiped; a failed trial falls back; a kill -9 at every step leaves a bootable,
//! verified slot and the trusted state as it was.
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
use support::{appliance_events, audit_kinds, operations_were_shown, tools_or_skip, Node};

const HW: &str = "warden-test-dpu";

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A release repository and its keys, made with `wardctl release`.
struct Vendor {
    dir: tempfile::TempDir,
}

impl Vendor {
    fn new() -> Vendor {
        let dir = tempfile::tempdir().unwrap();
        let v = Vendor { dir };
        ok(wardctl(&[
            "release",
            "keygen",
            "--keys",
            s(&v.keys()),
            "--root",
            "3:2",
        ]));
        ok(wardctl(&[
            "release",
            "init",
            "--keys",
            s(&v.keys()),
            "--repo",
            s(&v.repo()),
        ]));
        v
    }
    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }
    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
    fn root(&self) -> PathBuf {
        self.repo().join("1.root.json")
    }
    /// Sign an image for release `release` with `svn`; returns the image's SHA-256 (hex).
    fn release(&self, release: &str, svn: u64) -> String {
        let image = self.dir.path().join(format!("fw-{release}.img"));
        let body = format!("WARDEN FIRMWARE {release}\n").repeat(40_000);
        std::fs::write(&image, &body).unwrap();
        let name = format!("fw-{release}.img");
        let svn = svn.to_string();
        ok(wardctl(&[
            "release",
            "add",
            "--keys",
            s(&self.keys()),
            "--repo",
            s(&self.repo()),
            "--image",
            s(&image),
            "--name",
            &name,
            "--hardware-id",
            HW,
            "--svn",
            &svn,
            "--release",
            release,
        ]));
        hex::encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()))
    }
}

fn updates_config(vendor: &Vendor, extra: &str) -> String {
    format!(
        "\n[updates]\nroot = \"{}\"\nhardware_id = \"{HW}\"\nmax_trial_boots = 2\n{extra}",
        s(&vendor.root())
    )
}

/// `wardctl update <verb> … --url --ca --cert --key`
fn update(node: &Node, args: &[&str]) -> Output {
    let (cert, key) = node.operator_cert();
    let url = node.url();
    let ca = node.ca();
    let mut all = vec!["update"];
    all.extend_from_slice(args);
    all.extend([
        "--url",
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ]);
    wardctl(&all)
}

fn status(node: &Node) -> serde_json::Value {
    serde_json::from_str(&ok(update(node, &["status", "--json"]))).unwrap()
}

fn publish_and_stage(node: &Node, vendor: &Vendor, target: Option<&str>) -> Output {
    ok(update(node, &["publish", s(&vendor.repo())]));
    match target {
        Some(t) => update(node, &["stage", "--target", t]),
        None => update(node, &["stage"]),
    }
}

fn trusted_bytes(node: &Node) -> Option<Vec<u8>> {
    std::fs::read(node.dir.path().join("state/updates/trusted.json")).ok()
}

/// Install and commit `release` on `node` (stage, restart into the trial, commit).
fn install(node: &mut Node, vendor: &Vendor, target: &str) {
    let out = ok(publish_and_stage(node, vendor, Some(target)));
    assert!(out.contains("staged"), "{out}");
    node.restart();
    let out = ok(update(node, &["commit"]));
    assert!(out.contains("committed"), "{out}");
}

#[tokio::test]
async fn a_signed_release_installs_measured_and_rollback_is_refused() {
    if !tools_or_skip() {
        return;
    }
    let vendor = Vendor::new();
    let sha2 = vendor.release("2.0.0", 2);
    let mut node = Node::start_with_config(wardend(), "node-a", None, &updates_config(&vendor, ""));

    let st = status(&node);
    assert_eq!(st["floor"], 0, "{st}");
    assert!(
        st["booted"]["slot"].is_null(),
        "factory image at first: {st}"
    );
    let before = appliance_events(&node).await;
    assert!(!before.iter().any(|(k, _)| k == "firmware"), "{before:?}");

    // Stage: verified, written to slot a, on trial at the next boot; nothing measured yet.
    let out = ok(publish_and_stage(&node, &vendor, None));
    assert!(
        out.contains("staged fw-2.0.0.img") && out.contains("slot a"),
        "{out}"
    );
    let st = status(&node);
    assert_eq!(st["slots"][0]["state"], "trial", "{st}");
    assert_eq!(st["slots"][0]["boots_left"], 2, "{st}");
    operations_were_shown(
        &node,
        "update-stage",
        &[
            "checking the signed metadata",
            "writing and hashing slot a",
            "switching: slot a boots on trial next",
            "saving the metadata as trusted",
        ],
    )
    .await;

    // Boot it: the measurement is in the event log and the PCR, and attestation shows it.
    node.restart();
    let events = appliance_events(&node).await;
    let fw: Vec<&String> = events
        .iter()
        .filter(|(k, _)| k == "firmware")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(fw.len(), 1, "{events:?}");
    assert!(
        fw[0].contains(&format!("image=sha256:{sha2}")) && fw[0].contains("svn=2"),
        "{fw:?}"
    );
    let reference = node.dir.path().join("reference.toml");
    capture_reference(&node.url(), &node.ca(), &reference);
    assert!(std::fs::read_to_string(&reference).unwrap().contains(&sha2));
    // wardctl attest checks the quote over the appliance PCR against the replayed log.
    let o = wardctl(&[
        "attest",
        "--url",
        &node.url(),
        "--ca",
        s(&node.ca()),
        "--reference",
        s(&reference),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A reference without the firmware measurement refuses the appliance.
    let stale = std::fs::read_to_string(&reference)
        .unwrap()
        .replace(&sha2, &"0".repeat(64));
    let stale_path = node.dir.path().join("stale.toml");
    std::fs::write(&stale_path, stale).unwrap();
    let o = wardctl(&[
        "attest",
        "--url",
        &node.url(),
        "--ca",
        s(&node.ca()),
        "--reference",
        s(&stale_path),
    ]);
    assert!(!o.status.success(), "{}", text(&o));

    let st = status(&node);
    assert_eq!(st["booted"]["trial"], true, "{st}");
    assert_eq!(st["floor"], 0, "the floor moves only at commit: {st}");
    let out = ok(update(&node, &["commit"]));
    assert!(out.contains("floor is now 2"), "{out}");
    let st = status(&node);
    assert_eq!(st["floor"], 2, "{st}");
    // What runs is committed now, without a restart.
    assert_eq!(st["booted"]["trial"], false, "{st}");
    assert_eq!(st["booted"]["release"], "2.0.0", "{st}");
    // Nothing left to commit.
    assert!(!update(&node, &["commit"]).status.success());

    // An older release, signed and fresh, is refused by the TPM floor…
    vendor.release("1.5.0", 1);
    let o = publish_and_stage(&node, &vendor, Some("fw-1.5.0.img"));
    assert!(
        !o.status.success() && text(&o).contains("below-floor"),
        "{}",
        text(&o)
    );
    // …even after the trusted metadata is wiped (the TPM counter is what holds).
    std::fs::remove_file(node.dir.path().join("state/updates/trusted.json")).unwrap();
    let o = update(&node, &["stage", "--target", "fw-1.5.0.img"]);
    assert!(
        !o.status.success() && text(&o).contains("below-floor"),
        "{}",
        text(&o)
    );

    // A newer release on top: slot b, with slot a kept as the fallback.
    vendor.release("3.0.0", 3);
    let out = ok(publish_and_stage(&node, &vendor, Some("fw-3.0.0.img")));
    assert!(out.contains("slot b"), "{out}");

    // While slot b waits for its trial, another stage is refused (and audited).
    let o = update(&node, &["stage", "--target", "fw-3.0.0.img"]);
    assert!(
        !o.status.success() && text(&o).contains("on trial"),
        "{}",
        text(&o)
    );

    // The inbox refuses names outside a repository's layout, and oversized metadata.
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    let put = |name: &str, body: Vec<u8>| {
        let url = format!("{}/v1/updates/inbox/{name}", node.url());
        let http = http.clone();
        async move {
            http.put(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put("targets/..%2F..%2Fescape", b"x".to_vec()).await, 400);
    assert_eq!(put("passwd", b"x".to_vec()).await, 400);
    assert_eq!(put("timestamp.json", vec![b' '; 3 << 20]).await, 422);
    assert!(!node.dir.path().join("state/updates/escape").exists());

    let kinds = audit_kinds(&node).await;
    let has = |k: &str| kinds.iter().any(|(kind, _)| kind == k);
    let refusals: Vec<(String, String)> = kinds
        .iter()
        .filter(|(k, _)| k == "update.refused")
        .map(|(_, v)| {
            (
                v["details"]["action"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                v["details"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for want in [
        ("stage", "below-floor"),
        ("commit", "conflict"),
        ("stage", "conflict"),
        ("publish", "bad-request"),
        ("publish", "too-large"),
    ] {
        assert!(
            refusals.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not audited: {refusals:?}"
        );
    }
    for k in [
        "update.published",
        "update.staged",
        "update.booted",
        "update.committed",
        "update.refused",
    ] {
        assert!(has(k), "no {k} in the audit log");
    }

    // Tenants may not use the update API.
    let (tc, tk) = node.client_cert("warden:tenant:acme");
    let o = wardctl(&[
        "update",
        "status",
        "--url",
        &node.url(),
        "--ca",
        s(&node.ca()),
        "--cert",
        s(&tc),
        "--key",
        s(&tk),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
}

#[tokio::test]
async fn a_failed_trial_falls_back_and_a_corrupt_slot_is_not_booted() {
    if !tools_or_skip() {
        return;
    }
    let vendor = Vendor::new();
    vendor.release("1.0.0", 1);
    let mut node = Node::start_with_config(wardend(), "node-b", None, &updates_config(&vendor, ""));
    install(&mut node, &vendor, "fw-1.0.0.img");

    // 2.0.0 is staged but never committed: two trial boots, then back to 1.0.0.
    vendor.release("2.0.0", 2);
    ok(publish_and_stage(&node, &vendor, Some("fw-2.0.0.img")));
    node.restart();
    assert_eq!(status(&node)["booted"]["release"], "2.0.0");
    node.restart();
    assert_eq!(status(&node)["booted"]["release"], "2.0.0");
    node.restart();
    let st = status(&node);
    assert_eq!(st["booted"]["release"], "1.0.0", "{st}");
    assert_eq!(st["booted"]["trial"], false, "{st}");
    assert_eq!(st["slots"][1]["state"], "bad", "{st}");
    assert_eq!(st["floor"], 1, "{st}");
    let kinds = audit_kinds(&node).await;
    assert!(
        kinds.iter().any(|(k, _)| k == "update.fallback"),
        "no fallback audited"
    );

    // Stage 2.0.0 again, then corrupt its slot before the boot: it is refused at boot.
    ok(update(&node, &["stage", "--target", "fw-2.0.0.img"]));
    let slot = node.dir.path().join("state/updates/slot-b.img");
    let mut bytes = std::fs::read(&slot).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&slot, bytes).unwrap();
    node.restart();
    let st = status(&node);
    assert_eq!(st["booted"]["release"], "1.0.0", "{st}");
    assert!(
        st["slots"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("SHA-256"),
        "{st}"
    );
}

/// Rewrite the node's config without the crash injection, and start it again.
fn recover(node: &mut Node) {
    node.kill9();
    let cfg = std::fs::read_to_string(node.config_path()).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("insecure_crash_at"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(node.config_path(), cfg).unwrap();
    node.start_again();
}

fn set_crash(node: &mut Node, step: &str) {
    node.stop();
    let mut cfg = std::fs::read_to_string(node.config_path()).unwrap();
    cfg.push_str(&format!("insecure_crash_at = \"{step}\"\n"));
    std::fs::write(node.config_path(), cfg).unwrap();
    node.start_again();
}

#[tokio::test]
async fn a_kill_at_every_step_leaves_a_bootable_verified_slot() {
    if !tools_or_skip() {
        return;
    }
    let vendor = Vendor::new();
    vendor.release("1.0.0", 1);
    vendor.release("2.0.0", 2);
    for step in ["download", "verify", "write", "switch", "save", "mark-good"] {
        let mut node =
            Node::start_with_config(wardend(), "node-c", None, &updates_config(&vendor, ""));
        install(&mut node, &vendor, "fw-1.0.0.img");
        let trusted = trusted_bytes(&node);
        assert!(trusted.is_some());
        ok(update(&node, &["publish", s(&vendor.repo())]));
        set_crash(&mut node, step);

        if step == "mark-good" {
            ok(update(&node, &["stage", "--target", "fw-2.0.0.img"]));
            node.restart(); // the crash point is still set: the trial boots
            let o = update(&node, &["commit"]);
            assert!(
                !o.status.success(),
                "{step}: wardend should have died: {}",
                text(&o)
            );
            recover(&mut node);
            // Marked good before the kill: the start finishes the commit (raises the floor).
            let st = status(&node);
            assert_eq!(st["booted"]["release"], "2.0.0", "{step}: {st}");
            assert_eq!(st["booted"]["trial"], false, "{step}: {st}");
            assert_eq!(st["floor"], 2, "{step}: {st}");
            continue;
        }

        let o = update(&node, &["stage", "--target", "fw-2.0.0.img"]);
        assert!(
            !o.status.success(),
            "{step}: wardend should have died: {}",
            text(&o)
        );
        recover(&mut node);
        let st = status(&node);
        assert_eq!(
            st["floor"], 1,
            "{step}: the floor never moves before a commit: {st}"
        );
        assert_eq!(
            trusted_bytes(&node),
            trusted,
            "{step}: the trusted metadata changed"
        );
        if step == "save" {
            // The switch was durable: the new slot boots on trial, the old one is the fallback.
            assert_eq!(st["booted"]["release"], "2.0.0", "{step}: {st}");
            assert_eq!(st["booted"]["trial"], true, "{step}: {st}");
            ok(update(&node, &["commit"]));
        } else {
            // The previous slot runs, verified; the update can simply be staged again.
            assert_eq!(st["booted"]["release"], "1.0.0", "{step}: {st}");
            assert_eq!(st["booted"]["trial"], false, "{step}: {st}");
            ok(update(&node, &["stage", "--target", "fw-2.0.0.img"]));
            node.restart();
            ok(update(&node, &["commit"]));
        }
        assert_eq!(status(&node)["floor"], 2, "{step}");
        assert_eq!(status(&node)["booted"]["release"], "2.0.0", "{step}");
    }
}
