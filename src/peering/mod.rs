//! The attested control channel between appliances (docs/peering.md): mutually authenticated
//! TLS 1.3 with post-quantum hybrid key exchange, TPM evidence bound to the TLS exporter both
//! ways, and only then the ESP SAs, keyed from the channel's exporter and each tenant's
//! east-west key.
//!
//! | module | role | I/O? |
//! |---|---|---|
//! | [`frame`] | messages, length-prefixed JSON framing, boundary checks | pure |
//! | [`session`] | the protocol state of one channel: attestation, offers, rekey, liveness | pure |
//! | [`appraise`] | a peer's evidence against the policy's reference values | pure |
//! | `tls` | rustls configurations, peer certificate checks | files |
//! | `channel` | the shared TLS stream, exporter values, framed reads and writes | net |
//! | `conn` | dial, accept, the identity check of an accepted dialer | net |
//! | `driver` | runs one session against the TPM, the verifier, the vault, the tunnel, the audit log | net |
//! | this module | the service: which peers, who dials, backoff, status | net |
//!
//! For each other node in the policy in force, the node with the smaller id dials and the other
//! accepts; a dialer reconnects with backoff (200 ms doubling to 5 s). No peer is dialed or
//! accepted until the policy in force names this appliance (`name` in the configuration).

pub mod appraise;
mod channel;
mod conn;
mod driver;
pub mod frame;
pub mod session;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use warden_attest::tpm2::ClockInfo;
use warden_audit::event::{Event, Kind, Outcome};
use warden_enforcer::tunnel::{Direction, Tunnel, TunnelConfig};
use warden_keys::KeyKind;

use crate::api::ApiState;
use crate::audit::{now_ms, AuditLog};
use crate::config::{Config, PeeringConfig};
use crate::policy::{ActivePolicy, PolicyService};
use crate::vault::{Vault, VersionState};

/// How often the service re-reads the policy, the vault and the tunnel's rekey wishes.
const MANAGE_EVERY: Duration = Duration::from_millis(500);
/// Reconnect backoff of a dialer: first and longest pause.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Sending workers of the tunnel the control channel keeps when there is no `[dataplane]`.
pub const STANDALONE_WORKERS: u16 = 2;
/// Audit details are capped (warden-audit `MAX_DETAIL_BYTES`).
const MAX_DETAIL: usize = 4000;
/// The same refusal of the same peer is audited at most this often (with a count).
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// The state of the channel to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Dialing, or waiting for the peer to dial.
    Connecting,
    /// TLS is up; the attestations are running.
    Attesting,
    /// Both attested: SAs may exist.
    Attested,
    /// The last attempt was refused (either way) or a re-attestation failed.
    Refused,
    /// The channel was lost; reconnecting.
    Lost,
}

impl PeerState {
    pub const ALL: [PeerState; 5] = [
        PeerState::Connecting,
        PeerState::Attesting,
        PeerState::Attested,
        PeerState::Refused,
        PeerState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Attesting => "attesting",
            PeerState::Attested => "attested",
            PeerState::Refused => "refused",
            PeerState::Lost => "lost",
        }
    }
}

/// The last appraisal of the peer's evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationStatus {
    pub at_ms: i64,
    pub ok: bool,
    /// `[check] message` per failed check.
    pub failures: Vec<String>,
}

/// SAs of one epoch in one direction (one SPI per sending worker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaGroup {
    pub epoch: u64,
    /// The version of the tenant's east-west key the epoch was keyed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    pub spi_base: u32,
    pub spis: Vec<u32>,
    pub packets: u64,
    pub bytes: u64,
}

/// The SAs with a peer for one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSas {
    pub tenant: String,
    /// From the peer to this node: usually one epoch, two during a rekey's grace period.
    pub inbound: Vec<SaGroup>,
    /// From this node to the peer.
    pub outbound: Vec<SaGroup>,
}

