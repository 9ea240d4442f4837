//! Audit export to a syslog collector: every entry of the log, in order, as an RFC 5424
//! message with RFC 5425 octet-counted framing, over TLS 1.3 (docs/audit.md, "Syslog export").
//!
//! The log is the queue. The exporter keeps one durable cursor, `next`: entries `[0, next)`
//! have been delivered (or skipped, with an `audit.export-gap` event saying so). Undelivered
//! entries wait in the audit store itself, which is already checksummed, fsynced and
//! recovered after a crash, so nothing is copied into a second queue that could disagree with
//! the log. The queue is bounded by `max_backlog`: when the exporter falls further behind,
//! the oldest undelivered entries are skipped until half the bound is left, and the skip is
//! itself an audit event (and is exported), so overflow is reported, never silent; the skipped entries stay readable and
//! verifiable through the audit API.
//!
//! Syslog over TLS has no acknowledgements, so delivery is confirmed per batch: one TLS
//! session carries a batch, the exporter then closes its side (close_notify, FIN) and waits
//! for the collector to close in turn. A collector closes only after reading to the end of
//! the stream, so its orderly close proves it read every byte of the batch; a reset, a
//! timeout or any error means "not confirmed" and the whole batch is sent again. Only then
//! does the cursor move (written to a temporary file, fsynced, renamed).
//!
//! Exactly once: a batch is sent again only when its confirmation was not seen, which happens
//! when the collector stops or the connection breaks in the middle of that batch, or when
//! wardend dies (kill -9, power loss) between sending a batch and persisting the cursor. A
//! graceful restart of either side loses nothing and duplicates nothing. In the failure
//! cases the repeated messages are byte-identical and carry `seq` (the leaf index) and the
//! leaf hash, so a collector that keys on `seq` stores each entry once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use warden_audit::event::{Event, Kind, Outcome};
use warden_audit::merkle;
use warden_audit::syslog::{format_message, frame};
use warden_audit::Hash;

use crate::audit::{now_ms, AuditLog};
use crate::config::SyslogConfig;

/// The cursor file, under `<state_dir>/audit-export/`.
pub const CURSOR_FILE: &str = "syslog.cursor";
/// Largest cursor file read back; it is a few dozen bytes.
const MAX_CURSOR_BYTES: u64 = 4096;
/// TCP connect and TLS handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing one batch.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the collector's close after ours.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// After new entries arrive, wait this long so a burst goes out as one batch.
const LINGER: Duration = Duration::from_millis(50);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// After a stop is requested, keep delivering for at most this long.
const DRAIN: Duration = Duration::from_secs(5);

/// What the exporter reports (`GET /v1/audit/export`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportStatus {
    /// The collector, as configured.
    pub collector: String,
    /// Entries `[0, delivered)` are delivered or skipped.
    pub delivered: u64,
    /// The log's size when the status was last updated.
    pub log_size: u64,
    /// Entries skipped because the backlog passed `max_backlog`, over the exporter's life.
    pub skipped: u64,
    /// Batches confirmed since wardend started.
    pub batches: u64,
    /// Why the last delivery failed; cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix time (ms) of the last confirmed batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_ms: Option<i64>,
}

/// The durable position of the exporter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    /// The next entry to deliver.
    next: u64,
    /// Leaf hash (hex) of entry `next - 1`: a cursor belongs to one log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev_leaf: Option<String>,
    /// Entries skipped over the exporter's life.
    #[serde(default)]
    skipped: u64,
    /// Skipped ranges `[first, end)` no delivered gap event has named yet. A gap event can
    /// itself be skipped by a later overflow; the next one then names every range still
    /// unreported, so no skip goes unnoticed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unreported: Vec<(u64, u64)>,
    /// Sequence number of the latest gap event, until a delivered batch includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gap_event: Option<u64>,
}

/// Most unreported ranges kept; older ones merge into one covering range.
const MAX_UNREPORTED: usize = 32;

