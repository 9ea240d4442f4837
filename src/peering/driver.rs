//! The driver of one session: runs a [`Session`] against the TPM (evidence), the verifier,
//! the vault (tenant keys), the tunnel (SAs) and the audit log, and shows its state.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use warden_attest::binding::purpose;
use warden_attest::tpm2::Public;
use warden_attest::{Evidence, ReferenceValues};
use warden_audit::event::{Kind, Outcome};
use warden_enforcer::esp::SaKeys;
use warden_enforcer::tunnel::derive_sa_keys;
use warden_keys::KeyKind;
use zeroize::Zeroizing;

use super::appraise::{self, PeerVerified, ATTEST_LABEL, KEYS_LABEL};
use super::channel::{read_loop, write_frame, Channel};
use super::conn::Ended;
use super::frame::{truncate, Message};
use super::session::{Action, Close, MutuallyAttested, Session, Timers};
use super::{lock, peer_event, AttestationStatus, Inner, Peer, PeerState, Snapshot, MAX_DETAIL};
use crate::audit::now_ms;

/// Hello to attested, both ways (the session closes the channel after it).
const HANDSHAKE: Duration = Duration::from_secs(30);
/// The session's clock.
const TICK: Duration = Duration::from_millis(250);

/// The reference values the policy in `snap` gives for `node`; `None` when it gives none.
fn reference_of(snap: &Snapshot, node: &str) -> Option<Result<ReferenceValues, String>> {
    let active = snap.policy.as_ref()?;
    let table = active
        .policy
        .nodes
        .iter()
        .find(|n| n.id == node)?
        .reference
        .as_ref()?;
    Some(
        toml::to_string(table)
            .map_err(|e| e.to_string())
            .and_then(|t| ReferenceValues::from_toml(&t).map_err(|e| e.to_string()))
            .map_err(|e| {
                format!("the policy's reference values for node {node:?} are not valid: {e}")
            }),
    )
}

fn reference_pcrs(snap: &Snapshot, node: &str) -> Option<Vec<u8>> {
    reference_of(snap, node)
        .and_then(Result::ok)
        .map(|r| r.selection())
}

/// Work the driver hands to other tasks and gets back.
enum Job {
    Evidence(Result<Evidence, String>),
    Verified {
        result: Result<PeerVerified, Vec<String>>,
        /// (node, AK name) for the clock check of the next appraisal.
        clock_key: Option<(String, Vec<u8>)>,
    },
}

/// The driver of one session.
struct Run<'a> {
    inner: &'a Arc<Inner>,
    peer: &'a Arc<Peer>,
    channel: Channel,
    /// The channel secret: the TLS exporter `EXPORTER-warden-esp-keys`; never leaves here.
    secret: Zeroizing<[u8; 32]>,
    session: Session,
    jobs: mpsc::Sender<Job>,
    started: Instant,
    attested: bool,
    kx_group: Option<String>,
    address: SocketAddr,
    snapshot: Arc<Snapshot>,
}

fn timers(c: &crate::config::PeeringConfig) -> Timers {
    Timers {
        keepalive: c.keepalive,
        peer_timeout: c.peer_timeout,
        reattest_interval: c.reattest_interval,
        rekey_interval: c.rekey_interval,
        grace: c.grace,
        handshake: HANDSHAKE,
    }
}

