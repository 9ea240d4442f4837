//! `[telemetry]`: flow records from the data path, exported as IPFIX and as OCSF JSON lines
//! (docs/telemetry.md).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

pub const DEFAULT_SAMPLING: u32 = 1;
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
pub const DEFAULT_IDLE_TIMEOUT_SECS: f64 = 15.0;
pub const DEFAULT_ACTIVE_TIMEOUT_SECS: f64 = 60.0;
pub const DEFAULT_OCSF_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The OCSF file under `state_dir` when `ocsf_file` is absent.
pub const DEFAULT_OCSF_FILE: &str = "telemetry/flows.ocsf.jsonl";

/// `[telemetry]`: how flows are sampled, when records end, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Record one packet in this many, per worker (1: every packet).
    pub sampling: u32,
    /// Most flow records held per data-plane worker.
    pub max_flows: usize,
    /// A record ends after this long without a packet...
    pub idle_timeout: Duration,
    /// ...or after this long, however busy (then a new one starts).
    pub active_timeout: Duration,
    /// The IPFIX collector (`host:port`, UDP), if any.
    pub ipfix: Option<String>,
    /// Where OCSF network-activity records go (JSON lines), if anywhere.
    pub ocsf_file: Option<PathBuf>,
    /// The OCSF file is rotated (to `<file>.1`) past this size.
    pub ocsf_max_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    #[serde(default)]
    sampling: Option<Spanned<u32>>,
    #[serde(default)]
    max_flows: Option<Spanned<usize>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    active_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    ipfix: Option<Spanned<String>>,
    #[serde(default)]
    ocsf: Option<bool>,
    #[serde(default)]
    ocsf_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    ocsf_max_bytes: Option<Spanned<u64>>,
}

impl Validator<'_> {
    pub(super) fn telemetry(
        &self,
        raw: RawTelemetry,
        state_dir: &std::path::Path,
    ) -> Result<TelemetryConfig, ConfigError> {
        let sampling = match raw.sampling {
            None => DEFAULT_SAMPLING,
            Some(s) if (1..=1_000_000).contains(s.get_ref()) => s.into_inner(),
            Some(s) => {
                return Err(self.invalid(
                    "telemetry.sampling",
                    Some(s.span()),
                    format!("{} is out of range: one packet in 1..=1000000", s.get_ref()),
                ))
            }
        };
        let max_flows = match raw.max_flows {
            None => DEFAULT_MAX_FLOWS,
            Some(m) if (1..=4_194_304).contains(m.get_ref()) => m.into_inner(),
            Some(m) => {
                return Err(self.invalid(
                    "telemetry.max_flows",
                    Some(m.span()),
                    format!("{} is out of range: use 1..=4194304", m.get_ref()),
                ))
            }
        };
        let (idle_timeout, _) = self.seconds(
            "telemetry.idle_timeout",
            raw.idle_timeout,
            DEFAULT_IDLE_TIMEOUT_SECS,
            1.0,
            3600.0,
        )?;
        let (active_timeout, _) = self.seconds(
            "telemetry.active_timeout",
            raw.active_timeout,
            DEFAULT_ACTIVE_TIMEOUT_SECS,
            1.0,
            86_400.0,
        )?;
        let ipfix = match raw.ipfix {
            None => None,
            Some(a) => {
                let span = a.span();
                let a = a.into_inner();
                let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !ok {
                    return Err(self.invalid(
                        "telemetry.ipfix",
                        Some(span),
                        format!("{a:?} is not host:port (e.g. \"collector.example:4739\")"),
                    ));
                }
                Some(a)
            }
        };
        let ocsf_file = match (raw.ocsf, raw.ocsf_file) {
            (Some(false), _) => None,
            (_, Some(f)) => Some(self.path("telemetry.ocsf_file", f)?),
            (_, None) => Some(state_dir.join(DEFAULT_OCSF_FILE)),
        };
        let ocsf_max_bytes = match raw.ocsf_max_bytes {
            None => DEFAULT_OCSF_MAX_BYTES,
            Some(m) if *m.get_ref() >= 4096 => m.into_inner(),
            Some(m) => {
                return Err(self.invalid(
                    "telemetry.ocsf_max_bytes",
                    Some(m.span()),
                    "must be at least 4096".to_owned(),
                ))
            }
        };
        Ok(TelemetryConfig {
            sampling,
            max_flows,
            idle_timeout,
            active_timeout,
            ipfix,
            ocsf_file,
            ocsf_max_bytes,
        })
    }
}
