//! Talking to nf_tables over a netlink socket (libmnl): sending a batch and reading every
//! reply, and dumping the rules of Warden's table. Replies are parsed here with bounds-checked
//! readers; nothing the kernel sends is trusted to be well-formed.
//!
//! How a batch is confirmed: the kernel processes a batch while `sendto` runs and queues every
//! reply to our socket before `sendto` returns. A message that fails always gets an error
//! reply (even without `NLM_F_ACK`); we clear `NLM_F_ACK` on the messages inside the batch so
//! that a 10,000-rule batch does not answer with 30,000 acknowledgements, as nft does. On
//! kernels >= 6.10 (where nftnl sets `NLM_F_ACK` on the batch end) the kernel acknowledges
//! the end only after a successful commit; that acknowledgement is then required.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::batch::Prepared;
use super::counters::DumpedRule;
use super::ffi;
use super::NftError;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
/// In an error reply: the original message's payload was left out (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
/// nf_tables' subsystem id in the high byte of a message type.
const NFT_SUBSYS: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;

const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_LOOKUP_SET: u16 = 1;

/// Receive buffer: larger than any single datagram the kernel sends us (dump skbs are at most
/// 32 KiB; error replies are capped).
const RECV_BUF: usize = 256 * 1024;
/// Receive-queue room per message of a batch, in case many of them fail.
const RCVBUF_PER_MESSAGE: usize = 512;
/// How long a dump may stall before we give up.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Dumps interrupted by a concurrent change are retried this often.
const DUMP_ATTEMPTS: usize = 5;
/// Upper bound on datagrams read for one dump (a 100,000-rule table is ~2,000).
const MAX_DUMP_DATAGRAMS: usize = 100_000;

fn netlink_err(op: &'static str) -> impl FnOnce(io::Error) -> NftError {
    move |source| NftError::Netlink { op, source }
}

fn open() -> Result<mnl::Socket, NftError> {
    mnl::Socket::new(mnl::Bus::Netfilter).map_err(netlink_err("open netfilter socket"))
}

/// One netlink message header, read from bytes.
#[derive(Clone, Copy, Debug)]
struct Header {
    len: usize,
    kind: u16,
    flags: u16,
    seq: u32,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([*b.first()?, *b.get(1)?]))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

fn header(buf: &[u8]) -> Option<Header> {
    Some(Header {
        len: usize::try_from(u32_at(buf, 0)?).ok()?,
        kind: u16_at(buf, 4)?,
        flags: u16_at(buf, 6)?,
        seq: u32_at(buf, 8)?,
    })
}

/// Splits a datagram into messages (each `nlmsg_len` long, 4-byte aligned).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<(Header, &[u8]), NftError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let result = match header(buf) {
            Some(h) if h.len >= NLMSG_HDRLEN && h.len <= buf.len() => {
                let (msg, rest) = buf.split_at(h.len);
                buf = rest.get(align4(h.len) - h.len..).unwrap_or(&[]);
                Ok((h, msg))
            }
            _ => {
                buf = &[];
                Err(NftError::Malformed {
                    detail: "netlink message length out of bounds".into(),
                })
            }
        };
        Some(result)
    })
}

fn align4(n: usize) -> usize {
    n.div_ceil(4).saturating_mul(4)
}

/// Netlink attributes in `buf`: (type without the nested/byte-order flags, value).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, 0)?);
        let kind = u16_at(buf, 2)? & 0x3fff;
        let value = buf.get(4..len)?;
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

fn be_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(value.get(..end).unwrap_or_default()).into_owned()
}

/// An error reply: the failed message's sequence number, the errno (0 = acknowledgement) and
/// the kernel's extended-ack message if any.
struct ErrorReply {
    seq: u32,
    errno: i32,
    message: Option<String>,
}

fn parse_error(h: Header, msg: &[u8]) -> Result<ErrorReply, NftError> {
    let malformed = || NftError::Malformed {
        detail: "short NLMSG_ERROR reply".into(),
    };
    let error = u32_at(msg, NLMSG_HDRLEN).ok_or_else(malformed)?;
    let errno = (error as i32).checked_neg().unwrap_or(i32::MAX);
    let original = msg.get(NLMSG_HDRLEN + 4..).ok_or_else(malformed)?;
    let orig = header(original).ok_or_else(malformed)?;
    let mut message = None;
    if h.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the original header is echoed; otherwise all of it.
        let echoed = if h.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig.len)
        };
        if let Some(tlvs) = original.get(echoed..) {
            message = attr(tlvs, NLMSGERR_ATTR_MSG).map(c_string);
        }
    }
    Ok(ErrorReply {
        seq: orig.seq,
        errno,
        message,
    })
}

