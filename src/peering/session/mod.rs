//! One control-channel session with one peer, sans-I/O: messages, completions and `now` in,
//! [`Action`]s out. The driver (`super::conn`) does the TLS, the TPM, the vault and the tunnel
//! and reports back; nothing here blocks, sleeps or reads a clock.
//!
//! ```text
//!  Hello ──peer's Hello──► Attesting ──we verified them ∧ they verified us──► Attested
//!   │ wrong node, no reference values,     │ refused either way, timeout        │ re-attestation refused or
//!   │ anything but Hello                   ▼                                    │ unanswered, silence, violation
//!   └──────────────────────────────────► Closed ◄─────────────────────────────────┘
//! ```
//!
//! Only in `Attested` are SAs made. Each direction is driven by its receiver: for each tenant
//! the driver says it holds a key for, the receiver installs inbound SAs for the next epoch and
//! offers them; the sender installs outbound SAs on the offer. Rekey is make-before-break: a
//! new epoch is installed and offered before the previous inbound SA is removed, `grace`
//! later. Epochs count up per tenant for the whole session (never reused with the same channel
//! secret), and a sender refuses an offer that does not move the epoch forward.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use warden_attest::binding::Nonce;
use warden_attest::Evidence;

use super::frame::{truncate, Message, MAX_REASON};

/// Answered challenges must be at least this far apart (a peer cannot keep the TPM busy).
pub const MIN_CHALLENGE_SPACING: Duration = Duration::from_millis(500);
/// A receiver rekeys a tenant at most this often on request.
pub const MIN_REKEY_SPACING: Duration = Duration::from_millis(50);
/// After a failed install (inbound) or offer (outbound), try again this much later.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The session's clocks (docs/peering.md, "Configuration").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub keepalive: Duration,
    pub peer_timeout: Duration,
    pub reattest_interval: Duration,
    pub rekey_interval: Duration,
    pub grace: Duration,
    /// Hello to attested, both ways.
    pub handshake: Duration,
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Hello,
    Attesting,
    Attested,
    Closed,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Close {
    /// This side refused the peer before it was attested: identity, missing reference
    /// values, evidence that failed, a protocol violation. Audited as `peer.refused`.
    Refused(String),
    /// The peer refused this side's evidence at the first attestation.
    RefusedByPeer(String),
    /// A re-attestation of an attested peer failed or went unanswered, either way.
    /// Audited as `peer.attestation-failed`.
    AttestationFailed(String),
    /// The channel failed: silence, a protocol violation after attestation, or a local
    /// failure. Audited as `peer.lost` when the peer had been attested.
    Lost(String),
}

impl Close {
    /// What to tell the peer before closing, after the refusal is recorded: a negative
    /// verdict when this side refused it.
    pub fn verdict(&self) -> Option<Message> {
        match self {
            Close::Refused(r) | Close::AttestationFailed(r) => Some(Message::Verdict {
                ok: false,
                reason: truncate(r, MAX_REASON),
            }),
            Close::RefusedByPeer(_) | Close::Lost(_) => None,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Close::Refused(r)
            | Close::RefusedByPeer(r)
            | Close::AttestationFailed(r)
            | Close::Lost(r) => r,
        }
    }
}

/// Proof that both sides of the session verified each other: only this module makes it, only
/// in `Attested`, and deriving SA keys takes it.
#[derive(Debug)]
pub struct MutuallyAttested(());

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    Send(Message),
    /// Collect evidence for the peer's challenge (bound to the channel exporter for `nonce`,
    /// quoting `pcrs`) and report it with [`Session::evidence_ready`].
    Attest {
        nonce: Nonce,
        pcrs: Vec<u8>,
    },
    /// Appraise the peer's evidence for our challenge `nonce`; report with
    /// [`Session::verified`]. `first`: the first attestation of this session.
    Verify {
        evidence: Box<Evidence>,
        nonce: Nonce,
        first: bool,
    },
    /// Derive keys for the peer's `peer_workers` workers from version `key_version` of the
    /// tenant key, install them inbound, and report with [`Session::inbound_installed`] or
    /// [`Session::inbound_failed`].
    InstallInbound {
        tenant: String,
        epoch: u64,
        key_version: u32,
        peer_workers: u16,
        proof: MutuallyAttested,
    },
    /// Derive keys for this node's workers and install them outbound (replacing the previous
    /// ones); report with [`Session::outbound_installed`] or [`Session::outbound_failed`].
    InstallOutbound {
        tenant: String,
        epoch: u64,
        key_version: u32,
        spi_base: u32,
        proof: MutuallyAttested,
    },
    RemoveInbound {
        tenant: String,
        spi_base: u32,
    },
    RemoveOutbound {
        tenant: String,
    },
    /// Both directions attested for the first time.
    Attested,
    Close(Close),
}

