//! The tunnel core (sans-I/O): which SA a host packet leaves under, and whether a wire packet
//! may enter. The I/O workers (`crate::io`) call it per packet; the control channel installs
//! and removes SAs. Time comes in as an argument.
//!
//! **SPI layout.** `SPI = slot (24 bits) ‖ sender worker (8 bits)`. The receiver picks the
//! slot when it installs an inbound SA for one (peer, tenant, epoch) and tells the peer; slot
//! 0 is never used, so SPIs stay clear of the reserved 0-255 (RFC 4303 §2.1). The receiver
//! finds the SA by direct index, and the tenant of decrypted traffic comes from the
//! authenticated SPI, never from the inner addresses.
//!
//! **Checks.** Egress: the inner packet parses; the policy allows it; its source is in a
//! segment of this node (the host cannot send as another node's tenant); its destination is
//! pinned to another node; an SA to that node for the sending tenant exists. Ingress: the SPI
//! names a live SA; the ICV verifies; the sequence number is fresh; the inner packet parses;
//! the policy allows it for the SA's tenant; its source is in a segment of the sending peer;
//! its destination is in a segment of this node.

pub mod flows;
pub mod keying;
pub mod keylog;
pub mod limits;
pub mod packet;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use warden_policy::Classifier;
use warden_policy::Policy;

use crate::esp::sa::NEXT_IPV6;
use crate::esp::{Engine, EspError, Inbound, Limits, Outbound, ReplayError, SaKeys};
pub use keying::{derive_sa_keys, KeyingError};
pub use packet::Flow;

/// Most workers a node may run (the SPI has 8 bits for the sender worker).
pub const MAX_WORKERS: u16 = 256;
/// Most inbound slots (the SPI has 24 bits for the slot).
pub const MAX_SLOTS: u32 = (1 << 24) - 1;

/// The SPI a sender's `worker` uses for the receiver's `spi_base`.
pub fn spi(spi_base: u32, worker: u16) -> u32 {
    (spi_base & !0xff) | u32::from(worker & 0xff)
}

/// Why a packet was dropped. The metrics count drops by these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Not an IP packet, or an ESP packet too short or with bad padding.
    Malformed,
    /// No SA: unknown SPI on ingress, no SA to the destination node on egress.
    NoSa,
    /// The ICV did not verify.
    Auth,
    /// The sequence number was already received.
    Replay,
    /// The sequence number is behind the replay window.
    TooOld,
    /// The SA reached its hard limit.
    Expired,
    /// The policy does not allow the flow.
    Policy,
    /// The inner source is not the sender's: on ingress not in the peer's segments, on egress
    /// not in this node's.
    Source,
    /// The destination is in no segment pinned to another node (egress), or not in one of
    /// this node's (ingress).
    NoRoute,
    /// The packet does not fit the buffers.
    TooLarge,
    /// Over a tenant's or a segment pair's packet or bit rate (policy `[[limit]]`).
    RateLimit,
    /// A new connection over the limit of new connections per second.
    ConnectionLimit,
    /// Beyond every guarantee while the wire is full.
    Congestion,
}

impl Drop {
    pub const ALL: [Drop; 13] = [
        Drop::Malformed,
        Drop::NoSa,
        Drop::Auth,
        Drop::Replay,
        Drop::TooOld,
        Drop::Expired,
        Drop::Policy,
        Drop::Source,
        Drop::NoRoute,
        Drop::TooLarge,
        Drop::RateLimit,
        Drop::ConnectionLimit,
        Drop::Congestion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::NoSa => "no-sa",
            Drop::Auth => "auth",
            Drop::Replay => "replay",
            Drop::TooOld => "too-old",
            Drop::Expired => "expired",
            Drop::Policy => "policy",
            Drop::Source => "source",
            Drop::NoRoute => "no-route",
            Drop::TooLarge => "too-large",
            Drop::RateLimit => "rate-limit",
            Drop::ConnectionLimit => "connection-limit",
            Drop::Congestion => "congestion",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<EspError> for Drop {
    fn from(e: EspError) -> Drop {
        match e {
            EspError::Auth => Drop::Auth,
            EspError::WrongSpi => Drop::NoSa,
            EspError::Replay(ReplayError::TooOld(_)) => Drop::TooOld,
            EspError::Replay(_) => Drop::Replay,
            EspError::Expired => Drop::Expired,
            EspError::Buffer | EspError::TooLarge => Drop::TooLarge,
            _ => Drop::Malformed,
        }
    }
}

/// Direction of one ESP traffic stream, from the sender's and receiver's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        }
    }
}

