//! The virtio-net offload format at the TUN boundary, sans-I/O: splitting the host's
//! super-packets into standalone IP packets, and merging decrypted TCP segments back into
//! super-packets for one TUN write each.
//!
//! ```text
//!  TUN read:  virtio_net_hdr (10) ‖ IP packet (≤ 64 KiB, TSO/USO)  ── segment ──►  SegmentBuf:
//!             IP packets, each ≤ hdrs + gso_size, with full IPv4 and TCP/UDP checksums
//!  TUN write: IP packets ── Coalescer::push ──►  virtio_net_hdr ‖ IP packet (TCP segments of
//!             one flow merged, gso_type TCPV4/TCPV6, checksum left partial for the kernel)
//! ```
//!
//! The header is `struct virtio_net_hdr` of include/uapi/linux/virtio_net.h, little-endian
//! (the TUN is set to little-endian with TUNSETVNETLE; virtio 1.2 §5.1.6). With
//! `VIRTIO_NET_HDR_F_NEEDS_CSUM` the transport checksum field holds the pseudo-header sum
//! and the sum over `csum_start..` still has to be added (virtio 1.2 §5.1.6.2). The bytes come
//! from the untrusted host: nothing here panics or allocates per packet, and every length is
//! checked before use.

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// Largest IP packet accepted after the header: an IPv6 packet with a 65535-byte payload
/// (65575 bytes) fits; BIG TCP (`gso_max_size` > 64 KiB) is not supported.
pub const MAX_SUPER: usize = 65_536 + 64;
/// Most segments one super-packet may produce: 64 KiB at a gso_size of 256 or more (an MSS
/// of 536, the IPv4 minimum of RFC 9293 §3.7.1, needs 123).
pub const MAX_SEGMENTS: usize = 256;
/// Largest IP packet the [`Coalescer`] builds (the IPv4 total length field's limit).
pub const MAX_COALESCED: usize = 65_535;
/// Longest headers copied into each segment: IPv4 with options (60) and TCP with options (60).
const MAX_HEADERS: usize = 120;
const ARENA_LEN: usize = MAX_SUPER + MAX_SEGMENTS * MAX_HEADERS;

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Offset of the checksum field in the TCP (RFC 9293 §3.1) and UDP (RFC 768) headers.
const TCP_CSUM: u16 = 16;
const UDP_CSUM: u16 = 6;

/// Why a header or packet was refused. The data plane drops the packet and counts the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    #[error("shorter than the {VNET_HDR_LEN}-byte virtio-net header")]
    ShortHeader,
    #[error("unknown virtio-net header flags {0:#04x}")]
    Flags(u8),
    #[error("unsupported gso_type {0:#04x}")]
    GsoType(u8),
    #[error("the packet is {0} bytes, more than {MAX_SUPER}")]
    TooLarge(usize),
    #[error("hdr_len {hdr_len} is beyond the packet ({len} bytes)")]
    HdrLen { hdr_len: u16, len: usize },
    #[error("csum_start {start} + csum_offset {offset} is outside the packet ({len} bytes)")]
    CsumRange { start: u16, offset: u16, len: usize },
    #[error("gso_size {0} is not usable")]
    GsoSize(u16),
    #[error("the packet makes {0} segments, more than {MAX_SEGMENTS}")]
    TooManySegments(usize),
    #[error(
        "gso_type {gso_type:#04x} does not match an IPv{version} packet of protocol {protocol}"
    )]
    Protocol {
        gso_type: u8,
        version: u8,
        protocol: u8,
    },
    #[error("malformed {field} at byte {offset}")]
    Malformed { field: &'static str, offset: usize },
    #[error("{0} are not supported with GSO")]
    Unsupported(&'static str),
    #[error("the output buffer is too small")]
    Buffer,
}

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), fields in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers; from the kernel only a hint (it may be the whole linear part of
    /// the skb), so [`segment`] checks it against the packet but finds the headers itself.
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    /// Legacy UDP fragmentation offload (UFO): refused.
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation offload (USO, Linux 6.2).
    pub const GSO_UDP_L4: u8 = 5;
    /// The TCP super-packet carries CWR (RFC 3168); only with TCPV4/TCPV6.
    pub const GSO_ECN: u8 = 0x80;

    /// Splits `buf` into the header and the packet after it. Refuses unknown flags and
    /// gso_types (including UFO); lengths are checked against the packet by [`segment`].
    pub fn parse(buf: &[u8]) -> Result<(VnetHdr, &[u8]), OffloadError> {
        let (head, packet) = buf
            .split_first_chunk::<VNET_HDR_LEN>()
            .ok_or(OffloadError::ShortHeader)?;
        let [flags, gso_type, a, b, c, d, e, f, g, h] = *head;
        let hdr = VnetHdr {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([a, b]),
            gso_size: u16::from_le_bytes([c, d]),
            csum_start: u16::from_le_bytes([e, f]),
            csum_offset: u16::from_le_bytes([g, h]),
        };
        hdr.check()?;
        Ok((hdr, packet))
    }

    /// Writes the header in the wire (little-endian) layout.
    pub fn write(&self, out: &mut [u8; VNET_HDR_LEN]) {
        let [a, b] = self.hdr_len.to_le_bytes();
        let [c, d] = self.gso_size.to_le_bytes();
        let [e, f] = self.csum_start.to_le_bytes();
        let [g, h] = self.csum_offset.to_le_bytes();
        *out = [self.flags, self.gso_type, a, b, c, d, e, f, g, h];
    }

    fn check(&self) -> Result<(), OffloadError> {
        if self.flags & !(Self::F_NEEDS_CSUM | Self::F_DATA_VALID) != 0 {
            return Err(OffloadError::Flags(self.flags));
        }
        match (
            self.gso_type & !Self::GSO_ECN,
            self.gso_type & Self::GSO_ECN != 0,
        ) {
            (Self::GSO_TCPV4 | Self::GSO_TCPV6, _) => Ok(()),
            (Self::GSO_NONE | Self::GSO_UDP_L4, false) => Ok(()),
            _ => Err(OffloadError::GsoType(self.gso_type)),
        }
    }
}

// --- Checksums (RFC 1071) ---------------------------------------------------------------

fn add(acc: u64, v: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(v);
    s + u64::from(carry)
}