impl Cursor {
    /// Read the cursor; a missing file is the start of the log.
    fn load(path: &Path) -> anyhow::Result<Option<Cursor>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_CURSOR_BYTES), &mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        let cursor = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an export cursor", path.display()))?;
        Ok(Some(cursor))
    }

    /// Write the cursor durably (temporary file, fsync, rename).
    fn store(&self, path: &Path) -> anyhow::Result<()> {
        crate::keyfile::write_atomically(path, &serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Why a batch was not confirmed.
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Handshake(String, std::io::Error),
    #[error("sending to {0} failed: {1}")]
    Send(String, std::io::Error),
    #[error("{0} did not confirm the batch: {1}")]
    Unconfirmed(String, String),
    #[error("{0} timed out during {1}")]
    Timeout(String, &'static str),
}

/// A formatted batch: frames for `[from, end)`, and the leaf hash of `end - 1`.
struct Batch {
    end: u64,
    bytes: Vec<u8>,
    last_leaf: Hash,
}

/// Read and format `[from, to)`; stops before the first entry that cannot be read or
/// decoded. `Err` carries the reason when `from` itself is unreadable.
fn read_batch(
    audit: &AuditLog,
    from: u64,
    to: u64,
    hostname: &str,
) -> Result<Option<Batch>, String> {
    let mut bytes = Vec::new();
    let mut last_leaf = None;
    let mut end = from;
    let entries = audit.store().entries(from..to);
    for seq in from..to {
        let leaf = match &entries {
            Ok(all) => all
                .get(usize::try_from(seq - from).unwrap_or(usize::MAX))
                .cloned()
                .ok_or_else(|| "entry missing from the range read".to_owned()),
            Err(_) => audit.store().entry(seq).map_err(|e| e.to_string()),
        };
        let decoded = leaf.and_then(|leaf| {
            Event::from_leaf(&leaf)
                .map(|event| (event, leaf))
                .map_err(|e| format!("stored entry does not decode: {e}"))
        });
        match decoded {
            Ok((event, leaf)) => {
                let hash = merkle::leaf_hash(&leaf);
                bytes.extend_from_slice(&frame(&format_message(
                    &event, &leaf, seq, &hash, hostname,
                )));
                last_leaf = Some(hash);
                end = seq + 1;
            }
            Err(why) if seq == from => return Err(why),
            Err(_) => break,
        }
    }
    Ok(last_leaf.map(|last_leaf| Batch {
        end,
        bytes,
        last_leaf,
    }))
}

/// A running exporter: stop it with [`Exporter::stop`].
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    status: watch::Receiver<ExportStatus>,
}

impl Exporter {
    /// Start exporting `audit` as configured; the cursor lives under `state_dir`.
    pub fn start(
        config: SyslogConfig,
        audit: Arc<AuditLog>,
        state_dir: &Path,
    ) -> anyhow::Result<Exporter> {
        let tls = crate::tls::stream_client_config(
            &config.ca,
            config
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .context("audit.syslog")?;
        let server_name =
            ServerName::try_from(config.server_name.clone()).context("audit.syslog.server_name")?;
        let dir = state_dir.join("audit-export");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cursor_path = dir.join(CURSOR_FILE);
        let cursor = resume(&audit, &cursor_path)?;
        let (status_tx, status) = watch::channel(ExportStatus {
            collector: config.address.clone(),
            delivered: cursor.next,
            log_size: audit.store().len(),
            skipped: cursor.skipped,
            ..ExportStatus::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let worker = Worker {
            connector: TlsConnector::from(tls),
            server_name,
            config,
            audit,
            cursor_path,
            cursor,
            status: status_tx,
        };
        let task = tokio::spawn(worker.run(stop_rx));
        Ok(Exporter { stop, task, status })
    }

    pub fn status(&self) -> watch::Receiver<ExportStatus> {
        self.status.clone()
    }

    /// Deliver what is pending for a few seconds at most, then stop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the audit exporter ended abnormally");
        }
    }
}

/// The cursor to start from, checked against the log.
fn resume(audit: &AuditLog, path: &Path) -> anyhow::Result<Cursor> {
    let len = audit.store().len();
    let cursor = match Cursor::load(path) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(Cursor::default()),
        Err(e) => {
            // At least once: without a trustworthy position, everything goes again.
            tracing::error!(error = %format!("{e:#}"), "the export cursor is unreadable; exporting the log from its start again");
            return Ok(Cursor::default());
        }
    };
    if cursor.next > len {
        tracing::error!(
            cursor = cursor.next,
            log_size = len,
            "the export cursor is past the end of the log: entries the collector has are missing here; exporting from the end of the log"
        );
        return Ok(Cursor {
            next: len,
            prev_leaf: match len {
                0 => None,
                n => Some(hex::encode(audit.store().leaf_hash(n - 1)?)),
            },
            skipped: cursor.skipped,
            ..Cursor::default()
        });
    }
    if cursor.next > 0 {
        let here = hex::encode(audit.store().leaf_hash(cursor.next - 1)?);
        if cursor.prev_leaf.as_deref() != Some(here.as_str()) {
            tracing::error!(
                cursor = cursor.next,
                "the export cursor belongs to a different log; exporting this log from its start"
            );
            return Ok(Cursor {
                skipped: cursor.skipped,
                ..Cursor::default()
            });
        }
    }
    Ok(cursor)
}

struct Worker {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    config: SyslogConfig,
    audit: Arc<AuditLog>,
    cursor_path: PathBuf,
    cursor: Cursor,
    status: watch::Sender<ExportStatus>,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut sizes = self.audit.subscribe();
        let mut retry = RETRY_MIN;
        let mut drain_until: Option<tokio::time::Instant> = None;
        tracing::info!(collector = %self.config.address, from = self.cursor.next, "audit export to syslog started");
        loop {
            if drain_until.is_none() && *stop.borrow() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            if drain_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                break;
            }
            let len = self.audit.store().len();
            self.status.send_modify(|s| s.log_size = len);
            if self.cursor.next >= len {
                if drain_until.is_some() {
                    break;
                }
                tokio::select! {
                    changed = sizes.changed() => if changed.is_err() { break },
                    _ = stop.changed() => continue,
                }
                tokio::time::sleep(LINGER).await;
                continue;
            }
            if len - self.cursor.next > self.config.max_backlog {
                // Down to half the bound: the gap event is itself an entry, and skipping one
                // entry at a time would make every skip cause the next.
                let to = len - self.config.max_backlog / 2;
                self.skip(
                    to,
                    format!(
                        "{} undelivered entries exceed max_backlog = {}",
                        len - self.cursor.next,
                        self.config.max_backlog
                    ),
                )
                .await;
                continue;
            }
            let to = len.min(self.cursor.next.saturating_add(self.config.batch as u64));
            match self.deliver_next(to).await {
                Ok(()) => retry = RETRY_MIN,
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(error = %message, pending = len - self.cursor.next, retry_ms = retry.as_millis() as u64, "audit export: batch not delivered");
                    self.status
                        .send_modify(|s| s.last_error = Some(message.clone()));
                    if drain_until.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        tracing::info!(
            delivered = self.cursor.next,
            log_size = self.audit.store().len(),
            "audit export to syslog stopped"
        );
    }

    /// Deliver `[next, to)` (or its readable prefix) and move the cursor.
    async fn deliver_next(&mut self, to: u64) -> Result<(), DeliverError> {
        let from = self.cursor.next;
        let audit = Arc::clone(&self.audit);
        let hostname = self.config.hostname.clone();
        let read =
            tokio::task::spawn_blocking(move || read_batch(&audit, from, to, &hostname)).await;
        let batch = match read {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(why)) => {
                self.skip(from + 1, format!("entry {from} cannot be read: {why}"))
                    .await;
                return Ok(());
            }
            Err(e) => {
                return Err(DeliverError::Unconfirmed(
                    self.config.address.clone(),
                    format!("reading the batch failed: {e}"),
                ))
            }
        };
        self.send(&batch.bytes).await?;
        self.advance(batch.end, batch.last_leaf, 0).await;
        self.status.send_modify(|s| {
            s.batches += 1;
            s.last_error = None;
            s.last_delivery_ms = Some(now_ms());
        });
        tracing::debug!(from, to = batch.end, "audit export: batch confirmed");
        Ok(())
    }

    /// One TLS session: connect, write the batch, close, and wait for the collector's close.
    async fn send(&self, bytes: &[u8]) -> Result<(), DeliverError> {
        let addr = self.config.address.clone();
        let timed = |what: &'static str| {
            let addr = addr.clone();
            move |_| DeliverError::Timeout(addr, what)
        };
        let resolved = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(&addr))
            .await
            .map_err(timed("name resolution"))?
            .map_err(|e| DeliverError::Resolve(addr.clone(), e))?
            .collect::<Vec<_>>();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
        let mut tcp = None;
        for sa in resolved {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(sa)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            }
        }
        let tcp = tcp.ok_or_else(|| DeliverError::Connect(addr.clone(), last))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(timed("the TLS handshake"))?
        .map_err(|e| DeliverError::Handshake(addr.clone(), e))?;
        tokio::time::timeout(WRITE_TIMEOUT, async {
            tls.write_all(bytes).await?;
            // close_notify, then FIN.
            tls.shutdown().await
        })
        .await
        .map_err(timed("sending"))?
        .map_err(|e| DeliverError::Send(addr.clone(), e))?;
        let mut buf = [0u8; 512];
        let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            loop {
                match tls.read(&mut buf).await {
                    // Orderly close, with or without the collector's close_notify.
                    Ok(0) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    // A syslog collector sends nothing; ignore whatever it does send.
                    Ok(_) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .map_err(timed("the confirmation"))?;
        confirmed.map_err(|why| DeliverError::Unconfirmed(addr, why))
    }

    /// Skip `[next, to)` and record the gap; the gap event is exported like any other.
    async fn skip(&mut self, to: u64, reason: String) {
        let from = self.cursor.next;
        let count = to - from;
        tracing::error!(from, to, %reason, "audit export: entries skipped");
        let mut unreported = self.cursor.unreported.clone();
        match unreported.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => unreported.push((from, to)),
        }
        if unreported.len() > MAX_UNREPORTED {
            let first = unreported.first().map_or(from, |r| r.0);
            let keep = unreported.split_off(unreported.len() - (MAX_UNREPORTED - 1));
            // Off-spec only in precision: the merged range may include delivered entries.
            unreported = std::iter::once((first, keep.first().map_or(to, |r| r.0)))
                .chain(keep)
                .collect();
        }
        let ranges = unreported
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",");
        let event = Event::new(
            now_ms(),
            Kind::AuditExportGap,
            "wardend",
            "syslog",
            Outcome::Failure,
        )
        .detail("collector", self.config.address.clone())
        .detail("first", from.to_string())
        .detail("end", to.to_string())
        .detail("count", count.to_string())
        .detail("ranges", ranges)
        .detail("reason", reason);
        let seq = match self.audit.record_async(event).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, "audit export: the gap could not be recorded; not skipping");
                tokio::time::sleep(RETRY_MIN).await;
                return;
            }
        };
        let leaf = match self.audit.store().leaf_hash(to - 1) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "audit export: cannot read the log");
                tokio::time::sleep(RETRY_MIN).await;
                return;
            }
        };
        self.cursor.unreported = unreported;
        self.cursor.gap_event = Some(seq);
        self.advance(to, leaf, count).await;
    }

    async fn advance(&mut self, next: u64, prev_leaf: Hash, skipped: u64) {
        // A delivered gap event names every unreported range.
        if skipped == 0 && self.cursor.gap_event.is_some_and(|g| g < next) {
            self.cursor.unreported.clear();
            self.cursor.gap_event = None;
        }
        self.cursor.next = next;
        self.cursor.prev_leaf = Some(hex::encode(prev_leaf));
        self.cursor.skipped += skipped;
        let cursor = self.cursor.clone();
        let path = self.cursor_path.clone();
        let stored = tokio::task::spawn_blocking(move || cursor.store(&path)).await;
        match stored {
            Ok(Ok(())) => {}
            // The position in memory is right; on a restart the batch goes again.
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "audit export: cannot persist the cursor")
            }
            Err(e) => tracing::error!(error = %e, "audit export: cannot persist the cursor"),
        }
        let total = self.cursor.skipped;
        self.status.send_modify(|s| {
            s.delivered = next;
            s.skipped = total;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CURSOR_FILE);
        assert_eq!(Cursor::load(&path).unwrap(), None);
        let c = Cursor {
            next: 42,
            prev_leaf: Some("ab".repeat(32)),
            skipped: 3,
            unreported: vec![(1, 5), (9, 12)],
            gap_event: Some(40),
        };
        c.store(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap(), Some(c));
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"{\"next\": \"x\"}").unwrap();
        assert!(Cursor::load(&path).is_err());
        std::fs::write(&path, b"{\"next\": 1, \"extra\": 2}").unwrap();
        assert!(Cursor::load(&path).is_err());
        // Oversized files are cut at the limit and then fail to parse.
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert!(Cursor::load(&path).is_err());
    }
}
