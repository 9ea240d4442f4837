//! `wardctl policy`: validate a policy file (locally, or on an appliance), and diff, apply and
//! show the policy of an appliance (operator certificate).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::policy_api::{DiagnosticJson, Diff};

static NULL: serde_json::Value = serde_json::Value::Null;

/// The value at a JSON pointer, or null.
fn at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    v.pointer(pointer).unwrap_or(&NULL)
}

/// Read a policy file, refusing oversized ones before reading them whole.
pub fn read_policy(file: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if len > warden_policy::MAX_POLICY_BYTES as u64 {
        anyhow::bail!(
            "{}: {len} bytes; a policy is at most {} bytes",
            file.display(),
            warden_policy::MAX_POLICY_BYTES
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Validate locally with the same code the appliance runs. Exit 1 when invalid.
pub fn validate_local(file: &Path) -> anyhow::Result<ExitCode> {
    let text = read_policy(file)?;
    match crate::policy::parse_policy(&text, &file.display().to_string()) {
        Ok(p) => {
            println!(
                "valid: version {} {} ({} nodes, {} tenants, {} segments, {} rules)",
                p.version,
                p.digest_hex(),
                p.nodes.len(),
                p.tenants.len(),
                p.segments.len(),
                p.rules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_diagnostics(body: &serde_json::Value) {
    let list: Vec<DiagnosticJson> =
        serde_json::from_value(at(body, "/diagnostics").clone()).unwrap_or_default();
    for d in &list {
        let at = if d.line > 0 {
            format!(":{}:{}", d.line, d.column)
        } else {
            String::new()
        };
        let path = if d.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", d.path)
        };
        eprintln!("{}{at}: {path}{}", d.file, d.message);
        if let Some(h) = &d.hint {
            eprintln!("  hint: {h}");
        }
    }
    if list.is_empty() {
        eprintln!("{}", at(body, "/error").as_str().unwrap_or("refused"));
    }
}

/// Send a request with the policy document; returns (status, JSON body).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    file: Option<&Path>,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let mut req = http.request(method, url);
    if let Some(file) = file {
        let name = file
            .file_name()
            .map_or_else(|| "policy".to_owned(), |n| n.to_string_lossy().into_owned());
        req = req
            .query(&[("name", name)])
            .header(reqwest::header::CONTENT_TYPE, "application/toml")
            .body(read_policy(file)?);
    }
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::json!({ "error": text }));
    Ok((status, body))
}

fn exit_for(status: reqwest::StatusCode, body: &serde_json::Value) -> ExitCode {
    if status.is_success() {
        return ExitCode::SUCCESS;
    }
    print_diagnostics(body);
    ExitCode::from(1)
}

pub async fn validate_remote(
    http: &reqwest::Client,
    base: &str,
    file: &Path,
) -> anyhow::Result<ExitCode> {
    let (status, body) = send(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/policy/validate"),
        Some(file),
    )
    .await?;
    if status.is_success() {
        println!(
            "valid on the appliance: version {} {}",
            at(&body, "/policy/version"),
            at(&body, "/policy/digest")
        );
    }
    Ok(exit_for(status, &body))
}

pub async fn diff(http: &reqwest::Client, base: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let (status, body) = send(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/policy/diff"),
        Some(file),
    )
    .await?;
    if !status.is_success() {
        return Ok(exit_for(status, &body));
    }
    let d: Diff = serde_json::from_value(body)?;
    match &d.from {
        Some((v, digest)) => println!("in force:  version {v} {digest}"),
        None => println!("in force:  none (every forwarded packet denied)"),
    }
    println!("offered:   version {} {}", d.to.0, d.to.1);
    let section = |title: &str, sign: char, items: &[String]| {
        for i in items {
            println!("{sign} {title} {i}");
        }
    };
    section("rule", '+', &d.rules_added);
    section("rule", '-', &d.rules_removed);
    section("segment", '+', &d.segments_added);
    section("segment", '-', &d.segments_removed);
    section("segment", '~', &d.segments_changed);
    section("tenant", '+', &d.tenants_added);
    section("tenant", '-', &d.tenants_removed);
    section("node", '+', &d.nodes_added);
    section("node", '-', &d.nodes_removed);
    Ok(ExitCode::SUCCESS)
}

pub async fn apply(http: &reqwest::Client, base: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let url = format!("{base}/v1/policy");
    let request = send(http, reqwest::Method::PUT, &url, Some(file));
    let (status, body) = crate::progress::watch(http, base, "policy-apply", request).await?;
    if status.is_success() {
        if at(&body, "/unchanged").as_bool() == Some(true) {
            println!(
                "unchanged: version {} is already in force",
                at(&body, "/version")
            );
        } else {
            println!(
                "applied: version {} {} (previous: {})",
                at(&body, "/version"),
                at(&body, "/digest").as_str().unwrap_or_default(),
                match at(&body, "/previous_version") {
                    serde_json::Value::Null => "none".to_owned(),
                    v => v.to_string(),
                }
            );
        }
    }
    Ok(exit_for(status, &body))
}

pub async fn show(http: &reqwest::Client, base: &str, document: bool) -> anyhow::Result<ExitCode> {
    let (status, body) = send(
        http,
        reqwest::Method::GET,
        &format!("{base}/v1/policy"),
        None,
    )
    .await?;
    if !status.is_success() {
        return Ok(exit_for(status, &body));
    }
    if document {
        print!("{}", at(&body, "/document").as_str().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let p = at(&body, "/policy");
    if p.is_null() {
        println!("no policy applied: every forwarded packet is denied");
        return Ok(ExitCode::SUCCESS);
    }
    println!("version   {}", at(p, "/version"));
    println!(
        "digest    {}",
        at(p, "/digest").as_str().unwrap_or_default()
    );
    println!(
        "contents  {} nodes, {} tenants, {} segments, {} rules",
        at(p, "/nodes"),
        at(p, "/tenants"),
        at(p, "/segments"),
        at(p, "/rules").as_array().map_or(0, Vec::len)
    );
    let counters = at(&body, "/counters");
    for (i, r) in at(p, "/rules").as_array().into_iter().flatten().enumerate() {
        let hits = at(counters, &format!("/rules/r{i}/packets"));
        if hits.is_null() {
            println!("  allow {}", r.as_str().unwrap_or_default());
        } else {
            println!(
                "  allow {}  ({hits} packets)",
                r.as_str().unwrap_or_default()
            );
        }
    }
    for l in at(p, "/limits").as_array().into_iter().flatten() {
        let text = l.as_str().unwrap_or_default();
        let name = text.split(':').next().unwrap_or_default();
        let over = at(counters, &format!("/limits/{name}/packets"));
        if over.is_null() {
            println!("  limit {text}");
        } else {
            println!("  limit {text}  ({over} packets over)");
        }
    }
    let dropped = at(counters, "/flows_dropped/packets");
    if !dropped.is_null() {
        println!("  denied  {dropped} packets (no rule allows them)");
        println!(
            "  wire    {} accepted, {} dropped",
            at(counters, "/wire_accepted/packets"),
            at(counters, "/wire_dropped/packets")
        );
    } else if let Some(e) = at(counters, "/error").as_str() {
        println!("  counters unavailable: {e}");
    }
    Ok(ExitCode::SUCCESS)
}
