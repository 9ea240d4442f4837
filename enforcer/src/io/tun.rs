//! The tenant-facing TUN: multi-queue, each queue its own file descriptor, every packet behind a
//! virtio-net header, with checksum and segmentation offloads so reads and writes carry up to
//! 64 KiB (drivers/net/tun.c; include/uapi/linux/if_tun.h).
//!
//! ```text
//!   open /dev/net/tun ─ TUNSETIFF(name, TUN|NO_PI|VNET_HDR|MULTI_QUEUE|TUN_EXCL) ─ queue 0
//!     TUNSETVNETHDRSZ 10, TUNSETVNETLE, TUNSETOFFLOAD CSUM|TSO4|TSO6|USO4|USO6
//!                                         (else CSUM|TSO4|TSO6, else 0)
//!   open /dev/net/tun ─ TUNSETIFF(name, same flags but TUN_EXCL) ─ queue 1 … n-1 (attach)
//! ```
//! The device lives as long as one queue is open. The kernel picks the queue of a packet by
//! its flow hash, so each worker reads and writes its own queue.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::c_uint;

use super::sys;
use crate::offload::{MAX_SUPER, VNET_HDR_LEN};

/// Most queues of one TUN (`MAX_TAP_QUEUES`, drivers/net/tun.c).
pub const MAX_QUEUES: usize = 256;
/// A read buffer of this size holds any packet the TUN hands out: the virtio-net header and a
/// super-packet of up to [`MAX_SUPER`] bytes.
pub const TUN_BUF_LEN: usize = VNET_HDR_LEN + MAX_SUPER;

const TUN_PATH: &str = "/dev/net/tun";
const TSO: c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
/// USO needs both flags (drivers/net/tun.c `set_offload`).
const USO: c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// The offloads the kernel accepted: which packets a read may return unfinished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Reads may have NEEDS_CSUM (partial checksums).
    pub csum: bool,
    /// Reads may be TCP/IPv4 super-packets (gso_type TCPV4).
    pub tso4: bool,
    /// Reads may be TCP/IPv6 super-packets (gso_type TCPV6).
    pub tso6: bool,
    /// Reads may be UDP/IPv4 super-packets (gso_type UDP_L4, Linux 6.2).
    pub uso4: bool,
    /// Reads may be UDP/IPv6 super-packets (gso_type UDP_L4, Linux 6.2).
    pub uso6: bool,
}

impl Offloads {
    fn from_flags(f: c_uint) -> Offloads {
        Offloads {
            csum: f & libc::TUN_F_CSUM != 0,
            tso4: f & libc::TUN_F_TSO4 != 0,
            tso6: f & libc::TUN_F_TSO6 != 0,
            uso4: f & libc::TUN_F_USO4 != 0,
            uso6: f & libc::TUN_F_USO6 != 0,
        }
    }
}

/// A multi-queue TUN with virtio-net headers. Addresses and routes are the caller's (`ip`).
pub struct Tun {
    name: String,
    queues: Vec<TunQueue>,
    offloads: Offloads,
    /// AF_INET socket for SIOCSIF*, opened with the TUN so it is in the TUN's namespace.
    ctl: OwnedFd,
}

/// The kernel's `dev_valid_name` (net/core/dev.c), so a bad name is refused before any call.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tun {
    /// Creates the TUN `name` in the calling thread's network namespace with `queues` queues
    /// (1 to [`MAX_QUEUES`]), non-blocking, and the offloads the kernel accepts. Fails if a
    /// device of that name exists (IFF_TUN_EXCL): Warden never attaches to someone else's.
    /// Needs CAP_NET_ADMIN.
    pub fn open(name: &str, queues: usize) -> io::Result<Tun> {
        if !valid_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        if queues == 0 || queues > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{queues} queues: must be 1 to {MAX_QUEUES}"),
            ));
        }
        let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        let mut list = Vec::with_capacity(queues);
        let mut offloads = Offloads::default();
        let mut kernel_name = String::new();
        for i in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(TUN_PATH)?;
            if i == 0 {
                kernel_name = sys::tun_set_iff(file.as_fd(), name, flags | libc::IFF_TUN_EXCL)?;
                sys::tun_set_vnet_hdr_sz(file.as_fd(), VNET_HDR_LEN as libc::c_int)?;
                sys::tun_set_vnet_le(file.as_fd())?;
                offloads = set_offloads(file.as_fd());
            } else {
                sys::tun_set_iff(file.as_fd(), name, flags)?;
            }
            list.push(TunQueue { file });
        }
        Ok(Tun {
            name: kernel_name,
            queues: list,
            offloads,
            ctl: sys::dgram_socket(libc::AF_INET)?,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The queues; each may be used from its own thread (`TunQueue` is `Sync`).
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// The queues, to hand one to each worker (set the MTU and bring the link up first).
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }

    /// SIOCSIFMTU, in the TUN's namespace.
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mtu = libc::c_int::try_from(mtu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))?;
        sys::if_set_mtu(self.ctl.as_fd(), &self.name, mtu)
    }

    /// Sets the link up (IFF_UP), in the TUN's namespace.
    pub fn set_up(&self) -> io::Result<()> {
        sys::if_set_up(self.ctl.as_fd(), &self.name)
    }
}

/// Tries CSUM|TSO4|TSO6|USO4|USO6, then CSUM|TSO4|TSO6 (kernels before 6.2), then none.
fn set_offloads(fd: BorrowedFd<'_>) -> Offloads {
    for flags in [TSO | USO, TSO, 0] {
        if sys::tun_set_offload(fd, flags).is_ok() {
            return Offloads::from_flags(flags);
        }
    }
    Offloads::default()
}

/// One queue of a [`Tun`]: its own file descriptor, non-blocking unless changed.
pub struct TunQueue {
    file: File,
}

impl TunQueue {
    /// Reads one packet: the virtio-net header, then the IP packet (see
    /// [`crate::offload::VnetHdr::parse`]). A buffer shorter than [`TUN_BUF_LEN`] may cut a
    /// super-packet short.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet: the virtio-net header, then the IP packet (as
    /// [`crate::offload::Coalescer`] makes them).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        sys::set_nonblocking(self.file.as_fd(), on)
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_queue_counts_are_checked_first() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "sixteen-chars-xx",
            "nul\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            let e = Tun::open(bad, 1).err().map(|e| e.kind());
            assert_eq!(e, Some(io::ErrorKind::InvalidInput), "{bad:?}");
        }
        assert!(valid_name("wd-tun0"));
        for queues in [0, MAX_QUEUES + 1] {
            let e = Tun::open("wdtun", queues).err().map(|e| e.kind());
            assert_eq!(e, Some(io::ErrorKind::InvalidInput));
        }
    }

    #[test]
    fn offload_flags_map_to_fields() {
        assert_eq!(
            Offloads::from_flags(TSO | USO),
            Offloads {
                csum: true,
                tso4: true,
                tso6: true,
                uso4: true,
                uso6: true
            }
        );
        assert_eq!(Offloads::from_flags(0), Offloads::default());
    }
}
