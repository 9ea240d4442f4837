//! wardend configuration: one TOML file, parsed once at start-up into validated types.
//!
//! The file is read into private `Raw*` structs (serde, unknown keys rejected, spans kept) and
//! then checked field by field into [`Config`]; nothing downstream re-validates. Every error
//! names the file, the position when known, and the key path, e.g.
//!
//! ```text
//! /etc/warden/wardend.toml:12:17: tpm.appliance_pcr: PCR 16 is the debug PCR, ...
//! ```
//!
//! Relative paths in the file resolve against the directory of the file. The annotated example
//! is `docs/config.example.toml`.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::logging::{self, LogFormat};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod reference;
mod telemetry;
mod updates;
pub use telemetry::TelemetryConfig;
pub use updates::{Clock, UpdatesConfig, CRASH_STEPS};

/// Number of PCRs of a PC-client TPM 2.0 (TCG PC Client Platform TPM Profile, §4.6.1).
pub const PCR_COUNT: u8 = 24;
/// `[tpm] appliance_pcr` when absent.
pub const DEFAULT_APPLIANCE_PCR: u8 = 15;
/// `[tpm] quote_pcrs` when absent: the SRTM PCRs measured by firmware and boot loader.
pub const DEFAULT_QUOTE_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// `[api] max_body_bytes` when absent.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Upper bound for `[api] max_body_bytes`: nothing in the APIs needs more.
pub const MAX_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// `[log] level` when absent.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Upper bound for `name` (it becomes a DNS label-like name in certificates and log lines).
pub const MAX_NAME_LEN: usize = 63;
/// `[policy] esp_udp_port` when absent (RFC 3948's port for ESP in UDP).
pub const DEFAULT_ESP_UDP_PORT: u16 = 4500;
/// `[audit.syslog] max_backlog` when absent: entries the exporter may lag behind the log.
pub const DEFAULT_EXPORT_MAX_BACKLOG: u64 = 1_000_000;
/// `[audit.syslog] batch` when absent: entries per confirmed delivery.
pub const DEFAULT_EXPORT_BATCH: usize = 1000;
/// Upper bound for `[audit.syslog] batch` (a batch is formatted in memory).
pub const MAX_EXPORT_BATCH: usize = 10_000;

/// The validated wardend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Appliance name: used in certificates, logs and as the audit origin.
    pub name: String,
    /// Persistent state (appliance event log, result key), absolute or relative to the file.
    pub state_dir: PathBuf,
    pub log: LogConfig,
    pub tpm: TpmConfig,
    pub api: ApiConfig,
    pub attestation: AttestationConfig,
    pub audit: AuditConfig,
    pub policy: PolicyConfig,
    pub keys: KeysConfig,
    /// A production appliance refuses debugging aids that weaken security (the SA key log).
    pub production: bool,
    /// `[dataplane]`: the east-west ESP data plane; `None` when the section is absent.
    pub dataplane: Option<DataplaneConfig>,
    /// `[peering]`: the attested control channel to the other appliances; `None` when the
    /// section is absent.
    pub peering: Option<PeeringConfig>,
    /// `[updates]`: signed firmware updates; `None` when the section is absent.
    pub updates: Option<UpdatesConfig>,
    /// `[telemetry]`: flow records; `None` when the section is absent (no flows recorded).
    pub telemetry: Option<TelemetryConfig>,
}

/// `[dataplane]`: the TUN device, crypto engine, workers and rekey limits (docs/dataplane.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// The TUN device that carries the host's tenant traffic.
    pub tun: String,
    /// MTU of the TUN device (inner packets).
    pub mtu: u16,
    pub engine: warden_enforcer::esp::Engine,
    /// Worker threads; each owns a TUN queue and a wire socket.
    pub workers: u16,
    /// TUN segmentation offloads and UDP GSO/GRO.
    pub offloads: bool,
    /// Rekey after this many packets, bytes or seconds per SA (soft limits; the SA stops at
    /// twice each).
    pub rekey_after_packets: u64,
    pub rekey_after_bytes: u64,
    pub rekey_after_secs: u64,
    /// Debugging only: write every SA's keys here in Wireshark's `esp_sa` format.
    pub insecure_sa_key_log: Option<PathBuf>,
}

/// `[dataplane] mtu` when absent: a 1500-byte wire minus outer IPv4, UDP and ESP overhead
/// (20 + 8 + 16 + 16 + up to 5 bytes of trailer), rounded down like WireGuard's 1420.
pub const DEFAULT_TUN_MTU: u16 = 1420;

/// `[keys]`: how the tenant key vault seals keys (docs/keys.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeysConfig {
    /// The PCR-policy authority's public key (a file holding the hex SEC1 P-256 point). Keys
    /// are sealed so that only PCR states this authority signed can unseal them. Without it
    /// the vault is off: provisioning is refused.
    pub authority: Option<PathBuf>,
    /// The authority's signed PCR policy (JSON) for the state the appliance runs in.
    pub pcr_policy: Option<PathBuf>,
}

/// `[policy]`: how the microsegmentation policy is enforced (docs/policy.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Install the policy's nftables table (`inet warden`) in wardend's network namespace.
    /// Needs CAP_NET_ADMIN; off by default, so a wardend started by hand never changes the
    /// host's firewall.
    pub nftables: bool,
    /// The wire interface; with it (and `nftables`), only ESP-in-UDP between appliances and
    /// the API port may cross it.
    pub wire_interface: Option<String>,
    /// UDP port of ESP-in-UDP on the wire.
    pub esp_udp_port: u16,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            nftables: false,
            wire_interface: None,
            esp_udp_port: DEFAULT_ESP_UDP_PORT,
        }
    }
}

/// `[audit]`: where the audit log goes besides the appliance's own store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditConfig {
    /// Export to a syslog collector over TLS (docs/audit.md, "Syslog export").
    pub syslog: Option<SyslogConfig>,
}

/// `[audit.syslog]`: RFC 5424 messages with RFC 5425 framing over TLS 1.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// The collector, `host:port`; the host is resolved at every connection.
    pub address: String,
    /// The name the collector's certificate must carry (DNS name or IP address); by default
    /// the host part of `address`.
    pub server_name: String,
    /// PEM CA certificate(s) the collector's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM) for collectors that authenticate senders.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// HOSTNAME of the messages; by default the appliance name.
    pub hostname: String,
    /// Most entries the exporter may lag behind the log; older undelivered entries are
    /// skipped and the skip is recorded as an `audit.export-gap` event.
    pub max_backlog: u64,
    /// Most entries per delivery (one TLS session, confirmed as a whole).
    pub batch: usize,
}

/// `[attestation]`: how this appliance appraises other parties' evidence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttestationConfig {
    /// Reference values (docs/attestation.md) for `POST /v1/appraisals`; without them the
    /// endpoint refuses every request.
    pub reference: Option<PathBuf>,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

/// `[tpm]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI name and configuration, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Persistent handle of the attestation key (0x81xxxxxx).
    pub ak_handle: u32,
    pub ak_algorithm: AkAlg,
    /// The PCR the appliance extends its own measurements into (8..=15).
    pub appliance_pcr: u8,
    /// Platform PCRs included in quotes, in the order written; see [`TpmConfig::quoted_pcrs`].
    pub quote_pcrs: Vec<u8>,
    /// TCG event log of the platform; a missing file at run time is not an error.
    pub event_log: Option<PathBuf>,
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to. Without it no client
    /// certificate is asked for, so no request has an operator or tenant identity.
    pub client_ca: Option<PathBuf>,
    pub max_body_bytes: usize,
}

/// Algorithm of the attestation key. Mirrors `warden_attest::tpm::AkAlgorithm`.
///
/// The names are spelled out: serde's `kebab-case` would turn `Rsa2048` into `rsa2048`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AkAlg {
    /// ECDSA P-256 with SHA-256.
    #[default]
    #[serde(rename = "ecc-p256")]
    EccP256,
    /// RSASSA-PKCS1-v1_5 2048 with SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl TpmConfig {
    /// The PCRs to quote: `quote_pcrs` plus `appliance_pcr`, ascending, without duplicates.
    pub fn quoted_pcrs(&self) -> Vec<u8> {
        let mut pcrs = self.quote_pcrs.clone();
        pcrs.push(self.appliance_pcr);
        pcrs.sort_unstable();
        pcrs.dedup();
        pcrs
    }
}