/// Sends `prepared` as one datagram and reads every reply: `Ok` only if the kernel committed
/// the batch.
pub(crate) fn transact(prepared: Prepared) -> Result<(), NftError> {
    let Prepared { mut bytes, objects } = prepared;

    // Index the messages: sequence number -> object; clear NLM_F_ACK inside the batch; note
    // whether the batch end asks for an acknowledgement.
    let mut seqs: Vec<u32> = Vec::with_capacity(objects.len());
    let mut begin_seq = None;
    let mut end_ack = None;
    let mut offset = 0;
    while offset + NLMSG_HDRLEN <= bytes.len() {
        let h = bytes
            .get(offset..)
            .and_then(header)
            .ok_or_else(|| NftError::Malformed {
                detail: "batch message header".into(),
            })?;
        match h.kind {
            NFNL_MSG_BATCH_BEGIN => begin_seq = Some(h.seq),
            NFNL_MSG_BATCH_END if h.flags & NLM_F_ACK != 0 => end_ack = Some(h.seq),
            NFNL_MSG_BATCH_END => {}
            _ => {
                seqs.push(h.seq);
                let flags = (h.flags & !NLM_F_ACK).to_ne_bytes();
                if let Some(f) = bytes.get_mut(offset + 6..offset + 8) {
                    f.copy_from_slice(&flags);
                }
            }
        }
        if h.len < NLMSG_HDRLEN {
            break;
        }
        offset += align4(h.len);
    }
    let object_of = |seq: u32| -> String {
        if Some(seq) == begin_seq {
            return "the batch (commit)".into();
        }
        seqs.iter()
            .position(|s| *s == seq)
            .and_then(|i| objects.get(i).cloned())
            .unwrap_or_else(|| format!("message {seq} of the batch"))
    };

    let socket = open()?;
    let fd = socket.as_raw_fd();
    // Best effort: without them error replies are merely longer and carry no text.
    let _ = ffi::setsockopt_int(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
    let _ = ffi::setsockopt_int(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
    // The whole batch is one datagram: the send buffer must hold it (the kernel doubles the
    // value). FORCE needs CAP_NET_ADMIN, which changing nf_tables needs anyway.
    let sndbuf = i32::try_from(bytes.len() / 2 + 65_536).map_err(|_| NftError::TooLarge {
        what: "bytes of netlink batch",
        count: bytes.len(),
        limit: i32::MAX as usize,
    })?;
    if ffi::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, sndbuf).is_err() {
        ffi::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, sndbuf)
            .map_err(netlink_err("set send buffer size"))?;
    }
    let rcvbuf =
        i32::try_from((objects.len().saturating_mul(RCVBUF_PER_MESSAGE)).clamp(1 << 20, 1 << 28))
            .unwrap_or(1 << 28);
    if ffi::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf).is_err() {
        let _ = ffi::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf);
    }

    let sent = socket.send(&bytes).map_err(netlink_err("send batch"))?;
    if sent != bytes.len() {
        return Err(NftError::Unconfirmed {
            detail: format!("sendto sent {sent} of {} bytes", bytes.len()),
        });
    }

    let mut errors: Vec<ErrorReply> = Vec::new();
    let mut end_acked = false;
    let mut overflow = false;
    let mut buf = vec![0u8; RECV_BUF];
    // Every datagram holds at least one reply, and there is at most one per message.
    for _ in 0..objects.len().saturating_add(16) {
        let n = match ffi::recv(fd, &mut buf, true) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                overflow = true;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(netlink_err("receive replies")(e)),
        };
        let datagram = buf.get(..n).ok_or_else(|| NftError::Malformed {
            detail: format!("reply of {n} bytes truncated to {RECV_BUF}"),
        })?;
        for m in messages(datagram) {
            let (h, msg) = m?;
            if h.kind != NLMSG_ERROR {
                continue;
            }
            let reply = parse_error(h, msg)?;
            if reply.errno == 0 {
                end_acked |= Some(reply.seq) == end_ack;
            } else {
                errors.push(reply);
            }
        }
    }

    errors.sort_by_key(|e| e.seq);
    let more_errors = errors.len().saturating_sub(1);
    if let Some(first) = errors.into_iter().next() {
        return Err(NftError::Rejected {
            object: object_of(first.seq),
            errno: first.errno,
            kernel_message: first.message,
            more_errors,
        });
    }
    if overflow {
        return Err(NftError::Unconfirmed {
            detail: "replies were lost (ENOBUFS)".into(),
        });
    }
    if end_ack.is_some() && !end_acked {
        return Err(NftError::Unconfirmed {
            detail: "the kernel did not acknowledge the end of the batch".into(),
        });
    }
    Ok(())
}