/// `acc` plus the one's-complement sum of `data` (RFC 1071 §4), unfolded. Eight bytes at a
/// time with end-around carry: congruent to the 16-bit sum modulo 0xffff (RFC 1071 §2).
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        acc = add(acc, u64::from_be_bytes(w.try_into().unwrap_or_default()));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc = add(
            acc,
            u64::from(u16::from_be_bytes(p.try_into().unwrap_or_default())),
        );
    }
    if let [last] = pairs.remainder() {
        acc = add(acc, u64::from(*last) << 8);
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum: RFC 9293 §3.1 (IPv4), RFC 8200 §8.1 (IPv6).
fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    add(add(sum(dst, sum(src, 0)), u64::from(proto)), len as u64)
}

// --- Bounds-checked field access --------------------------------------------------------

fn byte(b: &[u8], at: usize, field: &'static str) -> Result<u8, OffloadError> {
    b.get(at)
        .copied()
        .ok_or(OffloadError::Malformed { field, offset: at })
}

fn be16(b: &[u8], at: usize, field: &'static str) -> Result<u16, OffloadError> {
    Ok(u16::from_be_bytes([
        byte(b, at, field)?,
        byte(b, at + 1, field)?,
    ]))
}

fn be32(b: &[u8], at: usize, field: &'static str) -> Result<u32, OffloadError> {
    let hi = be16(b, at, field)?;
    Ok(u32::from(hi) << 16 | u32::from(be16(b, at + 2, field)?))
}

fn put(b: &mut [u8], at: usize, v: &[u8]) -> Result<(), OffloadError> {
    b.get_mut(at..at + v.len())
        .ok_or(OffloadError::Buffer)?
        .copy_from_slice(v);
    Ok(())
}

fn put16(b: &mut [u8], at: usize, v: u16) -> Result<(), OffloadError> {
    put(b, at, &v.to_be_bytes())
}

/// The IP header: version 6 or not, its length, the protocol (no IPv6 extension headers).
struct Ip {
    v6: bool,
    len: usize,
    proto: u8,
}

impl Ip {
    /// Addresses (source ‖ destination) of the packet `p` that starts with this header.
    fn addrs<'p>(&self, p: &'p [u8]) -> (&'p [u8], &'p [u8]) {
        let (s, n) = if self.v6 { (8, 16) } else { (12, 4) };
        (
            p.get(s..s + n).unwrap_or_default(),
            p.get(s + n..s + 2 * n).unwrap_or_default(),
        )
    }

    /// An IPv4 (RFC 791 §3.1) or IPv6 (RFC 8200 §3) header whose length field covers exactly
    /// `p`; IPv4 fragments are refused.
    fn parse(p: &[u8]) -> Result<Ip, OffloadError> {
        let first = byte(p, 0, "IP version")?;
        match first >> 4 {
            4 => {
                let len = usize::from(first & 0x0f) * 4;
                if len < 20 || len > p.len() {
                    return Err(OffloadError::Malformed {
                        field: "IPv4 header length",
                        offset: 0,
                    });
                }
                if usize::from(be16(p, 2, "IPv4 total length")?) != p.len() {
                    return Err(OffloadError::Malformed {
                        field: "IPv4 total length",
                        offset: 2,
                    });
                }
                // RFC 791: MF or a fragment offset means a fragment.
                if be16(p, 6, "IPv4 fragment")? & 0x3fff != 0 {
                    return Err(OffloadError::Unsupported("IPv4 fragments"));
                }
                Ok(Ip {
                    v6: false,
                    len,
                    proto: byte(p, 9, "IPv4 protocol")?,
                })
            }
            6 => {
                if p.len() < 40 || usize::from(be16(p, 4, "IPv6 payload length")?) + 40 != p.len() {
                    return Err(OffloadError::Malformed {
                        field: "IPv6 payload length",
                        offset: 4,
                    });
                }
                Ok(Ip {
                    v6: true,
                    len: 40,
                    proto: byte(p, 6, "IPv6 next header")?,
                })
            }
            _ => Err(OffloadError::Malformed {
                field: "IP version",
                offset: 0,
            }),
        }
    }
}

/// IPv6 extension headers (RFC 8200 §4, IANA "IPv6 Extension Header Types").
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

// --- Segmentation -----------------------------------------------------------------------

/// Reusable output of [`segment`]: one flat arena (segments back to back) and their ends,
/// allocated once (about 96 KiB).
pub struct SegmentBuf {
    arena: Box<[u8]>,
    ends: Box<[usize]>,
}

impl Default for SegmentBuf {
    fn default() -> Self {
        SegmentBuf::new()
    }
}

impl SegmentBuf {
    pub fn new() -> SegmentBuf {
        SegmentBuf {
            arena: vec![0; ARENA_LEN].into_boxed_slice(),
            ends: vec![0; MAX_SEGMENTS].into_boxed_slice(),
        }
    }
}

/// The segments [`segment`] wrote, in order; valid until the buffer is used again. Mutable, so
/// the caller can encrypt or rewrite them in place.
pub struct Segments<'a> {
    arena: &'a mut [u8],
    ends: &'a [usize],
}

impl<'a> Segments<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)?,
        };
        Some(start..*self.ends.get(i)?)
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.arena.get(self.range(i)?)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let r = self.range(i)?;
        self.arena.get_mut(r)
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    pub fn iter_mut(&mut self) -> SegmentsMut<'_> {
        SegmentsMut {
            rest: &mut *self.arena,
            start: 0,
            ends: self.ends.iter(),
        }
    }
}

impl<'a> IntoIterator for Segments<'a> {
    type Item = &'a mut [u8];
    type IntoIter = SegmentsMut<'a>;

    fn into_iter(self) -> SegmentsMut<'a> {
        SegmentsMut {
            rest: self.arena,
            start: 0,
            ends: self.ends.iter(),
        }
    }
}

/// Iterator over the segments as disjoint mutable slices.
pub struct SegmentsMut<'a> {
    rest: &'a mut [u8],
    start: usize,
    ends: std::slice::Iter<'a, usize>,
}

impl<'a> Iterator for SegmentsMut<'a> {
    type Item = &'a mut [u8];

    fn next(&mut self) -> Option<&'a mut [u8]> {
        let end = *self.ends.next()?;
        let len = end.checked_sub(self.start)?;
        let (seg, tail) = std::mem::take(&mut self.rest).split_at_mut_checked(len)?;
        self.rest = tail;
        self.start = end;
        Some(seg)
    }
}

