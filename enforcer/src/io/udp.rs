//! The wire socket: ESP-in-UDP (RFC 3948) over a UDP socket that sends many datagrams per
//! call (UDP_SEGMENT, Linux 4.18) and receives coalesced ones (UDP_GRO, Linux 5.0), both in
//! include/uapi/linux/udp.h.
//!
//! ```text
//!   send_gso(dst, d0 ‖ d1 ‖ … ‖ dn, size)  ── sendmsg + UDP_SEGMENT ──► n+1 datagrams
//!                                  └─ EIO/EINVAL: sendmmsg, one datagram each, from then on
//!   recv_batch ── recvmmsg ──► per message: source, bytes, UDP_GRO size (bytes = d0 ‖ … ‖ dn)
//! ```
//! With SO_REUSEPORT every worker binds its own socket to the same port and the kernel spreads
//! flows over them by 4-tuple hash.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::slice::ChunksMut;
use std::sync::atomic::{AtomicBool, Ordering};

pub use super::sys::MAX_BATCH;
use super::sys::{self, Received};

/// Most datagrams in one UDP_SEGMENT send: the kernel's `UDP_MAX_SEGMENTS` (include/linux/udp.h)
/// was 64 and is 128 in recent kernels; 64 works everywhere.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Slot size for receiving with UDP_GRO: a coalesced datagram is at most 64 KiB.
pub const GRO_BUF_LEN: usize = 65_536;
/// Largest UDP payload: 65535 minus the IPv4 (20) and UDP (8) headers (RFC 791, RFC 768) ...
const MAX_PAYLOAD_V4: usize = 65_507;
/// ... and minus the UDP header within the IPv6 payload length (RFC 8200 §3).
const MAX_PAYLOAD_V6: usize = 65_527;

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A UDP socket for ESP-in-UDP, non-blocking.
pub struct WireSocket {
    sock: UdpSocket,
    v6: bool,
    gro: bool,
    /// Cleared for good when the kernel refuses UDP_SEGMENT.
    gso: AtomicBool,
}

