//! Flow telemetry on the two-node cluster: node-a records every flow of its data path and
//! exports the records as IPFIX to a collector on its loopback and as OCSF JSON lines. tshark
//! (Wireshark's IPFIX dissector, an independent decoder) reads the IPFIX back from a capture;
//! the records name the allowed acme flow with its packets and bytes, the cross-tenant flow
//! the policy dropped, and globex's flow over its rate limit, each with its drop reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use cluster::{metric_sum, tcp_transfer, Bins, Cluster, Options, SiteLayout, POLICY_SECTION};
use support::capture::{tcpdump_or_skip, Capture};
use support::tools_or_skip;
use warden_testkit::skip_without_netns;

const ACME_A: &str = "203.0.113.1";
const ACME_B: &str = "203.0.113.17";
const GLOBEX_A: &str = "203.0.113.33";
const GLOBEX_B: &str = "203.0.113.49";
const WORKERS: usize = 2;
const IPFIX_PORT: u16 = 4739;

/// acme's TCP to its own segment, globex's UDP, and a packet limit on globex.
const RULES: &str = r#"
[[rule]]
from = "acme-a"
to = "acme-b"
proto = "tcp"
ports = [5001]

[[rule]]
from = "globex-a"
to = "globex-b"
proto = "udp"
ports = [5002]

[[limit]]
tenant = "globex"
packets_per_second = 20
burst_packets = 10
"#;

/// tshark's reading of an IPFIX capture: one map of field → values per flow record.
fn decode(pcap: &[u8]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pcap).unwrap();
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file.path())
        .args([
            "-d",
            &format!("udp.port=={IPFIX_PORT},cflow"),
            "-T",
            "json",
            "--no-duplicate-keys",
        ])
        .output()
        .expect("tshark (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut flows = Vec::new();
    fn walk(v: &serde_json::Value, flows: &mut Vec<serde_json::Map<String, serde_json::Value>>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.contains_key("cflow.srcaddr") || m.contains_key("cflow.srcaddrv6") {
                    flows.push(m.clone());
                }
                for x in m.values() {
                    walk(x, flows);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, flows)),
            _ => {}
        }
    }
    walk(&v, &mut flows);
    flows
}