/// Splits the packet `pkt` that a TUN read returned after `hdr` into standalone IP packets in
/// `out`, as the kernel's GSO would (net/ipv4/tcp_offload.c, net/ipv4/udp_offload.c):
///
/// - `GSO_NONE`: one segment, a copy of `pkt`; with `F_NEEDS_CSUM` the checksum over
///   `csum_start..` is completed into `csum_start + csum_offset`.
/// - `GSO_TCPV4`/`GSO_TCPV6`: the payload in `gso_size` chunks, each behind a copy of the IP
///   and TCP headers with its own IP length (IPv4: ID incremented, header checksum), sequence
///   number, flags (FIN and PSH only on the last, CWR only on the first) and full checksum.
/// - `GSO_UDP_L4`: the UDP payload in `gso_size` chunks, each with its own UDP length and
///   checksum (0 sent as 0xffff, RFC 768).
///
/// GSO packets must be IPv4 (options allowed, no fragments) or IPv6 without extension headers,
/// whose protocol matches `gso_type`, with the length field covering exactly `pkt`.
pub fn segment<'a>(
    hdr: &VnetHdr,
    pkt: &[u8],
    out: &'a mut SegmentBuf,
) -> Result<Segments<'a>, OffloadError> {
    hdr.check()?;
    if pkt.is_empty() {
        return Err(OffloadError::Malformed {
            field: "packet",
            offset: 0,
        });
    }
    if pkt.len() > MAX_SUPER {
        return Err(OffloadError::TooLarge(pkt.len()));
    }
    if usize::from(hdr.hdr_len) > pkt.len() {
        return Err(OffloadError::HdrLen {
            hdr_len: hdr.hdr_len,
            len: pkt.len(),
        });
    }
    let count = if hdr.gso_type == VnetHdr::GSO_NONE {
        copy_one(hdr, pkt, out)?
    } else {
        split(hdr, pkt, out)?
    };
    Ok(Segments {
        arena: &mut out.arena,
        ends: out.ends.get(..count).ok_or(OffloadError::Buffer)?,
    })
}

fn csum_range(hdr: &VnetHdr, len: usize) -> OffloadError {
    OffloadError::CsumRange {
        start: hdr.csum_start,
        offset: hdr.csum_offset,
        len,
    }
}

fn copy_one(hdr: &VnetHdr, pkt: &[u8], out: &mut SegmentBuf) -> Result<usize, OffloadError> {
    let seg = out.arena.get_mut(..pkt.len()).ok_or(OffloadError::Buffer)?;
    seg.copy_from_slice(pkt);
    if hdr.flags & VnetHdr::F_NEEDS_CSUM != 0 {
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        let covered = seg.get(start..).ok_or(csum_range(hdr, pkt.len()))?;
        if at + 2 > pkt.len() {
            return Err(csum_range(hdr, pkt.len()));
        }
        // The field holds the pseudo-header sum, so the sum over csum_start.. includes it.
        let c = !fold(sum(covered, 0));
        put16(seg, at, if c == 0 { 0xffff } else { c })?;
    }
    *out.ends.first_mut().ok_or(OffloadError::Buffer)? = pkt.len();
    Ok(1)
}

fn split(hdr: &VnetHdr, pkt: &[u8], out: &mut SegmentBuf) -> Result<usize, OffloadError> {
    let gso = usize::from(hdr.gso_size);
    // 0xffff is GSO_BY_FRAGS in the kernel, never a real segment size.
    if gso == 0 || hdr.gso_size == u16::MAX {
        return Err(OffloadError::GsoSize(hdr.gso_size));
    }
    let ip = Ip::parse(pkt)?;
    let (proto, version, csum_offset) = match hdr.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_TCPV4 => (TCP, Some(false), TCP_CSUM),
        VnetHdr::GSO_TCPV6 => (TCP, Some(true), TCP_CSUM),
        VnetHdr::GSO_UDP_L4 => (UDP, None, UDP_CSUM),
        _ => return Err(OffloadError::GsoType(hdr.gso_type)),
    };
    if ip.v6 && ip.proto != proto && is_ipv6_extension(ip.proto) {
        return Err(OffloadError::Unsupported("IPv6 extension headers"));
    }
    if ip.proto != proto || version.is_some_and(|v6| v6 != ip.v6) {
        return Err(OffloadError::Protocol {
            gso_type: hdr.gso_type,
            version: if ip.v6 { 6 } else { 4 },
            protocol: ip.proto,
        });
    }
    if hdr.flags & VnetHdr::F_NEEDS_CSUM != 0
        && (usize::from(hdr.csum_start) != ip.len || hdr.csum_offset != csum_offset)
    {
        return Err(csum_range(hdr, pkt.len()));
    }
    let l4 = ip.len;
    let l4_len = if proto == TCP {
        let doff = usize::from(byte(pkt, l4 + 12, "TCP data offset")? >> 4) * 4;
        if doff < 20 {
            return Err(OffloadError::Malformed {
                field: "TCP data offset",
                offset: l4 + 12,
            });
        }
        doff
    } else {
        8
    };
    let (headers, payload) = pkt
        .split_at_checked(l4 + l4_len)
        .ok_or(OffloadError::Malformed {
            field: "transport header",
            offset: l4,
        })?;
    let count = payload.len().div_ceil(gso).max(1);
    if count > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments(count));
    }
    let (src, dst) = ip.addrs(pkt);
    let id = if ip.v6 { 0 } else { be16(pkt, 4, "IPv4 ID")? };
    let seq = if proto == TCP {
        be32(pkt, l4 + 4, "TCP sequence number")?
    } else {
        0
    };
    let flags = if proto == TCP {
        byte(pkt, l4 + 13, "TCP flags")?
    } else {
        0
    };
    let mut start = 0;
    for (i, end) in out.ends.iter_mut().take(count).enumerate() {
        let from = (i * gso).min(payload.len());
        let chunk = payload
            .get(from..(from + gso).min(payload.len()))
            .unwrap_or_default();
        let len = headers.len() + chunk.len();
        let seg = out
            .arena
            .get_mut(start..start + len)
            .ok_or(OffloadError::Buffer)?;
        put(seg, 0, headers)?;
        put(seg, headers.len(), chunk)?;
        if ip.v6 {
            put16(seg, 4, (len - 40) as u16)?;
        } else {
            put16(seg, 2, len as u16)?;
            put16(seg, 4, id.wrapping_add(i as u16))?;
            put16(seg, 10, 0)?;
            let c = !fold(sum(seg.get(..ip.len).unwrap_or_default(), 0));
            put16(seg, 10, c)?;
        }
        let csum_at = l4 + usize::from(csum_offset);
        if proto == TCP {
            put(
                seg,
                l4 + 4,
                &seq.wrapping_add((i * gso) as u32).to_be_bytes(),
            )?;
            let mut f = flags;
            if i + 1 < count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            put(seg, l4 + 13, &[f])?;
        } else {
            put16(seg, l4 + 4, (8 + chunk.len()) as u16)?;
        }
        put16(seg, csum_at, 0)?;
        let c = !fold(sum(
            seg.get(l4..).unwrap_or_default(),
            pseudo(src, dst, proto, len - l4),
        ));
        put16(
            seg,
            csum_at,
            if c == 0 && proto == UDP { 0xffff } else { c },
        )?;
        start += len;
        *end = start;
    }
    Ok(count)
}

