//! Two Warden data planes for bench/tunnel.sh: in each of two existing network namespaces it
//! runs what wardend runs on the data path (the tunnel core and the I/O workers on a TUN
//! device), with SAs keyed directly as the control channel would key them. The control
//! channel is not on the data path, so the figures are the data plane's.
//!
//! ```text
//! bench_cluster up --ns-a NSA --ns-b NSB --state DIR [--workers N] [--engine aws-lc-rs|ring|aes-gcm] [--no-offloads]
//!                   [--limits] [--telemetry SAMPLING]
//! bench_cluster down --state DIR
//! ```
//! `up` expects the wire (198.51.100.1 in NSA, 198.51.100.2 in NSB) and puts 203.0.113.1 (NSA)
//! and 203.0.113.2 (NSB) on each side's TUN; it runs until SIGTERM or SIGINT (or `down`).
//!
//! `--limits` adds traffic limits that every packet is checked against but that never bind
//! (a wire budget with a guarantee, and tenant packet, bit and connection rates far above the
//! machine's): their cost alone. `--telemetry N` records one packet in N into flow records
//! and runs wardend's exporter (IPFIX to a port nobody listens on, OCSF lines under the state
//! directory), as `[telemetry]` does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use warden::config::DataplaneConfig;
use warden::dataplane_io::Io;
use warden_enforcer::esp::{Engine, Limits};
use warden_enforcer::tunnel::{derive_sa_keys, Tunnel, TunnelConfig};

const POLICY: &str = r#"
version = 1
[[node]]
id = "node-a"
address = "198.51.100.1"
[[node]]
id = "node-b"
address = "198.51.100.2"
[[tenant]]
id = "bench"
[[segment]]
name = "bench-a"
tenant = "bench"
cidrs = ["203.0.113.1/32"]
node = "node-a"
[[segment]]
name = "bench-b"
tenant = "bench"
cidrs = ["203.0.113.2/32"]
node = "node-b"
[[rule]]
from = "bench-a"
to = "bench-b"
proto = "any"
[[rule]]
from = "bench-b"
to = "bench-a"
proto = "any"
"#;

/// Limits that are checked for every packet but never bind on this machine.
const LIMITS: &str = r#"
[wire]
bits_per_second = "400G"
[[limit]]
tenant = "bench"
bits_per_second = "200G"
packets_per_second = 100_000_000
new_connections_per_second = 1_000_000
guaranteed_bits_per_second = "100G"
[[limit]]
from = "bench-a"
to = "bench-b"
packets_per_second = 100_000_000
"#;