impl WireSocket {
    /// Binds to `addr` (port 0: an ephemeral port, e.g. for a pool of source ports), with
    /// SO_REUSEPORT if asked; IPv6 sockets are IPv6-only. Turns UDP_GRO on if the kernel has it
    /// (see [`WireSocket::gro_enabled`]); then receive into [`GRO_BUF_LEN`] slots.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<WireSocket> {
        let v6 = addr.is_ipv6();
        let fd = sys::dgram_socket(if v6 { libc::AF_INET6 } else { libc::AF_INET })?;
        if v6 {
            sys::setsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        if reuse_port {
            sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        let gro = sys::setsockopt_int(fd.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        // Setting the socket's default segment size to 0 (none) tells whether the kernel knows
        // UDP_SEGMENT; sends then ask for it per call.
        let gso = sys::setsockopt_int(fd.as_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        sys::bind(fd.as_fd(), &addr)?;
        let sock = UdpSocket::from(fd);
        sock.set_nonblocking(true)?;
        Ok(WireSocket {
            sock,
            v6,
            gro,
            gso: AtomicBool::new(gso),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Whether received datagrams may be coalesced (UDP_GRO accepted).
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Whether [`WireSocket::send_gso`] still uses UDP_SEGMENT (false after a refusal).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    /// Receives up to the batch's capacity of datagrams (at least one, or WouldBlock when
    /// non-blocking and none is there); returns how many, also in [`RecvBatch::len`].
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.count = 0;
        let n = sys::recvmmsg(
            self.sock.as_fd(),
            &mut batch.buf,
            batch.slot_len,
            &mut batch.info,
        )?;
        batch.count = n;
        Ok(n)
    }

    /// Sends `buf` to `dst` as datagrams of `segment_size` bytes (the last may be shorter):
    /// one sendmsg with UDP_SEGMENT, or, if the kernel refuses it (EIO: no checksum offload or
    /// an xfrm route; EINVAL), from then on one sendmmsg with a datagram each. At most
    /// [`MAX_GSO_SEGMENTS`] datagrams and 65507 bytes (IPv4) or 65527 bytes (IPv6) in all; a
    /// datagram larger than the path MTU fails with EMSGSIZE. On error a first part of the
    /// datagrams may have been sent (ESP's replay window drops any that are sent again).
    pub fn send_gso(&self, dst: SocketAddr, buf: &[u8], segment_size: usize) -> io::Result<()> {
        if dst.is_ipv6() != self.v6 {
            return Err(invalid("destination of the other address family"));
        }
        if segment_size == 0 {
            return Err(invalid("segment size 0"));
        }
        if buf.len() <= segment_size {
            return self.send_whole(dst, buf);
        }
        let max = if self.v6 {
            MAX_PAYLOAD_V6
        } else {
            MAX_PAYLOAD_V4
        };
        if buf.len() > max || buf.len().div_ceil(segment_size) > MAX_GSO_SEGMENTS {
            return Err(invalid(
                "more than 64 segments or more than a UDP datagram's worth of bytes",
            ));
        }
        if self.gso_enabled() {
            // segment_size < buf.len() <= 65527, so it fits the u16.
            let size = u16::try_from(segment_size).map_err(|_| invalid("segment size"))?;
            match sys::sendmsg(self.sock.as_fd(), &dst, buf, Some(size)) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short send")),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    tracing::info!(error = %e, "UDP_SEGMENT refused; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let total = buf.len().div_ceil(segment_size);
        let mut sent = 0;
        while sent < total {
            let rest = buf.chunks(segment_size).skip(sent).map(|d| (dst, d));
            match sys::sendmmsg(self.sock.as_fd(), rest)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "sendmmsg sent nothing",
                    ))
                }
                n => sent += n,
            }
        }
        Ok(())
    }

    fn send_whole(&self, dst: SocketAddr, buf: &[u8]) -> io::Result<()> {
        let n = sys::sendmsg(self.sock.as_fd(), &dst, buf, None)?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short send"))
        }
    }

    /// Sends the batch's datagrams, each to its own destination, with sendmmsg (as many calls
    /// as needed). Returns how many were sent, counted from the first: fewer than
    /// [`SendBatch::len`] when a later one failed (the rest is the caller's to drop or retry);
    /// an error only if the first failed.
    pub fn send_batch(&self, batch: &SendBatch) -> io::Result<usize> {
        let mut sent = 0;
        while sent < batch.len() {
            match sys::sendmmsg(self.sock.as_fd(), batch.iter().skip(sent)) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}

impl AsFd for WireSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for WireSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Receive buffers for [`WireSocket::recv_batch`], allocated once: `messages` slots (1 to
/// [`MAX_BATCH`]) of `slot_len` bytes (1 to [`GRO_BUF_LEN`]).
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    info: Box<[Received]>,
    count: usize,
}

impl RecvBatch {
    pub fn new(messages: usize, slot_len: usize) -> RecvBatch {
        let messages = messages.clamp(1, MAX_BATCH);
        let slot_len = slot_len.clamp(1, GRO_BUF_LEN);
        RecvBatch {
            buf: vec![0; messages * slot_len].into_boxed_slice(),
            slot_len,
            info: vec![Received::EMPTY; messages].into_boxed_slice(),
            count: 0,
        }
    }

    /// `messages` slots of [`GRO_BUF_LEN`]: never truncates a coalesced datagram.
    pub fn for_gro(messages: usize) -> RecvBatch {
        RecvBatch::new(messages, GRO_BUF_LEN)
    }

    /// Datagrams from the last [`WireSocket::recv_batch`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn get_mut(&mut self, i: usize) -> Option<Datagram<'_>> {
        self.iter_mut().nth(i)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = Datagram<'_>> {
        self.buf
            .chunks_mut(self.slot_len)
            .zip(self.info.iter())
            .take(self.count)
            .map(|(slot, r)| Datagram {
                src: r
                    .src
                    .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
                data: slot.get_mut(..r.len.min(slot.len())).unwrap_or_default(),
                gro_size: r.gro_size,
                truncated: r.truncated,
            })
    }
}

/// One received message.
pub struct Datagram<'a> {
    /// The sender (0.0.0.0:0 if the kernel gave no address).
    pub src: SocketAddr,
    /// The payload, in the batch's buffer (mutable, for opening ESP in place).
    pub data: &'a mut [u8],
    /// With UDP_GRO: `data` is several datagrams from `src` of this size, the last possibly
    /// shorter (net/ipv4/udp.c `udp_cmsg_recv`). None: one datagram.
    pub gro_size: Option<u16>,
    /// The slot was too small and `data` is cut short: drop it.
    pub truncated: bool,
}

impl Datagram<'_> {
    /// The datagrams in `data`: split by `gro_size`, or all of it.
    pub fn segments(&mut self) -> ChunksMut<'_, u8> {
        let size = self.gro_size.map_or(self.data.len(), usize::from).max(1);
        self.data.chunks_mut(size)
    }
}

/// Datagrams to send with [`WireSocket::send_batch`], in buffers allocated once: `messages`
/// slots (1 to [`MAX_BATCH`]) of `slot_len` bytes (1 to 65536). Fill a slot in place
/// ([`SendBatch::slot`], then [`SendBatch::commit`]) or copy ([`SendBatch::push`]).
pub struct SendBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    msgs: Vec<(SocketAddr, usize)>,
    capacity: usize,
}

