//! Readiness, status and metrics on a running appliance (swtpm): `GET /v1/ready` names every
//! check and answers 503 when the TPM is gone or the measurement log no longer replays, while
//! informational checks (policy, peers, syslog export, firmware trial) never make it
//! unready; `GET /v1/status` and `wardctl status` show every subsystem, to operators only;
//! `/metrics` has a series for every subsystem with the values the appliance is in.
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
use std::process::Output;
use std::time::{Duration, Instant};

use cli::{capture_reference, text, wardctl};
use support::{tools_or_skip, Node};
use warden::status::{Readiness, Status};
use warden_attest::sealed::PolicyAuthority;

const EXAMPLE: &str = include_str!("../policy/tests/data/example.toml");
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

/// `wardctl <args> --url … --ca … --cert … --key …`
fn wardctl_as(node: &Node, cert: &(PathBuf, PathBuf), args: &[&str]) -> Output {
    let url = node.url();
    let ca = node.ca();
    let mut all = args.to_vec();
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

/// `GET /v1/ready` without a client certificate: (status, body).
async fn ready(node: &Node) -> (u16, Readiness) {
    let http = warden::tls::client(&node.ca()).unwrap();
    let resp = http
        .get(format!("{}/v1/ready", node.url()))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

/// Poll `/v1/ready` until `want(code, body)` holds (20 s at most).
async fn ready_until(node: &Node, want: impl Fn(u16, &Readiness) -> bool) -> (u16, Readiness) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = ready(node).await;
        if want(code, &body) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "readiness never got there: {code} {body:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `path` as `cert` (or without a certificate): (status, body).
async fn get(node: &Node, path: &str, cert: Option<&(PathBuf, PathBuf)>) -> (u16, String) {
    let http = match cert {
        Some((c, k)) => warden::tls::client_with_identity(&node.ca(), c, k).unwrap(),
        None => warden::tls::client(&node.ca()).unwrap(),
    };
    let resp = http
        .get(format!("{}{path}", node.url()))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn metrics(node: &Node) -> String {
    let (code, body) = get(node, "/metrics", Some(&node.operator_cert())).await;
    assert_eq!(code, 200, "{body}");
    body
}

fn has_line(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "no line {line:?} in:\n{metrics}"
    );
}

fn check<'a>(r: &'a Readiness, name: &str) -> &'a warden::status::Check {
    r.check(name)
        .unwrap_or_else(|| panic!("no check {name}: {r:?}"))
}

/// The pid of the node's swtpm (the only process serving its state directory).
fn swtpm_pid(node: &Node) -> nix::unistd::Pid {
    let want = format!("dir={}", node.swtpm.state_dir().display());
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"swtpm"))
                    && args.contains(&want.as_bytes())
            })
        })
        .collect();
    assert_eq!(found.len(), 1, "swtpm processes for {want}: {found:?}");
    nix::unistd::Pid::from_raw(found[0])
}