struct Args {
    up: bool,
    ns_a: String,
    ns_b: String,
    state: PathBuf,
    workers: u16,
    engine: Engine,
    offloads: bool,
    limits: bool,
    telemetry: Option<u32>,
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().context("usage: bench_cluster up|down ...")?;
    let mut a = Args {
        up: cmd == "up",
        ns_a: String::new(),
        ns_b: String::new(),
        state: PathBuf::new(),
        workers: u16::try_from(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .unwrap_or(1),
        engine: Engine::default(),
        offloads: true,
        limits: false,
        telemetry: None,
    };
    if cmd != "up" && cmd != "down" {
        bail!("unknown command {cmd:?}: use up or down");
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ns-a" => a.ns_a = value()?,
            "--ns-b" => a.ns_b = value()?,
            "--state" => a.state = value()?.into(),
            "--workers" => a.workers = value()?.parse()?,
            "--engine" => {
                let e = value()?;
                a.engine = Engine::ALL
                    .into_iter()
                    .find(|x| x.name() == e)
                    .with_context(|| format!("unknown engine {e:?}"))?;
            }
            "--no-offloads" => a.offloads = false,
            "--limits" => a.limits = true,
            "--telemetry" => a.telemetry = Some(value()?.parse()?),
            _ => bail!("unknown flag {flag:?}"),
        }
    }
    Ok(a)
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).expect("open the network namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("ip")
        .args(args)
        .status()?;
    if !st.success() {
        bail!("ip {args:?} in {ns} failed");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let pidfile = a.state.join("bench_cluster.pid");
    if !a.up {
        let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        return Ok(());
    }
    std::fs::create_dir_all(&a.state)?;
    std::fs::write(&pidfile, std::process::id().to_string())?;
    // Blocked before any thread starts, so every thread inherits the mask and the signals
    // wait for sigwait below.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.thread_block()?;
    let text = if a.limits {
        format!("{POLICY}{LIMITS}")
    } else {
        POLICY.to_owned()
    };
    let policy =
        warden_policy::parse(&text, "bench-policy.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = DataplaneConfig {
        tun: "wbench".into(),
        mtu: 1420,
        engine: a.engine,
        workers: a.workers,
        offloads: a.offloads,
        rekey_after_packets: Limits::default().soft_packets,
        rekey_after_bytes: Limits::default().soft_bytes,
        rekey_after_secs: Limits::default().soft_age.as_secs(),
        insecure_sa_key_log: None,
    };
    let mut nodes = Vec::new();
    for (id, ns, local, remote) in [
        ("node-a", &a.ns_a, "203.0.113.1/32", "203.0.113.2/32"),
        ("node-b", &a.ns_b, "203.0.113.2/32", "203.0.113.1/32"),
    ] {
        let tunnel = Arc::new(Tunnel::new(
            TunnelConfig {
                node: id.into(),
                engine: a.engine,
                workers: a.workers,
                limits: Limits::default(),
                esp_port: 4500,
            },
            None,
        ));
        tunnel.set_policy(&policy);
        let t = Arc::clone(&tunnel);
        let io = in_netns(ns, || Io::start(&config, 4500, t))?;
        ip(ns, &["addr", "add", local, "dev", "wbench"])?;
        ip(ns, &["route", "add", remote, "dev", "wbench"])?;
        eprintln!("{id}: data plane up in {ns} (offloads: {})", io.offloads());
        let telemetry = match a.telemetry {
            Some(sampling) => Some(warden::telemetry::Telemetry::start(
                &warden::config::TelemetryConfig {
                    sampling,
                    max_flows: 65_536,
                    idle_timeout: std::time::Duration::from_secs(15),
                    active_timeout: std::time::Duration::from_secs(60),
                    ipfix: Some("127.0.0.1:4739".into()),
                    ocsf_file: Some(a.state.join(format!("{id}-flows.ocsf.jsonl"))),
                    ocsf_max_bytes: 64 << 20,
                },
                id,
                Arc::clone(&tunnel),
            )?),
            None => None,
        };
        nodes.push((tunnel, io, telemetry));
    }
    // Key both directions as the control channel would (a fixed channel secret: a benchmark).
    let secret = [0x42; 32];
    let key = |from: &str, to: &str| -> Vec<_> {
        (0..a.workers)
            .map(|w| derive_sa_keys(&secret, b"bench-tenant-key", "bench", from, to, 1, w).unwrap())
            .collect()
    };
    let (ta, tb) = (&nodes[0].0, &nodes[1].0);
    eprintln!(
        "limits: {}, telemetry: {}",
        a.limits,
        a.telemetry
            .map_or("off".to_owned(), |n| format!("one packet in {n}"))
    );
    let ab = tb.add_inbound("node-a", "bench", 1, key("node-a", "node-b"))?;
    ta.set_outbound(
        "node-b",
        "bench",
        1,
        ab,
        key("node-a", "node-b"),
        Instant::now(),
    )?;
    let ba = ta.add_inbound("node-b", "bench", 1, key("node-b", "node-a"))?;
    tb.set_outbound(
        "node-a",
        "bench",
        1,
        ba,
        key("node-b", "node-a"),
        Instant::now(),
    )?;
    eprintln!("keyed; waiting for SIGTERM");
    let _ = signals.wait()?;
    for (_, io, telemetry) in &nodes {
        io.stop();
        if let Some(t) = telemetry {
            t.stop();
        }
    }
    let _ = std::fs::remove_file(&pidfile);
    Ok(())
}
