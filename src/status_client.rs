//! `wardctl status`: `GET /v1/status` as one readable screen, or as JSON.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use warden_firmware_update::time::format_rfc3339;

use crate::status::{Check, Status};

/// Width of the row labels.
const KEY: usize = 15;

/// Fetch `GET /v1/status` and print it; an error says why the call failed.
pub async fn status(http: &reqwest::Client, base: &str, json: bool) -> anyhow::Result<ExitCode> {
    let url = format!("{base}/v1/status");
    let text = crate::client::get_text(http, &url).await?;
    let status: Status = serde_json::from_str(&text)
        .with_context(|| format!("{url}: the answer is not a status"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn time(ms: i64) -> String {
    format_rfc3339(ms.div_euclid(1000))
}

/// `1d 02h 03m 04s`, without the leading zero units.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m {s:02}s")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn row(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {key:<KEY$} {value}");
}

fn mark(c: &Check) -> &'static str {
    match (c.ok, c.required) {
        (true, _) => "ok",
        (false, true) => "FAIL",
        (false, false) => "warn",
    }
}

/// The status as one screen of aligned sections.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let a = &s.appliance;
    let _ = writeln!(
        out,
        "{}: wardend {}, up {} (since {})",
        a.name,
        a.version,
        duration(a.uptime_secs),
        time(a.started_ms)
    );
    row(
        &mut out,
        "AK",
        format!("{} ({})", a.ak_name, a.ak_algorithm),
    );

    let _ = writeln!(
        out,
        "\nreadiness: {}",
        if s.readiness.ready {
            "READY"
        } else {
            "NOT READY"
        }
    );
    let width = s
        .readiness
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &s.readiness.checks {
        let _ = writeln!(out, "  {:<5} {:<width$}  {}", mark(c), c.name, c.detail);
    }

    let at = &s.attestation;
    let _ = writeln!(out, "\nattestation");
    row(
        &mut out,
        "appliance PCR",
        match (at.measured_events, at.log_replays) {
            (Some(n), Some(true)) => {
                format!("{}: {n} measured events, the log replays", at.appliance_pcr)
            }
            (Some(n), Some(false)) => format!(
                "{}: {n} measured events, the log DOES NOT replay",
                at.appliance_pcr
            ),
            (Some(n), None) => format!("{}: {n} measured events", at.appliance_pcr),
            (None, _) => format!("{}: the TPM did not answer", at.appliance_pcr),
        },
    );
    row(
        &mut out,
        "evidence",
        format!(
            "{} served, {} failed since start",
            at.evidence_served, at.evidence_failed
        ),
    );
    row(
        &mut out,
        "appraisals",
        if at.reference_configured {
            "reference values configured"
        } else {
            "no reference values (POST /v1/appraisals refuses)"
        },
    );

    let _ = writeln!(out, "\npolicy");
    match &s.policy {
        Some(p) => {
            row(&mut out, "version", p.version);
            row(&mut out, "digest", &p.digest);
            row(&mut out, "since", time(p.since_ms));
        }
        None => row(
            &mut out,
            "version",
            "none: every forwarded packet is denied",
        ),
    }

    let _ = writeln!(out, "\npeers");
    match &s.peers {
        None => row(&mut out, "peering", "off ([peering] is not configured)"),
        Some(p) if !p.in_policy => row(
            &mut out,
            "peering",
            "on; the policy in force does not name this appliance",
        ),
        Some(p) if p.peers.is_empty() => row(&mut out, "peering", "on; no peers"),
        Some(p) => {
            for peer in &p.peers {
                let sas: Vec<String> = peer
                    .tenants
                    .iter()
                    .map(|t| format!("{} {} in/{} out", t.tenant, t.inbound, t.outbound))
                    .collect();
                row(
                    &mut out,
                    &peer.node,
                    format!(
                        "{} since {}{}",
                        peer.state.as_str(),
                        time(peer.since_ms),
                        if sas.is_empty() {
                            String::new()
                        } else {
                            format!("; SAs: {}", sas.join(", "))
                        }
                    ),
                );
            }
        }
    }

    let _ = writeln!(out, "\nkeys");
    if s.keys.is_empty() {
        row(&mut out, "tenants", "no keys");
    }
    for k in &s.keys {
        row(
            &mut out,
            &k.tenant,
            format!(
                "{} active, {} disabled, {} unavailable; {} live versions",
                k.active, k.disabled, k.unavailable, k.versions
            ),
        );
    }

    let _ = writeln!(out, "\nfirmware");
    match &s.firmware {
        None => row(&mut out, "updates", "off ([updates] is not configured)"),
        Some(f) => {
            row(&mut out, "component", &f.component);
            let b = &f.booted;
            row(
                &mut out,
                "running",
                match (&b.slot, &b.release, b.svn) {
                    (Some(slot), Some(r), Some(svn)) => format!(
                        "slot {slot}: release {r}, svn {svn}{}",
                        if b.trial {
                            " (trial: commit it or it falls back)"
                        } else {
                            ""
                        }
                    ),
                    _ => "the factory image".to_owned(),
                },
            );
            match f.floor {
                Some(floor) => row(&mut out, "floor", format!("svn {floor} (TPM NV counter)")),
                None => row(&mut out, "floor", "not read"),
            }
            for slot in &f.slots {
                let mut line = slot.state.clone();
                if let (Some(r), Some(svn)) = (&slot.release, slot.svn) {
                    let _ = write!(line, ": release {r}, svn {svn}");
                }
                if slot.active {
                    line.push_str(" [committed]");
                }
                if slot.booted {
                    line.push_str(" [running]");
                }
                row(&mut out, &format!("slot {}", slot.slot), line);
            }
            if let Some(e) = &f.error {
                row(&mut out, "error", e);
            }
        }
    }

    let au = &s.audit;
    let _ = writeln!(out, "\naudit");
    row(&mut out, "entries", au.entries);
    match (&au.checkpoint, &au.checkpoint_error) {
        (_, Some(e)) => row(&mut out, "checkpoint", format!("unreadable: {e}")),
        (Some(c), None) => row(
            &mut out,
            "checkpoint",
            match c.signed_ms {
                Some(ms) => format!("size {}, signed {}", c.size, time(ms)),
                None => format!("size {}", c.size),
            },
        ),
        (None, None) => row(&mut out, "checkpoint", "none signed yet"),
    }
    match &au.export {
        None => row(
            &mut out,
            "syslog export",
            "off ([audit.syslog] is not configured)",
        ),
        Some(e) => {
            row(
                &mut out,
                "syslog export",
                format!(
                    "{}: {} entries behind, {} skipped, {} batches confirmed",
                    e.collector,
                    e.log_size.saturating_sub(e.delivered),
                    e.skipped,
                    e.batches
                ),
            );
            if let Some(ms) = e.last_delivery_ms {
                row(&mut out, "last delivery", time(ms));
            }
            if let Some(err) = &e.last_error {
                row(&mut out, "last error", err);
            }
        }
    }

    let _ = writeln!(out, "\ndata plane");
    match &s.dataplane {
        None => row(&mut out, "state", "off ([dataplane] is not configured)"),
        Some(d) => {
            row(
                &mut out,
                "engine",
                format!("{}, {} workers", d.engine, d.workers),
            );
            row(&mut out, "SAs", d.sas);
            row(&mut out, "drops", format!("{} since start", d.drops_total));
            row(&mut out, "rekeys", d.rekeys);
        }
    }

    if !s.operations.is_empty() {
        let _ = writeln!(out, "\nrunning");
        for op in &s.operations {
            row(
                &mut out,
                &op.kind,
                format!("{} (by {})", crate::progress::render(op), op.actor),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 01s");
        assert_eq!(duration(3 * 3600 + 5), "3h 00m 05s");
        assert_eq!(duration(2 * 86_400 + 3661), "2d 01h 01m 01s");
    }
}
