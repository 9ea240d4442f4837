//! The crate's only `unsafe` code: the few libnftnl calls that nftnl's safe API lacks, and the
//! socket calls on the netlink socket. Every function here is safe to call; each `unsafe` block
//! says why it is sound.
//!
//! What nftnl 0.9.4 lacks (the team's NOTES.md, "nftables through nftnl 0.9.4"):
//! - set flags, data type and the concatenation description (`NFTNL_SET_DESC_CONCAT`, a `u8`
//!   array of field lengths; the kernel answers EINVAL without `NFT_SET_CONCAT` = 0x80);
//! - element attributes other than the key: `KEY_END` (interval end of a concatenated key) and
//!   the verdict data of a map element;
//! - expressions with a chosen register (nftnl's load into `NFT_REG_1` only, but a concatenated
//!   key is loaded field by field into consecutive 32-bit registers), and a lookup that writes
//!   its result to the verdict register (a verdict map);
//! - table user data (the table's comment).
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::set::Set;
use nftnl::Rule;

/// `NFT_SET_CONCAT`: the key is a concatenation of fields (kernel >= 5.6; not in libc).
const NFT_SET_CONCAT: u32 = 0x80;

/// Aborts on a failed (tiny) allocation, as nftnl and std do.
fn non_null<T>(ptr: *mut T) -> NonNull<T> {
    NonNull::new(ptr).unwrap_or_else(|| std::process::abort())
}

/// Byte length as the `u32` libnftnl takes. Callers pass keys of at most 64 bytes and user
/// data of at most 255 bytes; anything that does not fit is a bug, so it aborts rather than
/// truncating silently.
fn len_u32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or_else(|_| std::process::abort())
}

/// Expressions whose registers we choose. nftnl's own expressions cover everything that
/// only uses `NFT_REG_1`.
pub(crate) enum RegExpr {
    /// Load `len` bytes at `offset` of the network (`transport == false`) or transport header
    /// into `dreg`.
    Payload {
        transport: bool,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Load meta key `key` (`NFT_META_*`) into `dreg`.
    Meta { key: u32, dreg: u32 },
    /// Look up the key that starts at `sreg` in the verdict map `set` and apply the verdict of
    /// the matching element (no match: the rule does not match).
    VerdictMap {
        set: CString,
        set_id: u32,
        sreg: u32,
    },
    /// `limit rate over <rate>/second burst <burst> packets|bytes`: matches the packets over
    /// the rate (one token bucket per expression, shared by every packet that reaches it).
    LimitOver { rate: u64, burst: u32, bytes: bool },
    /// Write `len` bytes from `sreg` at `offset` of the network header; with `csum_offset`,
    /// update the IPv4 header checksum there (RFC 1624, by the kernel).
    PayloadWrite {
        offset: u32,
        len: u32,
        sreg: u32,
        csum_offset: Option<u32>,
    },
}

/// `NFT_LIMIT_PKTS`, `NFT_LIMIT_PKT_BYTES`, `NFT_LIMIT_F_INV` (linux/netfilter/nf_tables.h).
const NFT_LIMIT_PKTS: u32 = 0;
const NFT_LIMIT_PKT_BYTES: u32 = 1;
const NFT_LIMIT_F_INV: u32 = 1;
/// `NFT_PAYLOAD_CSUM_INET`: the Internet checksum.
const NFT_PAYLOAD_CSUM_INET: u32 = 1;

impl Expression for RegExpr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        match self {
            RegExpr::Payload {
                transport,
                offset,
                len,
                dreg,
            } => {
                let base = if *transport {
                    libc::NFT_PAYLOAD_TRANSPORT_HEADER
                } else {
                    libc::NFT_PAYLOAD_NETWORK_HEADER
                };
                // SAFETY: `nftnl_expr_alloc` takes a NUL-terminated name and returns an owned
                // expression or NULL (handled by `non_null`); the setters copy plain integers
                // into it. Ownership passes to the caller (nftnl's `Rule::add_expr`), as the
                // `Expression` trait requires.
                unsafe {
                    let expr = non_null(sys::nftnl_expr_alloc(c"payload".as_ptr()));
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, *dreg);
                    expr
                }
            }
            RegExpr::Meta { key, dreg } => {
                // SAFETY: as for `Payload`: owned allocation, integer attributes only.
                unsafe {
                    let expr = non_null(sys::nftnl_expr_alloc(c"meta".as_ptr()));
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, *dreg);
                    expr
                }
            }
            RegExpr::VerdictMap { set, set_id, sreg } => {
                // SAFETY: as for `Payload`; `nftnl_expr_set_str` copies the NUL-terminated
                // set name (libnftnl strdup()s it), so `set` need not outlive the expression.
                unsafe {
                    let expr = non_null(sys::nftnl_expr_alloc(c"lookup".as_ptr()));
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, *sreg);
                    sys::nftnl_expr_set_u32(
                        e,
                        sys::NFTNL_EXPR_LOOKUP_DREG as u16,
                        libc::NFT_REG_VERDICT as u32,
                    );
                    sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, *set_id);
                    expr
                }
            }
            RegExpr::LimitOver { rate, burst, bytes } => {
                // SAFETY: as for `Payload`: owned allocation, integer attributes only.
                unsafe {
                    let expr = non_null(sys::nftnl_expr_alloc(c"limit".as_ptr()));
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_RATE as u16, *rate);
                    sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_UNIT as u16, 1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_BURST as u16, *burst);
                    let kind = if *bytes {
                        NFT_LIMIT_PKT_BYTES
                    } else {
                        NFT_LIMIT_PKTS
                    };
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_TYPE as u16, kind);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_FLAGS as u16, NFT_LIMIT_F_INV);
                    expr
                }
            }
            RegExpr::PayloadWrite {
                offset,
                len,
                sreg,
                csum_offset,
            } => {
                // SAFETY: as for `Payload`: owned allocation, integer attributes only.
                unsafe {
                    let expr = non_null(sys::nftnl_expr_alloc(c"payload".as_ptr()));
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(
                        e,
                        sys::NFTNL_EXPR_PAYLOAD_BASE as u16,
                        libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                    );
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_SREG as u16, *sreg);
                    if let Some(at) = csum_offset {
                        sys::nftnl_expr_set_u32(
                            e,
                            sys::NFTNL_EXPR_PAYLOAD_CSUM_TYPE as u16,
                            NFT_PAYLOAD_CSUM_INET,
                        );
                        sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_CSUM_OFFSET as u16, *at);
                    }
                    expr
                }
            }
        }
    }
}

