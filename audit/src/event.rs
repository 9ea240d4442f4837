//! The typed security events the audit log records. The stored leaf is the event's JSON as
//! serialized here (fields in declaration order); consumers hash exactly the bytes they are
//! served, never a re-serialization.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Limits on what one event may carry (an event is at most [`crate::store::MAX_ENTRY_BYTES`]).
pub const MAX_FIELD: usize = 256;
pub const MAX_DETAILS: usize = 32;
pub const MAX_DETAIL_BYTES: usize = 4096;

/// What happened. New capabilities add kinds; consumers must accept kinds they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    #[serde(rename = "wardend.start")]
    WardendStart,
    #[serde(rename = "wardend.stop")]
    WardendStop,
    #[serde(rename = "attestation.served")]
    AttestationServed,
    #[serde(rename = "attestation.failed")]
    AttestationFailed,
    #[serde(rename = "appraisal.affirming")]
    AppraisalAffirming,
    #[serde(rename = "appraisal.contraindicated")]
    AppraisalContraindicated,
    #[serde(rename = "appraisal.refused")]
    AppraisalRefused,
    /// A torn tail of the log was cut during recovery.
    #[serde(rename = "audit.tail-cut")]
    AuditTailCut,
    /// The wall clock moved backwards, or jumped, between two events.
    #[serde(rename = "audit.clock-jump")]
    AuditClockJump,
    #[serde(rename = "audit.export-gap")]
    AuditExportGap,
    #[serde(rename = "audit.queue-overflow")]
    AuditQueueOverflow,
    /// An append failed; the operation it recorded was refused.
    #[serde(rename = "audit.append-failed")]
    AuditAppendFailed,
    /// The appliance found its own log inconsistent with what it signed before.
    #[serde(rename = "audit.verify-failed")]
    AuditVerifyFailed,
    #[serde(rename = "admin.action")]
    AdminAction,
    /// A policy was put in force (operator, version, digest, previous version).
    #[serde(rename = "policy.applied")]
    PolicyApplied,
    /// A policy was refused: invalid, not newer, or it failed to apply.
    #[serde(rename = "policy.refused")]
    PolicyRefused,
    /// A policy in force was replaced by the previous one because its apply could not be
    /// completed.
    #[serde(rename = "policy.rolled-back")]
    PolicyRolledBack,
    /// A tenant key (version) was provisioned (never the material).
    #[serde(rename = "key.provisioned")]
    KeyProvisioned,
    /// A provisioning, release or key operation was refused, with the reason.
    #[serde(rename = "key.refused")]
    KeyRefused,
    #[serde(rename = "key.deleted")]
    KeyDeleted,
    #[serde(rename = "key.retired")]
    KeyRetired,
    /// An operator rotated a key: the appliance made the new version.
    #[serde(rename = "key.rotated")]
    KeyRotated,
    #[serde(rename = "key.disabled")]
    KeyDisabled,
    #[serde(rename = "key.enabled")]
    KeyEnabled,
    /// A sealed key did not unseal in the appliance's state.
    #[serde(rename = "key.unseal-failed")]
    KeyUnsealFailed,
    /// A tenant set who may receive a key (release policy).
    #[serde(rename = "key.release-policy")]
    KeyReleasePolicy,
    /// A key was released to an attested workload (bound to the result id and a TTL).
    #[serde(rename = "key.released")]
    KeyReleased,
    /// A peer appliance and this one attested each other on the control channel (peer id,
    /// address, key exchange group, the peer's policy version).
    #[serde(rename = "peer.attested")]
    PeerAttested,
    /// A peer was refused before any SA existed: identity, missing reference values, failed
    /// verification (each failure), or it refused this appliance.
    #[serde(rename = "peer.refused")]
    PeerRefused,
    /// A re-attestation of an attested peer failed or went unanswered: its SAs were removed.
    #[serde(rename = "peer.attestation-failed")]
    PeerAttestationFailed,
    /// The control channel to an attested peer was lost: its SAs were removed.
    #[serde(rename = "peer.lost")]
    PeerLost,
    /// An SA for a tenant could not be made with a peer (e.g. the tenant's east-west key
    /// version is missing here).
    #[serde(rename = "peer.sa-refused")]
    PeerSaRefused,
    /// An operator published update files to the appliance's inbox (file, size).
    #[serde(rename = "update.published")]
    UpdatePublished,
    /// A release passed every check and was written to a slot, to boot on trial next.
    #[serde(rename = "update.staged")]
    UpdateStaged,
    /// An update attempt was refused, with the named reason (expired, threshold, rollback,
    /// below-floor, tampered-image, …) and the detail.
    #[serde(rename = "update.refused")]
    UpdateRefused,
    /// A slot booted (trial or committed), after its measurement was extended.
    #[serde(rename = "update.booted")]
    UpdateBooted,
    /// A slot could not boot (failed trial, bad image, below the floor) and the appliance fell
    /// back to the other slot, or to none.
    #[serde(rename = "update.fallback")]
    UpdateFallback,
    /// A trial slot was marked good and the TPM security floor raised to its SVN.
    #[serde(rename = "update.committed")]
    UpdateCommitted,
}