/// What to dump: the request type, the reply type, and the attribute numbers of the table
/// and object name in the reply.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dump {
    Rules,
    Chains,
    Sets,
}

impl Dump {
    fn request(self) -> u16 {
        NFT_SUBSYS
            | match self {
                Dump::Rules => 7,  // NFT_MSG_GETRULE
                Dump::Chains => 4, // NFT_MSG_GETCHAIN
                Dump::Sets => 10,  // NFT_MSG_GETSET
            }
    }

    fn reply(self) -> u16 {
        NFT_SUBSYS
            | match self {
                Dump::Rules => 6,  // NFT_MSG_NEWRULE
                Dump::Chains => 3, // NFT_MSG_NEWCHAIN
                Dump::Sets => 9,   // NFT_MSG_NEWSET
            }
    }

    /// `NFTA_{RULE,CHAIN,SET}_TABLE` is 1 for all three.
    const TABLE_ATTR: u16 = 1;

    /// `NFTA_CHAIN_NAME` = 3, `NFTA_SET_NAME` = 2 (rules have no name).
    fn name_attr(self) -> u16 {
        match self {
            Dump::Rules => NFTA_RULE_CHAIN,
            Dump::Chains => 3,
            Dump::Sets => 2,
        }
    }
}

/// The dump request for the objects of kind `kind` in table `table` (family inet).
fn dump_request(kind: Dump, table: &str, seq: u32) -> Vec<u8> {
    let name_len = table.len() + 1;
    let attr_len = 4 + name_len;
    let total = NLMSG_HDRLEN + NFGENMSG_LEN + align4(attr_len);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&kind.request().to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version (NFNETLINK_V0), resource id (big endian, 0).
    msg.extend_from_slice(&[libc::NFPROTO_INET as u8, 0, 0, 0]);
    msg.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    msg.extend_from_slice(&Dump::TABLE_ATTR.to_ne_bytes());
    msg.extend_from_slice(table.as_bytes());
    msg.resize(total, 0);
    msg
}

/// The attributes (after the nfgenmsg header) of every object of kind `kind` in table
/// `table`. A table that does not exist gives an empty list (the kernel filters, it does not
/// fail); so does a table without such objects.
pub(crate) fn dump(kind: Dump, table: &str) -> Result<Vec<Vec<u8>>, NftError> {
    let socket = open()?;
    ffi::set_recv_timeout(socket.as_raw_fd(), DUMP_TIMEOUT)
        .map_err(netlink_err("set receive timeout"))?;
    let mut buf = vec![0u8; RECV_BUF];
    for attempt in 1..=DUMP_ATTEMPTS {
        let seq = u32::try_from(attempt).unwrap_or(u32::MAX);
        socket
            .send(&dump_request(kind, table, seq))
            .map_err(netlink_err("send dump request"))?;
        let mut objects = Vec::new();
        let mut interrupted = false;
        let mut done = false;
        for _ in 0..MAX_DUMP_DATAGRAMS {
            let n = match ffi::recv(socket.as_raw_fd(), &mut buf, false) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(netlink_err("receive dump")(e)),
            };
            let datagram = buf.get(..n).ok_or_else(|| NftError::Malformed {
                detail: format!("dump datagram of {n} bytes truncated to {RECV_BUF}"),
            })?;
            for m in messages(datagram) {
                let (h, msg) = m?;
                if h.seq != seq {
                    continue;
                }
                interrupted |= h.flags & NLM_F_DUMP_INTR != 0;
                match h.kind {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let e = parse_error(h, msg)?;
                        if e.errno == libc::ENOENT {
                            return Ok(Vec::new());
                        }
                        if e.errno != 0 {
                            return Err(NftError::Netlink {
                                op: "dump",
                                source: io::Error::from_raw_os_error(e.errno),
                            });
                        }
                    }
                    k if k == kind.reply() => {
                        let payload = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or_default();
                        // Older kernels ignore the table filter for some dumps: filter here.
                        if attr(payload, Dump::TABLE_ATTR).map(c_string).as_deref() == Some(table) {
                            objects.push(payload.to_vec());
                        }
                    }
                    _ => {}
                }
            }
            if done {
                break;
            }
        }
        if !done {
            return Err(NftError::Malformed {
                detail: format!("dump did not end within {MAX_DUMP_DATAGRAMS} datagrams"),
            });
        }
        if !interrupted {
            return Ok(objects);
        }
    }
    Err(NftError::Netlink {
        op: "dump",
        source: io::Error::other(format!(
            "interrupted by concurrent changes {DUMP_ATTEMPTS} times"
        )),
    })
}