/// What `GET /v1/peers` shows per peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    /// `dial` (this node connects) or `accept` (the peer connects).
    pub role: String,
    /// The control address dialed, or the address the peer connected from.
    pub address: Option<String>,
    pub state: PeerState,
    /// When `state` was entered (Unix ms).
    pub since_ms: i64,
    pub last_attestation: Option<AttestationStatus>,
    /// The TLS key-exchange group of the current or last channel, e.g. `X25519MLKEM768`.
    pub kx_group: Option<String>,
    /// The peer's sending workers and its attested policy version.
    pub workers: Option<u16>,
    pub policy_version: Option<u64>,
    /// TCP connect to both sides attested, for the current or last channel.
    pub handshake_ms: Option<u64>,
    /// Why the last channel ended or was refused.
    pub last_error: Option<String>,
    pub tenants: Vec<TenantSas>,
}

/// `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// This appliance's node id.
    pub node: String,
    /// Whether `[peering]` is configured.
    pub enabled: bool,
    /// Whether the policy in force names this appliance (no peers until it does).
    pub in_policy: bool,
    pub listen: Option<String>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dial,
    Accept,
}

#[derive(Debug)]
struct StatusData {
    address: Option<SocketAddr>,
    state: PeerState,
    since_ms: i64,
    last_attestation: Option<AttestationStatus>,
    kx_group: Option<String>,
    workers: Option<u16>,
    policy_version: Option<u64>,
    handshake_ms: Option<u64>,
    last_error: Option<String>,
    /// The tenant key version each SA epoch was keyed with: (tenant, outbound, epoch).
    key_versions: BTreeMap<(String, bool, u64), u32>,
}

impl StatusData {
    /// Remember the key version of a new epoch; older epochs of the same tenant and direction
    /// than the two before it are gone from the tunnel by then, so they are forgotten.
    fn keyed(&mut self, tenant: &str, outbound: bool, epoch: u64, key_version: u32) {
        self.key_versions
            .retain(|(t, o, e), _| !(t == tenant && *o == outbound && e.saturating_add(2) < epoch));
        self.key_versions
            .insert((tenant.to_owned(), outbound, epoch), key_version);
    }
}

/// One peer of the policy in force.
struct Peer {
    node: String,
    role: Role,
    status: Mutex<StatusData>,
    /// Bumped to end the running session (a newer connection, retirement, shutdown).
    generation: watch::Sender<u64>,
    /// Held by the running session: a new one starts only after the old one cleaned up.
    running: tokio::sync::Mutex<()>,
    retired: AtomicBool,
}

impl Peer {
    fn set(&self, f: impl FnOnce(&mut StatusData)) {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = s.state;
        f(&mut s);
        if s.state != before {
            s.since_ms = now_ms();
        }
    }

    fn bump(&self) -> u64 {
        let mut next = 0;
        self.generation.send_modify(|g| {
            *g = g.wrapping_add(1);
            next = *g;
        });
        next
    }
}

/// What every session reads each tick; rebuilt by the manager.
#[derive(Default)]
struct Snapshot {
    policy: Option<Arc<ActivePolicy>>,
    in_policy: bool,
    /// Tenants of the policy with a usable east-west key here, and its current version.
    keys: BTreeMap<String, u32>,
    /// Per peer, tenants whose outbound SAs reached a soft limit, with the SAs' epoch.
    rekey: BTreeMap<String, Vec<(String, u64)>>,
}

struct Refusal {
    reason: String,
    at: Instant,
    suppressed: u64,
}

pub(crate) struct Inner {
    local: String,
    config: PeeringConfig,
    tunnel: Arc<Tunnel>,
    tls: tls::PeerTls,
    api: Weak<ApiState>,
    policy: Arc<PolicyService>,
    vault: Arc<Vault>,
    audit: Arc<AuditLog>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The last verified TPM clock per (node, AK name): the verifier's `clock` check.
    clocks: Mutex<HashMap<(String, Vec<u8>), ClockInfo>>,
    refusals: Mutex<HashMap<String, Refusal>>,
    stop: watch::Sender<bool>,
    /// Woken by the data plane when an outbound SA reaches a soft limit.
    rekey_now: Arc<tokio::sync::Notify>,
}

