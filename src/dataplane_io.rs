//! The data plane's I/O workers: one thread per worker, each owning one TUN queue, one wire
//! socket on the ESP port (SO_REUSEPORT, so the kernel spreads peers' flows over workers by
//! their outer source port) and a small pool of sending sockets whose ports carry the flow
//! hash. Every buffer is allocated when the worker starts; the steady state allocates nothing.
//!
//! ```text
//!  host → TUN read (64 KB super-packet) → segment → per segment: classify + seal (tunnel)
//!       → one UDP GSO send per run of equal-size packets to one peer
//!  wire → recvmmsg with UDP GRO → per datagram: open + check (tunnel) → coalesce TCP
//!       → one TUN write per super-packet
//! ```

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use warden_enforcer::io::{RecvBatch, Tun, TunQueue, WireSocket, MAX_GSO_SEGMENTS, TUN_BUF_LEN};
use warden_enforcer::offload::{segment, Coalescer, SegmentBuf, VnetHdr};
use warden_enforcer::tunnel::Tunnel;

use crate::config::DataplaneConfig;
use crate::dataplane::metric;

/// Sending sockets per worker: the outer source port is one of these, picked by flow hash.
const SEND_PORTS: usize = 4;
/// The most a GSO send carries (a little under the 65507-byte UDP payload limit).
const GSO_BYTES: usize = 65_000;
/// Reads or receives per wake-up before the worker looks at the other side.
const BURST: usize = 64;

/// What the kernel gave the data plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    pub tso: bool,
    pub uso: bool,
    pub gso: bool,
    pub gro: bool,
}

