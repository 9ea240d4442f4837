//! The ESP data plane's host-facing I/O (Linux): the tenant TUN with virtio-net offloads, and
//! the wire UDP sockets with GSO and GRO. All calls take caller-owned buffers that are
//! allocated once; the packet formats are in [`crate::offload`].
//!
//! ```text
//!   host ─► TunQueue::read ─► offload::segment ─► ESP seal ─► WireSocket::send_gso ─► wire
//!   host ◄─ TunQueue::write ◄─ offload::Coalescer ◄─ ESP open ◄─ WireSocket::recv_batch ◄─ wire
//! ```
//! One worker per core owns one TUN queue and one wire socket (SO_REUSEPORT on the ESP port).
//! The only `unsafe` code is in `sys.rs`.

mod sys;
mod tun;
mod udp;

pub use tun::{Offloads, Tun, TunQueue, MAX_QUEUES, TUN_BUF_LEN};
pub use udp::{
    Datagram, RecvBatch, SendBatch, WireSocket, GRO_BUF_LEN, MAX_BATCH, MAX_GSO_SEGMENTS,
};