/// Run one channel until it closes; remove the peer's SAs, audit, and update the status.
pub(super) async fn run(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    channel: Channel,
    first: Option<Message>,
    generation: u64,
    address: SocketAddr,
    started: Instant,
) -> Ended {
    let kx_group = channel.kx_group();
    tracing::info!(peer = %peer.node, %address, kx_group = kx_group.as_deref().unwrap_or("?"), "peering: TLS 1.3 channel up; attesting");
    peer.set(|s| {
        s.state = PeerState::Attesting;
        s.address = Some(address);
        s.kx_group = kx_group.clone();
        s.handshake_ms = None;
    });
    let secret = match channel.exporter(KEYS_LABEL, None) {
        Ok(s) => s,
        Err(e) => {
            peer.set(|s| {
                s.state = PeerState::Lost;
                s.last_error = Some(e);
            });
            return Ended::default();
        }
    };
    let snapshot = inner.snapshot();
    let policy_version = snapshot.policy.as_ref().map_or(0, |a| a.policy.version);
    let session = Session::new(
        &inner.local,
        &peer.node,
        inner.tunnel.workers(),
        policy_version,
        reference_pcrs(&snapshot, &peer.node),
        timers(&inner.config),
        Instant::now(),
    );
    let (frames_tx, mut frames) = mpsc::channel(16);
    let reader = tokio::spawn(read_loop(
        channel.clone(),
        frames_tx,
        inner.config.peer_timeout + Duration::from_secs(1),
    ));
    let (jobs, mut job_results) = mpsc::channel(4);
    let mut run = Run {
        inner,
        peer,
        channel,
        secret,
        session,
        jobs,
        started,
        attested: false,
        kx_group,
        address,
        snapshot,
    };
    let mut generations = peer.generation.subscribe();
    // A new snapshot (a policy change, a rekey the data plane asked for) is acted on at once.
    let mut snapshots = inner.snapshot.subscribe();
    let mut stop = inner.stop.subscribe();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut queue: VecDeque<Action> = run.session.start().into();
    if let Some(m) = first {
        queue.extend(run.session.on_message(m, Instant::now()));
    }
    let close: Option<Close> = 'session: loop {
        while let Some(action) = queue.pop_front() {
            match run.execute(action).await {
                Ok(more) => queue.extend(more),
                Err(close) => break 'session Some(close),
            }
        }
        tokio::select! {
            f = frames.recv() => match f {
                Some(Ok(m)) => {
                    // A rekey request (or the peer's new key versions) is acted on at once,
                    // not at the next tick: the sender's SA may reach its hard limit within
                    // the tick at line rate.
                    let rekey = matches!(m, Message::RekeyRequest { .. } | Message::Keys { .. });
                    queue.extend(run.session.on_message(m, Instant::now()));
                    if rekey {
                        queue.extend(run.tick());
                    }
                }
                Some(Err(e)) => queue.push_back(Action::Close(Close::Lost(e))),
                None => queue.push_back(Action::Close(Close::Lost("the reader stopped".into()))),
            },
            j = job_results.recv() => if let Some(j) = j {
                queue.extend(run.job_done(j));
            },
            _ = ticker.tick() => queue.extend(run.tick()),
            r = snapshots.changed() => if r.is_ok() {
                queue.extend(run.tick());
            },
            _ = generations.changed() => if *generations.borrow() != generation {
                break 'session None;
            },
            _ = stop.changed() => break 'session None,
        }
    };
    reader.abort();
    run.finish(close).await
}