impl SendBatch {
    pub fn new(messages: usize, slot_len: usize) -> SendBatch {
        let capacity = messages.clamp(1, MAX_BATCH);
        let slot_len = slot_len.clamp(1, 65_536);
        SendBatch {
            buf: vec![0; capacity * slot_len].into_boxed_slice(),
            slot_len,
            msgs: Vec::with_capacity(capacity),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.msgs.len() >= self.capacity
    }

    pub fn clear(&mut self) {
        self.msgs.clear();
    }

    /// The next free slot, to write a datagram into; None when full.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let start = self.msgs.len() * self.slot_len;
        self.buf.get_mut(start..start + self.slot_len)
    }

    /// Adds the first `len` bytes of the slot from [`SendBatch::slot`] as a datagram to `dst`.
    /// False (nothing added) when full or `len` exceeds the slot.
    pub fn commit(&mut self, dst: SocketAddr, len: usize) -> bool {
        if self.is_full() || len > self.slot_len {
            return false;
        }
        self.msgs.push((dst, len));
        true
    }

    /// Copies `data` into the next slot as a datagram to `dst`; false when it does not fit.
    pub fn push(&mut self, dst: SocketAddr, data: &[u8]) -> bool {
        match self.slot().and_then(|s| s.get_mut(..data.len())) {
            Some(s) => {
                s.copy_from_slice(data);
                self.commit(dst, data.len())
            }
            None => false,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.buf
            .chunks(self.slot_len)
            .zip(self.msgs.iter())
            .map(|(slot, (dst, len))| (*dst, slot.get(..*len).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::time::{Duration, Instant};

    fn recv_all(sock: &WireSocket, want: usize) -> (Vec<u8>, Vec<Option<u16>>) {
        let mut batch = RecvBatch::for_gro(8);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want && Instant::now() < deadline {
            match sock.recv_batch(&mut batch) {
                Ok(_) => {
                    for mut d in batch.iter_mut() {
                        assert!(!d.truncated);
                        sizes.push(d.gro_size);
                        for s in d.segments() {
                            got.extend_from_slice(s);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        (got, sizes)
    }

    /// A socket with SO_NO_CHECK makes the kernel refuse UDP_SEGMENT with EINVAL
    /// (net/ipv4/udp.c `udp_send_skb`): the send falls back and remembers it.
    #[test]
    fn gso_falls_back_when_the_kernel_refuses() {
        let rx = WireSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let tx = WireSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(tx.gso_enabled());
        sys::setsockopt_int(tx.as_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let data: Vec<u8> = (0..10 * 1000 + 7).map(|i| (i % 251) as u8).collect();
        tx.send_gso(rx.local_addr().unwrap(), &data, 1000).unwrap();
        assert!(!tx.gso_enabled());
        let (got, _) = recv_all(&rx, data.len());
        assert_eq!(got, data);
        // Later sends go datagram by datagram at once.
        tx.send_gso(rx.local_addr().unwrap(), &data, 1000).unwrap();
        assert_eq!(recv_all(&rx, data.len()).0, data);
    }

    #[test]
    fn limits_are_checked_before_the_kernel() {
        let tx = WireSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let kind = |r: io::Result<()>| r.err().map(|e| e.kind());
        let big = vec![0u8; 65_508];
        assert_eq!(
            kind(tx.send_gso(dst, &big, 1400)),
            Some(io::ErrorKind::InvalidInput)
        );
        assert_eq!(
            kind(tx.send_gso(dst, &[0; 650], 10)),
            Some(io::ErrorKind::InvalidInput)
        );
        assert_eq!(
            kind(tx.send_gso(dst, &[0; 65], 0)),
            Some(io::ErrorKind::InvalidInput)
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            kind(tx.send_gso(v6, &[0; 65], 10)),
            Some(io::ErrorKind::InvalidInput)
        );
        assert!(tx.gso_enabled());
    }

    #[test]
    fn send_batch_slots_hold_what_was_committed() {
        let dst: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let mut b = SendBatch::new(2, 8);
        assert!(b.push(dst, b"abc"));
        assert!(!b.push(dst, &[0; 9]));
        let slot = b.slot().unwrap();
        slot[..2].copy_from_slice(b"de");
        assert!(!b.commit(dst, 9));
        assert!(b.commit(dst, 2));
        assert!(b.is_full() && b.slot().is_none() && !b.commit(dst, 1));
        let got: Vec<(SocketAddr, Vec<u8>)> = b.iter().map(|(a, d)| (a, d.to_vec())).collect();
        assert_eq!(got, [(dst, b"abc".to_vec()), (dst, b"de".to_vec())]);
        b.clear();
        assert!(b.is_empty());
    }
}
