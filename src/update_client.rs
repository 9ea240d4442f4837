//! `wardctl update` (operators: publish, stage, status, commit) and `wardctl release` (the
//! signing tool: keys, repository, releases). docs/updates.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use warden_firmware_update::keys::KeyAlg;
use warden_firmware_update::metadata::Role;
use warden_firmware_update::sign::{self, KeySet, NewTarget};

use crate::updates::{CommitResponse, StageResponse, StatusResponse};

static NULL: serde_json::Value = serde_json::Value::Null;

async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::json!({ "error": text }));
    Ok((status, body))
}

fn fail(body: &serde_json::Value) -> ExitCode {
    let msg = body
        .pointer("/error")
        .and_then(|v| v.as_str())
        .unwrap_or("refused");
    match body.pointer("/reason").unwrap_or(&NULL).as_str() {
        Some(reason) => eprintln!("refused ({reason}): {msg}"),
        None => eprintln!("error: {msg}"),
    }
    ExitCode::from(1)
}

/// The repository files under `dir`, as inbox names (`targets/…` for images).
fn repository_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name.ends_with(".json") && name != "roles.json" {
            files.push((name, entry.path()));
        }
    }
    let targets = dir.join("targets");
    if targets.is_dir() {
        let mut stack = vec![(targets, String::from("targets"))];
        while let Some((d, prefix)) = stack.pop() {
            for entry in
                std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?
            {
                let entry = entry?;
                let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
                if entry.file_type()?.is_dir() {
                    stack.push((entry.path(), name));
                } else {
                    files.push((name, entry.path()));
                }
            }
        }
    }
    // Images first, metadata after, the timestamp last: a stage that races the upload sees the
    // old timestamp and a consistent older release, never a mix.
    files.sort_by_key(|(n, _)| {
        (
            match n.as_str() {
                _ if n.starts_with("targets/") => 0,
                "targets.json" => 2,
                "snapshot.json" => 3,
                "timestamp.json" => 4,
                _ => 1,
            },
            n.clone(),
        )
    });
    if !files.iter().any(|(n, _)| n == "timestamp.json") {
        anyhow::bail!(
            "{}: no timestamp.json; is this a release repository?",
            dir.display()
        );
    }
    Ok(files)
}