/// Line and column (both from 1; the column counts characters) in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not the expected shape: unknown key, wrong type, missing key.
    #[error("{}{}: {}{message}", file.display(), At(position), Key(key))]
    Toml {
        file: PathBuf,
        position: Option<Position>,
        /// Dotted key path (`api.listen`, `tpm.quote_pcrs[2]`), when it could be located.
        key: Option<String>,
        message: String,
    },
    /// Well-formed, but a value is not acceptable.
    #[error("{}{}: {key}: {message}", file.display(), At(position))]
    Invalid {
        file: PathBuf,
        position: Option<Position>,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Toml { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

struct At<'a>(&'a Option<Position>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, ":{}:{}", p.line, p.column),
            None => Ok(()),
        }
    }
}

struct Key<'a>(&'a Option<String>);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) if !k.is_empty() => write!(f, "{k}: "),
            _ => Ok(()),
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::from_str(&text, path)
    }

    /// Parses and validates `text`; `origin` is the file it came from, used in error messages
    /// and as the base of relative paths.
    #[allow(clippy::should_implement_trait)] // needs the origin, so not `FromStr`
    pub fn from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
        Validator { text, origin }.config(raw)
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Spanned<String>,
    state_dir: Spanned<PathBuf>,
    #[serde(default)]
    log: RawLog,
    tpm: RawTpm,
    api: RawApi,
    #[serde(default)]
    attestation: RawAttestation,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    production: bool,
    #[serde(default)]
    dataplane: Option<RawDataplane>,
    #[serde(default)]
    peering: Option<RawPeering>,
    #[serde(default)]
    updates: Option<updates::RawUpdates>,
    #[serde(default)]
    telemetry: Option<telemetry::RawTelemetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    tun: Spanned<String>,
    #[serde(default)]
    mtu: Option<Spanned<u16>>,
    #[serde(default)]
    engine: Option<Spanned<String>>,
    #[serde(default)]
    workers: Option<Spanned<u16>>,
    #[serde(default)]
    offloads: Option<bool>,
    #[serde(default)]
    rekey_after_packets: Option<Spanned<u64>>,
    #[serde(default)]
    rekey_after_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    rekey_after_secs: Option<Spanned<u64>>,
    #[serde(default)]
    insecure_sa_key_log: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default)]
    authority: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pcr_policy: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    nftables: bool,
    #[serde(default)]
    wire_interface: Option<Spanned<String>>,
    #[serde(default)]
    esp_udp_port: Option<Spanned<u16>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    syslog: Option<RawSyslog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: Spanned<String>,
    #[serde(default)]
    server_name: Option<Spanned<String>>,
    ca: Spanned<PathBuf>,
    #[serde(default)]
    cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    hostname: Option<Spanned<String>>,
    #[serde(default)]
    max_backlog: Option<Spanned<u64>>,
    #[serde(default)]
    batch: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    #[serde(default)]
    reference: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
    #[serde(default)]
    level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTpm {
    tcti: Spanned<String>,
    ak_handle: Spanned<u32>,
    #[serde(default)]
    ak_algorithm: AkAlg,
    #[serde(default)]
    appliance_pcr: Option<Spanned<u8>>,
    #[serde(default)]
    quote_pcrs: Option<Vec<Spanned<u8>>>,
    #[serde(default)]
    event_log: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: SocketAddr,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    #[serde(default)]
    client_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<usize>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.to_path_buf(),
            position: span.map(|s| position_of(self.text, s.start)),
            key: key.to_owned(),
            message,
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let name = self.name(raw.name)?;
        let policy = self.policy(raw.policy)?;
        let keys = KeysConfig {
            authority: raw
                .keys
                .authority
                .map(|p| self.path("keys.authority", p))
                .transpose()?,
            pcr_policy: raw
                .keys
                .pcr_policy
                .map(|p| self.path("keys.pcr_policy", p))
                .transpose()?,
        };
        if keys.authority.is_some() != keys.pcr_policy.is_some() {
            return Err(self.invalid(
                "keys",
                None,
                "authority and pcr_policy go together: give both or neither".to_owned(),
            ));
        }
        let dataplane = raw
            .dataplane
            .map(|d| self.dataplane(d, raw.production))
            .transpose()?;
        let state_dir = self.path("state_dir", raw.state_dir)?;
        if raw.telemetry.is_some() && dataplane.is_none() {
            return Err(self.invalid(
                "telemetry",
                None,
                "flow telemetry records the data plane's flows: it needs [dataplane]".to_owned(),
            ));
        }
        let telemetry = raw
            .telemetry
            .map(|t| self.telemetry(t, &state_dir))
            .transpose()?;
        Ok(Config {
            telemetry,
            policy,
            keys,
            production: raw.production,
            dataplane,
            peering: raw.peering.map(|p| self.peering(p)).transpose()?,
            updates: raw
                .updates
                .map(|u| self.updates(u, raw.production))
                .transpose()?,
            audit: AuditConfig {
                syslog: raw
                    .audit
                    .syslog
                    .map(|s| self.syslog(s, &name))
                    .transpose()?,
            },
            name,
            state_dir,
            log: self.log(raw.log)?,
            tpm: self.tpm(raw.tpm)?,
            api: self.api(raw.api)?,
            attestation: AttestationConfig {
                reference: raw
                    .attestation
                    .reference
                    .map(|p| self.path("attestation.reference", p))
                    .transpose()?,
            },
        })
    }

    fn name(&self, name: Spanned<String>) -> Result<String, ConfigError> {
        let span = name.span();
        let name = name.into_inner();
        let problem = if name.is_empty() {
            Some("must not be empty".to_owned())
        } else if name.len() > MAX_NAME_LEN {
            Some(format!(
                "is {} bytes long, at most {MAX_NAME_LEN} are allowed",
                name.len()
            ))
        } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            Some(format!(
                "{name:?} is not allowed: use ASCII letters, digits, '-' and '.', starting with a \
                 letter or digit (the name goes into certificates and log lines)"
            ))
        } else {
            None
        };
        match problem {
            Some(message) => Err(self.invalid("name", Some(span), message)),
            None => Ok(name),
        }
    }

    /// A non-empty path; relative paths resolve against the configuration file's directory.
    fn path(&self, key: &str, path: Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
        let span = path.span();
        let path = path.into_inner();
        if path.as_os_str().is_empty() {
            return Err(self.invalid(key, Some(span), "must not be empty".to_owned()));
        }
        if path.is_absolute() {
            return Ok(path);
        }
        let base = self.origin.parent().unwrap_or_else(|| Path::new(""));
        Ok(base.join(path))
    }

    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        let level = match raw.level {
            None => DEFAULT_LOG_LEVEL.to_owned(),
            Some(level) => {
                let span = level.span();
                let level = level.into_inner();
                if let Err(e) = logging::parse_filter(&level) {
                    return Err(self.invalid(
                        "log.level",
                        Some(span),
                        format!("{level:?} is not a log filter directive: {e}"),
                    ));
                }
                level
            }
        };
        Ok(LogConfig {
            format: raw.format,
            level,
        })
    }

    fn tpm(&self, raw: RawTpm) -> Result<TpmConfig, ConfigError> {
        let tcti = self.tcti(raw.tcti)?;

        // TPM 2.0 Part 2 §7.2: the handle type is the most significant octet; persistent
        // objects are TPM_HT_PERSISTENT (0x81).
        let ak_handle = *raw.ak_handle.get_ref();
        if ak_handle >> 24 != 0x81 {
            return Err(self.invalid(
                "tpm.ak_handle",
                Some(raw.ak_handle.span()),
                format!(
                    "{ak_handle:#010x} is not a persistent handle: use 0x81000000..=0x81ffffff \
                     (for example 0x81010002)"
                ),
            ));
        }

        let appliance_pcr = match raw.appliance_pcr {
            None => DEFAULT_APPLIANCE_PCR,
            Some(pcr) => {
                let span = pcr.span();
                let pcr = pcr.into_inner();
                if let Some(why) = appliance_pcr_problem(pcr) {
                    return Err(self.invalid("tpm.appliance_pcr", Some(span), why));
                }
                pcr
            }
        };

        let quote_pcrs = match raw.quote_pcrs {
            None => DEFAULT_QUOTE_PCRS.to_vec(),
            Some(list) => {
                let mut seen = [false; PCR_COUNT as usize];
                let mut pcrs = Vec::with_capacity(list.len());
                for (i, pcr) in list.into_iter().enumerate() {
                    let key = format!("tpm.quote_pcrs[{i}]");
                    let span = pcr.span();
                    let pcr = pcr.into_inner();
                    match seen.get_mut(usize::from(pcr)) {
                        None => {
                            return Err(self.invalid(
                                &key,
                                Some(span),
                                format!("PCR {pcr} does not exist: PCR indices are 0..=23"),
                            ))
                        }
                        Some(true) => {
                            return Err(self.invalid(
                                &key,
                                Some(span),
                                format!("PCR {pcr} is listed more than once"),
                            ))
                        }
                        Some(slot) => *slot = true,
                    }
                    pcrs.push(pcr);
                }
                pcrs
            }
        };

        let event_log = raw
            .event_log
            .map(|p| self.path("tpm.event_log", p))
            .transpose()?;

        Ok(TpmConfig {
            tcti,
            ak_handle,
            ak_algorithm: raw.ak_algorithm,
            appliance_pcr,
            quote_pcrs,
            event_log,
        })
    }

    fn tcti(&self, tcti: Spanned<String>) -> Result<String, ConfigError> {
        const KINDS: [&str; 4] = ["device", "swtpm", "mssim", "tabrmd"];
        let span = tcti.span();
        let tcti = tcti.into_inner();
        let kind = tcti.split_once(':').map_or(tcti.as_str(), |(kind, _)| kind);
        if KINDS.contains(&kind) {
            Ok(tcti)
        } else {
            Err(self.invalid(
                "tpm.tcti",
                Some(span),
                format!(
                    "{tcti:?} does not name a known TCTI: expected one of {} followed by \
                     ':' and its configuration, e.g. \"device:/dev/tpmrm0\"",
                    KINDS.join(", ")
                ),
            ))
        }
    }

    fn api(&self, raw: RawApi) -> Result<ApiConfig, ConfigError> {
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) => {
                let span = n.span();
                let n = n.into_inner();
                if n == 0 || n > MAX_MAX_BODY_BYTES {
                    return Err(self.invalid(
                        "api.max_body_bytes",
                        Some(span),
                        format!("{n} is out of range: use 1..={MAX_MAX_BODY_BYTES}"),
                    ));
                }
                n
            }
        };
        Ok(ApiConfig {
            listen: raw.listen,
            cert: self.path("api.cert", raw.cert)?,
            key: self.path("api.key", raw.key)?,
            client_ca: raw
                .client_ca
                .map(|p| self.path("api.client_ca", p))
                .transpose()?,
            max_body_bytes,
        })
    }
}

