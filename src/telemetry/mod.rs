//! Flow telemetry: the data path's sampled flow records (warden-enforcer's `tunnel::flows`),
//! named with the policy in force and exported once a second as IPFIX (RFC 7011) to a
//! collector and as OCSF network-activity JSON lines to a file next to the audit log
//! (docs/telemetry.md). The exporter is a thread of its own; it holds each worker's table only
//! to move ended records out.

pub mod ipfix;
pub mod ocsf;
pub mod top;

use std::io::Write as _;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_enforcer::tunnel::flows::{FlowRecord, FlowSettings, FlowTables};
use warden_enforcer::tunnel::{Direction, Tunnel};

use crate::config::TelemetryConfig;

/// How often ended records are exported.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// IPFIX templates go with every message at least this often (UDP loses some).
const TEMPLATE_EVERY: Duration = Duration::from_secs(10);

/// A flow record as exported: names resolved, times on the wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRecord {
    pub tenant: Option<String>,
    pub src_segment: Option<String>,
    pub dst_segment: Option<String>,
    /// From this node's host into the tunnel (else from the wire to the host).
    pub outbound: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Sampled packets and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Unix milliseconds.
    pub first_ms: u64,
    pub last_ms: u64,
    /// The drop reason (`warden_dataplane_drops_total`'s), `None` when allowed.
    pub reason: Option<&'static str>,
    /// One packet in this many was sampled.
    pub sampling: u32,
}

/// Unix ms of `at`, from the wall clock now and the monotonic clock.
fn wall_ms(at: Instant, now: Instant, wall_now_ms: u64) -> u64 {
    wall_now_ms.saturating_sub(
        u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX),
    )
}

/// Unix milliseconds now (the audit log's clock, unsigned).
pub fn unix_ms() -> u64 {
    u64::try_from(crate::audit::now_ms()).unwrap_or(0)
}

/// Names and wall-clock times for `records`.
pub fn named(
    records: &[FlowRecord],
    tenants: &[String],
    segments: &[String],
    sampling: u32,
) -> Vec<ExportRecord> {
    let (now, wall) = (Instant::now(), unix_ms());
    let name = |list: &[String], i: Option<u32>| {
        i.and_then(|i| list.get(usize::try_from(i).ok()?)).cloned()
    };
    records
        .iter()
        .map(|r| ExportRecord {
            tenant: name(tenants, r.key.tenant),
            src_segment: name(segments, r.counts.src_segment),
            dst_segment: name(segments, r.counts.dst_segment),
            outbound: r.key.direction == Direction::Outbound,
            src: r.key.src,
            dst: r.key.dst,
            proto: r.key.proto,
            src_port: r.key.src_port,
            dst_port: r.key.dst_port,
            packets: r.counts.packets,
            bytes: r.counts.bytes,
            first_ms: wall_ms(r.counts.first, now, wall),
            last_ms: wall_ms(r.counts.last, now, wall),
            reason: r.key.outcome.reason(),
            sampling,
        })
        .collect()
}

/// What the exporter has done (metrics).
#[derive(Default, Debug)]
pub struct TelemetryStats {
    pub records: AtomicU64,
    pub ipfix_messages: AtomicU64,
    pub ipfix_errors: AtomicU64,
    pub ocsf_lines: AtomicU64,
    pub ocsf_errors: AtomicU64,
}

/// The running exporter.
pub struct Telemetry {
    pub config: TelemetryConfig,
    pub tables: Arc<FlowTables>,
    pub stats: Arc<TelemetryStats>,
    tunnel: Arc<Tunnel>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// OCSF lines, appended; the file is rotated to `<file>.1` past `max_bytes`.
struct OcsfFile {
    path: PathBuf,
    max_bytes: u64,
}

impl OcsfFile {
    fn append(&self, lines: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + lines.len() as u64 > self.max_bytes {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(lines)?;
        f.flush()
    }
}

impl Telemetry {
    /// Turn flow recording on in `tunnel` and start exporting.
    pub fn start(
        config: &TelemetryConfig,
        node: &str,
        tunnel: Arc<Tunnel>,
    ) -> anyhow::Result<Arc<Telemetry>> {
        let tables = tunnel.enable_flows(FlowSettings {
            sampling: config.sampling,
            max_flows: config.max_flows,
        });
        let stats = Arc::new(TelemetryStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let t = Arc::new(Telemetry {
            config: config.clone(),
            tables: Arc::clone(&tables),
            stats: Arc::clone(&stats),
            tunnel: Arc::clone(&tunnel),
            stop: Arc::clone(&stop),
            thread: std::sync::Mutex::new(None),
        });
        let worker = Worker {
            config: config.clone(),
            node: node.to_owned(),
            tunnel,
            tables,
            stats,
            encoder: ipfix::Encoder::new(observation_domain(node)),
            socket: None,
            last_templates: None,
            ocsf: config.ocsf_file.as_ref().map(|p| OcsfFile {
                path: p.clone(),
                max_bytes: config.ocsf_max_bytes,
            }),
        };
        let handle = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || worker.run(&stop))?;
        if let Ok(mut slot) = t.thread.lock() {
            *slot = Some(handle);
        }
        tracing::info!(
            sampling = config.sampling,
            ipfix = config.ipfix.as_deref().unwrap_or("-"),
            ocsf = %config.ocsf_file.as_deref().map_or("-".into(), |p| p.display().to_string()),
            "flow telemetry on"
        );
        Ok(t)
    }