#[derive(Clone, Copy, Debug)]
struct InboundSa {
    epoch: u64,
    spi_base: u32,
    key_version: u32,
    installed: Instant,
    rekey_requested: bool,
}

#[derive(Clone, Copy, Debug)]
struct OutboundSa {
    epoch: u64,
    rekey_requested: bool,
}

/// The state of one session.
#[derive(Debug)]
pub struct Session {
    local: String,
    peer: String,
    workers: u16,
    policy_version: u64,
    timers: Timers,
    started: Instant,
    phase: Phase,
    peer_workers: u16,
    peer_policy_version: u64,
    /// The PCRs to challenge the peer for; `None`: the policy has no reference values for it.
    reference_pcrs: Option<Vec<u8>>,

    // This side as verifier.
    challenge: Option<(Nonce, Instant)>,
    verifying: bool,
    peer_ok: bool,
    next_challenge: Instant,
    // This side as attester.
    answering: bool,
    awaiting_verdict: bool,
    last_challenge_in: Option<Instant>,
    we_ok: bool,
    // Liveness.
    last_heard: Instant,
    next_ping: Instant,

    // Receiver: inbound SAs by tenant.
    inbound: BTreeMap<String, InboundSa>,
    installing: BTreeSet<String>,
    install_retry: BTreeMap<String, Instant>,
    epochs: BTreeMap<String, u64>,
    retiring: Vec<(Instant, String, u32)>,
    // Sender: outbound SAs by tenant.
    outbound: BTreeMap<String, OutboundSa>,
    offered: BTreeMap<String, u64>,
    /// Offers that could not be taken: when to ask again, and the key version they needed
    /// (asked again at once when this side gets it).
    offer_retry: BTreeMap<String, (Instant, u32)>,
    /// Key versions: the peer's, from its last `keys` message (`None`: none yet), and the
    /// last this side announced.
    peer_keys: Option<BTreeMap<String, u32>>,
    announced_keys: Option<BTreeMap<String, u32>>,
}

