//! The I/O layer against the real kernel, each test in a fresh network namespace: a TCP stream
//! through the TUN read as TSO super-packets and answered with a coalesced one, USO reads, TUN
//! writes reaching sockets, and UDP GSO/GRO and batches on loopback. Needs root (skips with a
//! message otherwise, unless CI is set).
//!
//! ```text
//!   netns: socket (192.0.2.1 / 2001:db8:1::1) ── kernel ── wdtun0 ══ TUN queues ══ this test,
//!          playing the peer 192.0.2.2 / 2001:db8:1::2 with hand-made packets
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use warden_enforcer::io::{RecvBatch, SendBatch, Tun, TunQueue, WireSocket, TUN_BUF_LEN};
use warden_enforcer::offload::{segment, Coalescer, SegmentBuf, VnetHdr, VNET_HDR_LEN};
use warden_testkit::{skip_without_netns, Netns};

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

// --- Packets, built and checked independently of warden_enforcer::offload ---------------

fn csum_sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum()
}

fn csum_fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An IP packet from `src` to `dst` carrying `l4` (protocol `proto`) with its checksum at
/// `csum_at` in `l4` filled in.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let pseudo = csum_sum(&octets(src)) + csum_sum(&octets(dst)) + u32::from(proto);
    let c = !csum_fold(pseudo + l4.len() as u32 + csum_sum(&l4));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = if src.is_ipv6() {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        h.extend_from_slice(&[proto, 64]);
        h
    } else {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0xab, 0xcd, 0x40, 0, 64, proto, 0, 0]);
        h
    };
    p.extend_from_slice(&octets(src));
    p.extend_from_slice(&octets(dst));
    if src.is_ipv4() {
        let c = !csum_fold(csum_sum(&p));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

#[allow(clippy::too_many_arguments)]
fn tcp_packet(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&src.port().to_be_bytes());
    t.extend_from_slice(&dst.port().to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[((20 + options.len()) / 4 * 16) as u8, flags]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    ip_packet(src.ip(), dst.ip(), 6, t, 16)
}

fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ip_packet(src.ip(), dst.ip(), 17, u, 6)
}

/// A transport packet read back: addresses, protocol, transport header, payload. Panics if
/// a checksum does not verify.
struct Parsed {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: Vec<u8>,
}

impl Parsed {
    fn parse(p: &[u8]) -> Parsed {
        let (src, dst, proto, ihl) = match p[0] >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 15) * 4;
                assert_eq!(
                    csum_fold(csum_sum(&p[..ihl])),
                    0xffff,
                    "IPv4 header checksum"
                );
                assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
                let a: [u8; 4] = p[12..16].try_into().unwrap();
                let b: [u8; 4] = p[16..20].try_into().unwrap();
                (IpAddr::from(a), IpAddr::from(b), p[9], ihl)
            }
            6 => {
                assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])) + 40, p.len());
                let a: [u8; 16] = p[8..24].try_into().unwrap();
                let b: [u8; 16] = p[24..40].try_into().unwrap();
                (IpAddr::from(a), IpAddr::from(b), p[6], 40)
            }
            v => panic!("IP version {v}"),
        };
        let l4 = p[ihl..].to_vec();
        if proto == 6 || proto == 17 {
            let pseudo = csum_sum(&octets(src)) + csum_sum(&octets(dst)) + u32::from(proto);
            let sum = csum_fold(pseudo + l4.len() as u32 + csum_sum(&l4));
            assert_eq!(sum, 0xffff, "transport checksum of protocol {proto}");
        }
        Parsed {
            src,
            dst,
            proto,
            l4,
        }
    }

    fn ports(&self) -> (u16, u16) {
        (
            u16::from_be_bytes([self.l4[0], self.l4[1]]),
            u16::from_be_bytes([self.l4[2], self.l4[3]]),
        )
    }

    fn seq(&self) -> u32 {
        u32::from_be_bytes(self.l4[4..8].try_into().unwrap())
    }

    fn flags(&self) -> u8 {
        self.l4[13]
    }

    fn payload(&self) -> &[u8] {
        match self.proto {
            6 => &self.l4[usize::from(self.l4[12] >> 4) * 4..],
            _ => &self.l4[8..],
        }
    }
}

fn pattern(n: usize, salt: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31 + i / 241 + salt) % 256) as u8)
        .collect()
}

// --- TUN plumbing -------------------------------------------------------------------------