/// Turns a set created by `Set::new_named` into an interval + concatenation verdict map
/// (`flags interval`, `type a . b . c : verdict`), the pipapo backend in the kernel.
/// `key_type` is nft's concatenated type id (for listing), `fields` the length in bytes of
/// each field (their 4-byte-padded sum is the key length).
pub(crate) fn make_concat_verdict_map<K>(set: &Set<'_, K>, key_type: u32, fields: &[u8]) {
    let key_len: u32 = fields.iter().map(|f| u32::from(*f).div_ceil(4) * 4).sum();
    let flags = libc::NFT_SET_MAP as u32 | libc::NFT_SET_INTERVAL as u32 | NFT_SET_CONCAT;
    let s = set.as_ptr().as_ptr();
    // SAFETY: `s` is the live set owned by `set` (borrowed for this call). The u32 setters copy
    // integers. `nftnl_set_set_data(DESC_CONCAT)` copies `fields` (a u8 array; libnftnl
    // rejects more than NFT_REG32_COUNT entries with -1, and our maps have at most 4) into the
    // set and counts the fields up to the first zero, so the slice need not outlive the call.
    unsafe {
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, key_len);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, libc::NFT_DATA_VERDICT);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, 0);
        sys::nftnl_set_set_data(
            s,
            sys::NFTNL_SET_DESC_CONCAT as u16,
            fields.as_ptr().cast::<c_void>(),
            len_u32(fields),
        );
    }
}