#[test]
fn flows_are_exported_as_ipfix_and_ocsf_with_their_verdicts() {
    let test = "flows_are_exported_as_ipfix_and_ocsf_with_their_verdicts";
    if skip_without_netns(test) || !tools_or_skip() || !tcpdump_or_skip(test) {
        return;
    }
    let telemetry = format!(
        "\n[telemetry]\nidle_timeout = 1\nactive_timeout = 3\nipfix = \"127.0.0.1:{IPFIX_PORT}\"\n"
    );
    let c = Cluster::boot(&Options {
        bins: Bins {
            wardend: PathBuf::from(env!("CARGO_BIN_EXE_wardend")),
            wardctl: PathBuf::from(env!("CARGO_BIN_EXE_wardctl")),
        },
        workers: WORKERS,
        extra: telemetry + POLICY_SECTION,
        a: SiteLayout::new(&[ACME_A, GLOBEX_A], &["203.0.113.16/28", "203.0.113.48/28"]),
        b: SiteLayout::new(&[ACME_B, GLOBEX_B], &["203.0.113.0/28", "203.0.113.32/28"]),
    });
    c.provision_two_tenants(1, RULES, WORKERS);

    let capture = Capture::start_on(&c.a.ns, "lo", &["udp", "port", &IPFIX_PORT.to_string()]);
    // Allowed: 1 MiB of acme's.
    let data = cluster::payload(1 << 20, b"telemetry");
    let (got, _) = tcp_transfer(&c.a.ns, ACME_A, &c.b.ns, &format!("{ACME_B}:5001"), &data);
    assert!(got == data);
    // Denied by policy: globex -> acme.
    let _ = c.a.ns.run(|| {
        cluster::connect_from(
            format!("{GLOBEX_A}:0").parse().unwrap(),
            format!("{ACME_B}:5001").parse().unwrap(),
            Duration::from_millis(500),
        )
    });
    // Over globex's limit: 200 datagrams at once, 10 pass.
    c.a.ns.run(|| {
        let s = std::net::UdpSocket::bind(format!("{GLOBEX_A}:0")).unwrap();
        for _ in 0..200 {
            let _ = s.send_to(b"flood", format!("{GLOBEX_B}:5002"));
        }
    });
    // Records end 1 s after their last packet and go out within the next second.
    std::thread::sleep(Duration::from_secs(4));
    let flows = decode(&capture.stop());
    eprintln!("{} IPFIX flow records", flows.len());
    let find = |src: &str, dst: &str| -> Vec<&serde_json::Map<String, serde_json::Value>> {
        flows
            .iter()
            .filter(|f| f["cflow.srcaddr"] == src && f["cflow.dstaddr"] == dst)
            .collect()
    };
    let text = |f: &serde_json::Map<String, serde_json::Value>, key: &str| {
        f.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let number = |f: &serde_json::Map<String, serde_json::Value>, key: &str| -> u64 {
        text(f, key).parse().unwrap_or(0)
    };
    // The enterprise fields (tenant, segments, drop reason), as tshark shows them: hex bytes.
    let strings = |f: &serde_json::Map<String, serde_json::Value>| -> Vec<String> {
        let decode = |v: &serde_json::Value| {
            let hex: String = v.as_str().unwrap_or_default().replace(':', "");
            String::from_utf8(hex::decode(hex).unwrap()).unwrap()
        };
        match f.get("cflow.enterprise_private_entry") {
            Some(serde_json::Value::Array(a)) => a.iter().map(decode).collect(),
            Some(v) => vec![decode(v)],
            None => Vec::new(),
        }
    };
    let status = |f: &serde_json::Map<String, serde_json::Value>| {
        let s = &f["Forwarding Status"];
        (
            s["cflow.forwarding_status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            s["cflow.forwarding_status_drop_code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };

    // acme's transfer, forwarded (status 1), all of it counted (sampling 1).
    let acme = find(ACME_A, ACME_B);
    let packets: u64 = acme.iter().map(|f| number(f, "cflow.packets")).sum();
    let octets: u64 = acme.iter().map(|f| number(f, "cflow.octets")).sum();
    assert!(
        packets >= 740 && octets >= 1 << 20,
        "acme: {packets} packets, {octets} bytes: {acme:#?}"
    );
    for f in &acme {
        assert_eq!(status(f).0, "1", "forwarded");
        assert_eq!(text(f, "cflow.dstport"), "5001");
        assert_eq!(text(f, "cflow.protocol"), "6");
        assert_eq!(text(f, "cflow.direction"), "1", "egress from node-a");
        assert_eq!(strings(f), ["acme", "acme-a", "acme-b"]);
    }
    // Its replies came in from the wire (direction ingress).
    assert!(find(ACME_B, ACME_A)
        .iter()
        .all(|f| text(f, "cflow.direction") == "0" && status(f).0 == "1"));
    // globex -> acme: dropped by the policy (forwardingStatus 129: ACL deny).
    let denied = find(GLOBEX_A, ACME_B);
    assert!(
        !denied.is_empty(),
        "no record of the denied flow: {flows:#?}"
    );
    for f in &denied {
        assert_eq!(status(f), ("2".to_owned(), "1".to_owned()));
        assert_eq!(strings(f), ["globex", "globex-a", "acme-b", "policy"]);
    }
    // globex's burst: 10 forwarded (the burst), the rest dropped by the policer (138).
    let globex = find(GLOBEX_A, GLOBEX_B);
    let (passed, policed): (Vec<_>, Vec<_>) = globex.into_iter().partition(|f| status(f).0 == "1");
    let passed: u64 = passed.iter().map(|f| number(f, "cflow.packets")).sum();
    let policed_packets: u64 = policed.iter().map(|f| number(f, "cflow.packets")).sum();
    assert!((10..=15).contains(&passed), "{passed} passed a burst of 10");
    assert_eq!(passed + policed_packets, 200);
    for f in &policed {
        assert_eq!(status(f).1, "10");
        assert_eq!(strings(f).last().map(String::as_str), Some("rate-limit"));
    }

    // The same flows as OCSF network activity, next to the audit log.
    let ocsf =
        std::fs::read_to_string(c.a.node.dir.path().join("state/telemetry/flows.ocsf.jsonl"))
            .unwrap();
    let records: Vec<serde_json::Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records
        .iter()
        .all(|r| r["class_uid"] == 4001 && r["activity_id"] == 6));
    let acme_bytes: u64 = records
        .iter()
        .filter(|r| r["src_endpoint"]["ip"] == ACME_A && r["dst_endpoint"]["ip"] == ACME_B)
        .inspect(|r| {
            assert_eq!(r["disposition"], "Allowed");
            assert_eq!(r["unmapped"]["tenant"], "acme");
            assert_eq!(r["unmapped"]["src_segment"], "acme-a");
            assert_eq!(r["connection_info"]["protocol_name"], "tcp");
        })
        .map(|r| r["traffic"]["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        acme_bytes, octets,
        "OCSF and IPFIX disagree on acme's bytes"
    );
    let blocked: Vec<&str> = records
        .iter()
        .filter(|r| r["disposition_id"] == 2)
        .map(|r| r["status_detail"].as_str().unwrap())
        .collect();
    assert!(
        blocked.contains(&"policy") && blocked.contains(&"rate-limit"),
        "{blocked:?}"
    );

    let m = c.a.metrics();
    let exported = metric_sum(&m, "warden_telemetry_records_total", &[]).unwrap_or(0);
    assert_eq!(
        exported as usize,
        records.len(),
        "records exported vs OCSF lines"
    );
    assert!(metric_sum(&m, "warden_telemetry_ipfix_messages_total", &[]).unwrap_or(0) >= 1);
    assert_eq!(
        metric_sum(&m, "warden_telemetry_flows_lost_total", &[]),
        Some(0)
    );

    // wardctl top while globex sends 2 s of datagrams (100/s, over its 20/s): two screens, the
    // second with rates, globex's flow live with its verdict.
    let sender = c.a.ns.spawn(|| {
        let s = std::net::UdpSocket::bind(format!("{GLOBEX_A}:0")).unwrap();
        for _ in 0..200 {
            let _ = s.send_to(b"live", format!("{GLOBEX_B}:5002"));
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["top", "--count", "2", "--interval", "1", "--flows", "5"];
    let conn = c.a.connection(None);
    args.extend(conn.iter().map(String::as_str));
    let o = c.a.wardctl(&args);
    sender.join().unwrap();
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{screen}");
    assert!(
        o.status.success(),
        "{screen}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let second = screen.split("wardctl top:").nth(2).expect("two screens");
    assert!(second.contains("rates over"), "{screen}");
    let globex_row = second
        .lines()
        .find(|l| l.starts_with("globex"))
        .unwrap_or_else(|| panic!("no globex row: {screen}"));
    assert!(globex_row.contains("/s"), "{globex_row}");
    assert!(
        second.contains(&format!("-> {GLOBEX_B}:5002")),
        "globex's flow is not listed: {screen}"
    );
    // And as JSON: acme's megabyte is in its counters.
    let mut args = vec!["top", "--json"];
    args.extend(conn.iter().map(String::as_str));
    let o = c.a.wardctl(&args);
    let top: warden::telemetry::top::Top = serde_json::from_slice(&o.stdout).unwrap();
    let acme = top.tenants.iter().find(|t| t.tenant == "acme").unwrap();
    assert!(acme.bytes_out >= 1 << 20, "{acme:?}");
    assert!(top.drops["rate-limit"] >= 190, "{:?}", top.drops);
    assert_eq!(top.sampling, Some(1));
}