impl Offloads {
    pub fn list(&self) -> [(&'static str, bool); 4] {
        [
            ("tso", self.tso),
            ("uso", self.uso),
            ("gso", self.gso),
            ("gro", self.gro),
        ]
    }
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<&str> = self
            .list()
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

/// Per-worker I/O counters.
#[derive(Default)]
struct Stats {
    tun_rx_packets: AtomicU64,
    tun_tx_writes: AtomicU64,
    wire_tx_sends: AtomicU64,
    wire_rx_datagrams: AtomicU64,
    errors: AtomicU64,
    bad_host_packets: AtomicU64,
}

/// The running workers.
pub struct Io {
    offloads: Offloads,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stats: Vec<Arc<Stats>>,
}

impl Io {
    /// Open the TUN device (`config.tun`, one queue per worker), set its MTU, bring it up,
    /// bind the wire sockets and start the workers.
    pub fn start(
        config: &DataplaneConfig,
        esp_port: u16,
        tunnel: Arc<Tunnel>,
    ) -> anyhow::Result<Io> {
        let workers = usize::from(config.workers);
        let tun = Tun::open(&config.tun, workers)
            .with_context(|| format!("dataplane.tun: creating the TUN device {:?}", config.tun))?;
        // No IPv6 link-local address on the TUN: the host's own router and neighbour
        // solicitations would only be dropped as traffic from no segment.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{}/addr_gen_mode", tun.name());
        if let Err(e) = std::fs::write(&sysctl, "1") {
            tracing::debug!(error = %e, "{sysctl}: not set");
        }
        tun.set_mtu(u32::from(config.mtu))
            .with_context(|| format!("setting the MTU of {} to {}", config.tun, config.mtu))?;
        tun.set_up()
            .with_context(|| format!("bringing {} up", config.tun))?;
        let kernel = tun.offloads();
        let mut offloads = Offloads {
            tso: config.offloads && kernel.tso4,
            uso: config.offloads && kernel.uso4,
            gso: config.offloads,
            gro: config.offloads,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        for (w, queue) in tun.into_queues().into_iter().enumerate() {
            let rx = WireSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, esp_port)), true)
                .with_context(|| format!("binding the ESP port {esp_port}"))?;
            offloads.gro &= rx.gro_enabled();
            let mut tx = Vec::with_capacity(SEND_PORTS);
            for _ in 0..SEND_PORTS {
                let s = WireSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), false)
                    .context("binding a sending socket")?;
                offloads.gso &= s.gso_enabled();
                tx.push(s);
            }
            let s = Arc::new(Stats::default());
            stats.push(Arc::clone(&s));
            let worker = Worker {
                id: u16::try_from(w).unwrap_or(u16::MAX),
                tunnel: Arc::clone(&tunnel),
                queue,
                rx,
                tx,
                gso: config.offloads,
                stats: s,
                stop: Arc::clone(&stop),
                seg: SegmentBuf::new(),
                tun_buf: vec![0; TUN_BUF_LEN].into_boxed_slice(),
                out: vec![0; GSO_BYTES + 2048].into_boxed_slice(),
                coalescer: Coalescer::new(),
                batch: if config.offloads {
                    RecvBatch::for_gro(8)
                } else {
                    RecvBatch::new(32, 2048)
                },
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dataplane-{w}"))
                    .spawn(move || worker.run())
                    .context("starting a data plane worker")?,
            );
        }
        Ok(Io {
            offloads,
            stop,
            threads: Mutex::new(threads),
            stats,
        })
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Stop the workers and wait for them (each wakes up within its poll timeout).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in threads {
            let _ = t.join();
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        let sum = |f: fn(&Stats) -> &AtomicU64| -> u64 {
            self.stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        for (name, help, value) in [
            (
                "warden_dataplane_tun_rx_packets_total",
                "Packets (super-packets counted once) read from the TUN device.",
                sum(|s| &s.tun_rx_packets),
            ),
            (
                "warden_dataplane_tun_tx_writes_total",
                "Writes to the TUN device (a coalesced super-packet counts once).",
                sum(|s| &s.tun_tx_writes),
            ),
            (
                "warden_dataplane_wire_tx_sends_total",
                "Sends on the wire (a GSO send counts once).",
                sum(|s| &s.wire_tx_sends),
            ),
            (
                "warden_dataplane_wire_rx_datagrams_total",
                "Datagrams received from the wire (a GRO batch counts once).",
                sum(|s| &s.wire_rx_datagrams),
            ),
            (
                "warden_dataplane_io_errors_total",
                "Failed reads, writes and sends.",
                sum(|s| &s.errors),
            ),
            (
                "warden_dataplane_host_malformed_total",
                "Packets from the host whose offload header or layout was refused.",
                sum(|s| &s.bad_host_packets),
            ),
        ] {
            metric(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A run of sealed packets for one GSO send: same destination, same size except the last.
#[derive(Clone, Copy)]
struct Run {
    dest: SocketAddr,
    hash: u32,
    size: usize,
    count: usize,
    used: usize,
    /// A shorter packet ended the run.
    closed: bool,
}

struct Worker {
    id: u16,
    tunnel: Arc<Tunnel>,
    queue: TunQueue,
    rx: WireSocket,
    tx: Vec<WireSocket>,
    gso: bool,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    seg: SegmentBuf,
    tun_buf: Box<[u8]>,
    out: Box<[u8]>,
    coalescer: Coalescer,
    batch: RecvBatch,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let (tun_ready, wire_ready) = {
                let mut fds = [
                    PollFd::new(self.queue.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.rx.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::from(200u16)) {
                    Ok(0) => continue,
                    Ok(_) => {
                        let ready = |f: &PollFd<'_>| {
                            f.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN))
                        };
                        (ready(&fds[0]), ready(&fds[1]))
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                        return;
                    }
                }
            };
            if tun_ready {
                self.host_to_wire();
            }
            if wire_ready {
                self.wire_to_host();
            }
        }
    }

    /// Read a burst from the TUN queue, seal and send. The SA tables' snapshot is taken per
    /// read: an SA installed a moment ago is used for the next packet.
    fn host_to_wire(&mut self) {
        let Worker {
            id,
            tunnel,
            queue,
            tx,
            gso,
            stats,
            seg,
            tun_buf,
            out,
            ..
        } = self;
        let (id, gso) = (*id, *gso);
        for _ in 0..BURST {
            let n = match queue.read(tun_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(worker = id, error = %e, "TUN read failed");
                    break;
                }
            };
            stats.tun_rx_packets.fetch_add(1, Ordering::Relaxed);
            let snap = tunnel.snapshot();
            let now = Instant::now();
            let Some(read) = tun_buf.get(..n) else {
                continue;
            };
            let segments = match VnetHdr::parse(read).and_then(|(hdr, ip)| segment(&hdr, ip, seg)) {
                Ok(s) => s,
                Err(_) => {
                    stats.bad_host_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let mut run: Option<Run> = None;
            for inner in segments.iter() {
                let used = run.map_or(0, |r| r.used);
                let sealed = {
                    let Some(slot) = out.get_mut(used..) else {
                        continue;
                    };
                    match snap.egress(id, now, inner, slot) {
                        Ok(s) => s,
                        Err(_) => continue,
                    }
                };
                let fresh = Run {
                    dest: sealed.dest,
                    hash: sealed.flow_hash,
                    size: sealed.len,
                    count: 1,
                    used: sealed.len,
                    closed: false,
                };
                let next = match run {
                    Some(r)
                        if gso
                            && !r.closed
                            && r.dest == sealed.dest
                            && sealed.len <= r.size
                            && r.count < MAX_GSO_SEGMENTS
                            && r.used + sealed.len <= GSO_BYTES =>
                    {
                        Run {
                            count: r.count + 1,
                            used: r.used + sealed.len,
                            closed: sealed.len < r.size,
                            ..r
                        }
                    }
                    Some(r) => {
                        // The new packet does not join: send the run, then move the packet
                        // to the front.
                        send(tx, stats, id, out, &r);
                        out.copy_within(r.used..r.used + sealed.len, 0);
                        fresh
                    }
                    None => fresh,
                };
                // Leave room for one more packet of the largest size.
                if !gso || next.closed || next.used + 9400 > out.len() {
                    send(tx, stats, id, out, &next);
                    run = None;
                } else {
                    run = Some(next);
                }
            }
            // A run never spans two reads: the next read may be another flow, and this one's
            // latency should not wait for it.
            if let Some(r) = run {
                send(tx, stats, id, out, &r);
            }
        }
    }

    /// Receive a burst, open, check and deliver. The snapshot is taken per batch: a packet
    /// under an SA installed a moment ago (a rekey's new epoch) finds it.
    fn wire_to_host(&mut self) {
        for _ in 0..BURST {
            match self.rx.recv_batch(&mut self.batch) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(worker = self.id, error = %e, "wire receive failed");
                    break;
                }
            }
            let snap = self.tunnel.snapshot();
            let id = self.id;
            let Worker {
                batch,
                coalescer,
                queue,
                stats,
                ..
            } = &mut *self;
            for mut d in batch.iter_mut() {
                stats.wire_rx_datagrams.fetch_add(1, Ordering::Relaxed);
                if d.truncated {
                    continue;
                }
                for packet in d.segments() {
                    let Ok(del) = snap.ingress(id, packet) else {
                        continue;
                    };
                    let Some(inner) = packet.get(del.start..del.start + del.len) else {
                        continue;
                    };
                    match coalescer.push(inner) {
                        Ok(Some(ready)) => write_tun(queue, stats, ready),
                        Ok(None) => {}
                        Err(_) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if let Some(ready) = coalescer.flush() {
                write_tun(queue, stats, ready);
            }
        }
    }
}

/// One GSO send of the run at the start of `out`, from the sending socket the flow hash picks.
fn send(tx: &[WireSocket], stats: &Stats, id: u16, out: &[u8], r: &Run) {
    let Some(buf) = out.get(..r.used) else {
        return;
    };
    let idx = usize::try_from(r.hash).unwrap_or(0) % tx.len().max(1);
    let Some(sock) = tx.get(idx) else { return };
    let size = if r.count == 1 { buf.len() } else { r.size };
    match sock.send_gso(r.dest, buf, size) {
        Ok(()) => {
            stats.wire_tx_sends.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(worker = id, error = %e, dest = %r.dest, "wire send failed");
        }
    }
}

fn write_tun(queue: &TunQueue, stats: &Stats, packet: &[u8]) {
    match queue.write(packet) {
        Ok(_) => {
            stats.tun_tx_writes.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}