// --- Coalescing -------------------------------------------------------------------------

/// A TCP segment that may be merged: IPv4 without options or fragmentation (valid header
/// checksum) or IPv6 without extension headers; flags ACK and maybe PSH; a payload; a TCP
/// checksum that verifies (a merged packet's checksum is left to the kernel, so a corrupt
/// segment must not be merged into it).
struct TcpSeg {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    payload: usize,
    psh: bool,
}

impl TcpSeg {
    fn parse(p: &[u8]) -> Option<TcpSeg> {
        let ip = Ip::parse(p).ok()?;
        if ip.proto != TCP || (!ip.v6 && (ip.len != 20 || fold(sum(p.get(..20)?, 0)) != 0xffff)) {
            return None;
        }
        let tcp = p.get(ip.len..)?;
        let doff = usize::from(*tcp.get(12)? >> 4) * 4;
        let flags = *tcp.get(13)?;
        if doff < 20
            || doff >= tcp.len()
            || flags & !(TCP_ACK | TCP_PSH) != 0
            || flags & TCP_ACK == 0
        {
            return None;
        }
        let (src, dst) = ip.addrs(p);
        if fold(sum(tcp, pseudo(src, dst, TCP, tcp.len()))) != 0xffff {
            return None;
        }
        Some(TcpSeg {
            v6: ip.v6,
            ip_len: ip.len,
            hdr_len: ip.len + doff,
            seq: be32(tcp, 4, "").ok()?,
            payload: tcp.len() - doff,
            psh: flags & TCP_PSH != 0,
        })
    }
}

/// The super-packet being built in `Coalescer::front`.
#[derive(Clone, Copy)]
struct Batch {
    /// IP bytes after the virtio-net header.
    len: usize,
    tcp: Option<TcpBatch>,
}

#[derive(Clone, Copy)]
struct TcpBatch {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    gso_size: usize,
    next_seq: u32,
    segments: usize,
    /// False after PSH or a short segment: nothing more joins.
    open: bool,
    psh: bool,
}

/// Merges consecutive TCP segments of one flow into super-packets for one TUN write each,
/// as the kernel's GRO would (net/ipv4/tcp_offload.c `tcp_gro_receive`): same addresses and
/// ports, IPv4 TOS/TTL/DF or IPv6 traffic class/flow label/hop limit, ACK number, window and
/// TCP options; each segment's sequence number follows the previous one; all payloads equal
/// (`gso_size`) except a shorter last one; PSH or a short segment ends the batch; at most
/// [`MAX_COALESCED`] bytes. A merged packet gets gso_type TCPV4/TCPV6, `F_NEEDS_CSUM` and the
/// pseudo-header sum in the TCP checksum field (the kernel treats it as CHECKSUM_PARTIAL,
/// include/linux/virtio_net.h `virtio_net_hdr_to_skb`); anything else goes alone, unchanged,
/// behind a header of zeros (the kernel checks its checksums).
///
/// Two 64 KiB buffers, allocated once: the one being built and the one last handed out.
/// ```text
///   for pkt in decrypted { if let Some(out) = c.push(pkt)? { tun.write(out)?; } }
///   if let Some(out) = c.flush() { tun.write(out)?; }
/// ```
pub struct Coalescer {
    front: Box<[u8]>,
    back: Box<[u8]>,
    pending: Option<Batch>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            front: vec![0; VNET_HDR_LEN + MAX_COALESCED].into_boxed_slice(),
            back: vec![0; VNET_HDR_LEN + MAX_COALESCED].into_boxed_slice(),
            pending: None,
        }
    }

    /// Whether a packet is held (call [`Coalescer::flush`] before waiting for more input).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes one IP packet (1 to [`MAX_COALESCED`] bytes). If it cannot join the held
    /// super-packet, that one is finished and returned, virtio-net header first, ready for one
    /// TUN write, and `pkt` starts the next.
    pub fn push(&mut self, pkt: &[u8]) -> Result<Option<&[u8]>, OffloadError> {
        if pkt.is_empty() {
            return Err(OffloadError::Malformed {
                field: "packet",
                offset: 0,
            });
        }
        if pkt.len() > MAX_COALESCED {
            return Err(OffloadError::TooLarge(pkt.len()));
        }
        let seg = TcpSeg::parse(pkt);
        if let (Some(batch), Some(seg)) = (self.pending.as_mut(), seg.as_ref()) {
            if append(&mut self.front, batch, pkt, seg) {
                return Ok(None);
            }
        }
        let ready = self.pending.take().map(|batch| {
            let n = finish(&mut self.front, &batch);
            std::mem::swap(&mut self.front, &mut self.back);
            n
        });
        self.pending = start(&mut self.front, pkt, seg);
        Ok(ready.and_then(|n| self.back.get(..n)))
    }

    /// Finishes and returns the held packet, if any.
    pub fn flush(&mut self) -> Option<&[u8]> {
        let batch = self.pending.take()?;
        let n = finish(&mut self.front, &batch);
        self.front.get(..n)
    }
}

fn start(buf: &mut [u8], pkt: &[u8], seg: Option<TcpSeg>) -> Option<Batch> {
    put(buf, VNET_HDR_LEN, pkt).ok()?;
    Some(Batch {
        len: pkt.len(),
        tcp: seg.map(|s| TcpBatch {
            v6: s.v6,
            ip_len: s.ip_len,
            hdr_len: s.hdr_len,
            gso_size: s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            segments: 1,
            open: !s.psh,
            psh: s.psh,
        }),
    })
}

