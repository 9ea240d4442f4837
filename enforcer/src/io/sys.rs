//! The I/O layer's only `unsafe` code: ioctls on the TUN and on a control socket, socket
//! options, and the batched socket calls (recvmmsg, sendmsg with a UDP_SEGMENT message,
//! sendmmsg). Every function here is safe to call; each `unsafe` block says why it is sound.
//! The message headers of a batch live on the stack for the call only: nothing holding a raw
//! pointer outlives it.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, size_of_val, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

use libc::{c_int, c_short, c_uint, c_ulong, c_void, socklen_t};

/// Most messages per recvmmsg or sendmmsg call (their headers are on the stack).
pub const MAX_BATCH: usize = 64;
/// Control buffer per received message, in u64 words (aligned for `struct cmsghdr`): room for
/// the UDP_GRO message (CMSG_SPACE(4) = 24 bytes on 64-bit) and a few more.
const CMSG_WORDS: usize = 8;

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

// --- Interfaces: TUNSETIFF and friends (drivers/net/tun.c), SIOCSIF* (net/core/dev_ioctl.c) ---

/// A `struct ifreq` naming `name` (1 to IFNAMSIZ - 1 bytes, no NUL; the caller checks the rest
/// of the kernel's `dev_valid_name`).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(invalid("interface name must be 1 to 15 bytes without NUL"));
    }
    // SAFETY: `ifreq` is plain data (a name array and a union of integers, addresses and a
    // pointer); all zeros is a valid value of each.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// TUNSETIFF: creates the TUN `name` or attaches another queue to it; returns the kernel's
/// name for it.
pub(super) fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: c_int) -> io::Result<String> {
    let mut req = ifreq(name)?;
    // The flags are a 16-bit field; IFF_TUN_EXCL (0x8000) is its top bit.
    req.ifr_ifru.ifru_flags = flags as c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, and `req` is one, live for the
    // call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    let got: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// TUNSETVNETHDRSZ: the length of the virtio-net header before each packet.
pub(super) fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, len: c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `len`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) }).map(drop)
}

/// TUNSETVNETLE: the virtio-net header is little-endian (the default on little-endian hosts).
pub(super) fn tun_set_vnet_le(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: c_int = 1;
    // SAFETY: TUNSETVNETLE reads one int through the pointer, which points at `on`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETLE, &on) }).map(drop)
}

/// TUNSETOFFLOAD: the TUN_F_* offloads we accept from the kernel (the argument is the value).
pub(super) fn tun_set_offload(fd: BorrowedFd<'_>, flags: c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, c_ulong::from(flags)) }).map(drop)
}

/// A socket of `family` (AF_INET or AF_INET6), datagram, close-on-exec.
pub(super) fn dgram_socket(family: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIOCSIFMTU on `name`, through the socket `ctl` (which fixes the network namespace).
pub(super) fn if_set_mtu(ctl: BorrowedFd<'_>, name: &str, mtu: c_int) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu;
    // SAFETY: SIOCSIFMTU reads one `struct ifreq`, and `req` is one, live for the call.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut req) }).map(drop)
}

/// Sets IFF_UP on `name` (SIOCGIFFLAGS, then SIOCSIFFLAGS), through the socket `ctl`.
pub(super) fn if_set_up(ctl: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS writes the flags into one `struct ifreq`, and `req` is one.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS just wrote the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, and `req` is one.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) }).map(drop)
}

/// O_NONBLOCK on or off.
pub(super) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an int by value.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

// --- Sockets ------------------------------------------------------------------------------

pub(super) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int: the pointer points at `value` and the length says
    // so.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::from_ref(&value).cast(),
            size_of::<c_int>() as socklen_t,
        )
    })
    .map(drop)
}