impl Session {
    /// A session of `local` (with `workers` sending workers and policy `policy_version` in
    /// force) with `peer`. Call [`Session::start`] first.
    pub fn new(
        local: &str,
        peer: &str,
        workers: u16,
        policy_version: u64,
        reference_pcrs: Option<Vec<u8>>,
        timers: Timers,
        now: Instant,
    ) -> Session {
        Session {
            local: local.to_owned(),
            peer: peer.to_owned(),
            workers,
            policy_version,
            timers,
            started: now,
            phase: Phase::Hello,
            peer_workers: 0,
            peer_policy_version: 0,
            reference_pcrs,
            challenge: None,
            verifying: false,
            peer_ok: false,
            next_challenge: now,
            answering: false,
            awaiting_verdict: false,
            last_challenge_in: None,
            we_ok: false,
            last_heard: now,
            next_ping: now + timers.keepalive,
            inbound: BTreeMap::new(),
            installing: BTreeSet::new(),
            install_retry: BTreeMap::new(),
            epochs: BTreeMap::new(),
            retiring: Vec::new(),
            outbound: BTreeMap::new(),
            offered: BTreeMap::new(),
            offer_retry: BTreeMap::new(),
            peer_keys: None,
            announced_keys: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The peer's sending workers (from its Hello; 0 before).
    pub fn peer_workers(&self) -> u16 {
        self.peer_workers
    }

    /// The policy version the peer announced, and after each appraisal the attested one.
    pub fn peer_policy_version(&self) -> u64 {
        self.peer_policy_version
    }

    /// The reference values changed (a new policy): later challenges quote these PCRs.
    pub fn set_reference_pcrs(&mut self, pcrs: Option<Vec<u8>>) {
        self.reference_pcrs = pcrs;
    }

    /// The peer's attested policy version, after an appraisal.
    pub fn set_peer_policy_version(&mut self, version: u64) {
        self.peer_policy_version = version;
    }

    /// The first message: this side's Hello.
    pub fn start(&mut self) -> Vec<Action> {
        vec![Action::Send(Message::Hello {
            node: self.local.clone(),
            workers: self.workers,
            policy_version: self.policy_version,
        })]
    }

    fn close(&mut self, why: Close) -> Vec<Action> {
        self.phase = Phase::Closed;
        vec![Action::Close(why)]
    }

    fn violation(&mut self, what: String) -> Vec<Action> {
        let why = format!("protocol violation: {what}");
        if self.phase == Phase::Attested {
            self.close(Close::Lost(why))
        } else {
            self.close(Close::Refused(why))
        }
    }

    fn challenge(&mut self, now: Instant) -> Vec<Action> {
        let Some(pcrs) = self.reference_pcrs.clone() else {
            let why = format!(
                "the policy in force has no reference values for node {:?}: it cannot be \
                 attested, so it is refused (fail closed)",
                self.peer
            );
            return if self.phase == Phase::Attested {
                self.close(Close::AttestationFailed(why))
            } else {
                self.close(Close::Refused(why))
            };
        };
        let nonce = match Nonce::random() {
            Ok(n) => n,
            Err(e) => return self.close(Close::Lost(format!("no challenge nonce: {e}"))),
        };
        let message = Message::Challenge {
            nonce: nonce.as_bytes().to_vec(),
            pcrs,
        };
        self.challenge = Some((nonce, now));
        self.next_challenge = now + self.timers.reattest_interval;
        vec![Action::Send(message)]
    }

    /// A message from the peer.
    pub fn on_message(&mut self, message: Message, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.last_heard = now;
        if self.phase == Phase::Hello {
            return match message {
                Message::Hello {
                    node,
                    workers,
                    policy_version,
                } => {
                    if node != self.peer {
                        return self.close(Close::Refused(format!(
                            "the peer says it is {node:?}, but this channel is to {:?}",
                            self.peer
                        )));
                    }
                    self.peer_workers = workers;
                    self.peer_policy_version = policy_version;
                    self.phase = Phase::Attesting;
                    self.challenge(now)
                }
                // An acceptor that refuses the dialer's identity says why before closing.
                Message::Verdict { ok: false, reason } => self.close(Close::RefusedByPeer(
                    format!("the peer refused this appliance: {reason}"),
                )),
                other => self.violation(format!("{} before hello", other.name())),
            };
        }
        let attested = self.phase == Phase::Attested;
        match message {
            Message::Ping {} => vec![Action::Send(Message::Pong {})],
            Message::Pong {} => Vec::new(),
            Message::Hello { .. } => self.violation("a second hello".into()),
            Message::Challenge { nonce, pcrs } => {
                if self.answering || self.awaiting_verdict {
                    return self
                        .violation("a challenge before the previous one was settled".into());
                }
                if self
                    .last_challenge_in
                    .is_some_and(|t| now.saturating_duration_since(t) < MIN_CHALLENGE_SPACING)
                {
                    return self.violation(format!(
                        "challenges less than {} ms apart",
                        MIN_CHALLENGE_SPACING.as_millis()
                    ));
                }
                let nonce = match Nonce::try_from(nonce.as_slice()) {
                    Ok(n) => n,
                    Err(e) => return self.violation(e.to_string()),
                };
                self.answering = true;
                self.last_challenge_in = Some(now);
                vec![Action::Attest { nonce, pcrs }]
            }
            Message::Evidence { evidence } => match self.challenge.take() {
                Some((nonce, _)) if !self.verifying => {
                    self.verifying = true;
                    vec![Action::Verify {
                        evidence,
                        nonce,
                        first: !attested,
                    }]
                }
                _ => self.violation("evidence that was not asked for".into()),
            },
            Message::Verdict { ok, reason } => {
                if !self.awaiting_verdict {
                    return self.violation("a verdict on evidence that was not sent".into());
                }
                self.awaiting_verdict = false;
                match (ok, attested) {
                    (false, false) => self.close(Close::RefusedByPeer(format!(
                        "the peer refused this appliance's evidence: {reason}"
                    ))),
                    (false, true) => self.close(Close::AttestationFailed(format!(
                        "the peer refused this appliance's evidence: {reason}"
                    ))),
                    (true, false) => {
                        self.we_ok = true;
                        self.maybe_attested(now)
                    }
                    (true, true) => Vec::new(),
                }
            }
            Message::Offer { .. }
            | Message::Keys { .. }
            | Message::RekeyRequest { .. }
            | Message::Withdraw { .. }
                if !attested =>
            {
                self.violation(format!(
                    "{} before both sides were attested",
                    message.name()
                ))
            }
            Message::Offer {
                tenant,
                epoch,
                key_version,
                spi_base,
                workers,
            } => {
                if workers != self.workers {
                    return self.violation(format!(
                        "an offer for {workers} workers; this appliance announced {}",
                        self.workers
                    ));
                }
                let last = self.offered.get(&tenant).copied().unwrap_or(0);
                if epoch <= last {
                    return self.violation(format!(
                        "an offer for tenant {tenant:?} in epoch {epoch}, not after epoch {last} \
                         (keys are never reused)"
                    ));
                }
                self.offered.insert(tenant.clone(), epoch);
                vec![Action::InstallOutbound {
                    tenant,
                    epoch,
                    key_version,
                    spi_base,
                    proof: MutuallyAttested(()),
                }]
            }
            Message::Keys { versions } => {
                // Acted on at the next tick (the driver ticks at once).
                self.peer_keys = Some(versions);
                Vec::new()
            }
            Message::RekeyRequest { tenant } => {
                if let Some(sa) = self.inbound.get_mut(&tenant) {
                    sa.rekey_requested = true;
                }
                Vec::new()
            }
            Message::Withdraw { tenant } => {
                self.offer_retry.remove(&tenant);
                match self.outbound.remove(&tenant) {
                    Some(_) => vec![Action::RemoveOutbound { tenant }],
                    None => Vec::new(),
                }
            }
        }
    }

    fn maybe_attested(&mut self, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Attesting && self.peer_ok && self.we_ok {
            self.phase = Phase::Attested;
            self.next_challenge = now + self.timers.reattest_interval;
            vec![Action::Attested]
        } else {
            Vec::new()
        }
    }

    /// The evidence for the peer's challenge, or why there is none.
    pub fn evidence_ready(&mut self, evidence: Result<Evidence, String>) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.answering = false;
        match evidence {
            Ok(e) => {
                self.awaiting_verdict = true;
                vec![Action::Send(Message::Evidence {
                    evidence: Box::new(e),
                })]
            }
            Err(e) => self.close(Close::Lost(format!(
                "this appliance could not produce evidence: {e}"
            ))),
        }
    }

    /// The appraisal of the peer's evidence: `Ok(attested policy version)` or the failures.
    pub fn verified(&mut self, result: Result<u64, String>, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.verifying = false;
        match result {
            Ok(policy_version) => {
                self.peer_policy_version = policy_version;
                let mut actions = vec![Action::Send(Message::Verdict {
                    ok: true,
                    reason: String::new(),
                })];
                if self.phase == Phase::Attesting {
                    self.peer_ok = true;
                    actions.extend(self.maybe_attested(now));
                }
                actions
            }
            // The driver tells the peer (`Close::verdict`) after recording the refusal.
            Err(why) => {
                if self.phase == Phase::Attested {
                    self.close(Close::AttestationFailed(why))
                } else {
                    self.close(Close::Refused(why))
                }
            }
        }
    }

    /// The inbound SAs of `tenant` for `epoch` are in place with `spi_base`: offer them, and
    /// retire the previous ones after the grace period.
    pub fn inbound_installed(
        &mut self,
        tenant: &str,
        epoch: u64,
        key_version: u32,
        spi_base: u32,
        now: Instant,
    ) -> Vec<Action> {
        self.installing.remove(tenant);
        self.install_retry.remove(tenant);
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        let previous = self.inbound.insert(
            tenant.to_owned(),
            InboundSa {
                epoch,
                spi_base,
                key_version,
                installed: now,
                rekey_requested: false,
            },
        );
        if let Some(old) = previous {
            self.retiring
                .push((now + self.timers.grace, tenant.to_owned(), old.spi_base));
        }
        vec![Action::Send(Message::Offer {
            tenant: tenant.to_owned(),
            epoch,
            key_version,
            spi_base,
            workers: self.peer_workers,
        })]
    }

    /// Installing inbound SAs for `tenant` failed; the previous ones (if any) stay.
    pub fn inbound_failed(&mut self, tenant: &str, now: Instant) {
        self.installing.remove(tenant);
        self.install_retry
            .insert(tenant.to_owned(), now + RETRY_AFTER);
    }

    /// The outbound SAs of `tenant` for `epoch` are in place.
    pub fn outbound_installed(&mut self, tenant: &str, epoch: u64) {
        self.offer_retry.remove(tenant);
        self.outbound.insert(
            tenant.to_owned(),
            OutboundSa {
                epoch,
                rekey_requested: false,
            },
        );
    }

    /// An offer for `tenant` under `key_version` could not be taken; ask for another one
    /// [`RETRY_AFTER`] later, or as soon as this side holds that key version (a tenant that
    /// rotates puts the new version on one appliance, then the other: the one that gets it
    /// first offers it), whichever comes first.
    pub fn outbound_failed(&mut self, tenant: &str, key_version: u32, now: Instant) {
        self.offer_retry
            .insert(tenant.to_owned(), (now + RETRY_AFTER, key_version));
    }

    /// Time passes. `keys`: the tenants this side holds a usable east-west key for, with the
    /// current version (both directions are keyed only for these); `rekey_wanted`: tenants
    /// whose outbound SAs to this peer reached a soft limit, with the epoch of those SAs. A
    /// wish about an epoch already replaced is stale (the snapshot it came from predates the
    /// new SAs) and is ignored: answering it would spend this epoch's one request early.
    pub fn tick(
        &mut self,
        now: Instant,
        keys: &BTreeMap<String, u32>,
        rekey_wanted: &[(String, u64)],
    ) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        let since_heard = now.saturating_duration_since(self.last_heard);
        if since_heard > self.timers.peer_timeout {
            return self.close(Close::Lost(format!(
                "nothing heard from the peer for {} ms (peer_timeout)",
                since_heard.as_millis()
            )));
        }
        if self.phase != Phase::Attested
            && now.saturating_duration_since(self.started) > self.timers.handshake
        {
            return self.close(Close::Lost(format!(
                "attestation did not complete within {} s",
                self.timers.handshake.as_secs()
            )));
        }
        let mut actions = Vec::new();
        if now >= self.next_ping {
            actions.push(Action::Send(Message::Ping {}));
            self.next_ping = now + self.timers.keepalive;
        }
        if self.phase != Phase::Attested {
            return actions;
        }

        // Re-attestation: one challenge at a time, answered within the interval.
        match &self.challenge {
            Some((_, sent))
                if now.saturating_duration_since(*sent) > self.timers.reattest_interval =>
            {
                let why = format!(
                    "no evidence within {} ms of the re-attestation challenge",
                    self.timers.reattest_interval.as_millis()
                );
                actions.extend(self.close(Close::AttestationFailed(why)));
                return actions;
            }
            None if !self.verifying && now >= self.next_challenge => {
                actions.extend(self.challenge(now));
                if self.phase == Phase::Closed {
                    return actions;
                }
            }
            _ => {}
        }

        // Announce this side's key versions when they changed (first: once attested).
        if self.announced_keys.as_ref() != Some(keys) {
            self.announced_keys = Some(keys.clone());
            actions.push(Action::Send(Message::Keys {
                versions: keys.clone(),
            }));
        }

        // Receiver: retire SAs past their grace, withdraw tenants without a key, install
        // missing ones, rekey on request, on age and on a new key version. SAs are keyed
        // with the older of this side's version and the peer's: never a version the peer
        // does not hold yet (a tenant rotating puts the new version on one appliance, then
        // the other), and not before the peer has said which it holds.
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(at, _, _)| now >= *at);
        self.retiring = keep;
        for (_, tenant, spi_base) in due {
            actions.push(Action::RemoveInbound { tenant, spi_base });
        }
        let gone: Vec<String> = self
            .inbound
            .keys()
            .filter(|t| !keys.contains_key(*t))
            .cloned()
            .collect();
        for tenant in gone {
            if let Some(sa) = self.inbound.remove(&tenant) {
                actions.push(Action::RemoveInbound {
                    tenant: tenant.clone(),
                    spi_base: sa.spi_base,
                });
                actions.push(Action::Send(Message::Withdraw { tenant }));
            }
        }
        for (tenant, local) in keys {
            let Some(peer) = self.peer_keys.as_ref().and_then(|p| p.get(tenant)) else {
                continue;
            };
            let version = (*local).min(*peer);
            if self.installing.contains(tenant)
                || self.install_retry.get(tenant).is_some_and(|at| now < *at)
            {
                continue;
            }
            let due = match self.inbound.get(tenant) {
                None => true,
                Some(sa) => {
                    let age = now.saturating_duration_since(sa.installed);
                    sa.key_version != version
                        || age >= self.timers.rekey_interval
                        || (sa.rekey_requested && age >= MIN_REKEY_SPACING)
                }
            };
            if due {
                let epoch = self.epochs.get(tenant).copied().unwrap_or(0) + 1;
                self.epochs.insert(tenant.clone(), epoch);
                self.installing.insert(tenant.clone());
                actions.push(Action::InstallInbound {
                    tenant: tenant.clone(),
                    epoch,
                    key_version: version,
                    peer_workers: self.peer_workers,
                    proof: MutuallyAttested(()),
                });
            }
        }

