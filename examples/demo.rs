//! The README's first command: one appliance on swtpm, verified by a tenant with wardctl.
//!
//! Run through `scripts/demo.sh`, which installs what is missing and builds the binaries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    // target/<profile>/examples/demo → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

fn step(n: usize, title: &str) {
    println!("\n\x1b[1m[{n}] {title}\x1b[0m");
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().expect("running a command");
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    for line in s.lines() {
        println!("    {line}");
    }
    (o.status.success(), s)
}

fn wardctl(args: &[&str]) -> Command {
    let mut c = Command::new(bin("wardctl"));
    c.args(args);
    c
}

fn main() {
    let mut results: Vec<(&str, bool)> = Vec::new();
    println!("Warden demo: an appliance proves its state through its TPM; a tenant verifies it.");
    if !warden_testkit::tools_available() {
        eprintln!("swtpm is not installed: run scripts/demo.sh, which installs it");
        std::process::exit(2);
    }

    step(
        1,
        "start a TPM (swtpm with an EK certificate), certificates and wardend",
    );
    let node = support::Node::start(&bin("wardend"), "node-a");
    let url = node.url();
    let ca = node.ca();
    let ca = ca.to_str().unwrap();
    println!("    TPM    {}", node.swtpm.tcti());
    println!("    API    {url}");
    println!("    state  {}", node.dir.path().display());
    results.push(("wardend up on swtpm", true));

    step(2, "the tenant fetches the appliance's identity");
    let (ok, _) = run(&mut wardctl(&["identity", "--url", &url, "--ca", ca]));
    results.push(("identity served", ok));

    step(
        3,
        "the security team records reference values from the known-good appliance",
    );
    let reference = node.dir.path().join("reference.toml");
    let r = reference.to_str().unwrap();
    let (ok, _) = run(&mut wardctl(&[
        "reference",
        "capture",
        "--url",
        &url,
        "--ca",
        ca,
        "--out",
        r,
    ]));
    results.push(("reference values captured", ok));

    step(
        4,
        "the tenant verifies the appliance: fresh nonce, quote, every check",
    );
    let (ok, _) = run(&mut wardctl(&[
        "attest",
        "--url",
        &url,
        "--ca",
        ca,
        "--reference",
        r,
    ]));
    results.push(("attestation verified", ok));

    step(
        5,
        "something changes the platform state (PCR 7 extended) and the tenant checks again",
    );
    let (extended, _) = run(Command::new("tpm2_pcrextend")
        .env("TSS2_LOG", "esys+none,tcti+none")
        .arg("-T")
        .arg(node.swtpm.tcti())
        .arg(format!("7:sha256={}", "ab".repeat(32))));
    let (ok, out) = run(&mut wardctl(&[
        "attest",
        "--url",
        &url,
        "--ca",
        ca,
        "--reference",
        r,
    ]));
    results.push((
        "changed state refused",
        extended && !ok && out.contains("FAIL [reference-values]"),
    ));

    step(6, "an impostor's certificate authority is not trusted");
    let other = tempfile::tempdir().unwrap();
    let pki = warden::pki::generate_demo_pki(other.path(), &[]).unwrap();
    let (ok, _) = run(&mut wardctl(&[
        "attest",
        "--url",
        &url,
        "--ca",
        pki.ca_cert.to_str().unwrap(),
        "--reference",
        r,
    ]));
    results.push(("wrong CA refused", !ok));

    step(
        7,
        "the security team reads and verifies the audit log (signed checkpoint, every entry)",
    );
    let (op_cert, op_key) = node.operator_cert();
    let (oc, ok_) = (op_cert.to_str().unwrap(), op_key.to_str().unwrap());
    let (_, _) = run(&mut wardctl(&[
        "audit", "entries", "--url", &url, "--ca", ca, "--cert", oc, "--key", ok_,
    ]));
    let saved = node.dir.path().join("audit-checkpoint.note");
    let (ok, _) = run(&mut wardctl(&[
        "audit",
        "verify",
        "--url",
        &url,
        "--ca",
        ca,
        "--cert",
        oc,
        "--key",
        ok_,
        "--reference",
        r,
        "--saved",
        saved.to_str().unwrap(),
        "--all",
    ]));
    results.push(("audit log verified", ok));

    step(
        8,
        "tenant acme reads the audit log: only its own entry, with an inclusion proof",
    );
    let (tc, tk) = node.client_cert("warden:tenant:acme");
    let (tc, tk) = (
        tc.to_str().unwrap().to_owned(),
        tk.to_str().unwrap().to_owned(),
    );
    let (_, _) = run(&mut wardctl(&[
        "attest",
        "--url",
        &url,
        "--ca",
        ca,
        "--reference",
        r,
        "--cert",
        &tc,
        "--key",
        &tk,
    ]));
    let (ok, out) = run(&mut wardctl(&[
        "audit",
        "verify",
        "--url",
        &url,
        "--ca",
        ca,
        "--cert",
        &tc,
        "--key",
        &tk,
        "--reference",
        r,
    ]));
    results.push((
        "tenant view verified",
        ok && out.contains("1 visible entries"),
    ));

    step(
        9,
        "the security team checks a policy with a mistake: refused, with line, column and hint",
    );
    let (oc, ok_) = node.operator_cert();
    let (oc, ok_) = (
        oc.to_str().unwrap().to_owned(),
        ok_.to_str().unwrap().to_owned(),
    );
    let example = include_str!("../policy/tests/data/example.toml");
    let bad = node.dir.path().join("policy-bad.toml");
    std::fs::write(&bad, example.replace("\"8000-8080\"", "\"8080-8000\"")).unwrap();
    let (ok, out) = run(&mut wardctl(&["policy", "validate", bad.to_str().unwrap()]));
    results.push((
        "bad policy refused",
        !ok && out.contains("the range 8080-8000 is inverted"),
    ));

    step(
        10,
        "the security team applies the policy: versioned, measured into the PCR, audited",
    );
    let good = node.dir.path().join("policy.toml");
    std::fs::write(&good, example).unwrap();
    let conn = ["--url", &url, "--ca", ca, "--cert", &oc, "--key", &ok_];
    let mut args = vec!["policy", "apply", good.to_str().unwrap()];
    args.extend(conn);
    let (applied, _) = run(&mut wardctl(&args));
    let mut args = vec!["policy", "show"];
    args.extend(conn);
    let (shown, out) = run(&mut wardctl(&args));
    results.push((
        "policy v3 in force",
        applied && shown && out.contains("version   3"),
    ));

    summary(&results, &node);
    drop(node);
    if results.iter().any(|(_, ok)| !ok) {
        std::process::exit(1);
    }
}

fn summary(results: &[(&str, bool)], node: &support::Node) {
    println!("\n\x1b[1mSummary\x1b[0m");
    println!("    {:<32} result", "step");
    for (what, ok) in results {
        println!("    {what:<32} {}", if *ok { "ok" } else { "FAILED" });
    }
    if results.iter().any(|(_, ok)| !ok) {
        println!("\nwardend log:\n{}", node.log());
    }
}