/// Names of the chains or sets of table `table`.
pub(crate) fn names(kind: Dump, table: &str) -> Result<Vec<String>, NftError> {
    Ok(dump(kind, table)?
        .iter()
        .filter_map(|payload| attr(payload, kind.name_attr()).map(c_string))
        .collect())
}

/// Every rule of table `table` with its counter, verdict and lookups.
pub(crate) fn dump_rules(table: &str) -> Result<Vec<DumpedRule>, NftError> {
    Ok(dump(Dump::Rules, table)?
        .iter()
        .map(|payload| parse_rule(payload))
        .collect())
}

/// A rule's chain, first counter, first immediate verdict and the sets it looks up.
fn parse_rule(payload: &[u8]) -> DumpedRule {
    let chain = attr(payload, NFTA_RULE_CHAIN)
        .map(c_string)
        .unwrap_or_default();
    let mut counter = None;
    let mut verdict = None;
    let mut lookups = Vec::new();
    let exprs = attr(payload, NFTA_RULE_EXPRESSIONS).unwrap_or_default();
    for (kind, elem) in attrs(exprs) {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let name = attr(elem, NFTA_EXPR_NAME).map(c_string);
        let data = attr(elem, NFTA_EXPR_DATA).unwrap_or_default();
        match name.as_deref() {
            Some("counter") if counter.is_none() => {
                let packets = attr(data, NFTA_COUNTER_PACKETS).and_then(be_u64);
                let bytes = attr(data, NFTA_COUNTER_BYTES).and_then(be_u64);
                counter = Some((packets.unwrap_or(0), bytes.unwrap_or(0)));
            }
            Some("immediate") if verdict.is_none() => {
                verdict = attr(data, NFTA_IMMEDIATE_DATA)
                    .and_then(|d| attr(d, NFTA_DATA_VERDICT))
                    .and_then(|v| attr(v, NFTA_VERDICT_CODE))
                    .and_then(|c| c.try_into().ok())
                    .map(i32::from_be_bytes);
            }
            Some("lookup") => {
                if let Some(set) = attr(data, NFTA_LOOKUP_SET) {
                    lookups.push(c_string(set));
                }
            }
            _ => {}
        }
    }
    DumpedRule {
        chain,
        counter,
        verdict,
        lookups,
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    #[test]
    fn parses_a_counting_rule() {
        let counter = [
            nla(NFTA_EXPR_NAME, b"counter\0"),
            nla(
                NFTA_EXPR_DATA | 0x8000,
                &[
                    nla(NFTA_COUNTER_BYTES, &120u64.to_be_bytes()),
                    nla(NFTA_COUNTER_PACKETS, &2u64.to_be_bytes()),
                ]
                .concat(),
            ),
        ]
        .concat();
        let verdict = nla(NFTA_VERDICT_CODE, &1i32.to_be_bytes());
        let immediate = [
            nla(NFTA_EXPR_NAME, b"immediate\0"),
            nla(
                NFTA_EXPR_DATA,
                &nla(NFTA_IMMEDIATE_DATA, &nla(NFTA_DATA_VERDICT, &verdict)),
            ),
        ]
        .concat();
        let payload = [
            nla(Dump::TABLE_ATTR, b"warden\0"),
            nla(NFTA_RULE_CHAIN, b"r12\0"),
            nla(
                NFTA_RULE_EXPRESSIONS,
                &[
                    nla(NFTA_LIST_ELEM, &counter),
                    nla(NFTA_LIST_ELEM, &immediate),
                ]
                .concat(),
            ),
        ]
        .concat();
        assert_eq!(
            parse_rule(&payload),
            DumpedRule {
                chain: "r12".into(),
                counter: Some((2, 120)),
                verdict: Some(1),
                lookups: vec![],
            }
        );
    }

    #[test]
    fn truncated_input_is_not_a_panic() {
        let payload = nla(NFTA_RULE_CHAIN, b"r1\0");
        for cut in 0..payload.len() {
            let _ = parse_rule(&payload[..cut]);
            let _ = messages(&payload[..cut]).count();
        }
        assert!(
            messages(&[255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .next()
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn dump_request_is_well_formed() {
        let req = dump_request(Dump::Rules, "warden", 9);
        let h = header(&req).unwrap();
        assert_eq!(h.len, req.len());
        assert_eq!(h.kind, 0x0a07);
        assert_eq!(h.seq, 9);
        let table = attr(&req[NLMSG_HDRLEN + NFGENMSG_LEN..], Dump::TABLE_ATTR).unwrap();
        assert_eq!(c_string(table), "warden");
    }
}
