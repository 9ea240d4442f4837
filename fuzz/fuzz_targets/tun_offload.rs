//! Fuzz the TUN offload path (`warden_enforcer::offload`): arbitrary bytes as one TUN read
//! (virtio-net header, then the packet) are parsed and segmented, every segment goes through
//! the Coalescer, and what it emits must parse and segment again. The raw bytes are also pushed
//! as a decrypted packet. Each input runs twice: as it is, and with the IP length field set to
//! the packet's length (and no IPv4 fragment bits), so random bytes reach segmentation and
//! merging. Nothing may panic; outputs stay within their bounds.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use warden_enforcer::offload::{
    segment, Coalescer, OffloadError, SegmentBuf, VnetHdr, MAX_COALESCED, MAX_SEGMENTS,
    VNET_HDR_LEN,
};

struct Bufs {
    segments: SegmentBuf,
    again: SegmentBuf,
    coalescer: Coalescer,
}

thread_local! {
    // Allocated once, as the data plane does.
    static BUFS: RefCell<Bufs> = RefCell::new(Bufs {
        segments: SegmentBuf::new(),
        again: SegmentBuf::new(),
        coalescer: Coalescer::new(),
    });
}

/// A Coalescer output is a header and a packet that `segment` takes (a merge of many tiny
/// segments may exceed MAX_SEGMENTS).
fn check(out: &[u8], again: &mut SegmentBuf) {
    assert!(out.len() > VNET_HDR_LEN && out.len() <= VNET_HDR_LEN + MAX_COALESCED);
    let (hdr, pkt) = VnetHdr::parse(out).expect("the Coalescer's header parses");
    match segment(&hdr, pkt, again) {
        Ok(segs) => assert!(!segs.is_empty()),
        Err(OffloadError::TooManySegments(_)) => {}
        Err(e) => panic!("the Coalescer's output does not segment: {e}"),
    }
}

/// `data` with the packet's IPv4 total length or IPv6 payload length made to match.
fn fix_lengths(data: &[u8]) -> Vec<u8> {
    let mut fixed = data.to_vec();
    if let Some(pkt) = fixed.get_mut(VNET_HDR_LEN..) {
        let len = pkt.len();
        match pkt.first().map(|b| b >> 4) {
            Some(4) if (20..=65_535).contains(&len) => {
                pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                pkt[6] &= 0x40;
                pkt[7] = 0;
            }
            Some(6) if (40..=65_575).contains(&len) => {
                pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            }
            _ => {}
        }
    }
    fixed
}

fuzz_target!(|data: &[u8]| {
    run(data);
    run(&fix_lengths(data));
});

fn run(data: &[u8]) {
    BUFS.with(|b| {
        let Bufs {
            segments,
            again,
            coalescer,
        } = &mut *b.borrow_mut();
        if let Ok((hdr, pkt)) = VnetHdr::parse(data) {
            if let Ok(segs) = segment(&hdr, pkt, segments) {
                assert!(segs.len() <= MAX_SEGMENTS);
                for s in segs.iter() {
                    if let Ok(Some(out)) = coalescer.push(s) {
                        check(out, again);
                    }
                }
            }
        }
        if let Ok(Some(out)) = coalescer.push(data) {
            check(out, again);
        }
        if let Some(out) = coalescer.flush() {
            check(out, again);
        }
    });
}
