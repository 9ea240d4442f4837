//! OCSF-shaped JSON lines for SIEMs (Open Cybersecurity Schema Framework 1.1): each audit entry
//! becomes one event with its class, time, severity, actor and tenant, plus what ties it to the
//! verifiable log: the sequence number (= leaf index), the leaf hash and the signed checkpoint
//! (origin and tree size) that includes it, so a SIEM can ask for the inclusion proof later.

use serde_json::{json, Value};

use crate::event::{Event, Kind, Outcome};
use crate::Hash;

/// OCSF classes used (category 6 "Application Activity", category 2 "Findings").
const APPLICATION_LIFECYCLE: (u32, u32, &str) = (6002, 6, "Application Lifecycle");
const API_ACTIVITY: (u32, u32, &str) = (6003, 6, "API Activity");
const DETECTION_FINDING: (u32, u32, &str) = (2004, 2, "Detection Finding");

/// Where an entry sits in the log.
#[derive(Debug, Clone, Copy)]
pub struct LogPosition<'a> {
    pub seq: u64,
    pub leaf_hash: &'a Hash,
    /// Origin and size of a signed checkpoint that includes the entry (size > seq).
    pub origin: &'a str,
    pub checkpoint_size: u64,
}

/// OCSF severity_id: 1 informational, 3 medium, 4 high.
fn severity(e: &Event) -> (u8, &'static str) {
    match (e.kind, e.outcome) {
        (
            Kind::AuditTailCut
            | Kind::AuditClockJump
            | Kind::AuditExportGap
            | Kind::AuditQueueOverflow
            | Kind::AuditAppendFailed
            | Kind::AuditVerifyFailed,
            _,
        ) => (4, "High"),
        (_, Outcome::Denied | Outcome::Failure) => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

fn class(kind: Kind) -> (u32, u32, &'static str) {
    match kind {
        Kind::WardendStart | Kind::WardendStop => APPLICATION_LIFECYCLE,
        Kind::AuditTailCut
        | Kind::AuditClockJump
        | Kind::AuditExportGap
        | Kind::AuditQueueOverflow
        | Kind::AuditAppendFailed
        | Kind::AuditVerifyFailed => DETECTION_FINDING,
        _ => API_ACTIVITY,
    }
}

/// One OCSF event for an audit entry.
pub fn to_ocsf(e: &Event, at: LogPosition<'_>) -> Value {
    let (class_uid, category_uid, class_name) = class(e.kind);
    let (severity_id, severity_name) = severity(e);
    let status_id = match e.outcome {
        Outcome::Success => 1,
        Outcome::Failure | Outcome::Denied => 2,
    };
    json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "type_uid": u64::from(class_uid) * 100 + 99,
        "activity_id": 99,
        "activity_name": e.kind.name(),
        "time": e.time_ms,
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": status_id,
        "status": match e.outcome { Outcome::Success => "Success", Outcome::Failure => "Failure", Outcome::Denied => "Denied" },
        "message": format!("{} {} {}", e.actor, e.kind.name(), e.subject),
        "actor": { "user": { "name": e.actor } },
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "Warden", "vendor_name": "Warden" },
            "log_name": at.origin,
            "sequence": at.seq,
            "tenant_uid": e.tenant,
        },
        "unmapped": {
            "warden": {
                "seq": at.seq,
                "leaf_hash": hex::encode(at.leaf_hash),
                "checkpoint": { "origin": at.origin, "size": at.checkpoint_size },
                "tenant": e.tenant,
                "subject": e.subject,
                "details": e.details,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_class_severity_actor_tenant_and_log_position() {
        let e = Event::new(
            7,
            Kind::AttestationServed,
            "tenant:acme",
            "node-a",
            Outcome::Success,
        )
        .tenant("acme");
        let leaf = crate::merkle::leaf_hash(&e.to_leaf().unwrap());
        let v = to_ocsf(
            &e,
            LogPosition {
                seq: 3,
                leaf_hash: &leaf,
                origin: "node-a",
                checkpoint_size: 4,
            },
        );
        assert_eq!(v["class_uid"], 6003);
        assert_eq!(v["time"], 7);
        assert_eq!(v["severity_id"], 1);
        assert_eq!(v["actor"]["user"]["name"], "tenant:acme");
        assert_eq!(v["metadata"]["tenant_uid"], "acme");
        assert_eq!(v["unmapped"]["warden"]["seq"], 3);
        assert_eq!(v["unmapped"]["warden"]["leaf_hash"], hex::encode(leaf));
        assert_eq!(v["unmapped"]["warden"]["checkpoint"]["size"], 4);
        let cut = Event::new(
            1,
            Kind::AuditTailCut,
            "wardend",
            "audit-log",
            Outcome::Failure,
        );
        let v = to_ocsf(
            &cut,
            LogPosition {
                seq: 0,
                leaf_hash: &leaf,
                origin: "n",
                checkpoint_size: 1,
            },
        );
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["severity_id"], 4);
    }
}
