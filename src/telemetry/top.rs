//! `GET /v1/telemetry/top` (operators) and `wardctl top`: a live per-tenant view of rates,
//! drops and limit hits, and the busiest flows. The server returns counters; the client turns
//! two successive answers into rates, like `top`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::tls::Caller;

/// Most flows one answer lists.
pub const MAX_FLOWS: usize = 100;

/// One tenant's counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant: String,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets over a limit, by limit (`rate-limit`, `connection-limit`, `congestion`).
    pub dropped: BTreeMap<String, u64>,
    pub marked: BTreeMap<String, u64>,
}

/// A live flow record (counts since the record began).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub tenant: Option<String>,
    /// `out` (host → tunnel) or `in`.
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub packets: u64,
    pub bytes: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The drop reason; absent when forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// The answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Top {
    pub node: String,
    /// When the counters were read (Unix ms).
    pub time_ms: u64,
    pub tenants: Vec<TenantRow>,
    /// Data-path drops by reason, both directions.
    pub drops: BTreeMap<String, u64>,
    /// With `[telemetry]`: one packet in N recorded; `null` without.
    pub sampling: Option<u32>,
    /// The busiest live flows by bytes (with `[telemetry]`).
    pub flows: Vec<FlowRow>,
}

#[derive(Deserialize)]
struct TopQuery {
    #[serde(default)]
    flows: Option<usize>,
}

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<std::sync::Arc<ApiState>>)> {
    vec![(Method::GET, "/v1/telemetry/top", get(top))]
}

async fn top(
    State(s): State<std::sync::Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<TopQuery>,
) -> Result<Json<Top>, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    let want = q.flows.unwrap_or(10).min(MAX_FLOWS);
    let Some(d) = &s.dataplane else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "this appliance has no data plane ([dataplane] is not configured)",
        ));
    };
    let tunnel = d.tunnel();
    let tenants = tunnel
        .tenant_traffic()
        .into_iter()
        .map(|t| TenantRow {
            tenant: t.tenant,
            packets_out: t.packets_out,
            bytes_out: t.bytes_out,
            packets_in: t.packets_in,
            bytes_in: t.bytes_in,
            dropped: t
                .dropped
                .iter()
                .map(|(o, n)| (o.as_str().to_owned(), *n))
                .collect(),
            marked: t
                .marked
                .iter()
                .map(|(o, n)| (o.as_str().to_owned(), *n))
                .collect(),
        })
        .collect();
    let drops = warden_enforcer::tunnel::Drop::ALL
        .iter()
        .map(|d| (d.as_str().to_owned(), tunnel.counters().get(*d)))
        .collect();
    let (sampling, flows) = match &s.telemetry {
        None => (None, Vec::new()),
        Some(t) => {
            let mut live = t.live();
            live.sort_by_key(|r| std::cmp::Reverse(r.bytes));
            live.truncate(want);
            (
                Some(t.config.sampling),
                live.into_iter()
                    .map(|r| FlowRow {
                        tenant: r.tenant,
                        direction: if r.outbound { "out" } else { "in" }.to_owned(),
                        src: r.src.to_string(),
                        dst: r.dst.to_string(),
                        proto: r.proto,
                        src_port: r.src_port,
                        dst_port: r.dst_port,
                        packets: r.packets,
                        bytes: r.bytes,
                        first_ms: r.first_ms,
                        last_ms: r.last_ms,
                        dropped: r.reason.map(str::to_owned),
                    })
                    .collect(),
            )
        }
    };
    Ok(Json(Top {
        node: s.name.clone(),
        time_ms: super::unix_ms(),
        tenants,
        drops,
        sampling,
        flows,
    }))
}