/// The control-channel service of one appliance.
pub struct PeerService {
    inner: Arc<Inner>,
    listen: SocketAddr,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("node", &self.inner.local)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// A tunnel for the control channel's SAs when there is no `[dataplane]`: it carries no
/// packets, follows the policy in force, and shows what the data plane would use.
pub fn standalone_tunnel(config: &Config, policy: &PolicyService) -> Arc<Tunnel> {
    let tunnel = Arc::new(Tunnel::new(
        TunnelConfig {
            node: config.name.clone(),
            engine: warden_enforcer::esp::Engine::default(),
            workers: STANDALONE_WORKERS,
            limits: warden_enforcer::esp::Limits::default(),
            esp_port: config.policy.esp_udp_port,
        },
        None,
    ));
    crate::dataplane::follow_policy(&tunnel, policy);
    tunnel
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PeerService {
    /// Load the peer certificate (refused unless it names `name` and chains to `ca`), bind
    /// `[peering] listen` and start following the policy. `state` gives the evidence
    /// collector, the vault, the policy and the audit log.
    pub async fn start(
        config: &PeeringConfig,
        name: &str,
        tunnel: Arc<Tunnel>,
        state: &Arc<ApiState>,
    ) -> anyhow::Result<Arc<PeerService>> {
        use anyhow::Context as _;
        let tls = tls::load(config, name)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("peering.listen: cannot bind {}", config.listen))?;
        let listen = listener.local_addr()?;
        let inner = Arc::new(Inner {
            local: name.to_owned(),
            config: config.clone(),
            tunnel,
            tls,
            api: Arc::downgrade(state),
            policy: Arc::clone(&state.policy),
            vault: Arc::clone(&state.vault),
            audit: Arc::clone(&state.audit),
            peers: Mutex::new(BTreeMap::new()),
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
            clocks: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            stop: watch::Sender::new(false),
            rekey_now: Arc::new(tokio::sync::Notify::new()),
        });
        let wake = Arc::clone(&inner.rekey_now);
        inner.tunnel.on_rekey_wanted(move || wake.notify_one());
        inner.manage_once();
        tokio::spawn(conn::listen(Arc::clone(&inner), listener));
        tokio::spawn(manage(Arc::clone(&inner)));
        tracing::info!(%listen, node = %name, workers = inner.tunnel.workers(), "peering: listening for peer appliances");
        Ok(Arc::new(PeerService { inner, listen }))
    }

    /// The address the control channel listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Stop dialing and accepting; every session ends and removes its SAs.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
        for peer in lock(&self.inner.peers).values() {
            peer.retired.store(true, Ordering::Relaxed);
            peer.bump();
        }
    }

    /// Whether the policy in force names this appliance.
    pub fn in_policy(&self) -> bool {
        self.inner.snapshot.borrow().in_policy
    }

    /// Every peer of the policy in force, with its channel state and SAs.
    pub fn status(&self) -> Vec<PeerStatus> {
        let sas = self.inner.tunnel.sa_info();
        let peers: Vec<Arc<Peer>> = lock(&self.inner.peers).values().cloned().collect();
        peers
            .iter()
            .map(|p| {
                let s = lock(&p.status);
                let mut tenants: BTreeMap<String, TenantSas> = BTreeMap::new();
                for sa in sas.iter().filter(|sa| sa.peer == p.node) {
                    let entry = tenants
                        .entry(sa.tenant.clone())
                        .or_insert_with(|| TenantSas {
                            tenant: sa.tenant.clone(),
                            inbound: Vec::new(),
                            outbound: Vec::new(),
                        });
                    let groups = match sa.direction {
                        Direction::Inbound => &mut entry.inbound,
                        Direction::Outbound => &mut entry.outbound,
                    };
                    let base = sa.spi & !0xff;
                    match groups.iter_mut().find(|g| g.spi_base == base) {
                        Some(g) => {
                            g.spis.push(sa.spi);
                            g.packets += sa.packets;
                            g.bytes += sa.bytes;
                        }
                        None => groups.push(SaGroup {
                            epoch: sa.epoch,
                            key_version: s
                                .key_versions
                                .get(&(
                                    sa.tenant.clone(),
                                    matches!(sa.direction, Direction::Outbound),
                                    sa.epoch,
                                ))
                                .copied(),
                            spi_base: base,
                            spis: vec![sa.spi],
                            packets: sa.packets,
                            bytes: sa.bytes,
                        }),
                    }
                }
                for t in tenants.values_mut() {
                    t.inbound.sort_by_key(|g| g.epoch);
                    t.outbound.sort_by_key(|g| g.epoch);
                }
                PeerStatus {
                    node: p.node.clone(),
                    role: match p.role {
                        Role::Dial => "dial".into(),
                        Role::Accept => "accept".into(),
                    },
                    address: s.address.map(|a| a.to_string()),
                    state: s.state,
                    since_ms: s.since_ms,
                    last_attestation: s.last_attestation.clone(),
                    kx_group: s.kx_group.clone(),
                    workers: s.workers,
                    policy_version: s.policy_version,
                    handshake_ms: s.handshake_ms,
                    last_error: s.last_error.clone(),
                    tenants: tenants.into_values().collect(),
                }
            })
            .collect()
    }