impl Kind {
    /// The wire name ("attestation.served").
    pub fn name(self) -> &'static str {
        match self {
            Kind::WardendStart => "wardend.start",
            Kind::WardendStop => "wardend.stop",
            Kind::AttestationServed => "attestation.served",
            Kind::AttestationFailed => "attestation.failed",
            Kind::AppraisalAffirming => "appraisal.affirming",
            Kind::AppraisalContraindicated => "appraisal.contraindicated",
            Kind::AppraisalRefused => "appraisal.refused",
            Kind::AuditTailCut => "audit.tail-cut",
            Kind::AuditClockJump => "audit.clock-jump",
            Kind::AuditExportGap => "audit.export-gap",
            Kind::AuditQueueOverflow => "audit.queue-overflow",
            Kind::AuditAppendFailed => "audit.append-failed",
            Kind::AuditVerifyFailed => "audit.verify-failed",
            Kind::AdminAction => "admin.action",
            Kind::PolicyApplied => "policy.applied",
            Kind::PolicyRefused => "policy.refused",
            Kind::PolicyRolledBack => "policy.rolled-back",
            Kind::KeyProvisioned => "key.provisioned",
            Kind::KeyRefused => "key.refused",
            Kind::KeyDeleted => "key.deleted",
            Kind::KeyRetired => "key.retired",
            Kind::KeyRotated => "key.rotated",
            Kind::KeyDisabled => "key.disabled",
            Kind::KeyEnabled => "key.enabled",
            Kind::KeyUnsealFailed => "key.unseal-failed",
            Kind::KeyReleasePolicy => "key.release-policy",
            Kind::KeyReleased => "key.released",
            Kind::PeerAttested => "peer.attested",
            Kind::PeerRefused => "peer.refused",
            Kind::PeerAttestationFailed => "peer.attestation-failed",
            Kind::PeerLost => "peer.lost",
            Kind::PeerSaRefused => "peer.sa-refused",
            Kind::UpdatePublished => "update.published",
            Kind::UpdateStaged => "update.staged",
            Kind::UpdateRefused => "update.refused",
            Kind::UpdateBooted => "update.booted",
            Kind::UpdateFallback => "update.fallback",
            Kind::UpdateCommitted => "update.committed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// One security event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Milliseconds since the Unix epoch (appliance wall clock).
    pub time_ms: i64,
    pub kind: Kind,
    /// Who acted: `wardend`, `tenant:<id>`, `operator:<name>`, `peer:<address>`.
    pub actor: String,
    /// The tenant the event belongs to, if any: tenants see only their own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What was acted on.
    pub subject: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("event field {field} is {len} bytes; the limit is {max}")]
    FieldTooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("event has {count} details; the limit is {MAX_DETAILS}")]
    TooManyDetails { count: usize },
    #[error("stored event does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Event {
    pub fn new(time_ms: i64, kind: Kind, actor: &str, subject: &str, outcome: Outcome) -> Self {
        Event {
            time_ms,
            kind,
            actor: actor.to_owned(),
            tenant: None,
            subject: subject.to_owned(),
            outcome,
            details: BTreeMap::new(),
        }
    }

    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    fn check(&self) -> Result<(), EventError> {
        let long = |field: &str, len: usize, max: usize| EventError::FieldTooLong {
            field: field.to_owned(),
            len,
            max,
        };
        for (field, value) in [("actor", &self.actor), ("subject", &self.subject)] {
            if value.len() > MAX_FIELD {
                return Err(long(field, value.len(), MAX_FIELD));
            }
        }
        if let Some(t) = &self.tenant {
            if t.len() > MAX_FIELD {
                return Err(long("tenant", t.len(), MAX_FIELD));
            }
        }
        if self.details.len() > MAX_DETAILS {
            return Err(EventError::TooManyDetails {
                count: self.details.len(),
            });
        }
        for (k, v) in &self.details {
            if k.len() > MAX_FIELD {
                return Err(long("details key", k.len(), MAX_FIELD));
            }
            if v.len() > MAX_DETAIL_BYTES {
                return Err(long(&format!("details.{k}"), v.len(), MAX_DETAIL_BYTES));
            }
        }
        Ok(())
    }

    /// The bytes stored as the Merkle leaf.
    pub fn to_leaf(&self) -> Result<Vec<u8>, EventError> {
        self.check()?;
        Ok(serde_json::to_vec(self)?)
    }

    /// Decode stored leaf bytes (untrusted: from disk or from the wire).
    pub fn from_leaf(bytes: &[u8]) -> Result<Self, EventError> {
        let e: Event = serde_json::from_slice(bytes)?;
        e.check()?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_round_trips_and_is_stable() {
        let e = Event::new(
            1,
            Kind::AttestationServed,
            "tenant:acme",
            "node-a",
            Outcome::Success,
        )
        .tenant("acme")
        .detail("nonce", "00ff");
        let leaf = e.to_leaf().unwrap();
        assert_eq!(
            String::from_utf8(leaf.clone()).unwrap(),
            r#"{"time_ms":1,"kind":"attestation.served","actor":"tenant:acme","tenant":"acme","subject":"node-a","outcome":"success","details":{"nonce":"00ff"}}"#
        );
        assert_eq!(Event::from_leaf(&leaf).unwrap(), e);
    }

    #[test]
    fn limits_and_unknown_fields_are_refused() {
        let e = Event::new(1, Kind::AdminAction, &"a".repeat(257), "s", Outcome::Denied);
        assert!(e.to_leaf().is_err());
        let mut e = Event::new(1, Kind::AdminAction, "a", "s", Outcome::Denied);
        for i in 0..33 {
            e = e.detail(&i.to_string(), "v");
        }
        assert!(matches!(
            e.to_leaf(),
            Err(EventError::TooManyDetails { .. })
        ));
        assert!(Event::from_leaf(br#"{"time_ms":1,"kind":"admin.action","actor":"a","subject":"s","outcome":"denied","x":1}"#).is_err());
        assert!(Event::from_leaf(b"\xff").is_err());
    }
}