    /// The live records, named (for `wardctl top`).
    pub fn live(&self) -> Vec<ExportRecord> {
        let (tenants, segments) = self.tunnel.names();
        named(
            &self.tables.snapshot(),
            &tenants,
            &segments,
            self.config.sampling,
        )
    }

    /// Prometheus series of the exporter and the flow tables.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let series: [(&str, &str, &str, u64); 8] = [
            (
                "warden_telemetry_sampling",
                "gauge",
                "One packet in this many is recorded.",
                u64::from(self.config.sampling),
            ),
            (
                "warden_telemetry_flows",
                "gauge",
                "Flow records held now, not yet ended.",
                self.tables.len() as u64,
            ),
            (
                "warden_telemetry_flows_lost_total",
                "counter",
                "New flows not recorded because a worker's table was full (max_flows).",
                self.tables.lost(),
            ),
            (
                "warden_telemetry_records_total",
                "counter",
                "Flow records exported.",
                load(&self.stats.records),
            ),
            (
                "warden_telemetry_ipfix_messages_total",
                "counter",
                "IPFIX messages sent to the collector.",
                load(&self.stats.ipfix_messages),
            ),
            (
                "warden_telemetry_ipfix_errors_total",
                "counter",
                "IPFIX messages not sent (no route, no resolution).",
                load(&self.stats.ipfix_errors),
            ),
            (
                "warden_telemetry_ocsf_records_total",
                "counter",
                "OCSF lines written.",
                load(&self.stats.ocsf_lines),
            ),
            (
                "warden_telemetry_ocsf_errors_total",
                "counter",
                "OCSF writes that failed.",
                load(&self.stats.ocsf_errors),
            ),
        ];
        for (name, kind, help, value) in series {
            crate::dataplane::metric(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    /// Export everything held and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// A stable observation domain per appliance: the first 4 bytes of SHA-256(name).
fn observation_domain(node: &str) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, node.as_bytes());
    let b = d.as_ref();
    u32::from_be_bytes([
        b.first().copied().unwrap_or(0),
        b.get(1).copied().unwrap_or(0),
        b.get(2).copied().unwrap_or(0),
        b.get(3).copied().unwrap_or(0),
    ])
}

struct Worker {
    config: TelemetryConfig,
    node: String,
    tunnel: Arc<Tunnel>,
    tables: Arc<FlowTables>,
    stats: Arc<TelemetryStats>,
    encoder: ipfix::Encoder,
    socket: Option<UdpSocket>,
    last_templates: Option<Instant>,
    ocsf: Option<OcsfFile>,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) {
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let ended = self.tables.drain(
                Instant::now(),
                self.config.idle_timeout,
                self.config.active_timeout,
                stopping,
            );
            if !ended.is_empty() {
                let (tenants, segments) = self.tunnel.names();
                let records = named(&ended, &tenants, &segments, self.config.sampling);
                self.export(&records);
            }
            if stopping {
                return;
            }
            // Sleep in short steps so a stop is prompt.
            let until = Instant::now() + EXPORT_EVERY;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn export(&mut self, records: &[ExportRecord]) {
        self.stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some(collector) = self.config.ipfix.clone() {
            self.send_ipfix(&collector, records);
        }
        if let Some(file) = &self.ocsf {
            let mut lines = Vec::new();
            for r in records {
                let _ = serde_json::to_writer(&mut lines, &ocsf::record(r, &self.node));
                lines.push(b'\n');
            }
            match file.append(&lines) {
                Ok(()) => {
                    self.stats
                        .ocsf_lines
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.ocsf_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %file.path.display(), error = %e, "OCSF flow records could not be written");
                }
            }
        }
    }

    fn send_ipfix(&mut self, collector: &str, records: &[ExportRecord]) {
        let target = match collector.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            _ => {
                self.stats.ipfix_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(collector, "the IPFIX collector does not resolve");
                return;
            }
        };
        let socket = match &self.socket {
            Some(s) => s,
            None => {
                let bind = if target.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                match UdpSocket::bind(bind) {
                    Ok(s) => self.socket.insert(s),
                    Err(e) => {
                        self.stats.ipfix_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "no UDP socket for IPFIX");
                        return;
                    }
                }
            }
        };
        let templates = self
            .last_templates
            .is_none_or(|t| t.elapsed() >= TEMPLATE_EVERY);
        let secs = u32::try_from(unix_ms() / 1000).unwrap_or(u32::MAX);
        let messages = self.encoder.messages(records, templates, secs);
        for m in &messages {
            match socket.send_to(m, target) {
                Ok(_) => {
                    self.stats.ipfix_messages.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.ipfix_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "an IPFIX message was not sent");
                }
            }
        }
        if templates {
            self.last_templates = Some(Instant::now());
        }
    }
}