    /// `GET /v1/peers`.
    pub fn response(&self) -> PeersResponse {
        PeersResponse {
            node: self.inner.local.clone(),
            enabled: true,
            in_policy: self.in_policy(),
            listen: Some(self.listen.to_string()),
            peers: self.status(),
        }
    }
}

/// The manager: every [`MANAGE_EVERY`] (and at each policy change, each change to the vault's
/// keys, and as soon as the data plane asks for a rekey), rebuild the snapshot and
/// start, keep or retire one entry per peer of the policy in force.
async fn manage(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut changes = inner.policy.subscribe();
    let mut keys = inner.vault.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(MANAGE_EVERY) => {}
            () = inner.rekey_now.notified() => {}
            r = changes.changed() => if r.is_err() { break },
            r = keys.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        inner.manage_once();
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// Tenants of `policy` with a usable east-west key (`[peering] tenant_key`, kind
    /// east-west, enabled, current version unsealed), with that version.
    fn tenant_keys(&self, policy: &warden_policy::Policy) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for tenant in &policy.tenants {
            let current = self
                .vault
                .list(Some(&tenant.id))
                .into_iter()
                .find(|k| {
                    k.key_id == self.config.tenant_key && k.kind == KeyKind::EastWest && !k.disabled
                })
                .and_then(|k| {
                    k.versions
                        .into_iter()
                        .find(|v| v.state == VersionState::Current && v.available)
                })
                .map(|v| v.version);
            if let Some(v) = current {
                out.insert(tenant.id.clone(), v);
            }
        }
        out
    }

    /// The control address of `node`: the configured override, else its policy address with
    /// `[peering] port`.
    fn address_of(&self, policy: &warden_policy::Policy, node: &str) -> Option<SocketAddr> {
        if let Some(a) = self.config.peers.get(node) {
            return Some(*a);
        }
        policy
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| SocketAddr::new(n.address, self.config.port))
    }

    fn manage_once(self: &Arc<Self>) {
        let policy = self.policy.active();
        let in_policy = policy
            .as_ref()
            .is_some_and(|a| a.policy.nodes.iter().any(|n| n.id == self.local));
        let wanted: Vec<String> = match (&policy, in_policy) {
            (Some(a), true) => a
                .policy
                .nodes
                .iter()
                .filter(|n| n.id != self.local)
                .map(|n| n.id.clone())
                .collect(),
            _ => Vec::new(),
        };
        let keys = match (&policy, in_policy) {
            (Some(a), true) => self.tenant_keys(&a.policy),
            _ => BTreeMap::new(),
        };
        let mut rekey: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (peer, tenant, epoch) in self.tunnel.rekey_wanted(Instant::now()) {
            rekey.entry(peer).or_default().push((tenant, epoch));
        }
        let digest = |p: &Option<Arc<ActivePolicy>>| p.as_ref().map(|a| a.policy.digest);
        let changed = digest(&self.snapshot.borrow().policy) != digest(&policy);
        if changed && policy.is_some() && !in_policy {
            tracing::warn!(node = %self.local, "peering: the policy in force does not name this appliance; no peers until it does");
        }
        self.snapshot.send_replace(Arc::new(Snapshot {
            policy,
            in_policy,
            keys,
            rekey,
        }));

        let mut peers = lock(&self.peers);
        let gone: Vec<String> = peers
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for node in gone {
            if let Some(p) = peers.remove(&node) {
                tracing::info!(peer = %node, "peering: the node left the policy; closing its channel");
                p.retired.store(true, Ordering::Relaxed);
                p.bump();
                let removed = self.tunnel.remove_peer(&node);
                if removed > 0 {
                    tracing::info!(peer = %node, removed, "peering: removed the SAs of a node that left the policy");
                }
            }
        }
        for node in wanted {
            if peers.contains_key(&node) {
                continue;
            }
            let role = if self.local < node {
                Role::Dial
            } else {
                Role::Accept
            };
            let peer = Arc::new(Peer {
                node: node.clone(),
                role,
                status: Mutex::new(StatusData {
                    address: None,
                    state: PeerState::Connecting,
                    since_ms: now_ms(),
                    last_attestation: None,
                    kx_group: None,
                    workers: None,
                    policy_version: None,
                    handshake_ms: None,
                    last_error: None,
                    key_versions: BTreeMap::new(),
                }),
                generation: watch::Sender::new(0),
                running: tokio::sync::Mutex::new(()),
                retired: AtomicBool::new(false),
            });
            if role == Role::Dial {
                tokio::spawn(dial_loop(Arc::clone(self), Arc::clone(&peer)));
            }
            peers.insert(node, peer);
        }
    }

    /// Record an audit event; a failure is logged (the caller decides whether it must stop).
    async fn record(&self, event: Event) -> bool {
        match self.audit.record_async(event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "peering: cannot record an audit event");
                false
            }
        }
    }

    /// Audit a refusal, at most once per [`REFUSAL_AUDIT_EVERY`] for the same peer and
    /// reason (the next entry counts the ones left out).
    async fn record_refusal(&self, key: &str, event: Event, reason: &str) {
        let suppressed = {
            let mut r = lock(&self.refusals);
            let now = Instant::now();
            match r.get_mut(key) {
                Some(prev)
                    if prev.reason == reason
                        && now.saturating_duration_since(prev.at) < REFUSAL_AUDIT_EVERY =>
                {
                    prev.suppressed += 1;
                    return;
                }
                _ => {}
            }
            let suppressed = r.get(key).map_or(0, |p| p.suppressed);
            r.insert(
                key.to_owned(),
                Refusal {
                    reason: reason.to_owned(),
                    at: now,
                    suppressed: 0,
                },
            );
            suppressed
        };
        let event = if suppressed > 0 {
            event.detail("repeats_not_recorded", suppressed.to_string())
        } else {
            event
        };
        self.record(event).await;
    }
}

