//! Topology and traffic for the nftables tests.
//!
//! ```text
//!   ns A (tenant client)          ns R (appliance, forwarding, inet warden)        ns B (server)
//!   a0 198.51.100.2/24  ───────── ra 198.51.100.1/24      rb 203.0.113.1/24 ───────── b0 203.0.113.2/24
//!      2001:db8:a::2/64              2001:db8:a::1/64        2001:db8:b::1/64              2001:db8:b::2/64
//!                                 wire0 192.0.2.1/24 ─────── w0 192.0.2.2/24 + 192.0.2.3/24   ns W (peer
//!                                                                                 appliance; optional)
//! ```
#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use warden_enforcer::nft::{FlowRule, NftPlan, Proto, WirePlan};
use warden_testkit::{veth, Netns};

/// Short enough that a dropped SYN is never retransmitted (Linux's first retransmission is
/// after 1 s): a timeout means the first SYN was dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
pub const UDP_WAIT: Duration = Duration::from_millis(300);

pub const A_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const B_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const A_V6: &str = "2001:db8:a::2";
pub const B_V6: &str = "2001:db8:b::2";
pub const R_WIRE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const W_WIRE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A second address of W that is not an appliance.
pub const W_OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

pub struct Topology {
    pub a: Netns,
    pub r: Netns,
    pub b: Netns,
    pub w: Option<Netns>,
}

impl Topology {
    pub fn new(with_wire: bool) -> Topology {
        let a = Netns::new().expect("netns A");
        let r = Netns::new().expect("netns R");
        let b = Netns::new().expect("netns B");
        veth(
            &a,
            "a0",
            &["198.51.100.2/24", "2001:db8:a::2/64"],
            &r,
            "ra",
            &["198.51.100.1/24", "2001:db8:a::1/64"],
        )
        .expect("veth A-R");
        veth(
            &b,
            "b0",
            &["203.0.113.2/24", "2001:db8:b::2/64"],
            &r,
            "rb",
            &["203.0.113.1/24", "2001:db8:b::1/64"],
        )
        .expect("veth B-R");
        a.add_route("default", "198.51.100.1").expect("route A");
        a.add_route("default", "2001:db8:a::1").expect("route A v6");
        b.add_route("default", "203.0.113.1").expect("route B");
        b.add_route("default", "2001:db8:b::1").expect("route B v6");
        r.enable_forwarding().expect("forwarding in R");
        // Unprivileged ICMP echo sockets for the ICMP checks; the whole port range for the
        // many connections of the swap test.
        a.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
            "net.ipv4.ip_local_port_range=1024 65535",
        ])
        .expect("sysctl in A");
        let w = with_wire.then(|| {
            let w = Netns::new().expect("netns W");
            veth(
                &w,
                "w0",
                &["192.0.2.2/24", "192.0.2.3/24"],
                &r,
                "wire0",
                &["192.0.2.1/24"],
            )
            .expect("veth W-R");
            w
        });
        Topology { a, r, b, w }
    }

    /// `nft <args>` inside R; stdout.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["nft"];
        all.extend_from_slice(args);
        self.r.exec_ok(&all).expect("nft in R")
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("CIDR")
}

pub fn rule(
    name: &str,
    src: &[&str],
    dst: &[&str],
    proto: Proto,
    ports: &[(u16, u16)],
) -> FlowRule {
    FlowRule {
        name: name.into(),
        description: format!("test rule {name}"),
        src: src.iter().map(|s| net(s)).collect(),
        dst: dst.iter().map(|s| net(s)).collect(),
        proto,
        ports: ports.iter().map(|(a, b)| *a..=*b).collect(),
    }
}

pub fn plan(version: u64, flows: Vec<FlowRule>, wire: Option<WirePlan>) -> NftPlan {
    NftPlan {
        version,
        digest: format!("{version:064x}"),
        wire,
        flows,
        limits: Vec::new(),
    }
}

/// A TCP server in a namespace that accepts (and closes) connections until dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Server {
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        // A long accept queue: on two cores the accept thread can be starved for a while
        // (std listens with 128), and a full queue drops SYNs at the server.
        let backlog = nix::sys::socket::Backlog::new(4096).expect("backlog");
        nix::sys::socket::listen(&listener, backlog).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(500))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `addr` within `timeout` and closes with a reset (SO_LINGER 0), so that neither
/// end keeps the connection in TIME_WAIT: thousands of connections can then reuse ports
/// without running into old connections' state. Call inside the namespace.
pub fn connect_and_reset(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    Ok(())
}

/// Whether a TCP connection from `ns` to `addr` completes within [`CONNECT_TIMEOUT`].
pub fn tcp_connects(ns: &Netns, addr: SocketAddr) -> bool {
    ns.run(|| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok())
}

/// A UDP socket bound in `ns`.
pub fn udp_bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let s = ns
        .run(|| UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("bind udp {addr} in {}: {e}", ns.name()));
    s.set_read_timeout(Some(UDP_WAIT)).expect("read timeout");
    s
}

/// Sends one datagram from `from_ns` (bound to `from`, port chosen by the kernel) to the
/// `server` socket's address and reports whether `server` received it.
pub fn udp_passes(from_ns: &Netns, from: IpAddr, server: &UdpSocket) -> bool {
    let to = server.local_addr().expect("local addr");
    let token: [u8; 8] = rand_token();
    let sent = from_ns.run(|| {
        let s = UdpSocket::bind(SocketAddr::new(from, 0))?;
        s.send_to(&token, to)
    });
    if sent.is_err() {
        // A drop in OUTPUT makes sendto fail with EPERM: not delivered.
        return false;
    }
    let deadline = Instant::now() + UDP_WAIT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match server.recv_from(&mut buf) {
            Ok((n, _)) if buf.get(..n) == Some(&token[..]) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

fn rand_token() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64).to_le_bytes()
}

/// Whether an ICMP echo from `ns` to `dst` gets a reply within [`UDP_WAIT`] (an unprivileged
/// ICMP datagram socket; the kernel fills in id and checksum).
pub fn icmp_echo(ns: &Netns, dst: Ipv4Addr) -> bool {
    use nix::sys::socket::{
        recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
        SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    ns.run(|| {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
        .expect("ICMP datagram socket");
        let tv = nix::sys::time::TimeVal::new(0, 300_000);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).expect("timeout");
        let echo = [8u8, 0, 0, 0, 0, 0, 0, 1, b'w', b'd'];
        let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        if sendto(fd.as_raw_fd(), &echo, &to, MsgFlags::empty()).is_err() {
            return false;
        }
        let mut buf = [0u8; 128];
        matches!(recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()), Ok(n) if n >= 8 && buf[0] == 0)
    })
}