/// Why the control channel's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("expected one key per worker ({expected}), got {got}")]
    Workers { expected: usize, got: usize },
    #[error("no inbound slot is free")]
    Full,
    #[error("node {0:?} is not in the policy in force")]
    UnknownPeer(String),
    #[error("there is no policy in force")]
    NoPolicy,
    #[error("SPI base {0:#x} is not valid (slot 0, or worker bits set)")]
    SpiBase(u32),
}

/// How the tunnel is set up.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// This node's id in the policy.
    pub node: String,
    pub engine: Engine,
    /// Sending workers (one outbound SA each per peer and tenant).
    pub workers: u16,
    pub limits: Limits,
    /// The UDP port ESP is sent to.
    pub esp_port: u16,
}

/// One SA, for metrics and status (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaInfo {
    pub direction: Direction,
    pub peer: String,
    pub tenant: String,
    pub epoch: u64,
    pub spi: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// One worker's counters for one tenant, on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct StatsRow {
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    dropped: [AtomicU64; 3],
    marked: [AtomicU64; 3],
}

/// A tenant's traffic counters: one row per worker, so no two workers write the same line.
struct TenantStats {
    rows: Box<[StatsRow]>,
}

impl TenantStats {
    fn new(workers: u16) -> TenantStats {
        TenantStats {
            rows: (0..workers.max(1)).map(|_| StatsRow::default()).collect(),
        }
    }

    fn row(&self, worker: u16) -> Option<&StatsRow> {
        self.rows
            .get(usize::from(worker))
            .or_else(|| self.rows.first())
    }

    fn totals(&self, tenant: &str) -> TenantTraffic {
        let sum = |f: &dyn Fn(&StatsRow) -> &AtomicU64| {
            self.rows
                .iter()
                .map(|r| f(r).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        let by_reason = |marked: bool| -> Vec<(limits::Over, u64)> {
            let mut n = [0u64; 3];
            for r in self.rows.iter() {
                let a = if marked { &r.marked } else { &r.dropped };
                for (acc, c) in n.iter_mut().zip(a) {
                    *acc = acc.wrapping_add(c.load(Ordering::Relaxed));
                }
            }
            limits::Over::ALL.iter().copied().zip(n).collect()
        };
        TenantTraffic {
            tenant: tenant.to_owned(),
            packets_out: sum(&|r: &StatsRow| &r.packets_out),
            bytes_out: sum(&|r: &StatsRow| &r.bytes_out),
            packets_in: sum(&|r: &StatsRow| &r.packets_in),
            bytes_in: sum(&|r: &StatsRow| &r.bytes_in),
            dropped: by_reason(false),
            marked: by_reason(true),
        }
    }
}

/// A tenant's traffic through the tunnel since start (no rates: the reader derives them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantTraffic {
    pub tenant: String,
    /// Sent to peers (sealed), and received from them (opened and allowed).
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets over a limit, by the limit: dropped, and passed marked.
    pub dropped: Vec<(limits::Over, u64)>,
    pub marked: Vec<(limits::Over, u64)>,
}

struct PolicyView {
    classifier: Classifier,
    limiter: limits::Limiter,
    /// The limiter's time base.
    base: Instant,
    /// By tenant index; carried over from the previous policy by tenant name.
    stats: Vec<Arc<TenantStats>>,
    local: Option<usize>,
    nodes: Vec<(String, IpAddr)>,
    tenants: Vec<String>,
    segment_node: Vec<Option<usize>>,
    segment_tenant: Vec<usize>,
    /// Segment names, by index.
    segments: Vec<String>,
}

impl PolicyView {
    fn node(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|(n, _)| n == id)
    }
    fn tenant(&self, id: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t == id)
    }
    fn segment_node(&self, segment: usize) -> Option<usize> {
        self.segment_node.get(segment).copied().flatten()
    }

    /// Whether the policy allows the packet: a rule allows it, or it is a reply of a flow a
    /// rule allows (the reverse direction matches with the ports swapped). The data plane is
    /// stateless, so a reply is recognized by its shape: for TCP, no SYN without ACK, so the
    /// answering side can never open a connection the rules do not allow. (nftables adds full
    /// connection tracking on the host side; docs/dataplane.md.)
    /// `src` and `dst` are the packet's segments, looked up once by the caller.
    fn allows(&self, f: &Flow, src: usize, dst: usize) -> bool {
        let ipv6 = f.next_header == NEXT_IPV6;
        if self
            .classifier
            .rule_between(src, dst, f.proto, f.dst_port, ipv6)
            .is_some()
        {
            return true;
        }
        if f.proto == packet::TCP && f.tcp_flags & (packet::SYN | packet::ACK) == packet::SYN {
            return false;
        }
        if (f.proto == packet::TCP || f.proto == packet::UDP) && f.src_port == 0 {
            return false;
        }
        self.classifier
            .rule_between(dst, src, f.proto, f.src_port, ipv6)
            .is_some()
    }
}