/// Appends `pkt` to the batch if it continues it; false leaves everything unchanged.
fn append(buf: &mut [u8], batch: &mut Batch, pkt: &[u8], seg: &TcpSeg) -> bool {
    let Some(t) = batch.tcp.as_mut() else {
        return false;
    };
    let Some(held) = buf.get(VNET_HDR_LEN..VNET_HDR_LEN + t.hdr_len) else {
        return false;
    };
    let same = |r: std::ops::Range<usize>| {
        held.get(r.clone()).is_some() && held.get(r.clone()) == pkt.get(r)
    };
    let ip_same = if t.v6 {
        // Version, traffic class, flow label; next header, hop limit; addresses.
        same(0..4) && same(6..40)
    } else {
        // TOS; flags (DF) and fragment offset; TTL, protocol; addresses.
        same(1..2) && same(6..10) && same(12..20)
    };
    let l4 = t.ip_len;
    // Ports; ACK number; data offset; window; options. Flags may differ only in PSH.
    let tcp_same = same(l4..l4 + 4)
        && same(l4 + 8..l4 + 13)
        && same(l4 + 14..l4 + 16)
        && same(l4 + 20..t.hdr_len)
        && held.get(l4 + 13).map(|f| f & !TCP_PSH) == pkt.get(l4 + 13).map(|f| f & !TCP_PSH);
    if !t.open
        || seg.v6 != t.v6
        || seg.hdr_len != t.hdr_len
        || seg.seq != t.next_seq
        || seg.payload > t.gso_size
        || batch.len + seg.payload > MAX_COALESCED
        || !ip_same
        || !tcp_same
    {
        return false;
    }
    let Some(payload) = pkt.get(seg.hdr_len..) else {
        return false;
    };
    if put(buf, VNET_HDR_LEN + batch.len, payload).is_err() {
        return false;
    }
    batch.len += seg.payload;
    t.next_seq = t.next_seq.wrapping_add(seg.payload as u32);
    t.segments += 1;
    t.psh |= seg.psh;
    t.open = !seg.psh && seg.payload == t.gso_size;
    true
}

/// Fixes up lengths and checksums of the held packet and writes its virtio-net header;
/// returns the bytes to write.
fn finish(buf: &mut [u8], batch: &Batch) -> usize {
    let total = VNET_HDR_LEN + batch.len;
    let mut hdr = VnetHdr::default();
    if let Some(t) = batch.tcp.filter(|t| t.segments > 1) {
        if let Some(p) = buf.get_mut(VNET_HDR_LEN..total) {
            let _ = fix_super(p, &t);
        }
        hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: if t.v6 {
                VnetHdr::GSO_TCPV6
            } else {
                VnetHdr::GSO_TCPV4
            },
            hdr_len: t.hdr_len as u16,
            gso_size: t.gso_size as u16,
            csum_start: t.ip_len as u16,
            csum_offset: TCP_CSUM,
        };
    }
    if let Some(h) = buf.first_chunk_mut::<VNET_HDR_LEN>() {
        hdr.write(h);
    }
    total
}

