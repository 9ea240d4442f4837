//! The policy admin API on a running appliance, through wardctl: validate, diff, apply, show;
//! only newer versions, invalid policies refused with positions, the previous policy kept,
//! operators only, every apply and refusal audited, the policy measured into the appliance
//! PCR and kept across a restart.
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

const EXAMPLE: &str = include_str!("../policy/tests/data/example.toml");

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(node: &Node, name: &str, body: &str) -> PathBuf {
    let p = node.dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// `wardctl policy <verb> [file] --url … --ca … --cert … --key …`
fn policy(node: &Node, verb: &str, file: Option<&Path>, cert: &(PathBuf, PathBuf)) -> Output {
    let url = node.url();
    let ca = node.ca();
    let mut args = vec!["policy", verb];
    if let Some(f) = file {
        args.push(s(f));
    }
    args.extend([
        "--url",
        &url,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert.0),
        "--key",
        s(&cert.1),
    ]);
    wardctl(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn operators_validate_diff_apply_and_show_policies() {
    if !tools_or_skip() {
        return;
    }
    let mut node = Node::start(wardend(), "node-a");
    let op = node.operator_cert();
    let v3 = write(&node, "v3.toml", EXAMPLE);

    // Nothing in force yet.
    let o = policy(&node, "show", None, &op);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("no policy applied"), "{}", text(&o));

    // Local and remote validation agree.
    let o = wardctl(&["policy", "validate", s(&v3)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("valid: version 3 sha256:"),
        "{}",
        text(&o)
    );
    let o = policy(&node, "validate", Some(&v3), &op);
    assert!(o.status.success(), "{}", text(&o));

    // Diff against nothing: every rule is new.
    let o = policy(&node, "diff", Some(&v3), &op);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("in force:  none"), "{out}");
    assert!(
        out.contains("+ rule acme-web -> acme-db tcp/5432,8000-8080"),
        "{out}"
    );

    // Apply; the PCR measurement and the audit entry follow.
    let o = policy(&node, "apply", Some(&v3), &op);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("applied: version 3"), "{}", text(&o));
    operations_were_shown(
        &node,
        "policy-apply",
        &[
            "parsing and validating",
            "enforcing 3 rules over 3 segments",
            "storing the document",
            "measuring it into the TPM",
            "recording the audit entry",
        ],
    )
    .await;
    let o = policy(&node, "show", None, &op);
    assert!(stdout(&o).contains("version   3"), "{}", text(&o));
    assert!(
        stdout(&o).contains("allow globex-batch -> acme-web tcp/443"),
        "{}",
        text(&o)
    );
    let digest = warden_policy::parse(EXAMPLE, "x").unwrap().digest_hex();
    let events = appliance_events(&node).await;
    assert!(
        events.contains(&("policy".to_owned(), format!("v3 {digest}"))),
        "{events:?}"
    );
    let kinds = audit_kinds(&node).await;
    let applied = kinds.iter().find(|(k, _)| k == "policy.applied").unwrap();
    assert_eq!(applied.1["actor"], "operator:operator");
    assert_eq!(applied.1["details"]["version"], "3");
    assert_eq!(applied.1["details"]["digest"], digest.as_str());

    // The same document again changes nothing.
    let o = policy(&node, "apply", Some(&v3), &op);
    assert!(stdout(&o).contains("unchanged"), "{}", text(&o));

    // A diff names what changes.
    let v4_text = EXAMPLE
        .replace("version = 3", "version = 4")
        .replace("ports = [443]", "ports = [443, 8443]");
    let v4 = write(&node, "v4.toml", &v4_text);
    let o = policy(&node, "diff", Some(&v4), &op);
    let out = stdout(&o);
    assert!(
        out.contains("+ rule globex-batch -> acme-web tcp/443,8443"),
        "{out}"
    );
    assert!(
        out.contains("- rule globex-batch -> acme-web tcp/443"),
        "{out}"
    );

    // Not newer: refused, audited, v3 stays.
    let old = write(
        &node,
        "old.toml",
        &v4_text.replace("version = 4", "version = 2"),
    );
    let o = policy(&node, "apply", Some(&old), &op);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("not newer than version 3"),
        "{}",
        text(&o)
    );

    // Invalid: refused with positions, audited, v3 stays.
    let bad = write(
        &node,
        "bad.toml",
        &v4_text.replace("\"8000-8080\"", "\"8080-8000\""),
    );
    let o = policy(&node, "apply", Some(&bad), &op);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("bad.toml:") && stderr(&o).contains("the range 8080-8000 is inverted"),
        "{}",
        text(&o)
    );
    assert!(stderr(&o).contains("hint: "), "{}", text(&o));
    let o = wardctl(&["policy", "validate", s(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = policy(&node, "show", None, &op);
    assert!(stdout(&o).contains("version   3"), "{}", text(&o));
    let kinds = audit_kinds(&node).await;
    let refused: Vec<_> = kinds
        .iter()
        .filter(|(k, _)| k == "policy.refused")
        .collect();
    assert_eq!(refused.len(), 2, "{kinds:?}");
    assert!(refused[0].1["details"]["reason"]
        .as_str()
        .unwrap()
        .contains("not newer"));

    // Node reference values are checked with the attestation crate: a broken one is refused,
    // the appliance's own captured ones pass.
    let mut doc: toml::Table = toml::from_str(&v4_text).unwrap();
    let mut broken = doc.clone();
    broken["node"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert(
            "reference".into(),
            toml::Value::Table(toml::from_str("version = 7").unwrap()),
        );
    let broken = write(&node, "broken-ref.toml", &toml::to_string(&broken).unwrap());
    let o = wardctl(&["policy", "validate", s(&broken)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("node[0].reference") && stderr(&o).contains("not valid"),
        "{}",
        text(&o)
    );
    let o = policy(&node, "apply", Some(&broken), &op);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let captured = node.dir.path().join("captured.toml");
    let url = node.url();
    capture_reference(&url, &node.ca(), &captured);
    let reference: toml::Table =
        toml::from_str(&std::fs::read_to_string(&captured).unwrap()).unwrap();
    doc["node"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert("reference".into(), toml::Value::Table(reference));
    let with_ref = write(&node, "with-ref.toml", &toml::to_string(&doc).unwrap());
    let o = wardctl(&["policy", "validate", s(&with_ref)]);
    assert!(o.status.success(), "{}", text(&o));

    // Tenants cannot touch the policy; nor can callers without a certificate.
    let tenant = node.client_cert("warden:tenant:acme");
    let o = policy(&node, "apply", Some(&v4), &tenant);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("operator role required"),
        "{}",
        text(&o)
    );
    let o = policy(&node, "show", None, &tenant);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let anonymous = warden::tls::client(&node.ca()).unwrap();
    let resp = anonymous
        .put(format!("{}/v1/policy", node.url()))
        .body(v4_text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // v4 goes in; after a restart it is still in force and measured again.
    let o = policy(&node, "apply", Some(&v4), &op);
    assert!(o.status.success(), "{}", text(&o));
    node.restart();
    let o = policy(&node, "show", None, &op);
    assert!(stdout(&o).contains("version   4"), "{}", text(&o));
    let o = policy(&node, "show", None, &op);
    let _ = o;
    let shown = wardctl(&[
        "policy",
        "show",
        "--document",
        "--url",
        &node.url(),
        "--ca",
        s(&node.ca()),
        "--cert",
        s(&op.0),
        "--key",
        s(&op.1),
    ]);
    assert_eq!(stdout(&shown), v4_text);
    let v4_digest = warden_policy::parse(&v4_text, "x").unwrap().digest_hex();
    let events = appliance_events(&node).await;
    assert!(
        events.contains(&("policy".to_owned(), format!("v4 {v4_digest}"))),
        "{events:?}"
    );
}