/// The event of a peer: actor `wardend`, subject the peer's node id.
fn peer_event(kind: Kind, node: &str, outcome: Outcome) -> Event {
    Event::new(now_ms(), kind, "wardend", node, outcome)
}

/// Dial `peer` until it leaves the policy or the service stops: connect, run the session,
/// back off (200 ms doubling to 5 s; back to 200 ms after a session that was attested).
async fn dial_loop(inner: Arc<Inner>, peer: Arc<Peer>) {
    let mut backoff = BACKOFF_MIN;
    let mut generation = peer.generation.subscribe();
    loop {
        if peer.retired.load(Ordering::Relaxed) || *inner.stop.borrow() {
            break;
        }
        let snap = inner.snapshot();
        let address = snap
            .policy
            .as_ref()
            .and_then(|a| inner.address_of(&a.policy, &peer.node));
        let ended = match address {
            Some(address) => {
                let gen = *generation.borrow_and_update();
                let _running = peer.running.lock().await;
                conn::dial(&inner, &peer, address, gen).await
            }
            None => conn::Ended::default(),
        };
        if ended.attested {
            backoff = BACKOFF_MIN;
        }
        let pause = backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = generation.changed() => {}
        }
    }
    tracing::debug!(peer = %peer.node, "peering: dialer stopped");
}

#[cfg(test)]
mod tests {
    #[test]
    fn states_have_names() {
        for s in super::PeerState::ALL {
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::String(s.as_str().to_owned()))
            );
        }
    }
}