impl Validator<'_> {
    fn dataplane(
        &self,
        raw: RawDataplane,
        production: bool,
    ) -> Result<DataplaneConfig, ConfigError> {
        let tun = self.interface("dataplane.tun", raw.tun)?;
        let mtu = match raw.mtu {
            None => DEFAULT_TUN_MTU,
            Some(m) if (576..=9000).contains(m.get_ref()) => m.into_inner(),
            Some(m) => {
                return Err(self.invalid(
                    "dataplane.mtu",
                    Some(m.span()),
                    format!("{} is outside 576..=9000", m.get_ref()),
                ))
            }
        };
        let engine = match raw.engine {
            None => warden_enforcer::esp::Engine::default(),
            Some(e) => {
                let span = e.span();
                let e = e.into_inner();
                warden_enforcer::esp::Engine::ALL
                    .into_iter()
                    .find(|x| x.name() == e)
                    .ok_or_else(|| {
                        self.invalid(
                            "dataplane.engine",
                            Some(span),
                            format!("{e:?} is not an engine: use aws-lc-rs, ring or aes-gcm"),
                        )
                    })?
            }
        };
        let workers = match raw.workers {
            None => std::thread::available_parallelism()
                .map_or(1, |n| u16::try_from(n.get()).unwrap_or(1))
                .clamp(1, warden_enforcer::tunnel::MAX_WORKERS),
            Some(w) if (1..=warden_enforcer::tunnel::MAX_WORKERS).contains(w.get_ref()) => {
                w.into_inner()
            }
            Some(w) => {
                return Err(self.invalid(
                    "dataplane.workers",
                    Some(w.span()),
                    format!(
                        "{} is outside 1..={} (leave it out for one per core)",
                        w.get_ref(),
                        warden_enforcer::tunnel::MAX_WORKERS
                    ),
                ))
            }
        };
        let defaults = warden_enforcer::esp::Limits::default();
        let positive = |key: &str, v: Option<Spanned<u64>>, default: u64, max: u64| match v {
            None => Ok(default),
            Some(v) if (1..=max).contains(v.get_ref()) => Ok(v.into_inner()),
            Some(v) => Err(self.invalid(
                key,
                Some(v.span()),
                format!("{} is outside 1..={max}", v.get_ref()),
            )),
        };
        let rekey_after_packets = positive(
            "dataplane.rekey_after_packets",
            raw.rekey_after_packets,
            defaults.soft_packets,
            defaults.soft_packets,
        )?;
        let rekey_after_bytes = positive(
            "dataplane.rekey_after_bytes",
            raw.rekey_after_bytes,
            defaults.soft_bytes,
            defaults.soft_bytes,
        )?;
        let rekey_after_secs = positive(
            "dataplane.rekey_after_secs",
            raw.rekey_after_secs,
            defaults.soft_age.as_secs(),
            defaults.soft_age.as_secs(),
        )?;
        let insecure_sa_key_log = match raw.insecure_sa_key_log {
            None => None,
            Some(p) if production => {
                return Err(self.invalid(
                    "dataplane.insecure_sa_key_log",
                    Some(p.span()),
                    "the SA key log reveals all east-west traffic and is refused when \
                     `production = true`"
                        .to_owned(),
                ))
            }
            Some(p) => Some(self.path("dataplane.insecure_sa_key_log", p)?),
        };
        Ok(DataplaneConfig {
            tun,
            mtu,
            engine,
            workers,
            offloads: raw.offloads.unwrap_or(true),
            rekey_after_packets,
            rekey_after_bytes,
            rekey_after_secs,
            insecure_sa_key_log,
        })
    }

    fn interface(&self, key: &str, w: Spanned<String>) -> Result<String, ConfigError> {
        let span = w.span();
        let w = w.into_inner();
        // IFNAMSIZ is 16 with the NUL; '/' and whitespace are not allowed by the kernel.
        if w.is_empty()
            || w.len() > 15
            || w == "."
            || w == ".."
            || w.chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(self.invalid(
                key,
                Some(span),
                format!("{w:?} is not an interface name: 1 to 15 characters without '/' or spaces"),
            ));
        }
        Ok(w)
    }

    fn policy(&self, raw: RawPolicy) -> Result<PolicyConfig, ConfigError> {
        let wire_interface = raw
            .wire_interface
            .map(|w| self.interface("policy.wire_interface", w))
            .transpose()?;
        let esp_udp_port = match raw.esp_udp_port {
            None => DEFAULT_ESP_UDP_PORT,
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.invalid(
                    "policy.esp_udp_port",
                    Some(p.span()),
                    "0 is not a port: use 1..=65535 (RFC 3948 uses 4500)".to_owned(),
                ))
            }
            Some(p) => p.into_inner(),
        };
        Ok(PolicyConfig {
            nftables: raw.nftables,
            wire_interface,
            esp_udp_port,
        })
    }

    fn syslog(&self, raw: RawSyslog, name: &str) -> Result<SyslogConfig, ConfigError> {
        let address_span = raw.address.span();
        let address = raw.address.into_inner();
        let host = match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            }
            _ => {
                return Err(self.invalid(
                    "audit.syslog.address",
                    Some(address_span),
                    format!(
                        "{address:?} is not host:port: write e.g. \"collector.example:6514\" or \
                         \"[2001:db8::1]:6514\" (6514 is the syslog-over-TLS port, RFC 5425)"
                    ),
                ))
            }
        };
        let (server_name, name_span) = match raw.server_name {
            Some(n) => {
                let span = n.span();
                (n.into_inner(), Some(span))
            }
            None => (host, Some(address_span)),
        };
        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(self.invalid(
                "audit.syslog.server_name",
                name_span,
                format!("{server_name:?} is neither a DNS name nor an IP address"),
            ));
        }
        let client_cert = match (raw.cert, raw.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                self.path("audit.syslog.cert", cert)?,
                self.path("audit.syslog.key", key)?,
            )),
            (Some(cert), None) => {
                return Err(self.invalid(
                    "audit.syslog.key",
                    Some(cert.span()),
                    "cert is set without key: give both or neither".to_owned(),
                ))
            }
            (None, Some(key)) => {
                return Err(self.invalid(
                    "audit.syslog.cert",
                    Some(key.span()),
                    "key is set without cert: give both or neither".to_owned(),
                ))
            }
        };
        let hostname = match raw.hostname {
            None => name.to_owned(),
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                // RFC 5424 §6.2.4: HOSTNAME is 1*255 PRINTUSASCII.
                if h.is_empty() || h.len() > 255 || !h.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(self.invalid(
                        "audit.syslog.hostname",
                        Some(span),
                        format!(
                            "{h:?} is not a syslog HOSTNAME: 1 to 255 printable ASCII \
                             characters without spaces (RFC 5424 §6.2.4)"
                        ),
                    ));
                }
                h
            }
        };
        let max_backlog = match raw.max_backlog {
            None => DEFAULT_EXPORT_MAX_BACKLOG,
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.invalid(
                    "audit.syslog.max_backlog",
                    Some(n.span()),
                    "must be at least 1".to_owned(),
                ))
            }
            Some(n) => n.into_inner(),
        };
        let batch = match raw.batch {
            None => DEFAULT_EXPORT_BATCH,
            Some(n) if !(1..=MAX_EXPORT_BATCH).contains(n.get_ref()) => {
                return Err(self.invalid(
                    "audit.syslog.batch",
                    Some(n.span()),
                    format!(
                        "{} is out of range: use 1..={MAX_EXPORT_BATCH}",
                        n.get_ref()
                    ),
                ))
            }
            Some(n) => n.into_inner(),
        };
        Ok(SyslogConfig {
            address,
            server_name,
            ca: self.path("audit.syslog.ca", raw.ca)?,
            client_cert,
            hostname,
            max_backlog,
            batch,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// `[peering]`: the attested control channel (docs/peering.md).

/// `[peering] listen` when absent.
pub const DEFAULT_PEERING_LISTEN: &str = "0.0.0.0:4501";
/// `[peering] tenant_key` when absent: the key id of each tenant's east-west key.
pub const DEFAULT_PEERING_TENANT_KEY: &str = "east-west";
/// `[peering]` timers when absent, in seconds.
pub const DEFAULT_REKEY_INTERVAL_SECS: f64 = 3600.0;
pub const DEFAULT_REKEY_GRACE_SECS: f64 = 5.0;
pub const DEFAULT_REATTEST_INTERVAL_SECS: f64 = 60.0;
pub const DEFAULT_KEEPALIVE_SECS: f64 = 5.0;
pub const DEFAULT_PEER_TIMEOUT_SECS: f64 = 15.0;

/// `[peering]`: the control channel that attests the other appliances and keys the SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeeringConfig {
    /// Where this appliance accepts control channels from peers.
    pub listen: SocketAddr,
    /// The port peers listen on: a peer's control address is `<its policy address>:<port>`.
    pub port: u16,
    /// This appliance's peer certificate chain (PEM, leaf first): a DNS SubjectAltName equal
    /// to `name`, usable for both TLS server and client authentication.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that sign appliance peer certificates.
    pub ca: PathBuf,
    /// The key id of each tenant's east-west key in the vault.
    pub tenant_key: String,
    /// Control addresses that replace `<policy address>:<port>` for some nodes (tests, NAT).
    pub peers: std::collections::BTreeMap<String, SocketAddr>,
    /// The receiver renews each tenant's SAs at least this often.
    pub rekey_interval: std::time::Duration,
    /// How long a replaced inbound SA keeps accepting packets.
    pub grace: std::time::Duration,
    /// Each side challenges the other this often; an answer must come within the interval.
    pub reattest_interval: std::time::Duration,
    /// Ping this often.
    pub keepalive: std::time::Duration,
    /// A channel silent for this long is lost.
    pub peer_timeout: std::time::Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeering {
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    port: Option<Spanned<u16>>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    ca: Spanned<PathBuf>,
    #[serde(default)]
    tenant_key: Option<Spanned<String>>,
    #[serde(default)]
    peers: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    rekey_interval: Option<Spanned<f64>>,
    #[serde(default)]
    grace: Option<Spanned<f64>>,
    #[serde(default)]
    reattest_interval: Option<Spanned<f64>>,
    #[serde(default)]
    keepalive: Option<Spanned<f64>>,
    #[serde(default)]
    peer_timeout: Option<Spanned<f64>>,
}

impl Validator<'_> {
    /// A duration in seconds within `min..=max`, `default` when absent; with the span of the
    /// value when it was written.
    fn seconds(
        &self,
        key: &str,
        value: Option<Spanned<f64>>,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<(std::time::Duration, Option<Range<usize>>), ConfigError> {
        let Some(v) = value else {
            return Ok((std::time::Duration::from_secs_f64(default), None));
        };
        let span = v.span();
        let secs = v.into_inner();
        if !(secs.is_finite() && (min..=max).contains(&secs)) {
            return Err(self.invalid(
                key,
                Some(span),
                format!("{secs} s is out of range: use {min}..={max} seconds"),
            ));
        }
        Ok((std::time::Duration::from_secs_f64(secs), Some(span)))
    }

    fn peering(&self, raw: RawPeering) -> Result<PeeringConfig, ConfigError> {
        let listen = match raw.listen {
            Some(l) => l,
            None => DEFAULT_PEERING_LISTEN
                .parse()
                .map_err(|_| self.invalid("peering.listen", None, "bad default".to_owned()))?,
        };
        if listen.port() == 0 {
            return Err(self.invalid(
                "peering.listen",
                None,
                "port 0 is not a port: peers must know where to connect (default 4501)".to_owned(),
            ));
        }
        let port = match raw.port {
            None => listen.port(),
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.invalid(
                    "peering.port",
                    Some(p.span()),
                    "0 is not a port: use 1..=65535".to_owned(),
                ))
            }
            Some(p) => p.into_inner(),
        };
        let tenant_key = match raw.tenant_key {
            None => DEFAULT_PEERING_TENANT_KEY.to_owned(),
            Some(k) => {
                let span = k.span();
                let k = k.into_inner();
                if !warden_keys::envelope::valid_name(&k) {
                    return Err(self.invalid(
                        "peering.tenant_key",
                        Some(span),
                        format!("{k:?} is not a key id: 1 to 63 of a-z, 0-9 and '-'"),
                    ));
                }
                k
            }
        };
        let mut peers = std::collections::BTreeMap::new();
        for (node, addr) in raw.peers {
            let key = format!("peering.peers.{node}");
            let span = addr.span();
            if !crate::peering::frame::valid_name(&node) {
                return Err(self.invalid(
                    &key,
                    Some(span),
                    format!(
                        "{node:?} is not a node id: 1 to 63 of a-z, 0-9 and '-', as in the policy"
                    ),
                ));
            }
            let parsed: SocketAddr = addr.get_ref().parse().map_err(|_| {
                self.invalid(
                    &key,
                    Some(span.clone()),
                    format!(
                        "{:?} is not an address and port, e.g. \"192.0.2.2:4501\"",
                        addr.get_ref()
                    ),
                )
            })?;
            if parsed.port() == 0 {
                return Err(self.invalid(&key, Some(span), "port 0 is not a port".to_owned()));
            }
            peers.insert(node, parsed);
        }
        let (rekey_interval, _) = self.seconds(
            "peering.rekey_interval",
            raw.rekey_interval,
            DEFAULT_REKEY_INTERVAL_SECS,
            0.1,
            86_400.0,
        )?;
        let (grace, grace_span) = self.seconds(
            "peering.grace",
            raw.grace,
            DEFAULT_REKEY_GRACE_SECS,
            0.0,
            600.0,
        )?;
        let (reattest_interval, _) = self.seconds(
            "peering.reattest_interval",
            raw.reattest_interval,
            DEFAULT_REATTEST_INTERVAL_SECS,
            1.0,
            86_400.0,
        )?;
        let (keepalive, keepalive_span) = self.seconds(
            "peering.keepalive",
            raw.keepalive,
            DEFAULT_KEEPALIVE_SECS,
            0.1,
            3600.0,
        )?;
        let (peer_timeout, _) = self.seconds(
            "peering.peer_timeout",
            raw.peer_timeout,
            DEFAULT_PEER_TIMEOUT_SECS,
            0.2,
            3600.0,
        )?;
        if keepalive >= peer_timeout {
            return Err(self.invalid(
                "peering.keepalive",
                keepalive_span,
                format!(
                    "{} s is not below peer_timeout ({} s): a live peer would be taken for lost",
                    keepalive.as_secs_f64(),
                    peer_timeout.as_secs_f64()
                ),
            ));
        }
        if grace >= rekey_interval {
            return Err(self.invalid(
                "peering.grace",
                grace_span,
                format!(
                    "{} s is not below rekey_interval ({} s)",
                    grace.as_secs_f64(),
                    rekey_interval.as_secs_f64()
                ),
            ));
        }
        Ok(PeeringConfig {
            listen,
            port,
            cert: self.path("peering.cert", raw.cert)?,
            key: self.path("peering.key", raw.key)?,
            ca: self.path("peering.ca", raw.ca)?,
            tenant_key,
            peers,
            rekey_interval,
            grace,
            reattest_interval,
            keepalive,
            peer_timeout,
        })
    }
}