#[tokio::test]
async fn ready_fails_when_the_measurement_log_diverges_or_the_tpm_is_gone() {
    if !tools_or_skip() {
        return;
    }
    let mut node = Node::start(wardend(), "node-a");

    // A fresh appliance is ready; the missing policy is reported, not fatal.
    let (code, r) = ready(&node).await;
    assert_eq!(code, 200, "{r:?}");
    assert!(r.ready);
    for name in ["tpm", "measurement-log", "audit-log", "keys"] {
        let c = check(&r, name);
        assert!(c.ok, "{c:?}");
    }
    for name in ["tpm", "measurement-log", "audit-log"] {
        assert!(check(&r, name).required, "{name}");
    }
    let policy = check(&r, "policy");
    assert!(!policy.ok && !policy.required, "{policy:?}");
    assert_eq!(policy.detail, "no policy: every forwarded packet is denied");
    // Not configured: no check.
    for name in ["peers", "audit-export", "firmware"] {
        assert!(r.check(name).is_none(), "{name}: {r:?}");
    }
    // Tenants may ask too; the answer is the same.
    let tenant = node.client_cert("warden:tenant:acme");
    let (code, _) = get(&node, "/v1/ready", Some(&tenant)).await;
    assert_eq!(code, 200);
    let m = metrics(&node).await;
    has_line(&m, "warden_ready 1");
    has_line(&m, "warden_tpm_up 1");
    has_line(&m, "warden_measurement_log_consistent 1");
    has_line(&m, "warden_ready_check{check=\"policy\"} 0");

    // The TPM stops answering (its swtpm is stopped): the probe gives up after 2 s, and no
    // second probe piles up behind the first; once it answers again, the appliance is ready.
    let swtpm = swtpm_pid(&node);
    nix::sys::signal::kill(swtpm, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (code, r) = ready_until(&node, |_, r| !check(r, "tpm").ok).await;
    let resumed = nix::sys::signal::kill(swtpm, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(code, 503, "{r:?}");
    let c = check(&r, "tpm");
    assert!(!c.ok, "{c:?}");
    assert!(c.detail.contains("no answer within 2 s"), "{c:?}");
    resumed.unwrap();
    ready_until(&node, |code, _| code == 200).await;

    // The measurement log loses its first event: it no longer replays to the PCR.
    node.stop();
    let log = node.dir.path().join("state/measurements.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let rest: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&log, rest.join("\n") + "\n").unwrap();
    node.start_again();
    let (code, r) = ready(&node).await;
    assert_eq!(code, 503, "{r:?}");
    assert!(!r.ready);
    let c = check(&r, "measurement-log");
    assert!(!c.ok && c.required, "{c:?}");
    assert!(c.detail.contains("do not replay to PCR 15"), "{c:?}");
    assert!(check(&r, "tpm").ok, "{r:?}");
    has_line(&metrics(&node).await, "warden_measurement_log_consistent 0");

    // The TPM goes away (its swtpm is replaced by another one wardend does not know).
    let other = warden_testkit::Swtpm::start().unwrap();
    drop(std::mem::replace(&mut node.swtpm, other));
    let (code, r) = ready_until(&node, |_, r| !check(r, "tpm").ok).await;
    assert_eq!(code, 503, "{r:?}");
    let c = check(&r, "tpm");
    assert!(c.required, "{c:?}");
    assert!(c.detail.starts_with("the TPM"), "{c:?}");
    assert!(check(&r, "audit-log").ok, "{r:?}");
    let m = metrics(&node).await;
    has_line(&m, "warden_tpm_up 0");
    has_line(&m, "warden_ready 0");
    has_line(&m, "warden_ready_check{check=\"tpm\"} 0");
    // The status screen still answers, and says so.
    let o = wardctl_as(&node, &node.operator_cert(), &["status"]);
    let out = ok(o);
    assert!(out.contains("readiness: NOT READY"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("FAIL") && l.contains("tpm")),
        "{out}"
    );
    // `node` stops wardend on drop; its swtpm (the replacement) goes with it.
}

/// `[keys]` with a fresh authority whose signed policy matches a fresh swtpm.
fn keys_section(dir: &Path) -> String {
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

/// A release repository made with `wardctl release` (keys, root, one image at `svn`).
fn vendor(dir: &Path, svn: u64) -> PathBuf {
    let keys = dir.join("release-keys");
    let repo = dir.join("repo");
    ok(wardctl(&["release", "keygen", "--keys", s(&keys)]));
    ok(wardctl(&[
        "release",
        "init",
        "--keys",
        s(&keys),
        "--repo",
        s(&repo),
    ]));
    let image = dir.join("fw.img");
    std::fs::write(&image, "WARDEN FIRMWARE 2.0.0\n".repeat(1000)).unwrap();
    let svn = svn.to_string();
    ok(wardctl(&[
        "release",
        "add",
        "--keys",
        s(&keys),
        "--repo",
        s(&repo),
        "--image",
        s(&image),
        "--name",
        "fw.img",
        "--hardware-id",
        HW,
        "--svn",
        &svn,
        "--release",
        "2.0.0",
    ]));
    repo
}

#[tokio::test]
async fn status_and_metrics_show_every_subsystem_to_operators_only() {
    if !tools_or_skip() {
        return;
    }
    let setup = tempfile::tempdir().unwrap();
    let repo = vendor(setup.path(), 2);
    let pki = setup.path().join("pki");
    warden::pki::generate_demo_pki(&pki, &[]).unwrap();
    warden::pki::issue_peer_cert(&pki, "node-a").unwrap();
    // Nothing listens on the collector's port: every delivery fails.
    let collector = warden_testkit::free_port_pair();
    let extra = keys_section(setup.path())
        + &format!(
            "\n[updates]\nroot = \"{}\"\nhardware_id = \"{HW}\"\n",
            s(&repo.join("1.root.json"))
        )
        + &format!(
            "\n[peering]\nlisten = \"127.0.0.1:{}\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            warden_testkit::free_port_pair(),
            s(&pki.join("peer-node-a.crt")),
            s(&pki.join("peer-node-a.key")),
            s(&pki.join("ca.crt")),
        )
        + &format!(
            "\n[audit.syslog]\naddress = \"127.0.0.1:{collector}\"\nserver_name = \"localhost\"\n\
             ca = \"tls/ca.crt\"\n"
        );
    let mut node = Node::start_with_config(wardend(), "node-a", None, &extra);
    let op = node.operator_cert();
    let acme = node.client_cert("warden:tenant:acme");

    // Operators only.
    let (code, body) = get(&node, "/v1/status", Some(&acme)).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = get(&node, "/v1/status", None).await;
    assert_eq!(code, 401, "{body}");
    // wardctl top's route likewise; this node has no data plane, so there is nothing to show.
    let (code, body) = get(&node, "/v1/telemetry/top", Some(&acme)).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = get(&node, "/v1/telemetry/top", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&node, "/v1/telemetry/top", Some(&op)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no data plane"), "{body}");
    let o = wardctl_as(&node, &acme, &["status"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("operator role required"),
        "{}",
        text(&o)
    );
    let (code, _) = get(&node, "/v1/status", Some(&op)).await;
    assert_eq!(code, 200);

    // A fresh node with [updates]: floor 0, the factory image, both slots empty.
    let m = metrics(&node).await;
    for line in [
        "warden_update_floor{component=\"firmware\"} 0",
        "warden_update_booted_svn{component=\"firmware\"} 0",
        "warden_update_trial{component=\"firmware\"} 0",
        "warden_update_slot{slot=\"a\",state=\"empty\"} 1",
        "warden_update_slot{slot=\"a\",state=\"good\"} 0",
        "warden_update_slot{slot=\"b\",state=\"empty\"} 1",
        "warden_policy_version 0",
        "warden_audit_log_writable 1",
        "warden_policy_applies_total{result=\"applied\"} 0",
    ] {
        has_line(&m, line);
    }
    assert!(!m.contains("warden_keys{"), "no keys yet:\n{m}");

    // A tenant verifies the appliance and provisions a key (evidence for two purposes).
    let reference = node.dir.path().join("reference.toml");
    capture_reference(&node.url(), &node.ca(), &reference);
    ok(wardctl_as(
        &node,
        &acme,
        &["keys", "put", "model", "--reference", s(&reference)],
    ));
    // An operator applies a policy (node-a and node-b), then an older one and a broken one.
    let v3 = node.dir.path().join("v3.toml");
    std::fs::write(&v3, EXAMPLE).unwrap();
    ok(wardctl_as(&node, &op, &["policy", "apply", s(&v3)]));
    ok(wardctl_as(&node, &op, &["policy", "apply", s(&v3)]));
    let v2 = node.dir.path().join("v2.toml");
    std::fs::write(&v2, EXAMPLE.replacen("version = 3", "version = 2", 1)).unwrap();
    assert!(!wardctl_as(&node, &op, &["policy", "apply", s(&v2)])
        .status
        .success());
    // A tenant is not an operator: its attempt is not an apply.
    assert!(!wardctl_as(&node, &acme, &["policy", "apply", s(&v3)])
        .status
        .success());
    // A signed checkpoint.
    let (code, _) = get(&node, "/v1/audit/checkpoint", Some(&op)).await;
    assert_eq!(code, 200);

    // Informational checks fail without making the appliance unready: node-b is not there,
    // the collector refuses.
    let (code, r) = ready_until(&node, |_, r| {
        r.check("audit-export").is_some_and(|c| !c.ok) && r.check("peers").is_some()
    })
    .await;
    assert_eq!(code, 200, "{r:?}");
    let peers = check(&r, "peers");
    assert!(!peers.ok && !peers.required, "{peers:?}");
    assert_eq!(peers.detail, "0 of 1 peers attested");
    assert!(!check(&r, "audit-export").required);
    assert!(check(&r, "policy").ok);
    let fw = check(&r, "firmware");
    assert!(fw.ok && fw.detail == "the factory image", "{fw:?}");

    let out = ok(wardctl_as(&node, &op, &["status", "--json"]));
    let st: Status = serde_json::from_str(&out).unwrap();
    assert_eq!(st.appliance.name, "node-a");
    assert_eq!(st.appliance.version, env!("CARGO_PKG_VERSION"));
    assert!(st.readiness.ready);
    assert_eq!(st.attestation.appliance_pcr, 15);
    assert!(st.attestation.measured_events.unwrap() >= 3, "{st:?}");
    assert_eq!(st.attestation.log_replays, Some(true));
    assert!(st.attestation.evidence_served >= 2, "{st:?}");
    let policy = st.policy.as_ref().unwrap();
    assert_eq!(policy.version, 3);
    assert!(policy.digest.starts_with("sha256:"), "{policy:?}");
    let peers = st.peers.as_ref().unwrap();
    assert!(peers.in_policy);
    assert_eq!(peers.peers.len(), 1);
    assert_eq!(peers.peers[0].node, "node-b");
    assert_ne!(peers.peers[0].state, warden::peering::PeerState::Attested);
    assert_eq!(st.keys.len(), 1);
    assert_eq!(
        (
            st.keys[0].tenant.as_str(),
            st.keys[0].active,
            st.keys[0].versions
        ),
        ("acme", 1, 1)
    );
    let fw = st.firmware.as_ref().unwrap();
    assert_eq!(fw.component, "firmware");
    assert_eq!(fw.floor, Some(0));
    assert_eq!(fw.slots.len(), 2);
    assert!(st.audit.entries > 0);
    let cp = st.audit.checkpoint.as_ref().unwrap();
    assert!(cp.size > 0 && cp.signed_ms.is_some(), "{cp:?}");
    let export = st.audit.export.as_ref().unwrap();
    assert!(export.last_error.is_some(), "{export:?}");
    assert!(st.dataplane.is_none());
    // Material never appears.
    assert!(!out.contains("material"), "{out}");

    let screen = ok(wardctl_as(&node, &op, &["status"]));
    for want in [
        "node-a: wardend ",
        "readiness: READY",
        "  version         3",
        "  node-b          ",
        "  acme            1 active, 0 disabled, 0 unavailable; 1 live versions",
        "  floor           svn 0 (TPM NV counter)",
        "  running         the factory image",
        "  slot a          empty",
        "  state           off ([dataplane] is not configured)",
    ] {
        assert!(screen.contains(want), "{want:?} not in:\n{screen}");
    }
    assert!(
        screen.contains(&format!("  checkpoint      size {}, signed ", cp.size)),
        "{screen}"
    );

    let m = metrics(&node).await;
    for line in [
        "warden_policy_version 3",
        "warden_policy_applies_total{result=\"applied\"} 1",
        "warden_policy_applies_total{result=\"unchanged\"} 1",
        "warden_policy_applies_total{result=\"refused\"} 1",
        "warden_keys{tenant=\"acme\",state=\"active\"} 1",
        "warden_keys{tenant=\"acme\",state=\"disabled\"} 0",
        "warden_key_versions{tenant=\"acme\"} 1",
        "warden_attestation_evidence_total{purpose=\"key-provision\",result=\"served\"} 1",
        "warden_attestation_evidence_total{purpose=\"tenant-api\",result=\"failed\"} 0",
        "warden_audit_export_up 0",
        "warden_ready 1",
        "warden_ready_check{check=\"peers\"} 0",
        "warden_peer_attested{peer=\"node-b\"} 0",
        &format!("warden_audit_checkpoint_size {}", cp.size),
    ] {
        has_line(&m, line);
    }
    let tenant_served = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "warden_attestation_evidence_total{purpose=\"tenant-api\",result=\"served\"} ",
            )
        })
        .unwrap();
    assert!(tenant_served.parse::<u64>().unwrap() >= 1, "{m}");
    let backlog: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("warden_audit_export_backlog "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(backlog > 0, "{m}");

    // A release on trial: still ready, the firmware check says to commit.
    ok(wardctl_as(&node, &op, &["update", "publish", s(&repo)]));
    ok(wardctl_as(&node, &op, &["update", "stage"]));
    node.restart();
    let (code, r) = ready(&node).await;
    assert_eq!(code, 200, "{r:?}");
    let fw = check(&r, "firmware");
    assert!(!fw.ok && !fw.required, "{fw:?}");
    assert!(fw.detail.contains("runs on trial"), "{fw:?}");
    let m = metrics(&node).await;
    for line in [
        "warden_update_trial{component=\"firmware\"} 1",
        "warden_update_booted_svn{component=\"firmware\"} 2",
        "warden_update_floor{component=\"firmware\"} 0",
        "warden_update_slot{slot=\"a\",state=\"trial\"} 1",
        "warden_update_slot{slot=\"a\",state=\"empty\"} 0",
        // Counters start again with wardend.
        "warden_policy_applies_total{result=\"applied\"} 0",
    ] {
        has_line(&m, line);
    }
    let screen = ok(wardctl_as(&node, &op, &["status"]));
    assert!(
        screen.contains("slot a: release 2.0.0, svn 2 (trial: commit it or it falls back)"),
        "{screen}"
    );
}