/// `1.2 Gbit/s`, `340 kbit/s`.
fn bits(rate: f64) -> String {
    let (v, unit) = if rate >= 1e9 {
        (rate / 1e9, "Gbit/s")
    } else if rate >= 1e6 {
        (rate / 1e6, "Mbit/s")
    } else if rate >= 1e3 {
        (rate / 1e3, "kbit/s")
    } else {
        (rate, "bit/s")
    };
    format!("{v:.1} {unit}")
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn flow_key(f: &FlowRow) -> (String, String, String, u8, u16, u16, Option<String>) {
    (
        f.direction.clone(),
        f.src.clone(),
        f.dst.clone(),
        f.proto,
        f.src_port,
        f.dst_port,
        f.dropped.clone(),
    )
}

/// One screen: per tenant rates (from `before`, if any; else totals) and the top flows.
pub fn render(now: &Top, before: Option<&Top>) -> String {
    let mut out = String::new();
    let secs = before
        .map(|b| now.time_ms.saturating_sub(b.time_ms) as f64 / 1000.0)
        .filter(|s| *s > 0.0);
    let _ = writeln!(
        out,
        "wardctl top: {} {}",
        now.node,
        match secs {
            Some(s) => format!("(rates over {s:.1} s)"),
            None => "(totals since start; rates from the next screen)".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:>13} {:>11} {:>13} {:>11} {:>12} {:>10}",
        "TENANT", "OUT", "OUT pkt/s", "IN", "IN pkt/s", "OVER LIMIT", "MARKED"
    );
    for t in &now.tenants {
        let prev = before.and_then(|b| b.tenants.iter().find(|p| p.tenant == t.tenant));
        let over: u64 = t.dropped.values().sum();
        let marked: u64 = t.marked.values().sum();
        let line = match (secs, prev) {
            (Some(s), Some(p)) => format!(
                "{:<16} {:>13} {:>11.0} {:>13} {:>11.0} {:>10.0}/s {:>8.0}/s",
                t.tenant,
                bits(per_sec(t.bytes_out, p.bytes_out, s) * 8.0),
                per_sec(t.packets_out, p.packets_out, s),
                bits(per_sec(t.bytes_in, p.bytes_in, s) * 8.0),
                per_sec(t.packets_in, p.packets_in, s),
                per_sec(over, p.dropped.values().sum(), s),
                per_sec(marked, p.marked.values().sum(), s),
            ),
            _ => format!(
                "{:<16} {:>11} B {:>11} {:>11} B {:>11} {:>12} {:>10}",
                t.tenant, t.bytes_out, t.packets_out, t.bytes_in, t.packets_in, over, marked
            ),
        };
        let _ = writeln!(out, "{line}");
    }
    let drops: Vec<String> = now
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| {
            let prev = before.and_then(|b| b.drops.get(reason)).copied();
            match (secs, prev) {
                (Some(s), Some(p)) => format!("{reason} {:.0}/s", per_sec(*n, p, s)),
                _ => format!("{reason} {n}"),
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "\ndrops: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    );
    match now.sampling {
        None => {
            let _ = writeln!(
                out,
                "\nflows: flow telemetry is off ([telemetry], docs/telemetry.md)"
            );
        }
        Some(n) => {
            let _ = writeln!(
                out,
                "\n{:<10} {:<3} {:<44} {:>5} {:>13} {:>10}  {}",
                "TENANT",
                "DIR",
                "FLOW",
                "PROTO",
                "RATE",
                "PACKETS",
                if n > 1 {
                    format!("VERDICT (1 in {n} sampled)")
                } else {
                    "VERDICT".to_owned()
                }
            );
            for f in &now.flows {
                let prev = before.and_then(|b| b.flows.iter().find(|p| flow_key(p) == flow_key(f)));
                let rate = match (secs, prev) {
                    (Some(s), Some(p)) => bits(per_sec(f.bytes, p.bytes, s) * 8.0 * f64::from(n)),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{:<10} {:<3} {:<44} {:>5} {:>13} {:>10}  {}",
                    f.tenant.as_deref().unwrap_or("-"),
                    f.direction,
                    format!("{}:{} -> {}:{}", f.src, f.src_port, f.dst, f.dst_port),
                    f.proto,
                    rate,
                    f.packets,
                    f.dropped
                        .as_deref()
                        .map_or("forwarded".to_owned(), |r| format!("dropped: {r}")),
                );
            }
        }
    }
    out
}

/// `wardctl top`: poll every `interval`, `count` screens (0: until interrupted), redrawn in
/// place on a terminal, one after another otherwise. `json` prints one answer and stops.
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    interval: std::time::Duration,
    count: u64,
    flows: usize,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    use std::io::IsTerminal as _;
    let url = format!("{base}/v1/telemetry/top?flows={}", flows.min(MAX_FLOWS));
    let fetch = || async {
        let text = crate::client::get_text(http, &url).await?;
        serde_json::from_str::<Top>(&text).with_context(|| format!("{url}: not a top answer"))
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&fetch().await?)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let in_place = std::io::stdout().is_terminal();
    let mut before: Option<Top> = None;
    let mut shown = 0u64;
    loop {
        let now = fetch().await?;
        let screen = render(&now, before.as_ref());
        if in_place {
            print!("\x1b[H\x1b[2J{screen}");
        } else {
            if shown > 0 {
                println!();
            }
            print!("{screen}");
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        shown += 1;
        if count > 0 && shown >= count {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        before = Some(now);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn top(time_ms: u64, bytes_out: u64, over: u64, flow_bytes: u64) -> Top {
        Top {
            node: "node-a".into(),
            time_ms,
            tenants: vec![TenantRow {
                tenant: "globex".into(),
                bytes_out,
                packets_out: bytes_out / 1000,
                dropped: [("rate-limit".to_owned(), over)].into_iter().collect(),
                ..TenantRow::default()
            }],
            drops: [("rate-limit".to_owned(), over), ("policy".to_owned(), 0)]
                .into_iter()
                .collect(),
            sampling: Some(1),
            flows: vec![FlowRow {
                tenant: Some("globex".into()),
                direction: "out".into(),
                src: "203.0.113.33".into(),
                dst: "203.0.113.49".into(),
                proto: 17,
                src_port: 4000,
                dst_port: 5002,
                packets: flow_bytes / 1000,
                bytes: flow_bytes,
                first_ms: 0,
                last_ms: time_ms,
                dropped: Some("rate-limit".into()),
            }],
        }
    }

    #[test]
    fn two_screens_make_rates() {
        let a = top(10_000, 1_000_000, 100, 500_000);
        let b = top(12_000, 26_000_000, 2_100, 25_500_000);
        let screen = render(&b, Some(&a));
        assert!(screen.contains("rates over 2.0 s"), "{screen}");
        // 25 MB in 2 s = 100 Mbit/s; 2000 over-limit packets in 2 s = 1000/s.
        assert!(screen.contains("100.0 Mbit/s"), "{screen}");
        assert!(screen.contains("1000/s"), "{screen}");
        assert!(screen.contains("rate-limit 1000/s"), "{screen}");
        assert!(
            !screen.contains("policy"),
            "drops at zero are not shown: {screen}"
        );
        assert!(screen.contains("dropped: rate-limit"), "{screen}");
    }

    #[test]
    fn the_first_screen_shows_totals_and_says_so() {
        let screen = render(&top(10_000, 1_000_000, 100, 500_000), None);
        assert!(screen.contains("totals since start"), "{screen}");
        assert!(screen.contains("1000000 B"), "{screen}");
        let mut off = top(1, 1, 0, 1);
        off.sampling = None;
        assert!(render(&off, None).contains("flow telemetry is off"));
    }
}