        // Sender: stop sending for tenants without a key; ask once per epoch for a rekey;
        // ask again for offers that could not be taken.
        let gone: Vec<String> = self
            .outbound
            .keys()
            .filter(|t| !keys.contains_key(*t))
            .cloned()
            .collect();
        for tenant in gone {
            self.outbound.remove(&tenant);
            actions.push(Action::RemoveOutbound { tenant });
        }
        for (tenant, epoch) in rekey_wanted {
            if let Some(sa) = self.outbound.get_mut(tenant) {
                if sa.epoch == *epoch && !sa.rekey_requested {
                    sa.rekey_requested = true;
                    actions.push(Action::Send(Message::RekeyRequest {
                        tenant: tenant.clone(),
                    }));
                }
            }
        }
        for (tenant, (at, needed)) in self.offer_retry.iter_mut() {
            let Some(held) = keys.get(tenant) else {
                continue;
            };
            if now >= *at || *held >= *needed {
                // From now on only the clock retries, should this offer fail too.
                *at = now + RETRY_AFTER;
                *needed = u32::MAX;
                actions.push(Action::Send(Message::RekeyRequest {
                    tenant: tenant.clone(),
                }));
            }
        }
        actions
    }

    /// The epoch of the newest inbound SAs of `tenant` this session installed.
    pub fn inbound_epoch(&self, tenant: &str) -> Option<u64> {
        self.inbound.get(tenant).map(|i| i.epoch)
    }

    /// The epoch of the outbound SAs of `tenant` this session installed.
    pub fn outbound_epoch(&self, tenant: &str) -> Option<u64> {
        self.outbound.get(tenant).map(|o| o.epoch)
    }
}

#[cfg(test)]
mod tests;