/// Why `pcr` cannot hold the appliance's own measurements, if it cannot (TCG PC Client
/// Platform Firmware Profile §3.3.4 assigns the PCRs; the PTP §4.6.1 sets their reset rules).
fn appliance_pcr_problem(pcr: u8) -> Option<String> {
    match pcr {
        0..=7 => Some(format!(
            "PCR {pcr} belongs to the platform firmware and boot loader (SRTM): use one of 8..=15"
        )),
        8..=15 => None,
        16 => Some(
            "PCR 16 is the debug PCR and can be reset from any locality, so measurements in it \
             prove nothing: use one of 8..=15"
                .to_owned(),
        ),
        17..=22 => Some(format!(
            "PCR {pcr} belongs to the dynamic root of trust (DRTM) and is reset by a late launch: \
             use one of 8..=15"
        )),
        23 => Some(
            "PCR 23 is the application PCR and can be reset from any locality, so measurements \
             in it prove nothing: use one of 8..=15"
                .to_owned(),
        ),
        _ => Some(format!(
            "PCR {pcr} does not exist: PCR indices are 0..=23; use one of 8..=15"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Locating TOML errors.

fn toml_error(text: &str, origin: &Path, e: &toml::de::Error) -> ConfigError {
    // One line: toml puts "expected ..." hints on lines of their own.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let span = e.span();
    let mut key = span.as_ref().and_then(|s| key_path_at(text, s.start));
    // serde reports a missing field at its table: name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        key = Some(match key.as_deref() {
            None | Some("") => field.to_owned(),
            Some(table) => format!("{table}.{field}"),
        });
    }
    ConfigError::Toml {
        file: origin.to_path_buf(),
        position: span.map(|s| position_of(text, s.start)),
        key,
        message,
    }
}

/// Line and column of byte `offset` in `text`.
fn position_of(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before.get(line_start..).unwrap_or_default().chars().count() + 1,
    }
}

