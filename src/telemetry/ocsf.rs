//! OCSF (Open Cybersecurity Schema Framework 1.1) Network Activity records (class 4001,
//! activity 6 "Traffic") for flow records, one JSON object per line.

use serde_json::{json, Value};

use super::ExportRecord;

pub const CLASS_UID: u32 = 4001;
pub const CATEGORY_UID: u32 = 4;
/// Activity 6: Traffic (a report of network traffic).
pub const ACTIVITY_ID: u32 = 6;

fn protocol_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "ipv6-icmp",
        _ => "other",
    }
}

/// The OCSF record of one flow record, seen by appliance `node`.
pub fn record(r: &ExportRecord, node: &str) -> Value {
    let (disposition_id, disposition) = if r.reason.is_none() {
        (1, "Allowed")
    } else {
        (2, "Blocked")
    };
    json!({
        "class_uid": CLASS_UID,
        "class_name": "Network Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Network Activity",
        "activity_id": ACTIVITY_ID,
        "activity_name": "Traffic",
        "type_uid": CLASS_UID * 100 + ACTIVITY_ID,
        "severity_id": 1,
        "severity": "Informational",
        "time": r.last_ms,
        "start_time": r.first_ms,
        "end_time": r.last_ms,
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "Warden", "vendor_name": "Warden" },
            "log_name": "flows",
        },
        "device": { "hostname": node },
        "src_endpoint": { "ip": r.src.to_string(), "port": r.src_port },
        "dst_endpoint": { "ip": r.dst.to_string(), "port": r.dst_port },
        "connection_info": {
            "protocol_num": r.proto,
            "protocol_name": protocol_name(r.proto),
            // East-west traffic between nodes of one cluster.
            "direction_id": 3,
            "direction": "Lateral",
        },
        "traffic": { "packets": r.packets, "bytes": r.bytes },
        "disposition_id": disposition_id,
        "disposition": disposition,
        "status_detail": r.reason,
        "unmapped": {
            "tenant": r.tenant,
            "src_segment": r.src_segment,
            "dst_segment": r.dst_segment,
            "node_direction": if r.outbound { "out" } else { "in" },
            "sampling_interval": r.sampling,
        },
    })
}