/// A socket address in the kernel's layout.
#[derive(Clone, Copy)]
pub(super) enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    const UNSPECIFIED: RawAddr = RawAddr::V4(libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    });

    pub(super) fn new(addr: &SocketAddr) -> RawAddr {
        match addr {
            SocketAddr::V4(a) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    /// Pointer and length for the kernel, which only reads through it.
    fn as_ptr(&self) -> (*mut c_void, socklen_t) {
        match self {
            RawAddr::V4(a) => (
                ptr::from_ref(a).cast_mut().cast(),
                size_of_val(a) as socklen_t,
            ),
            RawAddr::V6(a) => (
                ptr::from_ref(a).cast_mut().cast(),
                size_of_val(a) as socklen_t,
            ),
        }
    }
}

/// The address the kernel wrote into `s` (`len` bytes), if IPv4 or IPv6.
fn from_storage(s: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(s.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a `sockaddr_in` of the checked length;
            // `sockaddr_storage` is larger than it and aligned for every address type.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(super) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    let (p, len) = raw.as_ptr();
    // SAFETY: `p` points at a socket address of `len` bytes that lives for the call; bind(2)
    // only reads it.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), p.cast(), len) }).map(drop)
}

/// What recvmmsg said about one message.
#[derive(Clone, Copy, Debug)]
pub(super) struct Received {
    pub len: usize,
    pub src: Option<SocketAddr>,
    pub gro_size: Option<u16>,
    pub truncated: bool,
}

impl Received {
    pub(super) const EMPTY: Received = Received {
        len: 0,
        src: None,
        gro_size: None,
        truncated: false,
    };
}

/// The segment size of a UDP_GRO control message in the received `msg`, if there is one
/// (net/ipv4/udp.c `udp_cmsg_recv`: level SOL_UDP, type UDP_GRO, one int).
fn gro_size(msg: &libc::msghdr) -> Option<u16> {
    // SAFETY: `msg` was filled in by recvmmsg: `msg_control` points at our control buffer,
    // still live, and `msg_controllen` is the length the kernel wrote into it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header that lies within the
        // control buffer, which is aligned for `cmsghdr` (u64 words).
        let h = unsafe { &*c };
        // SAFETY: CMSG_LEN is arithmetic only.
        let want = unsafe { libc::CMSG_LEN(size_of::<c_int>() as c_uint) } as usize;
        if h.cmsg_level == libc::SOL_UDP && h.cmsg_type == libc::UDP_GRO && h.cmsg_len >= want {
            // SAFETY: the message holds one int after its header (length checked above);
            // read unaligned as the data need not be aligned for `c_int`.
            let v = unsafe { ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>()) };
            return u16::try_from(v).ok().filter(|v| *v > 0);
        }
        // SAFETY: `c` is a header within the control buffer described by `msg`.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    None
}

/// recvmmsg(2) into `slots` (consecutive slots of `slot_len` bytes), one message per slot, at
/// most `out.len()` and [`MAX_BATCH`]; returns how many arrived (at least one, or an error:
/// MSG_WAITFORONE returns as soon as one is there).
pub(super) fn recvmmsg(
    fd: BorrowedFd<'_>,
    slots: &mut [u8],
    slot_len: usize,
    out: &mut [Received],
) -> io::Result<usize> {
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: `sockaddr_storage` and `mmsghdr` are plain data (integers and pointers); all
    // zeros is valid (null pointers, zero lengths).
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    let mut control = [[0u64; CMSG_WORDS]; MAX_BATCH];
    let mut count = 0;
    for ((((slot, iov), name), ctl), hdr) in slots
        .chunks_mut(slot_len.max(1))
        .zip(iovs.iter_mut())
        .zip(names.iter_mut())
        .zip(control.iter_mut())
        .zip(hdrs.iter_mut())
        .take(out.len())
    {
        iov.iov_base = slot.as_mut_ptr().cast();
        iov.iov_len = slot.len();
        hdr.msg_hdr.msg_name = ptr::from_mut(name).cast();
        hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as socklen_t;
        hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = ctl.as_mut_ptr().cast();
        hdr.msg_hdr.msg_controllen = size_of_val(ctl) as _;
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: the first `count` headers each describe one iovec over a distinct slot of
    // `slots`, one `sockaddr_storage` and one control buffer, all live and exclusively ours for
    // the call, with their true lengths; a null timeout means none.
    let got = cvt(unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            count as c_uint,
            libc::MSG_WAITFORONE,
            ptr::null_mut(),
        )
    })? as usize;
    for ((hdr, name), r) in hdrs.iter().zip(names.iter()).zip(out.iter_mut()).take(got) {
        *r = Received {
            len: hdr.msg_len as usize,
            src: from_storage(name, hdr.msg_hdr.msg_namelen),
            gro_size: gro_size(&hdr.msg_hdr),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

/// sendmsg(2) of `buf` to `dst`; with `gso`, a UDP_SEGMENT control message asks the kernel to
/// split `buf` into datagrams of that size (net/ipv4/udp.c `udp_cmsg_send`: one u16).
pub(super) fn sendmsg(
    fd: BorrowedFd<'_>,
    dst: &SocketAddr,
    buf: &[u8],
    gso: Option<u16>,
) -> io::Result<usize> {
    let raw = RawAddr::new(dst);
    let (name, namelen) = raw.as_ptr();
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: `msghdr` is plain data; all zeros is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = name;
    msg.msg_namelen = namelen;
    msg.msg_iov = ptr::from_mut(&mut iov);
    msg.msg_iovlen = 1;
    if let Some(size) = gso {
        // SAFETY: CMSG_SPACE and CMSG_LEN are arithmetic only.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<u16>() as c_uint) as usize,
                libc::CMSG_LEN(size_of::<u16>() as c_uint) as usize,
            )
        };
        if space > size_of_val(&control) {
            return Err(io::Error::other("control buffer too small for UDP_SEGMENT"));
        }
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points at `control`, `space` bytes long and aligned for
        // `cmsghdr`; CMSG_FIRSTHDR returns it (or null if too short, checked).
        let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if c.is_null() {
            return Err(io::Error::other("no room for UDP_SEGMENT"));
        }
        // SAFETY: `c` points at a `cmsghdr` at the start of `control`, followed by room for
        // the u16 (`space` covers header and data); the data may be unaligned for u16.
        unsafe {
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = len as _;
            ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        }
    }
    // SAFETY: `msg` points at the destination address, one iovec over `buf` and the control
    // buffer, all live for the call with their true lengths; sendmsg only reads them.
    cvt_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

/// sendmmsg(2) of the first [`MAX_BATCH`] datagrams of `msgs`; returns how many the kernel
/// took (at least one, or an error).
pub(super) fn sendmmsg<'b>(
    fd: BorrowedFd<'_>,
    msgs: impl Iterator<Item = (SocketAddr, &'b [u8])>,
) -> io::Result<usize> {
    let mut addrs = [RawAddr::UNSPECIFIED; MAX_BATCH];
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: `mmsghdr` is plain data; all zeros is valid (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    let mut count = 0;
    for (((addr, iov), hdr), (dst, data)) in addrs
        .iter_mut()
        .zip(iovs.iter_mut())
        .zip(hdrs.iter_mut())
        .zip(msgs)
    {
        *addr = RawAddr::new(&dst);
        let (name, namelen) = addr.as_ptr();
        iov.iov_base = data.as_ptr().cast_mut().cast();
        iov.iov_len = data.len();
        hdr.msg_hdr.msg_name = name;
        hdr.msg_hdr.msg_namelen = namelen;
        hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: the first `count` headers each point at one address in `addrs` and one iovec
    // over caller data that outlives the call, with their true lengths; sendmmsg reads them
    // and writes only `msg_len` of each header.
    let sent =
        cvt(unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), count as c_uint, 0) })?;
    Ok(sent as usize)
}