/// The test's side of the link: local (kernel) and peer (this test) addresses.
struct Link {
    local: IpAddr,
    peer: IpAddr,
}

/// Opens a TUN with 2 queues in the calling thread's namespace `ns`, addresses it, sets it
/// up.
fn open_tun(ns: &Netns, v6: bool) -> (Tun, Link) {
    let name = if v6 { "wdtun6" } else { "wdtun4" };
    let tun = Tun::open(name, 2).unwrap();
    eprintln!("TUN {} offloads: {:?}", tun.name(), tun.offloads());
    tun.set_mtu(1500).unwrap();
    let (local, peer, cidr) = if v6 {
        ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::1/64")
    } else {
        ("192.0.2.1", "192.0.2.2", "192.0.2.1/24")
    };
    ns.add_address(name, cidr).unwrap();
    tun.set_up().unwrap();
    let link = Link {
        local: local.parse().unwrap(),
        peer: peer.parse().unwrap(),
    };
    (tun, link)
}

/// One packet from whichever queue has one, or None at the deadline.
fn read_any(queues: &[TunQueue], buf: &mut [u8], deadline: Instant) -> Option<usize> {
    while Instant::now() < deadline {
        for q in queues {
            match q.read(buf) {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("TUN read: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// Writes one whole packet (virtio-net header first) into the TUN.
fn write_all(q: &TunQueue, bytes: &[u8]) {
    assert_eq!(q.write(bytes).unwrap(), bytes.len());
}

/// Writes a single IP packet behind a header of zeros.
fn write_plain(q: &TunQueue, pkt: &[u8]) {
    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend_from_slice(pkt);
    write_all(q, &out);
}

// --- (a) TCP: TSO reads, coalesced writes --------------------------------------------------

const SENT: usize = 256 * 1024;
const ECHO_SEGMENTS: usize = 40;
const ECHO_SEG: usize = 1000;

/// The kernel connects to the test through the TUN; the test answers the handshake by hand,
/// reads the 256 KiB the socket writes (as super-packets, segmented by `offload::segment`),
/// acknowledges it, then sends 40 segments back merged by the Coalescer into one TSO write.
fn tcp_stream_through_tun(v6: bool) {
    let ns = Netns::new().unwrap();
    ns.run(|| {
        let (tun, link) = open_tun(&ns, v6);
        assert!(tun.offloads().tso4 && tun.offloads().tso6 && tun.offloads().csum);
        let peer = SocketAddr::new(link.peer, 5001);
        let sent = pattern(SENT, 0);
        let echo = pattern(ECHO_SEGMENTS * ECHO_SEG, 7);
        std::thread::scope(|s| {
            let client = s.spawn(|| {
                let mut c = TcpStream::connect_timeout(&peer, Duration::from_secs(5)).unwrap();
                c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(&sent).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let mut back = vec![0u8; echo.len()];
                c.read_exact(&mut back).unwrap();
                back
            });
            play_peer(&tun, &link, &sent, &echo);
            let back = client.join().unwrap();
            assert!(
                back == echo,
                "the socket read other bytes than the coalesced write"
            );
        });
    });
}

fn play_peer(tun: &Tun, link: &Link, sent: &[u8], echo: &[u8]) {
    let queues = tun.queues();
    let peer = SocketAddr::new(link.peer, 5001);
    let mss: u16 = if link.peer.is_ipv6() { 1440 } else { 1460 };
    let our_isn: u32 = 0x7000_0000;
    let mut buf = vec![0u8; TUN_BUF_LEN];
    let mut segs = SegmentBuf::new();
    let mut got = vec![0u8; sent.len()];
    let mut have = 0usize;
    let mut client: Option<(SocketAddr, u32)> = None;
    let mut fin = false;
    let (mut reads, mut gso_reads, mut largest) = (0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(have == sent.len() && fin) {
        let n = read_any(queues, &mut buf, deadline)
            .unwrap_or_else(|| panic!("no TUN packet in time; {have} bytes so far"));
        let (hdr, pkt) = VnetHdr::parse(&buf[..n]).unwrap();
        let gso = hdr.gso_type & !VnetHdr::GSO_ECN;
        reads += 1;
        largest = largest.max(pkt.len());
        if (gso == VnetHdr::GSO_TCPV4 || gso == VnetHdr::GSO_TCPV6) && pkt.len() > 1500 {
            gso_reads += 1;
        }
        let mut reply = false;
        for s in segment(&hdr, pkt, &mut segs).unwrap().iter() {
            assert!(s.len() <= 1500, "a segment longer than the MTU");
            let p = Parsed::parse(s);
            if p.proto != 6 || p.ports().1 != 5001 || p.dst != link.peer {
                continue; // e.g. IPv6 router solicitations and MLD reports
            }
            if p.flags() & SYN != 0 {
                let from = SocketAddr::new(p.src, p.ports().0);
                client = Some((from, p.seq()));
                // MSS, NOP, window scale 7 (RFC 9293 §3.7.1, RFC 7323 §2).
                let [a, b] = mss.to_be_bytes();
                let options = [2, 4, a, b, 1, 3, 3, 7];
                let syn_ack = tcp_packet(
                    peer,
                    from,
                    our_isn,
                    p.seq().wrapping_add(1),
                    SYN | ACK,
                    65535,
                    &options,
                    &[],
                );
                write_plain(&queues[0], &syn_ack);
                continue;
            }
            let (_, isn) = client.expect("data before the SYN");
            let off = p.seq().wrapping_sub(isn.wrapping_add(1)) as usize;
            let data = p.payload();
            if off <= have && off + data.len() > have && off + data.len() <= sent.len() {
                got[off..off + data.len()].copy_from_slice(data);
                have = off + data.len();
            }
            if p.flags() & FIN != 0 && off + data.len() == sent.len() {
                fin = true;
            }
            reply = true;
        }
        if let (true, Some((from, isn))) = (reply, client) {
            let ack = isn.wrapping_add(1 + have as u32 + u32::from(fin));
            let pkt = tcp_packet(peer, from, our_isn + 1, ack, ACK, 65535, &[], &[]);
            write_plain(&queues[0], &pkt);
        }
    }
    eprintln!(
        "TCP/IPv{}: {reads} TUN reads for {} bytes, {gso_reads} TSO super-packets, largest read \
         {largest} bytes of IP",
        if link.peer.is_ipv6() { 6 } else { 4 },
        sent.len()
    );
    assert!(
        got == sent,
        "the bytes read from the TUN differ from what the socket wrote"
    );
    assert!(
        gso_reads > 0,
        "no TSO super-packet longer than 1500 bytes was read"
    );

    // Now the other way: 40 segments of one flow, merged into one TSO write.
    let (from, isn) = client.unwrap();
    let ack = isn.wrapping_add(1 + sent.len() as u32 + 1);
    let mut co = Coalescer::new();
    let mut writes = Vec::new();
    for (i, chunk) in echo.chunks(ECHO_SEG).enumerate() {
        let last = (i + 1) * ECHO_SEG >= echo.len();
        let seq = our_isn + 1 + (i * ECHO_SEG) as u32;
        let flags = if last { ACK | PSH } else { ACK };
        let seg = tcp_packet(peer, from, seq, ack, flags, 65535, &[], chunk);
        if let Some(w) = co.push(&seg).unwrap() {
            writes.push(w.to_vec());
        }
    }
    writes.extend(co.flush().map(<[u8]>::to_vec));
    assert_eq!(
        writes.len(),
        1,
        "40 segments of one flow make one super-packet"
    );
    let (h, _) = VnetHdr::parse(&writes[0]).unwrap();
    let want = if link.peer.is_ipv6() {
        VnetHdr::GSO_TCPV6
    } else {
        VnetHdr::GSO_TCPV4
    };
    assert_eq!((h.gso_type, usize::from(h.gso_size)), (want, ECHO_SEG));
    for w in &writes {
        write_all(&queues[0], w);
    }
    eprintln!("wrote one TSO packet of {} bytes", writes[0].len());
}

#[test]
fn tcp_over_ipv4_reads_tso_super_packets_and_takes_coalesced_writes() {
    if skip_without_netns("tcp_over_ipv4_reads_tso_super_packets_and_takes_coalesced_writes") {
        return;
    }
    tcp_stream_through_tun(false);
}

#[test]
fn tcp_over_ipv6_reads_tso_super_packets_and_takes_coalesced_writes() {
    if skip_without_netns("tcp_over_ipv6_reads_tso_super_packets_and_takes_coalesced_writes") {
        return;
    }
    tcp_stream_through_tun(true);
}

// --- (a') USO reads ---------------------------------------------------------------------

/// A UDP_SEGMENT send (through WireSocket::send_gso) into the TUN arrives as one USO
/// super-packet, and segmenting it gives the datagrams that were sent.
#[test]
fn udp_gso_send_reads_as_uso_super_packet() {
    if skip_without_netns("udp_gso_send_reads_as_uso_super_packet") {
        return;
    }
    let ns = Netns::new().unwrap();
    ns.run(|| {
        for v6 in [false, true] {
            let (tun, link) = open_tun(&ns, v6);
            let sock = WireSocket::bind(SocketAddr::new(link.local, 0), false).unwrap();
            let data = pattern(30_000, 3);
            sock.send_gso(SocketAddr::new(link.peer, 9999), &data, 1400)
                .unwrap();
            let mut buf = vec![0u8; TUN_BUF_LEN];
            let mut segs = SegmentBuf::new();
            let mut got = Vec::new();
            let mut uso_reads = 0;
            let mut sizes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < data.len() {
                let n = read_any(tun.queues(), &mut buf, deadline).expect("UDP data in time");
                let (hdr, pkt) = VnetHdr::parse(&buf[..n]).unwrap();
                if hdr.gso_type == VnetHdr::GSO_UDP_L4 {
                    uso_reads += 1;
                    eprintln!(
                        "USO read: {} bytes of IP, gso_size {}",
                        pkt.len(),
                        hdr.gso_size
                    );
                }
                for s in segment(&hdr, pkt, &mut segs).unwrap().iter() {
                    let p = Parsed::parse(s);
                    if p.proto == 17 && p.ports().1 == 9999 {
                        sizes.push(p.payload().len());
                        got.extend_from_slice(p.payload());
                    }
                }
            }
            assert!(got == data, "USO segments differ from the datagrams sent");
            assert_eq!(sizes.len(), 22);
            assert!(sizes[..21].iter().all(|s| *s == 1400) && sizes[21] == 600);
            assert!(tun.offloads().uso4 && tun.offloads().uso6);
            assert!(
                uso_reads > 0,
                "IPv{}: no USO super-packet",
                if v6 { 6 } else { 4 }
            );
        }
    });
}

// --- (b) TUN writes reach sockets ---------------------------------------------------------

/// UDP packets written through the Coalescer (alone: a header of zeros) reach a socket.
#[test]
fn tun_writes_reach_a_udp_socket() {
    if skip_without_netns("tun_writes_reach_a_udp_socket") {
        return;
    }
    let ns = Netns::new().unwrap();
    ns.run(|| {
        for v6 in [false, true] {
            let (tun, link) = open_tun(&ns, v6);
            let listener = UdpSocket::bind(SocketAddr::new(link.local, 7000)).unwrap();
            listener
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let from = SocketAddr::new(link.peer, 4000);
            let mut co = Coalescer::new();
            let mut writes = Vec::new();
            for msg in [&b"first through the TUN"[..], b"second"] {
                let pkt = udp_packet(from, listener.local_addr().unwrap(), msg);
                if let Some(w) = co.push(&pkt).unwrap() {
                    writes.push(w.to_vec());
                }
            }
            writes.extend(co.flush().map(<[u8]>::to_vec));
            assert_eq!(writes.len(), 2);
            for w in &writes {
                assert_eq!(&w[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
                write_all(&tun.queues()[1], w);
            }
            let mut buf = [0u8; 100];
            for want in [&b"first through the TUN"[..], b"second"] {
                let (n, src) = listener.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], src), (want, from));
            }
        }
    });
}

// --- (c) Wire sockets: GSO, GRO, batches, SO_REUSEPORT ---------------------------------------

fn recv_until(
    sock: &WireSocket,
    batch: &mut RecvBatch,
    want: usize,
) -> Vec<(SocketAddr, Option<u16>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while total < want {
        assert!(
            Instant::now() < deadline,
            "only {total} of {want} bytes arrived"
        );
        match sock.recv_batch(batch) {
            Ok(n) => {
                assert_eq!(n, batch.len());
                for d in batch.iter_mut() {
                    assert!(!d.truncated);
                    total += d.data.len();
                    out.push((d.src, d.gro_size, d.data.to_vec()));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    out
}

/// 40 datagrams of 1400 bytes and a short one leave in one send_gso and arrive coalesced
/// (UDP_GRO) with the segment size reported; split by it they are exactly what was sent.
#[test]
fn wire_socket_gso_send_arrives_as_gro_datagram() {
    if skip_without_netns("wire_socket_gso_send_arrives_as_gro_datagram") {
        return;
    }
    let ns = Netns::new().unwrap();
    ns.run(|| {
        for lo in ["127.0.0.1", "::1"] {
            let ip: IpAddr = lo.parse().unwrap();
            let rx = WireSocket::bind(SocketAddr::new(ip, 0), false).unwrap();
            let tx = WireSocket::bind(SocketAddr::new(ip, 0), false).unwrap();
            assert!(rx.gro_enabled() && tx.gso_enabled());
            let data = pattern(40 * 1400 + 321, 9);
            tx.send_gso(rx.local_addr().unwrap(), &data, 1400).unwrap();
            assert!(tx.gso_enabled());
            let mut batch = RecvBatch::for_gro(16);
            let got = recv_until(&rx, &mut batch, data.len());
            let mut joined = Vec::new();
            let mut segments = Vec::new();
            for (src, gro, bytes) in &got {
                assert_eq!(*src, tx.local_addr().unwrap());
                let size = gro.map_or(bytes.len(), usize::from);
                for s in bytes.chunks(size) {
                    segments.push(s.len());
                    joined.extend_from_slice(s);
                }
            }
            assert!(
                joined == data,
                "the received segments differ from what was sent"
            );
            assert_eq!(segments.len(), 41);
            assert!(segments[..40].iter().all(|s| *s == 1400) && segments[40] == 321);
            let coalesced: Vec<_> = got
                .iter()
                .filter(|(_, _, b)| b.len() > 1400)
                .map(|(_, gro, b)| (*gro, b.len()))
                .collect();
            eprintln!(
                "{lo}: {} datagrams received, coalesced: {coalesced:?}",
                got.len()
            );
            assert!(!coalesced.is_empty(), "nothing arrived coalesced");
            assert!(coalesced.iter().all(|(gro, _)| *gro == Some(1400)));
        }
    });
}

/// SO_REUSEPORT lets two sockets share a port (not a third without it); send_batch reaches
/// several destinations with datagrams of different sizes; a slot too small marks truncation;
/// port-0 binds give distinct source ports.
#[test]
fn wire_sockets_share_a_port_and_send_batches() {
    if skip_without_netns("wire_sockets_share_a_port_and_send_batches") {
        return;
    }
    let ns = Netns::new().unwrap();
    ns.run(|| {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = WireSocket::bind(any, true).unwrap();
        let shared = a.local_addr().unwrap();
        let b = WireSocket::bind(shared, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), shared);
        let e = WireSocket::bind(shared, false).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AddrInUse);

        let pool: Vec<WireSocket> = (0..4)
            .map(|_| WireSocket::bind(any, false).unwrap())
            .collect();
        let ports: std::collections::BTreeSet<u16> = pool
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 4);
        assert!(!ports.contains(&0));

        let (d1, d2) = (&pool[0], &pool[1]);
        let tx = &pool[2];
        let mut out = SendBatch::new(8, 2048);
        let sizes = [1, 700, 1500, 33, 2048];
        for (i, n) in sizes.iter().enumerate() {
            let dst = if i % 2 == 0 { d1 } else { d2 };
            assert!(out.push(dst.local_addr().unwrap(), &pattern(*n, i)));
        }
        assert_eq!(tx.send_batch(&out).unwrap(), sizes.len());
        let mut batch = RecvBatch::new(8, 2048);
        let at_d1 = recv_until(d1, &mut batch, 1 + 1500 + 2048);
        let at_d2 = recv_until(d2, &mut batch, 700 + 33);
        let lens = |v: &[(SocketAddr, Option<u16>, Vec<u8>)]| -> Vec<usize> {
            v.iter().map(|(_, _, b)| b.len()).collect()
        };
        assert_eq!(lens(&at_d1), [1, 1500, 2048]);
        assert_eq!(lens(&at_d2), [700, 33]);
        assert_eq!(at_d1[2].2, pattern(2048, 4));
        assert!(at_d1
            .iter()
            .all(|(src, gro, _)| *src == tx.local_addr().unwrap() && gro.is_none()));

        // A 500-byte datagram into 100-byte slots: cut short and marked.
        let mut small = RecvBatch::new(2, 100);
        let mut one = SendBatch::new(1, 600);
        assert!(one.push(d1.local_addr().unwrap(), &[7; 500]));
        assert_eq!(tx.send_batch(&one).unwrap(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match d1.recv_batch(&mut small) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv_batch: {e}"),
            }
        }
        let d = small.get_mut(0).unwrap();
        assert!(d.truncated);
        assert_eq!(d.data.len(), 100);
    });
}
