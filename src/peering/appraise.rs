//! Appraisal of a peer's evidence on the control channel (pure: evidence, the channel
//! binding and the reference values in; a proof or the failures out).
//!
//! The evidence must be bound (quote `extraData`, docs/attestation.md "Binding") to
//! `(challenge nonce, "warden/peer-channel/v1", TLS exporter of this session)`, so it cannot
//! be replayed from another challenge or relayed from another TLS session, and must meet the
//! reference values the policy in force gives for that node.
//!
//! Off-spec (docs/peering.md, "Attestation"): the reference values live inside the policy, and
//! every apply measures the policy into the appliance PCR (`policy v<N> sha256:<digest>`). A
//! policy cannot list its own digest, so `policy` measurements are allowed here by their form,
//! and the newest one's version is reported (and, at the first attestation, must be the
//! version the peer announced in Hello). Every other measurement must be listed exactly.

use warden_attest::applog::ApplianceEvent;
use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::reference::AllowedApplianceEvent;
use warden_attest::tpm2::ClockInfo;
use warden_attest::verify::{self, Expected, Verified};
use warden_attest::{Evidence, ReferenceValues};

/// TLS exporter label of the attestation binding (RFC 8446 §7.5); the context is the nonce.
pub const ATTEST_LABEL: &[u8] = b"EXPORTER-warden-peer-attest";
/// TLS exporter label of the channel secret the SA keys are derived from; no context.
pub const KEYS_LABEL: &[u8] = b"EXPORTER-warden-esp-keys";
/// The appliance event kind of a policy measurement (`crate::policy::EVENT_POLICY`).
pub const POLICY_EVENT: &str = "policy";

/// A peer whose evidence passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerVerified {
    pub verified: Verified,
    /// The version of the newest policy the peer measured (0: none).
    pub policy_version: u64,
}

/// The version in a policy measurement's detail, `v<version> sha256:<64 hex digits>`.
pub fn policy_event_version(detail: &str) -> Option<u64> {
    let (version, digest) = detail.strip_prefix('v')?.split_once(' ')?;
    let hex = digest.strip_prefix("sha256:")?;
    let well_formed = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

/// The version of the newest well-formed policy measurement in `log` (0 when there is none).
pub fn measured_policy_version(log: &[ApplianceEvent]) -> u64 {
    log.iter()
        .rev()
        .filter(|e| e.kind == POLICY_EVENT)
        .find_map(|e| policy_event_version(&e.detail))
        .unwrap_or(0)
}

/// Verify `evidence` for the challenge `nonce` on the channel whose attestation exporter for
/// that nonce is `channel_binding`. `announced_policy`: the version from the peer's Hello,
/// checked at the first attestation of a session. Failures are `[check] message` strings.
pub fn appraise(
    evidence: &Evidence,
    nonce: Nonce,
    channel_binding: &[u8; 32],
    reference: &ReferenceValues,
    previous: Option<ClockInfo>,
    announced_policy: Option<u64>,
) -> Result<PeerVerified, Vec<String>> {
    let mut reference = reference.clone();
    for e in &evidence.appliance_log {
        if e.kind == POLICY_EVENT && policy_event_version(&e.detail).is_some() {
            reference.appliance_events.insert(AllowedApplianceEvent {
                kind: e.kind.clone(),
                detail: e.detail.clone(),
            });
        }
    }
    let verified = verify::verify(
        evidence,
        Expected {
            // The nonce is the one this side sent on this channel, and the driver redeems it
            // once: the session keeps at most one outstanding challenge and forgets it here.
            nonce: FreshNonce::issued_just_now(nonce),
            purpose: purpose::PEER_CHANNEL,
            bound_key: channel_binding,
            reference: &reference,
            previous,
        },
    )
    .map_err(|r| {
        r.failures
            .iter()
            .map(|f| format!("[{}] {f}", f.check().name()))
            .collect::<Vec<_>>()
    })?;
    let policy_version = measured_policy_version(&evidence.appliance_log);
    if let Some(announced) = announced_policy {
        if announced != policy_version {
            return Err(vec![format!(
                "[policy] the peer announced policy version {announced} but its attested \
                 measurements say {policy_version}"
            )]);
        }
    }
    Ok(PeerVerified {
        verified,
        policy_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, detail: &str) -> ApplianceEvent {
        ApplianceEvent {
            kind: kind.into(),
            detail: detail.into(),
            digest: String::new(),
        }
    }

    #[test]
    fn policy_details_are_parsed_strictly() {
        let digest = "ab".repeat(32);
        assert_eq!(
            policy_event_version(&format!("v12 sha256:{digest}")),
            Some(12)
        );
        for bad in [
            format!("12 sha256:{digest}"),
            format!("v sha256:{digest}"),
            format!("v1x sha256:{digest}"),
            format!("v1 sha1:{digest}"),
            format!("v1 sha256:{}", "AB".repeat(32)),
            format!("v1 sha256:{}", "ab".repeat(31)),
            format!("v1  sha256:{digest}"),
            "v99999999999999999999999 sha256:00".into(),
            String::new(),
        ] {
            assert_eq!(policy_event_version(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_newest_policy_measurement_counts() {
        let d = "00".repeat(32);
        let log = [
            event("wardend-binary", "sha256:11"),
            event("policy", &format!("v3 sha256:{d}")),
            event("policy", &format!("v5 sha256:{d}")),
            event("policy", "garbage"),
            event("result-key", "es256:x.y"),
        ];
        assert_eq!(measured_policy_version(&log), 5);
        assert_eq!(measured_policy_version(&log[..2]), 3);
        assert_eq!(measured_policy_version(&log[..1]), 0);
    }
}