struct OutState {
    sa: Outbound,
}

/// The outbound SAs to one (peer, tenant): one per worker.
struct OutSa {
    peer: String,
    tenant: String,
    epoch: u64,
    spi_base: u32,
    dest: SocketAddr,
    created: Instant,
    workers: Vec<Mutex<OutState>>,
    rekey: AtomicBool,
}

struct InState {
    sa: Inbound,
    packets: u64,
    bytes: u64,
}

/// The inbound SAs from one (peer, tenant, epoch): one per sending worker of the peer.
struct InSa {
    peer: String,
    tenant: String,
    epoch: u64,
    spi_base: u32,
    senders: Vec<Mutex<InState>>,
}

#[derive(Default)]
struct Tables {
    policy: Option<Arc<PolicyView>>,
    out: HashMap<(String, String), Arc<OutSa>>,
    inbound: BTreeMap<u32, Arc<InSa>>,
    next_slot: u32,
}

/// An inbound SA group with the (peer node, tenant) indices it resolves to in the policy.
type ResolvedIn = (Arc<InSa>, Option<usize>, Option<usize>);

/// What the data path reads: rebuilt on every change, read-only between changes.
pub struct Snapshot {
    policy: Option<Arc<PolicyView>>,
    /// By (node index, tenant index) in the policy.
    out: HashMap<(usize, usize), Arc<OutSa>>,
    /// By slot: the SA and the (peer node, tenant) indices it resolves to in the policy.
    inbound: Vec<Option<ResolvedIn>>,
    counters: Arc<Counters>,
    rekey_signal: Arc<RekeySignal>,
    flows: Option<Arc<flows::FlowTables>>,
}

/// Drop counters by direction and reason.
#[derive(Default)]
pub struct Counters {
    /// [egress (from the host), ingress (from the wire)].
    drops: [[AtomicU64; Drop::ALL.len()]; 2],
}

impl Counters {
    fn slot(&self, dir: Direction, d: Drop) -> Option<&AtomicU64> {
        let side = match dir {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
        };
        self.drops.get(side)?.get(d.index())
    }

    pub fn count(&self, dir: Direction, d: Drop) {
        if let Some(c) = self.slot(dir, d) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops for `d` in one direction: `Outbound` = packets from the host, `Inbound` = from
    /// the wire.
    pub fn get_dir(&self, dir: Direction, d: Drop) -> u64 {
        self.slot(dir, d).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Drops for `d` in both directions.
    pub fn get(&self, d: Drop) -> u64 {
        self.get_dir(Direction::Outbound, d) + self.get_dir(Direction::Inbound, d)
    }
}

/// A sealed packet's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub len: usize,
    pub dest: SocketAddr,
    /// Hash of the inner flow: the caller picks the outer source port with it.
    pub flow_hash: u32,
}

/// An opened packet: the inner IP packet is `packet[start..start + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub start: usize,
    pub len: usize,
}

/// The tunnel: SA tables, the policy view and counters.
pub struct Tunnel {
    config: TunnelConfig,
    tables: Mutex<Tables>,
    snapshot: RwLock<Arc<Snapshot>>,
    counters: Arc<Counters>,
    key_log: Option<Mutex<Box<dyn Write + Send>>>,
    rekeys: AtomicU64,
    rekey_signal: Arc<RekeySignal>,
    /// Per-tenant counters by tenant name, kept across policy changes.
    stats: Mutex<HashMap<String, Arc<TenantStats>>>,
    /// Flow telemetry, once enabled.
    flows: std::sync::OnceLock<Arc<flows::FlowTables>>,
}