/// Upload a repository directory to the appliance's update inbox (replacing what was there).
pub async fn publish(http: &reqwest::Client, base: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    let files = repository_files(dir)?;
    let url = format!("{base}/v1/updates/inbox");
    let (status, body) = send(http.delete(&url), &url).await?;
    if !status.is_success() {
        return Ok(fail(&body));
    }
    let total = files.len();
    for (i, (name, path)) in files.into_iter().enumerate() {
        let bytes = tokio::fs::read(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let len = bytes.len();
        let url = format!("{base}/v1/updates/inbox/{name}");
        let (status, body) = send(http.put(&url).body(bytes), &url).await?;
        if !status.is_success() {
            eprintln!("{name}: not published");
            return Ok(fail(&body));
        }
        println!("[{}/{total}] published {name} ({len} bytes)", i + 1);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stage(
    http: &reqwest::Client,
    base: &str,
    target: Option<String>,
) -> anyhow::Result<ExitCode> {
    let url = format!("{base}/v1/updates/stage");
    let body = serde_json::json!({ "target": target });
    println!("staging: verifying metadata and image, writing the free slot…");
    let request = send(http.post(&url).json(&body), &url);
    let (status, body) = crate::progress::watch(http, base, "update-stage", request).await?;
    if !status.is_success() {
        return Ok(fail(&body));
    }
    let r: StageResponse = serde_json::from_value(body)?;
    println!(
        "staged {} (release {}, svn {}) in slot {}\n  image    sha256:{}\n  manifest sha256:{}\n  metadata root v{}, targets v{}\nnext: {}",
        r.target, r.release, r.svn, r.slot, r.image_sha256, r.manifest_sha256, r.root_version, r.targets_version, r.next
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn commit(http: &reqwest::Client, base: &str) -> anyhow::Result<ExitCode> {
    let url = format!("{base}/v1/updates/commit");
    let (status, body) = send(http.post(&url), &url).await?;
    if !status.is_success() {
        return Ok(fail(&body));
    }
    let r: CommitResponse = serde_json::from_value(body)?;
    println!(
        "committed slot {} (release {}, svn {}); TPM security floor is now {}",
        r.slot, r.release, r.svn, r.floor
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn status(http: &reqwest::Client, base: &str, json: bool) -> anyhow::Result<ExitCode> {
    let url = format!("{base}/v1/updates");
    let (status, body) = send(http.get(&url), &url).await?;
    if !status.is_success() {
        return Ok(fail(&body));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s: StatusResponse = serde_json::from_value(body)?;
    println!("component   {} on hardware {}", s.component, s.hardware_id);
    println!("floor       svn {} (TPM NV counter)", s.floor);
    match (&s.booted.slot, &s.booted.release) {
        (Some(slot), Some(rel)) => println!(
            "running     slot {slot}: release {rel}, svn {}{}",
            s.booted.svn.unwrap_or_default(),
            if s.booted.trial {
                " (trial: commit or it falls back)"
            } else {
                ""
            }
        ),
        _ => println!("running     factory image (no slot installed)"),
    }
    for slot in &s.slots {
        let mut line = format!("slot {}      {}", slot.slot, slot.state);
        if let (Some(r), Some(svn)) = (&slot.release, slot.svn) {
            line.push_str(&format!(": release {r}, svn {svn}"));
        }
        if let Some(b) = slot.boots_left {
            line.push_str(&format!(", {b} trial boots left"));
        }
        if slot.active {
            line.push_str(" [committed]");
        }
        if slot.booted {
            line.push_str(" [running]");
        }
        if let Some(r) = &slot.reason {
            line.push_str(&format!(" — {r}"));
        }
        println!("{line}");
    }
    for r in &s.trusted {
        println!(
            "trusted     {:<9} v{} expires {}",
            r.role, r.version, r.expires
        );
    }
    println!("clock       {} (time floor {})", s.clock, s.time_floor);
    println!("inbox       {} files", s.inbox_files);
    Ok(ExitCode::SUCCESS)
}

const DAY: i64 = 86_400;

fn now() -> i64 {
    crate::audit::now_ms() / 1000
}

/// `wardctl release keygen`.
pub fn keygen(dir: &Path, alg: &str, counts: [(usize, u32); 4]) -> anyhow::Result<ExitCode> {
    let alg = match alg {
        "ed25519" => KeyAlg::Ed25519,
        "ecdsa-p256" => KeyAlg::EcdsaP256Sha256,
        other => anyhow::bail!("--algorithm {other:?}: use ed25519 or ecdsa-p256"),
    };
    if dir.join("roles.json").exists() {
        anyhow::bail!(
            "{} already holds keys; refusing to overwrite them",
            dir.display()
        );
    }
    let roles: Vec<(Role, usize, u32)> = Role::ALL
        .into_iter()
        .zip(counts)
        .map(|(r, (n, k))| (r, n, k))
        .collect();
    let keys = KeySet::generate(alg, &roles, dir)?;
    for (role, set) in [
        ("root", &keys.root),
        ("timestamp", &keys.timestamp),
        ("snapshot", &keys.snapshot),
        ("targets", &keys.targets),
    ] {
        let ids: Vec<String> = set
            .signers
            .iter()
            .map(|s| s.keyid().chars().take(12).collect())
            .collect();
        println!(
            "{role:<10} {} of {} keys: {}",
            set.threshold,
            set.signers.len(),
            ids.join(" ")
        );
    }
    println!(
        "keys written to {} (private keys mode 0600: keep root keys offline)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `wardctl release init`.
pub fn init(keys: &Path, repo: &Path, days: i64) -> anyhow::Result<ExitCode> {
    let keys = KeySet::load(keys)?;
    let path = sign::init_repository(repo, &keys, now() + days * DAY)?;
    println!(
        "wrote {} (give it to appliances as [updates] root)",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `wardctl release add`.
#[allow(clippy::too_many_arguments)]
pub fn add(
    keys: &Path,
    repo: &Path,
    image: &Path,
    name: &str,
    hardware_id: &str,
    component: &str,
    svn: u64,
    release: &str,
    days: i64,
    timestamp_days: i64,
) -> anyhow::Result<ExitCode> {
    let keys = KeySet::load(keys)?;
    let t = sign::add_target(
        repo,
        &keys,
        &NewTarget {
            name,
            image,
            hardware_id,
            component,
            svn,
            release,
        },
        now() + days * DAY,
        now() + timestamp_days * DAY,
    )?;
    println!(
        "signed {name}: release {release}, svn {svn}, {} bytes, sha256:{}",
        t.length,
        hex::encode(t.sha256)
    );
    Ok(ExitCode::SUCCESS)
}

/// `wardctl release rotate-root`.
pub fn rotate_root(old: &Path, new: &Path, repo: &Path, days: i64) -> anyhow::Result<ExitCode> {
    let old = KeySet::load(old)?;
    let new = KeySet::load(new)?;
    let path = sign::rotate_root(repo, &old, &new, now() + days * DAY)?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `wardctl release timestamp`.
pub fn refresh_timestamp(keys: &Path, repo: &Path, days: i64) -> anyhow::Result<ExitCode> {
    let keys = KeySet::load(keys)?;
    sign::refresh_timestamp(repo, &keys, now() + days * DAY)?;
    println!("re-signed {}", repo.join("timestamp.json").display());
    Ok(ExitCode::SUCCESS)
}