/// Adds one element to `set`'s in-memory element list (sent by `Set::elems_iter`): `key`, and
/// for interval sets `key_end` (inclusive), and for verdict maps a `jump` to chain `jump`.
pub(crate) fn add_element<K>(
    set: &mut Set<'_, K>,
    key: &[u8],
    key_end: Option<&[u8]>,
    jump: Option<&CStr>,
) {
    // SAFETY: the element is freshly allocated and owned here until `nftnl_set_elem_add` hands
    // it to the set (which frees it with the set). `nftnl_set_elem_set` copies `key` and
    // `key_end` (at most 64 bytes, the size of libnftnl's key buffer; our keys are at most 40)
    // and `nftnl_set_elem_set_str` strdup()s the chain name, so no borrowed data outlives the
    // call. `set` is borrowed mutably, so nothing else uses it meanwhile.
    unsafe {
        let elem = non_null(sys::nftnl_set_elem_alloc()).as_ptr();
        sys::nftnl_set_elem_set(
            elem,
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr().cast::<c_void>(),
            len_u32(key),
        );
        if let Some(end) = key_end {
            sys::nftnl_set_elem_set(
                elem,
                sys::NFTNL_SET_ELEM_KEY_END as u16,
                end.as_ptr().cast::<c_void>(),
                len_u32(end),
            );
        }
        if let Some(chain) = jump {
            sys::nftnl_set_elem_set_u32(
                elem,
                sys::NFTNL_SET_ELEM_VERDICT as u16,
                libc::NFT_JUMP as u32,
            );
            sys::nftnl_set_elem_set_str(elem, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
        }
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), elem);
    }
}

/// A table (family inet) with a name and user data, written as NEWTABLE/DELTABLE.
pub(crate) struct TableMsg {
    table: NonNull<sys::nftnl_table>,
}

impl TableMsg {
    /// `name` and optional `udata` (TLVs, at most 255 bytes).
    pub(crate) fn new(name: &CStr, udata: Option<&[u8]>) -> TableMsg {
        // SAFETY: fresh allocation owned by the returned value (freed in `Drop`); the setters
        // copy the integer, strdup() the name and copy the user data.
        unsafe {
            let table = non_null(sys::nftnl_table_alloc());
            let t = table.as_ptr();
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, libc::NFPROTO_INET as u32);
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FLAGS as u16, 0);
            if let Some(udata) = udata {
                sys::nftnl_table_set_data(
                    t,
                    sys::NFTNL_TABLE_USERDATA as u16,
                    udata.as_ptr().cast::<c_void>(),
                    len_u32(udata),
                );
            }
            TableMsg { table }
        }
    }
}

// SAFETY: `write` builds one NEWTABLE/DELTABLE message, which libnftnl bounds far below
// `nft_nlmsg_maxsize()` (name and user data are each at most 256 bytes); the caller (nftnl's
// `Batch::add`) provides a buffer of that size.
unsafe impl nftnl::NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: nftnl::MsgType) {
        let kind = match msg_type {
            nftnl::MsgType::Add => libc::NFT_MSG_NEWTABLE,
            nftnl::MsgType::Del => libc::NFT_MSG_DELTABLE,
        };
        // SAFETY: `buf` has room for a maximal message (trait contract); the header builder
        // writes the netlink and nfgenmsg headers, the payload builder the attributes of the
        // live table.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                kind as u16,
                libc::NFPROTO_INET as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(header, self.table.as_ptr());
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed exactly once here.
        unsafe { sys::nftnl_table_free(self.table.as_ptr()) }
    }
}

/// Sets an integer socket option (`SOL_SOCKET` or `SOL_NETLINK`).
pub(crate) fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the duration of the call and its size is passed;
    // setsockopt only reads it. A bad fd or option yields -1/errno, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast::<c_void>(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `SO_RCVTIMEO` on `fd`.
pub(crate) fn set_recv_timeout(fd: RawFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().min(999_999) as i32),
    };
    // SAFETY: `tv` is a live timeval for the duration of the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast::<c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recv(2)` into `buf`; `nonblocking` adds `MSG_DONTWAIT`. `MSG_TRUNC` makes the return value
/// the datagram's real length, so a truncated message is detected by the caller.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8], nonblocking: bool) -> io::Result<usize> {
    let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `buf` is a live, writable slice and its exact length is passed; the kernel
    // writes at most that many bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len(), flags) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