/// Called (from a data-path thread) when an outbound SA first asks for a rekey.
type RekeySignal = std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>;

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("node", &self.config.node)
            .field("workers", &self.config.workers)
            .field("engine", &self.config.engine)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tunnel {
    /// A tunnel with no policy and no SAs: every packet is dropped until both arrive.
    /// `key_log`: where to write SA keys for decrypting captures (insecure; off in production).
    pub fn new(mut config: TunnelConfig, key_log: Option<Box<dyn Write + Send>>) -> Tunnel {
        config.workers = config.workers.clamp(1, MAX_WORKERS);
        let counters = Arc::new(Counters::default());
        let rekey_signal = Arc::new(RekeySignal::new());
        let snapshot = Arc::new(Snapshot {
            policy: None,
            out: HashMap::new(),
            inbound: Vec::new(),
            counters: Arc::clone(&counters),
            rekey_signal: Arc::clone(&rekey_signal),
            flows: None,
        });
        Tunnel {
            config,
            tables: Mutex::new(Tables {
                next_slot: 1,
                ..Tables::default()
            }),
            snapshot: RwLock::new(snapshot),
            counters,
            key_log: key_log.map(Mutex::new),
            rekeys: AtomicU64::new(0),
            rekey_signal,
            stats: Mutex::new(HashMap::new()),
            flows: std::sync::OnceLock::new(),
        }
    }

    /// Record flows from now on (sampled as `settings` say); returns the tables the exporter
    /// drains. Only the first call has an effect.
    pub fn enable_flows(&self, settings: flows::FlowSettings) -> Arc<flows::FlowTables> {
        let tables = Arc::clone(
            self.flows
                .get_or_init(|| Arc::new(flows::FlowTables::new(self.config.workers, settings))),
        );
        let t = lock(&self.tables);
        self.publish(&t);
        tables
    }

    /// The flow tables, if telemetry is on.
    pub fn flows(&self) -> Option<Arc<flows::FlowTables>> {
        self.flows.get().cloned()
    }

    /// The names of the policy in force's tenants and segments, by index (for flow records).
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        let snap = self.snapshot();
        snap.policy.as_ref().map_or((Vec::new(), Vec::new()), |p| {
            (p.tenants.clone(), p.segments.clone())
        })
    }

    /// Each tenant's traffic through the tunnel, for the tenants of the policy in force.
    pub fn tenant_traffic(&self) -> Vec<TenantTraffic> {
        let snap = self.snapshot();
        let Some(p) = &snap.policy else {
            return Vec::new();
        };
        p.tenants
            .iter()
            .zip(&p.stats)
            .map(|(name, s)| s.totals(name))
            .collect()
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    pub fn workers(&self) -> u16 {
        self.config.workers
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Call `f` whenever an outbound SA first reaches a soft limit, so the control channel
    /// rekeys at once instead of at its next poll of [`Tunnel::rekey_wanted`]. `f` runs on a
    /// data-path thread: it must only signal (e.g. `tokio::sync::Notify::notify_one`). Only the
    /// first call has an effect.
    pub fn on_rekey_wanted(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.rekey_signal.set(Box::new(f));
    }

    /// Outbound SAs replaced by a newer epoch since start.
    pub fn rekeys(&self) -> u64 {
        self.rekeys.load(Ordering::Relaxed)
    }

    /// What the data path reads; take one per batch.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Put `policy` in force for classification. SAs stay; those whose peer or tenant left
    /// the policy carry no traffic until it returns.
    pub fn set_policy(&self, policy: &Policy) {
        let stats = {
            let mut all = lock(&self.stats);
            all.retain(|name, _| policy.tenants.iter().any(|t| &t.id == name));
            policy
                .tenants
                .iter()
                .map(|t| {
                    Arc::clone(
                        all.entry(t.id.clone())
                            .or_insert_with(|| Arc::new(TenantStats::new(self.config.workers))),
                    )
                })
                .collect()
        };
        let view = PolicyView {
            classifier: policy.classifier(),
            limiter: limits::Limiter::new(policy),
            base: Instant::now(),
            stats,
            local: policy.nodes.iter().position(|n| n.id == self.config.node),
            nodes: policy
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.address))
                .collect(),
            tenants: policy.tenants.iter().map(|t| t.id.clone()).collect(),
            segment_node: policy.segments.iter().map(|s| s.node).collect(),
            segment_tenant: policy.segments.iter().map(|s| s.tenant).collect(),
            segments: policy.segments.iter().map(|s| s.name.clone()).collect(),
        };
        let mut t = lock(&self.tables);
        t.policy = Some(Arc::new(view));
        self.publish(&t);
    }

    /// Install the inbound SAs for `tenant`'s traffic from `peer` in `epoch`; `keys[i]` is for
    /// the peer's worker `i`. Returns the SPI base the peer must send with.
    pub fn add_inbound(
        &self,
        peer: &str,
        tenant: &str,
        epoch: u64,
        keys: Vec<SaKeys>,
    ) -> Result<u32, TunnelError> {
        if keys.is_empty() || keys.len() > usize::from(MAX_WORKERS) {
            return Err(TunnelError::Workers {
                expected: usize::from(MAX_WORKERS),
                got: keys.len(),
            });
        }
        let mut t = lock(&self.tables);
        let slot = free_slot(&t).ok_or(TunnelError::Full)?;
        t.next_slot = if slot >= MAX_SLOTS { 1 } else { slot + 1 };
        let spi_base = slot << 8;
        let senders = keys
            .iter()
            .enumerate()
            .map(|(w, k)| {
                let w = u16::try_from(w).unwrap_or(u16::MAX);
                Mutex::new(InState {
                    sa: Inbound::with_engine(self.config.engine, spi(spi_base, w), k),
                    packets: 0,
                    bytes: 0,
                })
            })
            .collect();
        self.log_keys(&t, peer, Direction::Inbound, spi_base, &keys);
        t.inbound.insert(
            slot,
            Arc::new(InSa {
                peer: peer.to_owned(),
                tenant: tenant.to_owned(),
                epoch,
                spi_base,
                senders,
            }),
        );
        self.publish(&t);
        Ok(spi_base)
    }

    /// Send `tenant`'s traffic to `peer` under new SAs (epoch `epoch`, the peer's `spi_base`);
    /// `keys[i]` is for this node's worker `i`. Replaces the previous ones at once (make
    /// before break: the peer installed the inbound side before it sent `spi_base`).
    pub fn set_outbound(
        &self,
        peer: &str,
        tenant: &str,
        epoch: u64,
        spi_base: u32,
        keys: Vec<SaKeys>,
        now: Instant,
    ) -> Result<(), TunnelError> {
        if keys.len() != usize::from(self.config.workers) {
            return Err(TunnelError::Workers {
                expected: usize::from(self.config.workers),
                got: keys.len(),
            });
        }
        if spi_base & 0xff != 0 || spi_base >> 8 == 0 {
            return Err(TunnelError::SpiBase(spi_base));
        }
        let mut t = lock(&self.tables);
        let policy = t.policy.as_ref().ok_or(TunnelError::NoPolicy)?;
        let addr = policy
            .node(peer)
            .and_then(|i| policy.nodes.get(i))
            .map(|(_, a)| *a)
            .ok_or_else(|| TunnelError::UnknownPeer(peer.to_owned()))?;
        let workers = keys
            .iter()
            .enumerate()
            .map(|(w, k)| {
                let w = u16::try_from(w).unwrap_or(u16::MAX);
                Mutex::new(OutState {
                    sa: Outbound::with_engine(
                        self.config.engine,
                        spi(spi_base, w),
                        k,
                        self.config.limits,
                    ),
                })
            })
            .collect();
        self.log_keys(&t, peer, Direction::Outbound, spi_base, &keys);
        let key = (peer.to_owned(), tenant.to_owned());
        if t.out.contains_key(&key) {
            self.rekeys.fetch_add(1, Ordering::Relaxed);
        }
        t.out.insert(
            key,
            Arc::new(OutSa {
                peer: peer.to_owned(),
                tenant: tenant.to_owned(),
                epoch,
                spi_base,
                dest: SocketAddr::new(addr, self.config.esp_port),
                created: now,
                workers,
                rekey: AtomicBool::new(false),
            }),
        );
        self.publish(&t);
        Ok(())
    }

    /// Remove one inbound SA (after its successor has taken over).
    pub fn remove_inbound(&self, spi_base: u32) {
        let mut t = lock(&self.tables);
        if t.inbound.remove(&(spi_base >> 8)).is_some() {
            self.publish(&t);
        }
    }

    /// Remove the outbound SAs of one (peer, tenant).
    pub fn remove_outbound(&self, peer: &str, tenant: &str) {
        let mut t = lock(&self.tables);
        if t.out
            .remove(&(peer.to_owned(), tenant.to_owned()))
            .is_some()
        {
            self.publish(&t);
        }
    }

    /// Remove every SA to and from `peer`. Returns how many SA groups went.
    pub fn remove_peer(&self, peer: &str) -> usize {
        let mut t = lock(&self.tables);
        let before = t.out.len() + t.inbound.len();
        t.out.retain(|(p, _), _| p != peer);
        t.inbound.retain(|_, sa| sa.peer != peer);
        let removed = before - t.out.len() - t.inbound.len();
        if removed > 0 {
            self.publish(&t);
        }
        removed
    }

    /// (peer, tenant, epoch) of the outbound SAs that reached a soft limit (or whose age
    /// passed the soft age at `now`): the control channel should rekey them. The epoch lets it
    /// tell a wish about the SAs in use from a stale one about SAs already replaced.
    pub fn rekey_wanted(&self, now: Instant) -> Vec<(String, String, u64)> {
        let t = lock(&self.tables);
        t.out
            .values()
            .filter(|sa| {
                sa.rekey.load(Ordering::Relaxed)
                    || now.saturating_duration_since(sa.created) >= self.config.limits.soft_age
            })
            .map(|sa| (sa.peer.clone(), sa.tenant.clone(), sa.epoch))
            .collect()
    }

    /// The epoch of the outbound SAs to (peer, tenant), if any.
    pub fn outbound_epoch(&self, peer: &str, tenant: &str) -> Option<u64> {
        let t = lock(&self.tables);
        t.out
            .get(&(peer.to_owned(), tenant.to_owned()))
            .map(|sa| sa.epoch)
    }

    /// Every SA with its usage (per worker), for metrics and status.
    pub fn sa_info(&self) -> Vec<SaInfo> {
        let t = lock(&self.tables);
        let mut out = Vec::new();
        for sa in t.out.values() {
            for (w, s) in sa.workers.iter().enumerate() {
                let (packets, bytes) = lock(s).sa.usage();
                out.push(SaInfo {
                    direction: Direction::Outbound,
                    peer: sa.peer.clone(),
                    tenant: sa.tenant.clone(),
                    epoch: sa.epoch,
                    spi: spi(sa.spi_base, u16::try_from(w).unwrap_or(u16::MAX)),
                    packets,
                    bytes,
                });
            }
        }
        for sa in t.inbound.values() {
            for (w, s) in sa.senders.iter().enumerate() {
                let s = lock(s);
                out.push(SaInfo {
                    direction: Direction::Inbound,
                    peer: sa.peer.clone(),
                    tenant: sa.tenant.clone(),
                    epoch: sa.epoch,
                    spi: spi(sa.spi_base, u16::try_from(w).unwrap_or(u16::MAX)),
                    packets: s.packets,
                    bytes: s.bytes,
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.peer, &a.tenant, a.direction.as_str(), a.spi).cmp(&(
                &b.peer,
                &b.tenant,
                b.direction.as_str(),
                b.spi,
            ))
        });
        out
    }

    fn log_keys(&self, t: &Tables, peer: &str, dir: Direction, spi_base: u32, keys: &[SaKeys]) {
        let Some(log) = &self.key_log else { return };
        let Some(policy) = &t.policy else { return };
        let addr = |id: &str| {
            policy
                .node(id)
                .and_then(|i| policy.nodes.get(i))
                .map(|n| n.1)
        };
        let (Some(local), Some(remote)) = (addr(&self.config.node), addr(peer)) else {
            return;
        };
        let (src, dst) = match dir {
            Direction::Outbound => (local, remote),
            Direction::Inbound => (remote, local),
        };
        let mut w = lock(log);
        for (i, k) in keys.iter().enumerate() {
            let line = keylog::line(src, dst, spi(spi_base, u16::try_from(i).unwrap_or(0)), k);
            if w.write_all(line.as_bytes())
                .and_then(|()| w.flush())
                .is_err()
            {
                tracing::warn!("the SA key log could not be written");
                return;
            }
        }
    }

    fn publish(&self, t: &Tables) {
        let mut out = HashMap::new();
        let mut inbound = Vec::new();
        if let Some(p) = &t.policy {
            for sa in t.out.values() {
                if let (Some(n), Some(tn)) = (p.node(&sa.peer), p.tenant(&sa.tenant)) {
                    out.insert((n, tn), Arc::clone(sa));
                }
            }
        }
        let top = t.inbound.keys().next_back().copied().unwrap_or(0);
        inbound.resize_with(usize::try_from(top).unwrap_or(0) + 1, || None);
        for (slot, sa) in &t.inbound {
            let resolved = t
                .policy
                .as_ref()
                .map_or((None, None), |p| (p.node(&sa.peer), p.tenant(&sa.tenant)));
            if let Some(e) = inbound.get_mut(usize::try_from(*slot).unwrap_or(usize::MAX)) {
                *e = Some((Arc::clone(sa), resolved.0, resolved.1));
            }
        }
        let snap = Arc::new(Snapshot {
            policy: t.policy.clone(),
            out,
            inbound,
            counters: Arc::clone(&self.counters),
            rekey_signal: Arc::clone(&self.rekey_signal),
            flows: self.flows.get().cloned(),
        });
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snap;
    }
}

