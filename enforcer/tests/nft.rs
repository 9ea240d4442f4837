//! Warden's nftables table in real network namespaces: what it lets through, what it drops,
//! and how it is replaced and removed. Needs root (skips with a message otherwise, unless CI
//! is set). Topology in `support/mod.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;
use warden_enforcer::nft::{self, NftError, Proto, WirePlan};
use warden_testkit::skip_without_netns;

fn v4(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn v6(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn tenant_plan(version: u64) -> nft::NftPlan {
    plan(
        version,
        vec![
            rule(
                "r0",
                &["198.51.100.0/24"],
                &["203.0.113.0/24"],
                Proto::Tcp,
                &[(8080, 8080)],
            ),
            rule(
                "r1",
                &["198.51.100.0/24"],
                &["203.0.113.0/24"],
                Proto::Udp,
                &[(5353, 5353)],
            ),
            rule(
                "r2",
                &["2001:db8:a::/64"],
                &["2001:db8:b::/64"],
                Proto::Tcp,
                &[(8080, 8080)],
            ),
            rule(
                "r3",
                &["198.51.100.2/32"],
                &["203.0.113.0/24"],
                Proto::Icmp,
                &[],
            ),
        ],
        None,
    )
}

#[test]
fn allowed_flows_pass_and_denied_flows_are_dropped() {
    if skip_without_netns("allowed_flows_pass_and_denied_flows_are_dropped") {
        return;
    }
    let t = Topology::new(false);
    let allowed = Server::start(&t.b, v4(B_V4, 8080));
    let denied = Server::start(&t.b, v4(B_V4, 8081));
    let allowed6 = Server::start(&t.b, v6(B_V6, 8080));
    let denied6 = Server::start(&t.b, v6(B_V6, 8081));
    let udp_allowed = udp_bind(&t.b, v4(B_V4, 5353));
    let udp_denied = udp_bind(&t.b, v4(B_V4, 5354));

    // Before any table everything is forwarded: the topology works.
    assert!(tcp_connects(&t.a, denied.addr));
    assert!(tcp_connects(&t.a, denied6.addr));
    assert!(icmp_echo(&t.a, B_V4));

    let p = tenant_plan(1);
    t.r.run(|| nft::apply(&p)).expect("apply");
    eprintln!("{}", t.nft(&["list", "table", "inet", "warden"]));

    assert!(
        tcp_connects(&t.a, allowed.addr),
        "tcp/8080 is allowed by r0"
    );
    assert!(
        tcp_connects(&t.a, allowed6.addr),
        "tcp/8080 over IPv6 is allowed by r2"
    );
    assert!(
        udp_passes(&t.a, IpAddr::V4(A_V4), &udp_allowed),
        "udp/5353 is allowed by r1"
    );
    assert!(icmp_echo(&t.a, B_V4), "ICMP is allowed by r3");
    assert!(!tcp_connects(&t.a, denied.addr), "tcp/8081 is denied");
    assert!(
        !tcp_connects(&t.a, denied6.addr),
        "tcp/8081 over IPv6 is denied"
    );
    assert!(
        !udp_passes(&t.a, IpAddr::V4(A_V4), &udp_denied),
        "udp/5354 is denied"
    );
    // The reverse direction opens no flow: B may not connect to A.
    let back = Server::start(&t.a, v4(A_V4, 8080));
    assert!(!tcp_connects(&t.b, back.addr), "no rule allows B -> A");

    let c = t.r.run(nft::counters).expect("counters");
    eprintln!("{c:?}");
    assert!(c.rules["r0"].packets >= 1, "r0 counted its flow");
    assert!(c.rules["r1"].packets >= 1, "r1 counted its flow");
    assert!(c.rules["r2"].packets >= 1, "r2 counted its flow");
    assert!(c.rules["r3"].packets >= 1, "r3 counted its flow");
    assert!(c.rules["r0"].bytes >= 60);
    // One SYN each for 8081 (v4, v6), the UDP datagram, B's SYN.
    assert!(c.flows_dropped.packets >= 4, "{:?}", c.flows_dropped);
    assert_eq!(c.wire_accepted.packets, 0);

    t.r.run(nft::remove).expect("remove");
    assert!(
        tcp_connects(&t.a, denied.addr),
        "without the table everything passes again"
    );
    assert!(matches!(
        t.r.run(nft::counters),
        Err(NftError::NotInstalled)
    ));
}

#[test]
fn swapping_the_plan_under_continuous_traffic_loses_no_allowed_flow() {
    if skip_without_netns("swapping_the_plan_under_continuous_traffic_loses_no_allowed_flow") {
        return;
    }
    let t = Topology::new(false);
    let server = Server::start(&t.b, v4(B_V4, 8080));
    let other = |v: u64, port: u16| {
        let mut p = tenant_plan(v);
        p.flows.push(rule(
            "r9",
            &["198.51.100.0/24"],
            &["203.0.113.0/24"],
            Proto::Udp,
            &[(port, port)],
        ));
        p
    };
    t.r.run(|| nft::apply(&tenant_plan(1)))
        .expect("first apply");

    const SWAPS: u64 = 50;
    const MAX_CONNECTIONS: usize = 200_000;
    let done = AtomicBool::new(false);
    let attempts = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            t.a.run(|| {
                let deadline = Instant::now() + Duration::from_secs(120);
                // New connection = new flow = a map lookup in whichever table is in force.
                while !done.load(Ordering::Relaxed)
                    && attempts.load(Ordering::Relaxed) < MAX_CONNECTIONS
                    && Instant::now() < deadline
                {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let addr = server.addr;
                    if let Err(e) = connect_and_reset(addr, Duration::from_millis(900)) {
                        eprintln!("connect failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        let started = Instant::now();
        for i in 0..SWAPS {
            // Alternate between two plans that both allow tcp/8080 and differ otherwise.
            let p = if i % 2 == 0 {
                other(i + 2, 9000)
            } else {
                tenant_plan(i + 2)
            };
            t.r.run(|| nft::apply(&p)).expect("apply during traffic");
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{SWAPS} swaps in {:?}", started.elapsed());
        done.store(true, Ordering::Relaxed);
    });
    let overflows =
        t.b.exec_ok(&["nstat", "-az", "TcpExtListenOverflows"])
            .unwrap();
    eprintln!("server: {}", overflows.lines().last().unwrap_or_default());
    let attempts = attempts.into_inner();
    eprintln!("{attempts} connections during {SWAPS} swaps");
    assert!(
        attempts >= 50,
        "the client made only {attempts} connections"
    );
    assert_eq!(failures.into_inner(), 0, "connections failed during swaps");
}

#[test]
fn a_plan_the_kernel_rejects_leaves_the_previous_one_in_force() {
    if skip_without_netns("a_plan_the_kernel_rejects_leaves_the_previous_one_in_force") {
        return;
    }
    let t = Topology::new(false);
    let allowed = Server::start(&t.b, v4(B_V4, 8080));
    let new_port = Server::start(&t.b, v4(B_V4, 9090));
    t.r.run(|| nft::apply(&tenant_plan(1))).expect("apply");
    let before = t.nft(&["list", "table", "inet", "warden"]);

    // Valid in itself (validation passes), but r5's 8080-8090 overlaps r0's 8080 for the same
    // addresses: the interval map refuses the element, so the kernel refuses the batch.
    let mut bad = tenant_plan(2);
    bad.flows.push(rule(
        "r4",
        &["198.51.100.0/24"],
        &["203.0.113.0/24"],
        Proto::Tcp,
        &[(9090, 9090)],
    ));
    bad.flows.push(rule(
        "r5",
        &["198.51.100.2/32"],
        &["203.0.113.2/32"],
        Proto::Tcp,
        &[(8080, 8090)],
    ));
    nft::validate(&bad).expect("the plan passes validation");
    let err =
        t.r.run(|| nft::apply(&bad))
            .expect_err("the kernel rejects overlapping elements");
    eprintln!("{err}");
    assert_eq!(err.errno(), Some(EEXIST), "{err}");
    assert!(
        err.to_string().contains("\"r5\""),
        "the error names the rule: {err}"
    );
    assert!(
        err.to_string().contains("flows_ports_v4"),
        "and the map: {err}"
    );

    let after = t.nft(&["list", "table", "inet", "warden"]);
    assert_eq!(before, after, "the table in force is unchanged");
    assert!(after.contains("policy v1 "));
    assert!(
        tcp_connects(&t.a, allowed.addr),
        "the old plan's flow still passes"
    );
    assert!(
        !tcp_connects(&t.a, new_port.addr),
        "the rejected plan's flow is still denied"
    );
}

/// errno for "File exists": what an overlapping interval-map element gets.
const EEXIST: i32 = 17;

#[test]
fn an_apply_interrupted_half_way_is_cleaned_up_by_the_next() {
    if skip_without_netns("an_apply_interrupted_half_way_is_cleaned_up_by_the_next") {
        return;
    }
    let t = Topology::new(false);
    let allowed = Server::start(&t.b, v4(B_V4, 8080));
    t.r.run(|| nft::apply(&tenant_plan(1))).expect("apply");
    // What a crash between the two batches leaves: staged maps of the other generation and a
    // chain nothing refers to.
    t.nft(&[
        "add",
        "map",
        "inet",
        "warden",
        "flows_ports_v4_b",
        "{ type ipv4_addr . ipv4_addr . inet_proto . inet_service : verdict; flags interval; }",
    ]);
    t.nft(&["add", "chain", "inet", "warden", "r77"]);
    t.nft(&[
        "add",
        "element",
        "inet",
        "warden",
        "flows_ports_v4_b",
        "{ 198.51.100.0/24 . 203.0.113.0/24 . tcp . 22 : jump r77 }",
    ]);

    t.r.run(|| nft::apply(&tenant_plan(2)))
        .expect("apply over the leftovers");
    let listing = t.nft(&["list", "table", "inet", "warden"]);
    assert!(!listing.contains("r77"), "{listing}");
    assert!(!listing.contains(". 22 :"), "{listing}");
    assert!(listing.contains("policy v2 "), "{listing}");
    assert!(tcp_connects(&t.a, allowed.addr));
    t.r.run(|| nft::apply(&tenant_plan(3)))
        .expect("and the next one");
    assert!(tcp_connects(&t.a, allowed.addr));
}

#[test]
fn removing_wardens_table_leaves_the_hosts_other_tables_untouched() {
    if skip_without_netns("removing_wardens_table_leaves_the_hosts_other_tables_untouched") {
        return;
    }
    let t = Topology::new(false);
    t.nft(&["add", "table", "inet", "other"]);
    t.nft(&[
        "add",
        "chain",
        "inet",
        "other",
        "input",
        "{ type filter hook input priority 10; policy accept; }",
    ]);
    t.nft(&[
        "add", "rule", "inet", "other", "input", "tcp", "dport", "22", "counter", "accept",
    ]);
    let other = t.nft(&["list", "table", "inet", "other"]);

    t.r.run(nft::remove)
        .expect("removing an absent table is not an error");
    t.r.run(|| nft::apply(&tenant_plan(1))).expect("apply");
    t.r.run(|| nft::apply(&tenant_plan(2)))
        .expect("apply again");
    assert_eq!(t.nft(&["list", "table", "inet", "other"]), other);
    t.r.run(nft::remove).expect("remove");

    assert_eq!(
        t.nft(&["list", "table", "inet", "other"]),
        other,
        "other is intact"
    );
    let tables = t.nft(&["list", "tables"]);
    assert!(tables.contains("table inet other"), "{tables}");
    assert!(!tables.contains("warden"), "warden is gone: {tables}");
}

#[test]
fn wire_admits_only_esp_from_appliances_and_the_configured_tcp_ports() {
    if skip_without_netns("wire_admits_only_esp_from_appliances_and_the_configured_tcp_ports") {
        return;
    }
    let t = Topology::new(true);
    let w = t.w.as_ref().unwrap();
    let wire = WirePlan {
        interface: "wire0".into(),
        appliances: vec![IpAddr::V4(R_WIRE), IpAddr::V4(W_WIRE)],
        esp_udp_port: 4500,
        tcp_ports: vec![8443],
    };
    let esp_in = udp_bind(&t.r, v4(R_WIRE, 4500));
    let udp_other = udp_bind(&t.r, v4(R_WIRE, 4501));
    let api = Server::start(&t.r, v4(R_WIRE, 8443));
    let ssh = Server::start(&t.r, v4(R_WIRE, 8444));
    let esp_at_w = udp_bind(w, v4(W_WIRE, 4500));
    let esp_at_other = udp_bind(w, v4(W_OTHER, 4500));
    let peer_service = Server::start(w, v4(W_WIRE, 8443));
    let peer_other_port = Server::start(w, v4(W_WIRE, 8444));
    let other_service = Server::start(w, v4(W_OTHER, 8443));
    // Tenant traffic keeps working next to the wire.
    let tenant = Server::start(&t.b, v4(B_V4, 8080));

    t.r.run(|| nft::apply(&plan(1, tenant_plan(1).flows, Some(wire.clone()))))
        .expect("apply");
    eprintln!("{}", t.nft(&["list", "table", "inet", "warden"]));

    assert!(
        udp_passes(w, IpAddr::V4(W_WIRE), &esp_in),
        "ESP-in-UDP from an appliance"
    );
    assert!(
        !udp_passes(w, IpAddr::V4(W_OTHER), &esp_in),
        "UDP 4500 from a non-appliance"
    );
    assert!(
        !udp_passes(w, IpAddr::V4(W_WIRE), &udp_other),
        "other UDP from an appliance"
    );
    assert!(tcp_connects(w, api.addr), "the appliance's TCP service");
    assert!(!tcp_connects(w, ssh.addr), "TCP to another port");
    // Outbound: ESP to an appliance leaves, to anyone else it does not.
    assert!(
        udp_passes(&t.r, IpAddr::V4(R_WIRE), &esp_at_w),
        "ESP to an appliance"
    );
    assert!(
        !udp_passes(&t.r, IpAddr::V4(R_WIRE), &esp_at_other),
        "ESP to a non-appliance"
    );
    // Outbound TCP: to another appliance's service (the peers' control channel) it leaves; to
    // another port or a non-appliance it does not.
    assert!(
        tcp_connects(&t.r, peer_service.addr),
        "to an appliance's TCP service"
    );
    assert!(
        !tcp_connects(&t.r, peer_other_port.addr),
        "to another port of an appliance"
    );
    assert!(
        !tcp_connects(&t.r, other_service.addr),
        "to the service port of a non-appliance"
    );
    assert!(
        tcp_connects(&t.a, tenant.addr),
        "tenant flows are unaffected"
    );

    let c = t.r.run(nft::counters).expect("counters");
    eprintln!("{c:?}");
    assert!(c.wire_accepted.packets >= 3, "{c:?}");
    assert!(c.wire_dropped.packets >= 4, "{c:?}");
}

#[test]
fn a_ten_thousand_rule_plan_applies() {
    if skip_without_netns("a_ten_thousand_rule_plan_applies") {
        return;
    }
    let t = Topology::new(false);
    let server = Server::start(&t.b, v4(B_V4, 8080));
    // 10,000 rules, each its own (src host, dst host) pair: 40 destinations x 250 sources,
    // TCP for most, UDP or any for some, so every IPv4 map gets elements.
    let flows: Vec<_> = (0..10_000u32)
        .map(|i| {
            let src = format!("198.51.100.{}/32", i % 250);
            let dst = format!("203.0.113.{}/32", i / 250);
            let (proto, ports): (Proto, &[(u16, u16)]) = match i % 10 {
                9 => (Proto::Any, &[]),
                8 => (Proto::Udp, &[(5000, 5999)]),
                _ => (Proto::Tcp, &[(8080, 8080)]),
            };
            rule(&format!("r{i}"), &[&src], &[&dst], proto, ports)
        })
        .collect();
    let big = plan(1, flows, None);

    let started = Instant::now();
    t.r.run(|| nft::apply(&big)).expect("apply 10,000 rules");
    let first = started.elapsed();
    let started = Instant::now();
    t.r.run(|| nft::apply(&big))
        .expect("replace 10,000 rules with 10,000");
    let replace = started.elapsed();
    let started = Instant::now();
    let c = t.r.run(nft::counters).expect("counters");
    let read = started.elapsed();
    eprintln!(
        "10,000-rule plan: apply {first:?}, replace {replace:?}, counters {read:?} ({} rules)",
        c.rules.len()
    );
    assert_eq!(c.rules.len(), 10_000);

    // Rule 502 (i % 250 == 2, i / 250 == 2) is A -> B tcp/8080.
    assert!(tcp_connects(&t.a, server.addr));
    let c = t.r.run(nft::counters).expect("counters");
    assert!(c.rules["r502"].packets >= 1);
    assert_eq!(c.rules["r503"].packets, 0);
    let started = Instant::now();
    t.r.run(nft::remove).expect("remove");
    eprintln!("remove {:?}", started.elapsed());
}

/// A plan allowing A -> B UDP 5353 and TCP 8080, with `limits`.
fn limited_plan(version: u64, limits: Vec<nft::LimitRule>) -> nft::NftPlan {
    let mut p = plan(
        version,
        vec![
            rule(
                "r0",
                &["198.51.100.0/24"],
                &["203.0.113.0/24"],
                Proto::Udp,
                &[(5353, 5353)],
            ),
            rule(
                "r1",
                &["198.51.100.0/24"],
                &["203.0.113.0/24"],
                Proto::Tcp,
                &[(8080, 8080)],
            ),
        ],
        None,
    );
    p.limits = limits;
    p
}

/// A tenant limit on everything 198.51.100.0/24 sends.
fn tenant_limit(
    packets: Option<(u64, u32)>,
    connections: Option<(u64, u32)>,
    mark: bool,
) -> nft::LimitRule {
    nft::LimitRule {
        name: "l0".into(),
        description: "tenant acme".into(),
        src: vec![net("198.51.100.0/24")],
        dst: vec![net("0.0.0.0/0"), net("::/0")],
        tenant: true,
        packets,
        bytes: None,
        connections,
        mark,
    }
}

/// Send `n` datagrams from A to `server` at once; returns the TOS byte of each that arrived.
fn udp_burst(t: &Topology, server: &std::net::UdpSocket, n: usize) -> Vec<u8> {
    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    setsockopt(server, sockopt::IpRecvTos, &true).unwrap();
    let to = server.local_addr().unwrap();
    t.a.run(|| {
        let s = std::net::UdpSocket::bind(v4(A_V4, 0))?;
        for i in 0..n {
            s.send_to(&(i as u32).to_be_bytes(), to)?;
        }
        Ok::<_, std::io::Error>(())
    })
    .unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut tos = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && tos.len() < n {
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(u8);
        let Ok(msg) = recvmsg::<()>(
            server.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) else {
            break;
        };
        let mut seen = 0u8;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::Ipv4Tos(v) = c {
                seen = v;
            }
        }
        tos.push(seen);
    }
    tos
}

#[test]
fn limits_drop_or_mark_what_is_over_the_rate() {
    if skip_without_netns("limits_drop_or_mark_what_is_over_the_rate") {
        return;
    }
    let t = Topology::new(false);
    let server = udp_bind(&t.b, v4(B_V4, 5353));

    // 10 packets/s with a burst of 5: of 100 sent at once, about 5 pass.
    let p = limited_plan(1, vec![tenant_limit(Some((10, 5)), None, false)]);
    t.r.run(|| nft::apply(&p)).expect("apply");
    eprintln!("{}", t.nft(&["list", "table", "inet", "warden"]));
    let got = udp_burst(&t, &server, 100);
    assert!(
        (3..=15).contains(&got.len()),
        "{} of 100 datagrams passed a 10/s limit with a burst of 5",
        got.len()
    );
    let c = t.r.run(nft::counters).expect("counters");
    assert!(
        c.limits["l0"].packets >= 85,
        "the limit counted {:?}",
        c.limits
    );
    assert!(c.rules["r0"].packets >= 1, "r0 admitted the flow");

    // The same limit marking instead: everything arrives, the packets over the limit with DSCP
    // Lower Effort (and a header checksum the receiver accepts), the others untouched.
    let p = limited_plan(2, vec![tenant_limit(Some((10, 5)), None, true)]);
    t.r.run(|| nft::apply(&p)).expect("apply");
    let got = udp_burst(&t, &server, 100);
    assert_eq!(got.len(), 100, "marked packets must still arrive");
    let marked = got.iter().filter(|tos| **tos >> 2 == 1).count();
    let plain = got.iter().filter(|tos| **tos == 0).count();
    assert!(marked >= 85 && marked + plain == 100, "TOS bytes: {got:?}");
    let c = t.r.run(nft::counters).expect("counters");
    assert_eq!(c.limits["l0"].packets, marked as u64);

    // A new-connection limit: of 12 connections opened one after the other, about the burst
    // (3) gets through; established traffic is not held back (the UDP flow is already up).
    let p = limited_plan(3, vec![tenant_limit(None, Some((1, 3)), false)]);
    t.r.run(|| nft::apply(&p)).expect("apply");
    let s = Server::start(&t.b, v4(B_V4, 8080));
    let connected = (0..12).filter(|_| tcp_connects(&t.a, s.addr)).count();
    assert!(
        (2..=5).contains(&connected),
        "{connected} of 12 connections got through a limit of 1/s with a burst of 3"
    );
    let c = t.r.run(nft::counters).expect("counters");
    assert!(c.limits["l0"].packets >= 7, "{:?}", c.limits);

    t.r.run(nft::remove).expect("remove");
}

#[test]
fn limit_rules_the_kernel_cannot_take_are_refused_before_sending() {
    let bad = |f: &dyn Fn(&mut nft::LimitRule)| {
        let mut l = tenant_limit(Some((10, 5)), None, false);
        f(&mut l);
        let p = limited_plan(1, vec![l]);
        match nft::validate(&p) {
            Err(NftError::LimitRule { .. }) => {}
            other => panic!("{other:?}"),
        }
    };
    bad(&|l| l.packets = Some((0, 5)));
    bad(&|l| l.packets = Some((10, 0)));
    bad(&|l| l.packets = None);
    bad(&|l| l.src.clear());
    bad(&|l| l.name = "flows".into());
    bad(&|l| l.name = "r0".into());
    bad(&|l| l.name = "9lives".into());
}