/// The dotted key path of the innermost key or value whose span contains `offset`.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut best = None;
    locate::table(doc.as_table(), "", offset, &mut best);
    best.map(|hit: locate::Hit| hit.path)
}

mod locate {
    use std::ops::Range;

    use toml_edit::{Item, Table, Value};

    pub(super) struct Hit {
        width: usize,
        pub(super) path: String,
    }

    fn consider(span: Option<Range<usize>>, path: &str, offset: usize, best: &mut Option<Hit>) {
        let Some(span) = span else { return };
        let end = span.end.max(span.start + 1);
        if !(span.start..end).contains(&offset) {
            return;
        }
        let width = end - span.start;
        let narrower = match best {
            Some(b) => width < b.width,
            None => true,
        };
        if narrower {
            *best = Some(Hit {
                width,
                path: path.to_owned(),
            });
        }
    }

    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    }

    pub(super) fn table(t: &Table, prefix: &str, offset: usize, best: &mut Option<Hit>) {
        for (k, item) in t.iter() {
            let path = join(prefix, k);
            consider(t.key(k).and_then(|k| k.span()), &path, offset, best);
            consider(item.span(), &path, offset, best);
            match item {
                Item::Table(t) => table(t, &path, offset, best),
                Item::Value(v) => value(v, &path, offset, best),
                Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        consider(t.span(), &path, offset, best);
                        table(t, &path, offset, best);
                    }
                }
                Item::None => {}
            }
        }
    }

    fn value(v: &Value, path: &str, offset: usize, best: &mut Option<Hit>) {
        match v {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    consider(v.span(), &path, offset, best);
                    value(v, &path, offset, best);
                }
            }
            Value::InlineTable(t) => {
                for (k, v) in t.iter() {
                    let path = join(path, k);
                    consider(t.key(k).and_then(|k| k.span()), &path, offset, best);
                    consider(v.span(), &path, offset, best);
                    value(v, &path, offset, best);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const FILE: &str = "/etc/warden/wardend.toml";

    const FULL: &str = r#"
name = "node-a"
state_dir = "state"

[log]
format = "json"
level = "warden=debug,info"

[tpm]
tcti = "swtpm:host=127.0.0.1,port=2321"
ak_handle = 0x81010002
ak_algorithm = "rsa-2048"
appliance_pcr = 14
quote_pcrs = [0, 2, 4, 7]
event_log = "/sys/kernel/security/tpm0/binary_bios_measurements"

[api]
listen = "127.0.0.1:8443"
cert = "tls/server.crt"
key = "/etc/warden/tls/server.key"
client_ca = "tls/clients-ca.crt"
max_body_bytes = 4096
"#;

    pub(super) const MINIMAL: &str = r#"
name = "node-a"
state_dir = "/var/lib/warden"

[tpm]
tcti = "device:/dev/tpmrm0"
ak_handle = 0x81010002

[api]
listen = "0.0.0.0:8443"
cert = "/etc/warden/tls/server.crt"
key = "/etc/warden/tls/server.key"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new(FILE))
    }

    /// Replaces the first line starting with `key =` by `line` (or appends `line` to
    /// `[table]` when the key is absent).
    fn edit(base: &str, table: &str, key: &str, line: &str) -> String {
        let mut out = Vec::new();
        let mut current = String::new();
        let mut done = false;
        for l in base.lines() {
            if let Some(t) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                if !done && current == table && !table.is_empty() {
                    out.push(line.to_owned());
                    done = true;
                }
                current = t.to_owned();
            }
            if !done && current == table && l.starts_with(&format!("{key} =")) {
                out.push(line.to_owned());
                done = true;
                continue;
            }
            out.push(l.to_owned());
        }
        if !done {
            out.push(line.to_owned());
        }
        out.join("\n")
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn assert_names(msg: &str, key: &str) {
        assert!(msg.starts_with(FILE), "no file name in {msg:?}");
        assert!(
            msg.contains(&format!(" {key}: ")),
            "no key {key:?} in {msg:?}"
        );
    }

    #[test]
    fn full_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.name, "node-a");
        assert_eq!(c.state_dir, Path::new("/etc/warden/state"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "warden=debug,info");
        assert_eq!(c.tpm.tcti, "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(c.tpm.ak_handle, 0x8101_0002);
        assert_eq!(c.tpm.ak_algorithm, AkAlg::Rsa2048);
        assert_eq!(c.tpm.appliance_pcr, 14);
        assert_eq!(c.tpm.quote_pcrs, [0, 2, 4, 7]);
        assert_eq!(c.tpm.quoted_pcrs(), [0, 2, 4, 7, 14]);
        assert_eq!(
            c.tpm.event_log.as_deref(),
            Some(Path::new(
                "/sys/kernel/security/tpm0/binary_bios_measurements"
            ))
        );
        assert_eq!(c.api.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.api.cert, Path::new("/etc/warden/tls/server.crt"));
        assert_eq!(c.api.key, Path::new("/etc/warden/tls/server.key"));
        assert_eq!(
            c.api.client_ca.as_deref(),
            Some(Path::new("/etc/warden/tls/clients-ca.crt"))
        );
        assert_eq!(c.api.max_body_bytes, 4096);
    }

    #[test]
    fn defaults_fill_optional_keys() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.log.format, LogFormat::Human);
        assert_eq!(c.log.level, DEFAULT_LOG_LEVEL);
        assert_eq!(c.tpm.ak_algorithm, AkAlg::EccP256);
        assert_eq!(c.tpm.appliance_pcr, DEFAULT_APPLIANCE_PCR);
        assert_eq!(c.tpm.quote_pcrs, DEFAULT_QUOTE_PCRS);
        assert_eq!(c.tpm.quoted_pcrs(), [0, 1, 2, 3, 4, 5, 6, 7, 15]);
        assert_eq!(c.tpm.event_log, None);
        assert_eq!(c.api.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.api.client_ca, None);
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let c = Config::from_str(FULL, Path::new("conf/wardend.toml")).unwrap();
        assert_eq!(c.state_dir, Path::new("conf/state"));
        assert_eq!(c.api.cert, Path::new("conf/tls/server.crt"));
        assert_eq!(
            c.api.client_ca.as_deref(),
            Some(Path::new("conf/tls/clients-ca.crt"))
        );
        let c = Config::from_str(FULL, Path::new("wardend.toml")).unwrap();
        assert_eq!(c.state_dir, Path::new("state"));
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../docs/config.example.toml");
        let c = Config::from_str(text, Path::new("docs/config.example.toml")).unwrap();
        assert_eq!(c.tpm.appliance_pcr, 15);
        assert_eq!(c.tpm.ak_handle, 0x8101_0002);
        assert_eq!(
            c.api.client_ca.as_deref(),
            Some(Path::new("/etc/warden/tls/ca.crt"))
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let msg = error(&edit(MINIMAL, "api", "bogus", "bogus = 1"));
        assert_names(&msg, "api.bogus");
        assert!(msg.contains("unknown field `bogus`"), "{msg}");
        let msg = error(&format!("colour = \"blue\"\n{MINIMAL}"));
        assert!(msg.starts_with(&format!("{FILE}:1:1: colour: ")), "{msg}");
        let msg = error(&format!("{MINIMAL}\n[extra]\nx = 1\n"));
        assert_names(&msg, "extra");
    }

    #[test]
    fn a_type_error_is_named_with_line_and_column() {
        let text = edit(MINIMAL, "tpm", "ak_handle", "ak_handle = \"0x81010002\"");
        let msg = error(&text);
        assert_names(&msg, "tpm.ak_handle");
        let line = text
            .lines()
            .position(|l| l.starts_with("ak_handle"))
            .unwrap()
            + 1;
        assert!(msg.contains(&format!(":{line}:13: ")), "{msg}");

        let msg = error(&edit(
            MINIMAL,
            "api",
            "listen",
            "listen = \"somewhere:8443\"",
        ));
        assert_names(&msg, "api.listen");
        let msg = error(&edit(
            MINIMAL,
            "tpm",
            "quote_pcrs",
            "quote_pcrs = [0, 1, 300]",
        ));
        assert_names(&msg, "tpm.quote_pcrs[2]");
        let msg = error(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"));
        assert_names(&msg, "log.format");
        let msg = error(&edit(
            MINIMAL,
            "tpm",
            "ak_algorithm",
            "ak_algorithm = \"dsa\"",
        ));
        assert_names(&msg, "tpm.ak_algorithm");
        let msg = error(&edit(MINIMAL, "tpm", "ak_handle", "ak_handle = -1"));
        assert_names(&msg, "tpm.ak_handle");
    }

    #[test]
    fn a_missing_key_is_named() {
        let msg = error(&MINIMAL.replace("tcti = \"device:/dev/tpmrm0\"\n", ""));
        assert_names(&msg, "tpm.tcti");
        let msg = error(&MINIMAL.replace("name = \"node-a\"\n", ""));
        assert!(msg.contains("name: missing field `name`"), "{msg}");
        assert!(msg.starts_with(FILE), "{msg}");
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let msg = error("name = \"node-a\nstate_dir = 1\n");
        assert!(msg.starts_with(&format!("{FILE}:1:")), "{msg}");
    }

    #[test]
    fn appliance_pcr_must_be_8_to_15() {
        for ok in 8..=15 {
            let c = parse(&edit(
                MINIMAL,
                "tpm",
                "appliance_pcr",
                &format!("appliance_pcr = {ok}"),
            ));
            assert_eq!(c.unwrap().tpm.appliance_pcr, ok);
        }
        for (bad, why) in [
            (0, "firmware"),
            (7, "firmware"),
            (16, "reset"),
            (17, "DRTM"),
            (22, "DRTM"),
            (23, "reset"),
            (24, "does not exist"),
            (255, "does not exist"),
        ] {
            let text = edit(
                MINIMAL,
                "tpm",
                "appliance_pcr",
                &format!("appliance_pcr = {bad}"),
            );
            let msg = error(&text);
            assert_names(&msg, "tpm.appliance_pcr");
            assert!(msg.contains(why), "{bad}: {msg}");
        }
    }

    #[test]
    fn quote_pcrs_are_checked() {
        let msg = error(&edit(
            MINIMAL,
            "tpm",
            "quote_pcrs",
            "quote_pcrs = [0, 1, 24]",
        ));
        assert_names(&msg, "tpm.quote_pcrs[2]");
        assert!(msg.contains("PCR 24 does not exist"), "{msg}");
        let msg = error(&edit(
            MINIMAL,
            "tpm",
            "quote_pcrs",
            "quote_pcrs = [0, 7, 3, 7]",
        ));
        assert_names(&msg, "tpm.quote_pcrs[3]");
        assert!(msg.contains("PCR 7 is listed more than once"), "{msg}");
        let c = parse(&edit(MINIMAL, "tpm", "quote_pcrs", "quote_pcrs = [15, 0]")).unwrap();
        assert_eq!(c.tpm.quoted_pcrs(), [0, 15]);
        let c = parse(&edit(MINIMAL, "tpm", "quote_pcrs", "quote_pcrs = []")).unwrap();
        assert_eq!(c.tpm.quoted_pcrs(), [15]);
    }

    #[test]
    fn name_is_checked() {
        for bad in ["", "-node", "node a", "node/a", "nöde", &"a".repeat(64)] {
            let msg = error(&edit(MINIMAL, "", "name", &format!("name = {bad:?}")));
            assert_names(&msg, "name");
        }
        let msg = error(&edit(MINIMAL, "", "name", "name = \"\""));
        assert!(msg.contains("must not be empty"), "{msg}");
        assert!(msg.starts_with(&format!("{FILE}:2:8: name: ")), "{msg}");
    }

    #[test]
    fn other_values_are_checked() {
        let cases = [
            ("", "state_dir", "state_dir = \"\"", "state_dir"),
            ("log", "level", "level = \"warden=loud\"", "log.level"),
            ("tpm", "tcti", "tcti = \"/dev/tpm0\"", "tpm.tcti"),
            ("tpm", "tcti", "tcti = \"\"", "tpm.tcti"),
            (
                "tpm",
                "ak_handle",
                "ak_handle = 0x80000001",
                "tpm.ak_handle",
            ),
            ("tpm", "event_log", "event_log = \"\"", "tpm.event_log"),
            ("api", "cert", "cert = \"\"", "api.cert"),
            ("api", "key", "key = \"\"", "api.key"),
            ("api", "client_ca", "client_ca = \"\"", "api.client_ca"),
            (
                "api",
                "max_body_bytes",
                "max_body_bytes = 0",
                "api.max_body_bytes",
            ),
            (
                "api",
                "max_body_bytes",
                "max_body_bytes = 999999999",
                "api.max_body_bytes",
            ),
        ];
        for (table, key, line, path) in cases {
            let text = if table == "log" {
                format!("{MINIMAL}\n[log]\n{line}\n")
            } else {
                edit(MINIMAL, table, key, line)
            };
            let err = parse(&text).unwrap_err();
            assert_eq!(err.key(), Some(path), "{err}");
            assert_names(&err.to_string(), path);
        }
    }

    const SYSLOG: &str = r#"
[audit.syslog]
address = "collector.example:6514"
ca = "tls/collector-ca.crt"
"#;

    #[test]
    fn syslog_export_defaults_and_values() {
        assert_eq!(parse(MINIMAL).unwrap().audit.syslog, None);
        let c = parse(&format!("{MINIMAL}{SYSLOG}")).unwrap();
        let s = c.audit.syslog.unwrap();
        assert_eq!(s.address, "collector.example:6514");
        assert_eq!(s.server_name, "collector.example");
        assert_eq!(s.ca, Path::new("/etc/warden/tls/collector-ca.crt"));
        assert_eq!(s.client_cert, None);
        assert_eq!(s.hostname, "node-a");
        assert_eq!(s.max_backlog, DEFAULT_EXPORT_MAX_BACKLOG);
        assert_eq!(s.batch, DEFAULT_EXPORT_BATCH);

        let text = format!(
            "{MINIMAL}{SYSLOG}server_name = \"siem.example\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
             hostname = \"dpu-7\"\nmax_backlog = 10\nbatch = 5\n"
        );
        let s = parse(&text).unwrap().audit.syslog.unwrap();
        assert_eq!(s.server_name, "siem.example");
        assert_eq!(
            s.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(
            (s.hostname.as_str(), s.max_backlog, s.batch),
            ("dpu-7", 10, 5)
        );
        let v6 = parse(&format!(
            "{MINIMAL}[audit.syslog]\naddress = \"[2001:db8::1]:6514\"\nca = \"/ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(v6.audit.syslog.unwrap().server_name, "2001:db8::1");
    }

    #[test]
    fn policy_enforcement_settings() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.policy, PolicyConfig::default());
        let c = parse(&format!(
            "{MINIMAL}[policy]\nnftables = true\nwire_interface = \"wire0\"\nesp_udp_port = 4501\n"
        ))
        .unwrap();
        assert!(c.policy.nftables);
        assert_eq!(c.policy.wire_interface.as_deref(), Some("wire0"));
        assert_eq!(c.policy.esp_udp_port, 4501);
        for (line, key) in [
            (
                "wire_interface = \"a-very-long-interface\"",
                "policy.wire_interface",
            ),
            ("wire_interface = \"eth/0\"", "policy.wire_interface"),
            ("esp_udp_port = 0", "policy.esp_udp_port"),
        ] {
            let msg = error(&format!("{MINIMAL}[policy]\n{line}\n"));
            assert_names(&msg, key);
        }
    }

    #[test]
    fn dataplane_settings() {
        assert_eq!(parse(MINIMAL).unwrap().dataplane, None);
        let c = parse(&format!("{MINIMAL}[dataplane]\ntun = \"warden0\"\n")).unwrap();
        let d = c.dataplane.unwrap();
        assert_eq!(
            (d.tun.as_str(), d.mtu, d.offloads),
            ("warden0", DEFAULT_TUN_MTU, true)
        );
        assert_eq!(d.engine, warden_enforcer::esp::Engine::default());
        assert!(d.workers >= 1);
        let c = parse(&format!(
            "{MINIMAL}[dataplane]\ntun = \"t0\"\nmtu = 9000\nengine = \"ring\"\nworkers = 3\n\
             offloads = false\nrekey_after_packets = 10\nrekey_after_bytes = 20\n\
             rekey_after_secs = 30\ninsecure_sa_key_log = \"keys.txt\"\n"
        ))
        .unwrap();
        let d = c.dataplane.unwrap();
        assert_eq!(d.engine, warden_enforcer::esp::Engine::Ring);
        assert_eq!((d.mtu, d.workers, d.offloads), (9000, 3, false));
        assert_eq!(
            (
                d.rekey_after_packets,
                d.rekey_after_bytes,
                d.rekey_after_secs
            ),
            (10, 20, 30)
        );
        assert_eq!(
            d.insecure_sa_key_log.as_deref(),
            Some(Path::new("/etc/warden/keys.txt"))
        );
        for (line, key) in [
            ("tun = \"a/b\"", "dataplane.tun"),
            ("tun = \"t\"\nmtu = 100", "dataplane.mtu"),
            ("tun = \"t\"\nengine = \"des\"", "dataplane.engine"),
            ("tun = \"t\"\nworkers = 0", "dataplane.workers"),
            (
                "tun = \"t\"\nrekey_after_bytes = 0",
                "dataplane.rekey_after_bytes",
            ),
            (
                "tun = \"t\"\nrekey_after_secs = 999999",
                "dataplane.rekey_after_secs",
            ),
        ] {
            let msg = error(&format!("{MINIMAL}[dataplane]\n{line}\n"));
            assert_names(&msg, key);
        }
        // The key log is refused on a production appliance.
        let msg = error(&format!(
            "production = true\n{MINIMAL}[dataplane]\ntun = \"t\"\ninsecure_sa_key_log = \"k\"\n"
        ));
        assert_names(&msg, "dataplane.insecure_sa_key_log");
        assert!(msg.contains("production"), "{msg}");
        let c = parse(&format!(
            "production = true\n{MINIMAL}[dataplane]\ntun = \"t\"\n"
        ))
        .unwrap();
        assert!(c.production);
    }

    #[test]
    fn keys_settings_go_together() {
        assert_eq!(parse(MINIMAL).unwrap().keys, KeysConfig::default());
        let c = parse(&format!(
            "{MINIMAL}[keys]\nauthority = \"a.hex\"\npcr_policy = \"p.json\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.keys.authority.as_deref(),
            Some(Path::new("/etc/warden/a.hex"))
        );
        let msg = error(&format!("{MINIMAL}[keys]\nauthority = \"a.hex\"\n"));
        assert!(
            msg.contains("keys: authority and pcr_policy go together"),
            "{msg}"
        );
    }

    #[test]
    fn syslog_export_values_are_checked() {
        for (line, key, needle) in [
            (
                "address = \"collector.example\"",
                "audit.syslog.address",
                "not host:port",
            ),
            (
                "address = \"c.example:0\"",
                "audit.syslog.address",
                "not host:port",
            ),
            (
                "address = \":6514\"",
                "audit.syslog.address",
                "not host:port",
            ),
            (
                "server_name = \"not a name\"",
                "audit.syslog.server_name",
                "neither",
            ),
            ("cert = \"/c.pem\"", "audit.syslog.key", "without key"),
            ("key = \"/k.pem\"", "audit.syslog.cert", "without cert"),
            (
                "hostname = \"two words\"",
                "audit.syslog.hostname",
                "HOSTNAME",
            ),
            ("max_backlog = 0", "audit.syslog.max_backlog", "at least 1"),
            ("batch = 0", "audit.syslog.batch", "out of range"),
            ("batch = 10001", "audit.syslog.batch", "out of range"),
            ("colour = 1", "audit.syslog.colour", "unknown field"),
        ] {
            let text = edit(
                &format!("{MINIMAL}{SYSLOG}"),
                "audit.syslog",
                line.split(' ').next().unwrap(),
                line,
            );
            let msg = error(&text);
            assert_names(&msg, key);
            assert!(msg.contains(needle), "{line}: {msg}");
        }
    }

    #[test]
    fn telemetry_defaults_and_values() {
        let dp = "[dataplane]\ntun = \"warden0\"\n";
        let c = parse(&format!("{MINIMAL}{dp}[telemetry]\n")).unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.sampling, 1);
        assert_eq!(t.idle_timeout, std::time::Duration::from_secs(15));
        assert_eq!(t.ipfix, None);
        assert!(t.ocsf_file.unwrap().ends_with("telemetry/flows.ocsf.jsonl"));
        let c = parse(&format!(
            "{MINIMAL}{dp}[telemetry]\nsampling = 100\nipfix = \"[2001:db8::9]:4739\"\nocsf = false\n"
        ))
        .unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!((t.sampling, t.ocsf_file), (100, None));
        assert_eq!(t.ipfix.as_deref(), Some("[2001:db8::9]:4739"));
    }

    #[test]
    fn telemetry_values_are_checked() {
        let dp = "[dataplane]\ntun = \"warden0\"\n";
        for (line, key, needle) in [
            ("sampling = 0", "telemetry.sampling", "out of range"),
            ("max_flows = 0", "telemetry.max_flows", "out of range"),
            (
                "idle_timeout = 0.5",
                "telemetry.idle_timeout",
                "out of range",
            ),
            (
                "active_timeout = 100000",
                "telemetry.active_timeout",
                "out of range",
            ),
            ("ipfix = \"collector\"", "telemetry.ipfix", "not host:port"),
            (
                "ipfix = \"c.example:0\"",
                "telemetry.ipfix",
                "not host:port",
            ),
            (
                "ocsf_max_bytes = 10",
                "telemetry.ocsf_max_bytes",
                "at least 4096",
            ),
        ] {
            let msg = error(&format!("{MINIMAL}{dp}[telemetry]\n{line}\n"));
            assert_names(&msg, key);
            assert!(msg.contains(needle), "{line}: {msg}");
        }
        // Without a data plane there are no flows to record.
        let msg = error(&format!("{MINIMAL}[telemetry]\n"));
        assert!(msg.contains("needs [dataplane]"), "{msg}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/wardend.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/wardend.toml: "),
            "{err}"
        );
    }

    #[test]
    fn positions_count_characters() {
        let text = "a\nxé = 1\n";
        assert_eq!(position_of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(position_of(text, 2), Position { line: 2, column: 1 });
        assert_eq!(position_of(text, 5), Position { line: 2, column: 3 });
        assert_eq!(position_of(text, 4), Position { line: 2, column: 2 });
        assert_eq!(position_of(text, 999).line, 3);
    }

    const PEERING: &str = r#"
[peering]
cert = "tls/peer.crt"
key = "tls/peer.key"
ca = "tls/peer-ca.crt"
"#;

    #[test]
    fn peering_defaults_and_values() {
        assert_eq!(parse(MINIMAL).unwrap().peering, None);
        let p = parse(&format!("{MINIMAL}{PEERING}"))
            .unwrap()
            .peering
            .unwrap();
        assert_eq!(p.listen, "0.0.0.0:4501".parse().unwrap());
        assert_eq!(p.port, 4501);
        assert_eq!(p.cert, Path::new("/etc/warden/tls/peer.crt"));
        assert_eq!(p.ca, Path::new("/etc/warden/tls/peer-ca.crt"));
        assert_eq!(p.tenant_key, "east-west");
        assert!(p.peers.is_empty());
        assert_eq!(p.rekey_interval, std::time::Duration::from_secs(3600));
        assert_eq!(p.grace, std::time::Duration::from_secs(5));
        assert_eq!(p.reattest_interval, std::time::Duration::from_secs(60));
        assert_eq!(p.keepalive, std::time::Duration::from_secs(5));
        assert_eq!(p.peer_timeout, std::time::Duration::from_secs(15));

        let text = format!(
            "{MINIMAL}{PEERING}listen = \"127.0.0.2:14501\"\ntenant_key = \"ew\"\n\
             rekey_interval = 2\ngrace = 0.5\nreattest_interval = 3\nkeepalive = 0.25\n\
             peer_timeout = 1.5\npeers = {{ \"node-b\" = \"127.0.0.1:14502\" }}\n"
        );
        let p = parse(&text).unwrap().peering.unwrap();
        assert_eq!(p.listen, "127.0.0.2:14501".parse().unwrap());
        assert_eq!(p.port, 14501, "the listen port by default");
        assert_eq!(p.tenant_key, "ew");
        assert_eq!(
            p.peers.get("node-b"),
            Some(&"127.0.0.1:14502".parse().unwrap())
        );
        assert_eq!(p.rekey_interval, std::time::Duration::from_secs(2));
        assert_eq!(p.grace, std::time::Duration::from_millis(500));
        assert_eq!(p.keepalive, std::time::Duration::from_millis(250));
        assert_eq!(p.peer_timeout, std::time::Duration::from_millis(1500));
        let p = parse(&format!("{MINIMAL}{PEERING}port = 4600\n"))
            .unwrap()
            .peering
            .unwrap();
        assert_eq!((p.listen.port(), p.port), (4501, 4600));
        let example = Config::from_str(
            include_str!("../docs/config.example.toml"),
            Path::new("docs/config.example.toml"),
        )
        .unwrap();
        let p = example.peering.unwrap();
        assert_eq!(p.cert, Path::new("/etc/warden/tls/peer.crt"));
        assert_eq!(p.reattest_interval, std::time::Duration::from_secs(60));
    }

    #[test]
    fn peering_values_are_checked() {
        for (line, key, needle) in [
            ("port = 0", "peering.port", "not a port"),
            ("listen = \"0.0.0.0:0\"", "peering.listen", "port 0"),
            ("listen = \"anywhere\"", "peering.listen", "address"),
            (
                "tenant_key = \"East West\"",
                "peering.tenant_key",
                "not a key id",
            ),
            (
                "peers = { \"Node_B\" = \"127.0.0.1:1\" }",
                "peering.peers.Node_B",
                "not a node id",
            ),
            (
                "peers = { \"node-b\" = \"localhost\" }",
                "peering.peers.node-b",
                "not an address and port",
            ),
            (
                "peers = { \"node-b\" = \"127.0.0.1:0\" }",
                "peering.peers.node-b",
                "port 0",
            ),
            (
                "rekey_interval = 0.05",
                "peering.rekey_interval",
                "out of range",
            ),
            ("grace = -1", "peering.grace", "out of range"),
            ("grace = 4000", "peering.grace", "out of range"),
            (
                "reattest_interval = 0",
                "peering.reattest_interval",
                "out of range",
            ),
            ("keepalive = nan", "peering.keepalive", "out of range"),
            ("peer_timeout = 0.1", "peering.peer_timeout", "out of range"),
            (
                "keepalive = 20",
                "peering.keepalive",
                "not below peer_timeout",
            ),
            (
                "rekey_interval = 2\ngrace = 3",
                "peering.grace",
                "not below rekey_interval",
            ),
            ("cert = \"\"", "peering.cert", "must not be empty"),
            ("colour = 1", "peering.colour", "unknown field"),
        ] {
            let text = edit(
                &format!("{MINIMAL}{PEERING}"),
                "peering",
                line.split(' ').next().unwrap(),
                line,
            );
            let msg = error(&text);
            assert_names(&msg, key);
            assert!(msg.contains(needle), "{line}: {msg}");
        }
        let msg = error(&format!("{MINIMAL}[peering]\ncert = \"c\"\nkey = \"k\"\n"));
        assert_names(&msg, "peering.ca");
    }
}