impl Run<'_> {
    fn keys_and_rekey(&self) -> (std::collections::BTreeMap<String, u32>, Vec<(String, u64)>) {
        (
            self.snapshot.keys.clone(),
            self.snapshot
                .rekey
                .get(&self.peer.node)
                .cloned()
                .unwrap_or_default(),
        )
    }

    fn tick(&mut self) -> Vec<Action> {
        let latest = self.inner.snapshot();
        let digest = |s: &Snapshot| s.policy.as_ref().map(|a| a.policy.digest);
        if digest(&latest) != digest(&self.snapshot) {
            self.session
                .set_reference_pcrs(reference_pcrs(&latest, &self.peer.node));
        }
        self.snapshot = latest;
        let (keys, rekey) = self.keys_and_rekey();
        self.session.tick(Instant::now(), &keys, &rekey)
    }

    fn job_done(&mut self, job: Job) -> Vec<Action> {
        match job {
            Job::Evidence(r) => self.session.evidence_ready(r),
            Job::Verified { result, clock_key } => {
                let now = Instant::now();
                match result {
                    Ok(v) => {
                        if let Some(k) = clock_key {
                            lock(&self.inner.clocks).insert(k, v.verified.clock);
                        }
                        self.peer.set(|s| {
                            s.last_attestation = Some(AttestationStatus {
                                at_ms: now_ms(),
                                ok: true,
                                failures: Vec::new(),
                            });
                            s.policy_version = Some(v.policy_version);
                            s.workers = Some(self.session.peer_workers());
                        });
                        tracing::debug!(peer = %self.peer.node, policy_version = v.policy_version, "peering: the peer's evidence verified");
                        self.session.verified(Ok(v.policy_version), now)
                    }
                    Err(failures) => {
                        self.peer.set(|s| {
                            s.last_attestation = Some(AttestationStatus {
                                at_ms: now_ms(),
                                ok: false,
                                failures: failures.clone(),
                            });
                        });
                        self.session.verified(Err(failures.join("; ")), now)
                    }
                }
            }
        }
    }

    /// Derive SA keys from version `key_version` of the tenant's east-west key: one per
    /// sending worker of `from`. Only for a session in which both sides are attested.
    #[allow(clippy::too_many_arguments)]
    fn derive(
        &self,
        _: &MutuallyAttested,
        tenant: &str,
        key_version: u32,
        from: &str,
        to: &str,
        epoch: u64,
        workers: u16,
    ) -> Result<Vec<SaKeys>, String> {
        let key_id = &self.inner.config.tenant_key;
        let info = self
            .inner
            .vault
            .list(Some(tenant))
            .into_iter()
            .find(|k| &k.key_id == key_id)
            .ok_or_else(|| format!("tenant {tenant:?} has no key {key_id:?} on this appliance"))?;
        if info.kind != KeyKind::EastWest {
            return Err(format!(
                "key {key_id:?} of tenant {tenant:?} is a {} key, not an east-west key",
                info.kind.name()
            ));
        }
        self.inner
            .vault
            .with_version(tenant, key_id, Some(key_version), |_, material| {
                (0..workers)
                    .map(|w| {
                        derive_sa_keys(&self.secret, material.expose(), tenant, from, to, epoch, w)
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| {
                format!("key {key_id:?} version {key_version} of tenant {tenant:?}: {e}")
            })?
    }

    async fn sa_refused(
        &self,
        tenant: &str,
        direction: &str,
        epoch: u64,
        key_version: u32,
        why: &str,
    ) {
        tracing::warn!(peer = %self.peer.node, tenant, direction, epoch, key_version, reason = why, "peering: no SA for a tenant");
        let event = peer_event(Kind::PeerSaRefused, &self.peer.node, Outcome::Denied)
            .tenant(tenant)
            .detail("direction", direction)
            .detail("epoch", epoch.to_string())
            .detail("key_version", key_version.to_string())
            .detail("reason", truncate(why, MAX_DETAIL));
        self.inner
            .record_refusal(
                &format!("sa:{}:{tenant}:{direction}", self.peer.node),
                event,
                why,
            )
            .await;
    }

    async fn execute(&mut self, action: Action) -> Result<Vec<Action>, Close> {
        match action {
            Action::Send(m) => {
                write_frame(&mut self.channel, &m)
                    .await
                    .map_err(Close::Lost)?;
                Ok(Vec::new())
            }
            Action::Attest { nonce, pcrs } => {
                let binding = self
                    .channel
                    .exporter(ATTEST_LABEL, Some(nonce.as_bytes()))
                    .map_err(Close::Lost)?;
                let state = self
                    .inner
                    .api
                    .upgrade()
                    .ok_or_else(|| Close::Lost("wardend is stopping".into()))?;
                let jobs = self.jobs.clone();
                let bound_key = binding.to_vec();
                tokio::spawn(async move {
                    let r = crate::api::collect_evidence(
                        &state,
                        nonce,
                        purpose::PEER_CHANNEL,
                        bound_key,
                        pcrs,
                    )
                    .await
                    .map_err(|e| e.message().to_owned());
                    let _ = jobs.send(Job::Evidence(r)).await;
                });
                Ok(Vec::new())
            }
            Action::Verify {
                evidence,
                nonce,
                first,
            } => {
                let binding = self
                    .channel
                    .exporter(ATTEST_LABEL, Some(nonce.as_bytes()))
                    .map_err(Close::Lost)?;
                let reference = reference_of(&self.inner.snapshot(), &self.peer.node);
                let ak_name = Public::decode(&evidence.ak_public)
                    .ok()
                    .and_then(|p| p.name());
                let clock_key = ak_name.map(|a| (self.peer.node.clone(), a));
                let previous = clock_key
                    .as_ref()
                    .and_then(|k| lock(&self.inner.clocks).get(k).copied());
                let announced = first.then(|| self.session.peer_policy_version());
                let node = self.peer.node.clone();
                let jobs = self.jobs.clone();
                tokio::spawn(async move {
                    let result = match reference {
                        None => Err(vec![format!(
                            "[reference-values] the policy in force has no reference values for \
                             node {node:?} (fail closed)"
                        )]),
                        Some(Err(e)) => Err(vec![format!("[reference-values] {e}")]),
                        Some(Ok(reference)) => tokio::task::spawn_blocking(move || {
                            appraise::appraise(
                                &evidence, nonce, &binding, &reference, previous, announced,
                            )
                        })
                        .await
                        .unwrap_or_else(|_| Err(vec!["the appraisal failed to run".to_owned()])),
                    };
                    let _ = jobs.send(Job::Verified { result, clock_key }).await;
                });
                Ok(Vec::new())
            }
            Action::InstallInbound {
                tenant,
                epoch,
                key_version,
                peer_workers,
                proof,
            } => {
                let installed = self
                    .derive(
                        &proof,
                        &tenant,
                        key_version,
                        &self.peer.node,
                        &self.inner.local,
                        epoch,
                        peer_workers,
                    )
                    .and_then(|keys| {
                        self.inner
                            .tunnel
                            .add_inbound(&self.peer.node, &tenant, epoch, keys)
                            .map_err(|e| e.to_string())
                    });
                let now = Instant::now();
                match installed {
                    Ok(spi_base) => {
                        self.peer
                            .set(|s| s.keyed(&tenant, false, epoch, key_version));
                        tracing::info!(peer = %self.peer.node, %tenant, epoch, key_version, spi_base = format_args!("{spi_base:#x}"), "peering: inbound SAs installed; offering them");
                        Ok(self.session.inbound_installed(
                            &tenant,
                            epoch,
                            key_version,
                            spi_base,
                            now,
                        ))
                    }
                    Err(why) => {
                        self.session.inbound_failed(&tenant, now);
                        self.sa_refused(&tenant, "inbound", epoch, key_version, &why)
                            .await;
                        Ok(Vec::new())
                    }
                }
            }
            Action::InstallOutbound {
                tenant,
                epoch,
                key_version,
                spi_base,
                proof,
            } => {
                let in_policy = self
                    .snapshot
                    .policy
                    .as_ref()
                    .is_some_and(|a| a.policy.tenants.iter().any(|t| t.id == tenant));
                let installed = if in_policy {
                    self.derive(
                        &proof,
                        &tenant,
                        key_version,
                        &self.inner.local,
                        &self.peer.node,
                        epoch,
                        self.inner.tunnel.workers(),
                    )
                    .and_then(|keys| {
                        self.inner
                            .tunnel
                            .set_outbound(
                                &self.peer.node,
                                &tenant,
                                epoch,
                                spi_base,
                                keys,
                                Instant::now(),
                            )
                            .map_err(|e| e.to_string())
                    })
                } else {
                    Err(format!("tenant {tenant:?} is not in the policy in force"))
                };
                match installed {
                    Ok(()) => {
                        self.peer
                            .set(|s| s.keyed(&tenant, true, epoch, key_version));
                        tracing::info!(peer = %self.peer.node, %tenant, epoch, key_version, spi_base = format_args!("{spi_base:#x}"), "peering: outbound SAs installed");
                        self.session.outbound_installed(&tenant, epoch);
                    }
                    Err(why) => {
                        self.session
                            .outbound_failed(&tenant, key_version, Instant::now());
                        self.sa_refused(&tenant, "outbound", epoch, key_version, &why)
                            .await;
                    }
                }
                Ok(Vec::new())
            }
            Action::RemoveInbound { tenant, spi_base } => {
                self.inner.tunnel.remove_inbound(spi_base);
                tracing::info!(peer = %self.peer.node, %tenant, spi_base = format_args!("{spi_base:#x}"), "peering: inbound SAs removed");
                Ok(Vec::new())
            }
            Action::RemoveOutbound { tenant } => {
                self.inner.tunnel.remove_outbound(&self.peer.node, &tenant);
                tracing::info!(peer = %self.peer.node, %tenant, "peering: outbound SAs removed");
                Ok(Vec::new())
            }
            Action::Attested => {
                let handshake_ms =
                    u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let policy_version = self.session.peer_policy_version();
                let workers = self.session.peer_workers();
                let event = peer_event(Kind::PeerAttested, &self.peer.node, Outcome::Success)
                    .detail("address", self.address.to_string())
                    .detail("kx_group", self.kx_group.clone().unwrap_or_default())
                    .detail("policy_version", policy_version.to_string())
                    .detail("handshake_ms", handshake_ms.to_string());
                if !self.inner.record(event).await {
                    // Fail closed: no SA without its audit entry.
                    return Err(Close::Lost("the attestation could not be audited".into()));
                }
                self.attested = true;
                self.peer.set(|s| {
                    s.state = PeerState::Attested;
                    s.handshake_ms = Some(handshake_ms);
                    s.last_error = None;
                    s.workers = Some(workers);
                    s.policy_version = Some(policy_version);
                });
                tracing::info!(
                    peer = %self.peer.node,
                    address = %self.address,
                    kx_group = self.kx_group.as_deref().unwrap_or("?"),
                    handshake_ms,
                    "peering: mutually attested"
                );
                let (keys, rekey) = self.keys_and_rekey();
                Ok(self.session.tick(Instant::now(), &keys, &rekey))
            }
            Action::Close(c) => Err(c),
        }
    }

    /// The channel ended: remove the peer's SAs, audit, show why, tell the peer, close.
    async fn finish(mut self, close: Option<Close>) -> Ended {
        let verdict = close.as_ref().and_then(Close::verdict);
        let ended = self.record_end(close).await;
        if let Some(v) = verdict {
            let _ = write_frame(&mut self.channel, &v).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.channel.shutdown()).await;
        ended
    }

    async fn record_end(&self, close: Option<Close>) -> Ended {
        let node = &self.peer.node;
        let removed = self.inner.tunnel.remove_peer(node);
        let address = self.address.to_string();
        let ended = Ended {
            attested: self.attested,
        };
        let Some(close) = close else {
            tracing::info!(peer = %node, removed, "peering: channel closed (replaced or stopping)");
            self.peer.set(|s| {
                s.state = PeerState::Lost;
                s.last_error = Some("the channel was replaced or the service stopped".into());
            });
            return ended;
        };
        let reason = truncate(close.reason(), MAX_DETAIL);
        let state = match close {
            Close::Lost(_) => PeerState::Lost,
            _ => PeerState::Refused,
        };
        let base = |kind, outcome| {
            peer_event(kind, node, outcome)
                .detail("address", address.clone())
                .detail("reason", reason.clone())
                .detail("sa_groups_removed", removed.to_string())
        };
        match &close {
            Close::Refused(_) => {
                tracing::warn!(peer = %node, %reason, "peering: refused the peer");
                let e =
                    base(Kind::PeerRefused, Outcome::Denied).detail("refused_by", "this appliance");
                self.inner
                    .record_refusal(&format!("session:{node}"), e, &reason)
                    .await;
            }
            Close::RefusedByPeer(_) => {
                tracing::warn!(peer = %node, %reason, "peering: the peer refused this appliance");
                let e = base(Kind::PeerRefused, Outcome::Failure).detail("refused_by", "peer");
                self.inner
                    .record_refusal(&format!("session:{node}"), e, &reason)
                    .await;
            }
            Close::AttestationFailed(_) => {
                tracing::warn!(peer = %node, %reason, removed, "peering: re-attestation failed; SAs removed");
                self.inner
                    .record(base(Kind::PeerAttestationFailed, Outcome::Failure))
                    .await;
            }
            Close::Lost(_) if self.attested => {
                tracing::warn!(peer = %node, %reason, removed, "peering: channel to an attested peer lost; SAs removed");
                self.inner
                    .record(base(Kind::PeerLost, Outcome::Failure))
                    .await;
            }
            Close::Lost(_) => {
                tracing::info!(peer = %node, %reason, "peering: channel closed before attestation");
            }
        }
        // Shown after it is recorded.
        self.peer.set(|s| {
            s.state = state;
            s.last_error = Some(reason);
        });
        ended
    }
}