fn free_slot(t: &Tables) -> Option<u32> {
    let start = t.next_slot.clamp(1, MAX_SLOTS);
    (start..=MAX_SLOTS)
        .chain(1..start)
        .find(|s| !t.inbound.contains_key(s))
}

thread_local! {
    /// A copy of a packet being marked (the host's packet is read-only here).
    static MARK_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Snapshot {
    /// Classify and seal one host packet for `worker` into `out`.
    pub fn egress(
        &self,
        worker: u16,
        now: Instant,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<Sealed, Drop> {
        let sampled = self.flows.as_ref().filter(|f| f.sample(worker));
        let mut note = flows::Note::default();
        let r = self.egress_inner(worker, now, inner, out, &mut note);
        if let Err(d) = r {
            self.counters.count(Direction::Outbound, d);
        }
        if let Some(f) = sampled {
            let outcome = r.map_or_else(flows::Outcome::Dropped, |_| flows::Outcome::Allowed);
            f.record(
                worker,
                Direction::Outbound,
                &note,
                outcome,
                inner.len(),
                now,
            );
        }
        r
    }

    fn egress_inner(
        &self,
        worker: u16,
        now: Instant,
        inner: &[u8],
        out: &mut [u8],
        note: &mut flows::Note,
    ) -> Result<Sealed, Drop> {
        let policy = self.policy.as_ref().ok_or(Drop::Policy)?;
        let flow = Flow::parse(inner).ok_or(Drop::Malformed)?;
        note.five_tuple = Some((flow.src, flow.dst, flow.proto, flow.src_port, flow.dst_port));
        let src = policy.classifier.segment_of(flow.src).ok_or(Drop::Source)?;
        note.src_segment = u32::try_from(src).ok();
        note.tenant = policy
            .segment_tenant
            .get(src)
            .and_then(|t| u32::try_from(*t).ok());
        if policy.local.is_none() || policy.segment_node(src) != policy.local {
            return Err(Drop::Source);
        }
        let dst = policy
            .classifier
            .segment_of(flow.dst)
            .ok_or(Drop::NoRoute)?;
        note.dst_segment = u32::try_from(dst).ok();
        let peer = match policy.segment_node(dst) {
            Some(n) if Some(n) != policy.local => n,
            _ => return Err(Drop::NoRoute),
        };
        if !policy.allows(&flow, src, dst) {
            return Err(Drop::Policy);
        }
        let tenant = policy
            .segment_tenant
            .get(src)
            .copied()
            .ok_or(Drop::Policy)?;
        let sa = self.out.get(&(peer, tenant)).ok_or(Drop::NoSa)?;
        let slot = sa
            .workers
            .get(usize::from(worker))
            .or_else(|| sa.workers.first())
            .ok_or(Drop::NoSa)?;
        let stats = policy.stats.get(tenant).and_then(|t| t.row(worker));
        let mut marked = false;
        if !policy.limiter.is_empty() {
            let ticks = u64::try_from(now.saturating_duration_since(policy.base).as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_mul(limits::TICKS_PER_NS);
            let new_connection = flow.proto == packet::TCP
                && flow.tcp_flags & (packet::SYN | packet::ACK) == packet::SYN;
            let bytes = inner.len() as u64;
            match policy
                .limiter
                .check(ticks, tenant, src, dst, bytes, new_connection)
            {
                limits::Decision::Pass => {}
                limits::Decision::Drop(over) => {
                    if let Some(c) = stats.and_then(|r| r.dropped.get(over.index())) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(match over {
                        limits::Over::Rate => Drop::RateLimit,
                        limits::Over::Connections => Drop::ConnectionLimit,
                        limits::Over::Congestion => Drop::Congestion,
                    });
                }
                limits::Decision::Mark(over) => {
                    if let Some(c) = stats.and_then(|r| r.marked.get(over.index())) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    marked = true;
                }
            }
        }
        let mut s = lock(slot);
        s.sa.set_age(now.saturating_duration_since(sa.created));
        let len = if marked {
            MARK_SCRATCH.with(|scratch| {
                let mut copy = scratch.borrow_mut();
                copy.clear();
                copy.extend_from_slice(inner);
                limits::set_dscp(&mut copy, limits::DSCP_LE);
                s.sa.seal(&copy, flow.next_header, out)
            })
        } else {
            s.sa.seal(inner, flow.next_header, out)
        }
        .map_err(Drop::from)?;
        if let Some(r) = stats {
            r.packets_out.fetch_add(1, Ordering::Relaxed);
            r.bytes_out.fetch_add(inner.len() as u64, Ordering::Relaxed);
        }
        if s.sa.wants_rekey()
            && !sa.rekey.load(Ordering::Relaxed)
            && !sa.rekey.swap(true, Ordering::Relaxed)
        {
            if let Some(signal) = self.rekey_signal.get() {
                signal();
            }
        }
        Ok(Sealed {
            len,
            dest: sa.dest,
            flow_hash: flow.hash(),
        })
    }

    /// Open and check one wire packet in place, on `worker`.
    pub fn ingress(&self, worker: u16, packet: &mut [u8]) -> Result<Delivered, Drop> {
        let sampled = self.flows.as_ref().filter(|f| f.sample(worker));
        let mut note = flows::Note::default();
        let r = self.ingress_inner(worker, packet, &mut note);
        if let Err(d) = r {
            self.counters.count(Direction::Inbound, d);
        }
        if let Some(f) = sampled {
            let (outcome, len) = match r {
                Ok(d) => (flows::Outcome::Allowed, d.len),
                Err(d) => (flows::Outcome::Dropped(d), packet.len()),
            };
            f.record(
                worker,
                Direction::Inbound,
                &note,
                outcome,
                len,
                Instant::now(),
            );
        }
        r
    }

    fn ingress_inner(
        &self,
        worker: u16,
        packet: &mut [u8],
        note: &mut flows::Note,
    ) -> Result<Delivered, Drop> {
        let spi_value = Inbound::spi_of(packet).ok_or(Drop::Malformed)?;
        let slot = usize::try_from(spi_value >> 8).map_err(|_| Drop::NoSa)?;
        let (sa, peer, tenant) = self
            .inbound
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or(Drop::NoSa)?;
        let sender = sa
            .senders
            .get(usize::try_from(spi_value & 0xff).map_err(|_| Drop::NoSa)?)
            .ok_or(Drop::NoSa)?;
        let opened = {
            let mut s = lock(sender);
            let o = s.sa.open(packet).map_err(Drop::from)?;
            s.packets += 1;
            s.bytes += o.len as u64;
            o
        };
        let inner = packet
            .get(opened.start..opened.start + opened.len)
            .ok_or(Drop::Malformed)?;
        let flow = Flow::parse(inner).ok_or(Drop::Malformed)?;
        note.five_tuple = Some((flow.src, flow.dst, flow.proto, flow.src_port, flow.dst_port));
        note.tenant = tenant.and_then(|t| u32::try_from(t).ok());
        if flow.next_header != opened.next {
            return Err(Drop::Malformed);
        }
        let policy = self.policy.as_ref().ok_or(Drop::Policy)?;
        let (Some(peer), Some(tenant)) = (*peer, *tenant) else {
            return Err(Drop::Policy);
        };
        let src = policy.classifier.segment_of(flow.src).ok_or(Drop::Source)?;
        note.src_segment = u32::try_from(src).ok();
        if policy.segment_node(src) != Some(peer) {
            return Err(Drop::Source);
        }
        // The authenticated SPI names the tenant; the inner source must be that tenant's.
        if policy.segment_tenant.get(src).copied() != Some(tenant) {
            return Err(Drop::Source);
        }
        let dst = policy
            .classifier
            .segment_of(flow.dst)
            .ok_or(Drop::NoRoute)?;
        note.dst_segment = u32::try_from(dst).ok();
        if policy.local.is_none() || policy.segment_node(dst) != policy.local {
            return Err(Drop::NoRoute);
        }
        if !policy.allows(&flow, src, dst) {
            return Err(Drop::Policy);
        }
        if let Some(r) = policy.stats.get(tenant).and_then(|t| t.row(worker)) {
            r.packets_in.fetch_add(1, Ordering::Relaxed);
            r.bytes_in.fetch_add(inner.len() as u64, Ordering::Relaxed);
        }
        Ok(Delivered {
            start: opened.start,
            len: opened.len,
        })
    }
}

#[cfg(test)]
mod tests;