fn fix_super(p: &mut [u8], t: &TcpBatch) -> Result<(), OffloadError> {
    let len = p.len();
    if t.v6 {
        put16(p, 4, (len - 40) as u16)?;
    } else {
        put16(p, 2, len as u16)?;
        put16(p, 10, 0)?;
        let c = !fold(sum(p.get(..20).unwrap_or_default(), 0));
        put16(p, 10, c)?;
    }
    let l4 = t.ip_len;
    if t.psh {
        let f = byte(p, l4 + 13, "TCP flags")?;
        put(p, l4 + 13, &[f | TCP_PSH])?;
    }
    let ip = Ip {
        v6: t.v6,
        len: l4,
        proto: TCP,
    };
    let (src, dst) = ip.addrs(p);
    let partial = fold(pseudo(src, dst, TCP, len - l4));
    put16(p, l4 + usize::from(TCP_CSUM), partial)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    /// The textbook checksum (RFC 1071 §4.1), 16 bits at a time, independent of `sum`.
    fn reference_sum(data: &[u8]) -> u32 {
        let mut s = 0u32;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            s += hi | lo;
            i += 2;
        }
        s
    }

    fn reference_fold(mut s: u32) -> u16 {
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn reference_pseudo(p: &[u8], v6: bool, proto: u8, l4_len: usize) -> u32 {
        let (src, n) = if v6 { (8, 16) } else { (12, 4) };
        reference_sum(&p[src..src + 2 * n]) + u32::from(proto) + l4_len as u32
    }

    /// Whether the IPv4 header checksum (if IPv4) and the transport checksum verify.
    fn checksums_ok(p: &[u8]) -> bool {
        let v6 = p[0] >> 4 == 6;
        let (ihl, proto) = if v6 {
            (40, p[6])
        } else {
            ((usize::from(p[0] & 15)) * 4, p[9])
        };
        if !v6 && reference_fold(reference_sum(&p[..ihl])) != 0xffff {
            return false;
        }
        let l4 = &p[ihl..];
        reference_fold(reference_sum(l4) + reference_pseudo(p, v6, proto, l4.len())) == 0xffff
    }

    const SRC4: [u8; 4] = [192, 0, 2, 1];
    const DST4: [u8; 4] = [192, 0, 2, 2];
    const SRC6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn ip_header(v6: bool, proto: u8, l4_len: usize) -> Vec<u8> {
        if v6 {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&SRC6);
            h.extend_from_slice(&DST6);
            h
        } else {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&SRC4);
            h.extend_from_slice(&DST4);
            let c = !reference_fold(reference_sum(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
    }

    /// A TCP packet with complete checksums (`partial`: the checksum field holds the
    /// pseudo-header sum, as the kernel leaves it for offload).
    fn tcp(v6: bool, seq: u32, flags: u8, payload: &[u8], partial: bool) -> Vec<u8> {
        let options = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
        let mut t = vec![0x9c, 0x40, 0x13, 0x89];
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&7777u32.to_be_bytes());
        t.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        t.extend_from_slice(&options);
        t.extend_from_slice(payload);
        let mut p = ip_header(v6, TCP, t.len());
        let l4 = p.len();
        p.extend_from_slice(&t);
        let ps = reference_pseudo(&p, v6, TCP, t.len());
        let c = if partial {
            reference_fold(ps)
        } else {
            !reference_fold(reference_sum(&t) + ps)
        };
        p[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn udp(v6: bool, payload: &[u8], partial: bool) -> Vec<u8> {
        let mut u = vec![0x30, 0x39, 0x11, 0x94];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        let mut p = ip_header(v6, UDP, u.len());
        let l4 = p.len();
        p.extend_from_slice(&u);
        let ps = reference_pseudo(&p, v6, UDP, u.len());
        let c = if partial {
            reference_fold(ps)
        } else {
            !reference_fold(reference_sum(&u) + ps)
        };
        p[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn tso(v6: bool, payload: &[u8], mss: u16, flags: u8) -> (VnetHdr, Vec<u8>) {
        let p = tcp(v6, 0xffff_f000, flags, payload, true);
        let ip_len = if v6 { 40 } else { 20 };
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: if v6 {
                VnetHdr::GSO_TCPV6
            } else {
                VnetHdr::GSO_TCPV4
            },
            hdr_len: (ip_len + 32) as u16,
            gso_size: mss,
            csum_start: ip_len as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    /// Completes a NEEDS_CSUM packet as a NIC would, with the reference checksum.
    fn complete(hdr: &VnetHdr, p: &mut [u8]) {
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        let c = !reference_fold(reference_sum(&p[start..]));
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn round_trip(v6: bool, len: usize, mss: u16) {
        let data = pattern(len);
        let (hdr, p) = tso(v6, &data, mss, TCP_ACK | TCP_PSH);
        let ip_len = if v6 { 40 } else { 20 };
        let mut buf = SegmentBuf::new();
        let segs = segment(&hdr, &p, &mut buf).unwrap();
        assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        let mut co = Coalescer::new();
        let mut out = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i}");
            assert!(s.len() <= ip_len + 32 + usize::from(mss));
            let seq = u32::from_be_bytes(s[ip_len + 4..ip_len + 8].try_into().unwrap());
            assert_eq!(seq, 0xffff_f000u32.wrapping_add(i as u32 * u32::from(mss)));
            let last = i + 1 == segs.len();
            assert_eq!(s[ip_len + 13] & TCP_PSH != 0, last);
            if v6 {
                assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
            }
            if let Some(w) = co.push(s).unwrap() {
                out.push(w.to_vec());
            }
        }
        out.push(co.flush().unwrap().to_vec());
        assert!(co.flush().is_none());
        // Back to one packet equal to the original.
        assert_eq!(out.len(), 1);
        let (h, back) = VnetHdr::parse(&out[0]).unwrap();
        let mut back = back.to_vec();
        if segs.len() == 1 {
            // Alone: unchanged, with its full checksum.
            assert_eq!(h, VnetHdr::default());
            assert_eq!(back, tcp(v6, 0xffff_f000, TCP_ACK | TCP_PSH, &data, false));
        } else {
            assert_eq!(h, hdr);
            assert_eq!(back, p);
            complete(&h, &mut back);
        }
        assert!(checksums_ok(&back));
    }

    #[test]
    fn tso_ipv4_splits_and_merges_back() {
        round_trip(false, 44 * 1448, 1448);
        round_trip(false, 65_535 - 52, 1448);
        round_trip(false, 5000, 9000);
    }

    #[test]
    fn tso_ipv6_splits_and_merges_back() {
        round_trip(true, 45 * 1428 + 17, 1428);
        round_trip(true, 3, 1000);
    }

    #[test]
    fn tso_flags_go_to_first_and_last_segments() {
        let (hdr, p) = tso(
            false,
            &pattern(4000),
            1000,
            TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
        );
        let hdr = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            ..hdr
        };
        let mut buf = SegmentBuf::new();
        let flags: Vec<u8> = segment(&hdr, &p, &mut buf)
            .unwrap()
            .iter()
            .map(|s| s[33])
            .collect();
        assert_eq!(
            flags,
            [
                TCP_ACK | TCP_CWR,
                TCP_ACK,
                TCP_ACK,
                TCP_ACK | TCP_PSH | TCP_FIN
            ]
        );
    }

    #[test]
    fn uso_splits_udp_payload() {
        for v6 in [false, true] {
            let data = pattern(30_000);
            let p = udp(v6, &data, true);
            let ip_len = if v6 { 40 } else { 20 };
            let hdr = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: VnetHdr::GSO_UDP_L4,
                hdr_len: ip_len + 8,
                gso_size: 1200,
                csum_start: ip_len,
                csum_offset: 6,
            };
            let mut buf = SegmentBuf::new();
            let mut segs = segment(&hdr, &p, &mut buf).unwrap();
            assert_eq!(segs.len(), 25);
            let mut got = Vec::new();
            for s in segs.iter_mut() {
                assert!(checksums_ok(s));
                let l4 = usize::from(ip_len);
                assert_eq!(
                    usize::from(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]])),
                    s.len() - l4
                );
                got.extend_from_slice(&s[l4 + 8..]);
            }
            assert_eq!(got, data);
            // UDP packets are not merged: each goes alone and unchanged.
            let mut co = Coalescer::new();
            let first = segs.get(0).unwrap().to_vec();
            assert!(co.push(&first).unwrap().is_none());
            let w = co.push(&first).unwrap().unwrap();
            assert_eq!(&w[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
            assert_eq!(&w[VNET_HDR_LEN..], first.as_slice());
        }
    }

    #[test]
    fn gso_none_completes_the_checksum() {
        for v6 in [false, true] {
            let p = udp(v6, b"hello, world", true);
            let start = if v6 { 40 } else { 20 };
            let hdr = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: start,
                csum_offset: 6,
                ..VnetHdr::default()
            };
            let mut buf = SegmentBuf::new();
            let segs = segment(&hdr, &p, &mut buf).unwrap();
            assert_eq!(segs.len(), 1);
            assert!(checksums_ok(segs.get(0).unwrap()));
            assert_eq!(segs.get(0).unwrap(), udp(v6, b"hello, world", false));
        }
        // Without NEEDS_CSUM: untouched, whatever the bytes.
        let mut buf = SegmentBuf::new();
        let segs = segment(&VnetHdr::default(), b"\x00not ip", &mut buf).unwrap();
        assert_eq!(segs.get(0).unwrap(), b"\x00not ip");
    }

    #[test]
    fn header_round_trips_and_refuses_unknown_values() {
        let hdr = VnetHdr {
            flags: 1,
            gso_type: 0x81,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
        };
        let mut raw = [0u8; VNET_HDR_LEN];
        hdr.write(&mut raw);
        assert_eq!(raw, [1, 0x81, 2, 1, 4, 3, 6, 5, 8, 7]);
        let mut with = raw.to_vec();
        with.extend_from_slice(b"pkt");
        assert_eq!(VnetHdr::parse(&with).unwrap(), (hdr, &b"pkt"[..]));
        assert_eq!(VnetHdr::parse(&raw[..9]), Err(OffloadError::ShortHeader));
        raw[0] = 4;
        assert_eq!(VnetHdr::parse(&raw), Err(OffloadError::Flags(4)));
        for t in [3u8, 2, 6, 0x80, 0x85] {
            raw[0] = 0;
            raw[1] = t;
            assert_eq!(VnetHdr::parse(&raw), Err(OffloadError::GsoType(t)), "{t}");
        }
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mut buf = SegmentBuf::new();
        let (hdr, p) = tso(false, &pattern(3000), 1000, TCP_ACK);
        let mut err = |h: VnetHdr, p: &[u8]| segment(&h, p, &mut buf).err().unwrap();
        // Truncated (IPv4 total length no longer matches), empty, oversize.
        assert!(matches!(
            err(hdr, &p[..p.len() - 1]),
            OffloadError::Malformed {
                field: "IPv4 total length",
                ..
            }
        ));
        assert!(matches!(err(hdr, &[]), OffloadError::Malformed { .. }));
        assert_eq!(
            err(VnetHdr::default(), &vec![0; MAX_SUPER + 1]),
            OffloadError::TooLarge(MAX_SUPER + 1)
        );
        // hdr_len beyond the packet; csum_start outside or elsewhere than the L4 header.
        let bad = VnetHdr {
            hdr_len: 4000,
            ..hdr
        };
        assert!(matches!(err(bad, &p), OffloadError::HdrLen { .. }));
        let none = VnetHdr {
            gso_type: 0,
            csum_start: 3051,
            ..hdr
        };
        assert!(matches!(err(none, &p), OffloadError::CsumRange { .. }));
        let none = VnetHdr {
            gso_type: 0,
            csum_start: 3000,
            csum_offset: 51,
            ..hdr
        };
        assert!(matches!(err(none, &p), OffloadError::CsumRange { .. }));
        let moved = VnetHdr {
            csum_start: 24,
            ..hdr
        };
        assert!(matches!(err(moved, &p), OffloadError::CsumRange { .. }));
        // gso_size 0 and GSO_BY_FRAGS; too many segments.
        assert_eq!(
            err(VnetHdr { gso_size: 0, ..hdr }, &p),
            OffloadError::GsoSize(0)
        );
        assert_eq!(
            err(
                VnetHdr {
                    gso_size: 0xffff,
                    ..hdr
                },
                &p
            ),
            OffloadError::GsoSize(0xffff)
        );
        assert_eq!(
            err(
                VnetHdr {
                    gso_size: 10,
                    ..hdr
                },
                &p
            ),
            OffloadError::TooManySegments(300)
        );
        // Wrong protocol or version for the gso_type.
        let v6 = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6,
            ..hdr
        };
        assert!(matches!(
            err(v6, &p),
            OffloadError::Protocol { version: 4, .. }
        ));
        let u = udp(false, &pattern(3000), true);
        assert!(matches!(
            err(hdr, &u),
            OffloadError::Protocol { protocol: 17, .. }
        ));
        let uso = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            csum_offset: 6,
            ..hdr
        };
        assert!(matches!(
            err(uso, &p),
            OffloadError::Protocol { protocol: 6, .. }
        ));
        // IPv6 extension header; IPv4 fragment; IPv4 header length; TCP data offset.
        let (h6, mut p6) = tso(true, &pattern(3000), 1000, TCP_ACK);
        p6[6] = 0;
        assert_eq!(
            err(h6, &p6),
            OffloadError::Unsupported("IPv6 extension headers")
        );
        let mut frag = p.clone();
        frag[6] |= 0x20;
        assert_eq!(err(hdr, &frag), OffloadError::Unsupported("IPv4 fragments"));
        let mut ihl = p.clone();
        ihl[0] = 0x44;
        assert!(matches!(
            err(hdr, &ihl),
            OffloadError::Malformed {
                field: "IPv4 header length",
                ..
            }
        ));
        let mut doff = p.clone();
        doff[32] = 0x40;
        assert!(matches!(
            err(hdr, &doff),
            OffloadError::Malformed {
                field: "TCP data offset",
                ..
            }
        ));
        let mut version = p.clone();
        version[0] = 0x55;
        assert!(matches!(
            err(hdr, &version),
            OffloadError::Malformed {
                field: "IP version",
                ..
            }
        ));
        // Headers longer than the packet.
        let mut short = ip_header(false, TCP, 16);
        short.extend_from_slice(&[0; 16]);
        short[32] = 0x50;
        assert!(matches!(
            err(VnetHdr { hdr_len: 0, ..hdr }, &short),
            OffloadError::Malformed {
                field: "transport header",
                ..
            }
        ));
    }

    fn push_all(co: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in pkts {
            if let Some(w) = co.push(p).unwrap() {
                out.push(w.to_vec());
            }
        }
        if let Some(w) = co.flush() {
            out.push(w.to_vec());
        }
        out
    }

    fn gso_types(out: &[Vec<u8>]) -> Vec<(u8, usize)> {
        out.iter().map(|w| (w[1], w.len() - VNET_HDR_LEN)).collect()
    }

    /// Recomputes the IPv4 header and TCP checksums of `p` after an edit.
    fn refresh(mut p: Vec<u8>) -> Vec<u8> {
        p[10..12].fill(0);
        let c = !reference_fold(reference_sum(&p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[36..38].fill(0);
        let c = !reference_fold(
            reference_sum(&p[20..]) + reference_pseudo(&p, false, TCP, p.len() - 20),
        );
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn coalescer_merges_only_what_continues_the_flow() {
        let seg = |seq: u32, n: usize, flags: u8| tcp(false, seq, flags, &pattern(n), false);
        let edit = |at: usize, x: u8| {
            let mut p = seg(1000, 1000, TCP_ACK);
            p[at] ^= x;
            refresh(p)
        };
        let mut co = Coalescer::new();
        let two = [(1, 2052)];
        let alone = [(0, 1052), (0, 1052)];
        assert_eq!(
            gso_types(&push_all(
                &mut co,
                &[seg(0, 1000, TCP_ACK), seg(1000, 1000, TCP_ACK)]
            )),
            two
        );
        // Each of these differs from the continuation of the first in one way: not merged.
        let mut corrupt = seg(1000, 1000, TCP_ACK);
        corrupt[60] ^= 0xff;
        let mut bad_ip = seg(1000, 1000, TCP_ACK);
        bad_ip[11] ^= 1;
        for (what, next) in [
            ("a sequence gap", seg(2000, 1000, TCP_ACK)),
            ("a retransmission", seg(0, 1000, TCP_ACK)),
            ("a SYN", seg(1000, 1000, TCP_ACK | 0x02)),
            ("a FIN", seg(1000, 1000, TCP_ACK | TCP_FIN)),
            ("a bad TCP checksum", corrupt),
            ("a bad IPv4 checksum", bad_ip),
            ("another ACK number", edit(28, 1)),
            ("another window", edit(34, 1)),
            ("other TCP options", edit(45, 1)),
            ("another destination port", edit(23, 1)),
            ("another source address", edit(13, 1)),
            ("another TTL", edit(8, 1)),
            ("another TOS (ECN CE)", edit(1, 3)),
            ("no DF", edit(6, 0x40)),
            ("IPv4 options", {
                let mut p = seg(1000, 996, TCP_ACK);
                p.splice(20..20, [1, 1, 1, 0]);
                p[0] = 0x46;
                let len = p.len() as u16;
                p[2..4].copy_from_slice(&len.to_be_bytes());
                p
            }),
            ("a longer segment", seg(1000, 1001, TCP_ACK)),
        ] {
            let out = push_all(&mut co, &[seg(0, 1000, TCP_ACK), next]);
            assert_eq!(gso_types(&out)[0], (0, 1052), "{what}");
            assert_eq!(out.len(), 2, "{what}");
        }
        assert_eq!(
            gso_types(&push_all(
                &mut co,
                &[seg(0, 1000, TCP_ACK), seg(1000, 1000, TCP_ACK | 0x02)]
            )),
            alone
        );
        // PSH ends a batch; a shorter segment ends it; a longer one starts a new one.
        let out = push_all(
            &mut co,
            &[
                seg(0, 1000, TCP_ACK),
                seg(1000, 1000, TCP_ACK | TCP_PSH),
                seg(2000, 1000, TCP_ACK),
                seg(3000, 500, TCP_ACK),
                seg(3500, 500, TCP_ACK),
                seg(4000, 800, TCP_ACK),
                seg(4800, 900, TCP_ACK),
            ],
        );
        assert_eq!(
            gso_types(&out),
            [(1, 2052), (1, 1552), (0, 552), (0, 852), (0, 952)]
        );
        assert_eq!(out[0][VNET_HDR_LEN + 33], TCP_ACK | TCP_PSH);
        // Size bound: 50 segments of 1448 make two packets of at most 65535 bytes.
        let pkts: Vec<Vec<u8>> = (0..50).map(|i| seg(i * 1448, 1448, TCP_ACK)).collect();
        let out = push_all(&mut co, &pkts);
        assert_eq!(gso_types(&out), [(1, 45 * 1448 + 52), (1, 5 * 1448 + 52)]);
        // Errors leave the held packet alone.
        assert!(co.push(&seg(0, 10, TCP_ACK)).unwrap().is_none());
        assert_eq!(
            co.push(&[]),
            Err(OffloadError::Malformed {
                field: "packet",
                offset: 0
            })
        );
        assert_eq!(
            co.push(&vec![0x45; 70_000]),
            Err(OffloadError::TooLarge(70_000))
        );
        assert!(co.is_pending());
        assert_eq!(co.flush().unwrap().len(), VNET_HDR_LEN + 62);
        assert!(!co.is_pending());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut buf = SegmentBuf::new();
            let mut co = Coalescer::new();
            if let Ok((hdr, pkt)) = VnetHdr::parse(&raw) {
                if let Ok(segs) = segment(&hdr, pkt, &mut buf) {
                    for s in segs.iter() {
                        let _ = co.push(s);
                    }
                }
            }
            let _ = co.push(&raw);
            let _ = co.flush();
        }

        #[test]
        fn mutated_super_packets_never_panic(
            v6 in any::<bool>(),
            len in 0usize..20_000,
            mss in 1u16..3000,
            flips in proptest::collection::vec((0usize..20_100, any::<u8>()), 0..4),
            hdr_bytes in any::<[u8; VNET_HDR_LEN]>(),
            use_raw_hdr in any::<bool>(),
        ) {
            let (hdr, mut p) = tso(v6, &pattern(len), mss, TCP_ACK);
            for (at, x) in flips {
                if let Some(b) = p.get_mut(at) {
                    *b ^= x;
                }
            }
            let raw = VnetHdr::parse(&hdr_bytes).map(|h| h.0);
            let hdr = if use_raw_hdr { raw.unwrap_or(hdr) } else { hdr };
            let mut buf = SegmentBuf::new();
            let mut co = Coalescer::new();
            if let Ok(segs) = segment(&hdr, &p, &mut buf) {
                for s in segs.iter() {
                    if let Ok(Some(w)) = co.push(s) {
                        prop_assert!(w.len() <= VNET_HDR_LEN + MAX_COALESCED);
                    }
                }
            }
        }

        #[test]
        fn any_tso_round_trips(v6 in any::<bool>(), len in 1usize..30_000, mss in 120u16..9000) {
            let data = pattern(len);
            let (hdr, p) = tso(v6, &data, mss, TCP_ACK);
            let mut buf = SegmentBuf::new();
            let segs = segment(&hdr, &p, &mut buf).unwrap();
            let hdrs = usize::from(hdr.hdr_len);
            let mut got = Vec::new();
            let mut co = Coalescer::new();
            let mut merged = Vec::new();
            for s in segs.iter() {
                prop_assert!(checksums_ok(s));
                got.extend_from_slice(&s[hdrs..]);
                if let Some(w) = co.push(s).unwrap() {
                    merged.push(w.to_vec());
                }
            }
            merged.push(co.flush().unwrap().to_vec());
            prop_assert_eq!(&got, &data);
            let mut again = Vec::new();
            for w in &merged {
                let (h, pkt) = VnetHdr::parse(w).unwrap();
                let mut pkt = pkt.to_vec();
                if h.gso_type != 0 {
                    complete(&h, &mut pkt);
                }
                prop_assert!(checksums_ok(&pkt));
                again.extend_from_slice(&pkt[hdrs..]);
            }
            prop_assert_eq!(&again, &data);
        }
    }
}
