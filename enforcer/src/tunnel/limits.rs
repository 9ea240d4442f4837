//! Traffic limits on the data path, checked on egress before encryption: per tenant and per
//! segment pair, packets and bytes per second, new connections per second, and a guaranteed
//! share of the wire.
//!
//! **Buckets.** Each rate is a GCRA bucket (the generic cell rate algorithm, ITU-T I.371; the
//! same decisions as a token bucket of depth `burst` filled at `rate`): one atomic "theoretical
//! arrival time" per bucket, updated with compare-and-swap. No locks, no per-worker shares that
//! would go unused when flows are unevenly spread, and nothing to refill on a timer.
//!
//! **Guarantees.** With `[wire] bits_per_second`, all tunnel traffic is charged to one wire
//! bucket at that rate. Traffic within a guarantee (its own committed bucket conforms) always
//! passes and is charged to the wire bucket even past empty; traffic beyond guarantees passes
//! only while the wire bucket has room. So an idle guarantee lends its share to everyone, and a
//! busy one takes it back from the traffic that has none: work-conserving, and each guarantee
//! holds however hard others push.
//!
//! Time is in ticks of 1/16 ns since the limiter was built (a u64 lasts 36 years), so a 64-byte
//! packet at 100 Gbit/s is still 82 ticks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use warden_policy::{LimitScope, OverLimit, Policy, Rate};

/// Ticks per nanosecond.
pub const TICKS_PER_NS: u64 = 16;
const TICKS_PER_SECOND: u128 = 16_000_000_000;
/// Fractional bits of a bucket's per-unit step.
const FRACTION: u32 = 24;

/// A lock-free GCRA bucket.
#[derive(Debug)]
pub struct Bucket {
    /// Theoretical arrival time, in ticks.
    tat: AtomicU64,
    /// Ticks per unit, with `FRACTION` fractional bits.
    step: u64,
    /// How far ahead of now `tat` may run: the burst's worth of time, in ticks.
    depth: u64,
}

impl Bucket {
    /// `rate.per_second` units per second, `rate.burst` at once.
    pub fn new(rate: Rate) -> Bucket {
        let per_second = u128::from(rate.per_second.max(1));
        let step = (TICKS_PER_SECOND << FRACTION) / per_second;
        let step = u64::try_from(step).unwrap_or(u64::MAX);
        Bucket {
            tat: AtomicU64::new(0),
            step,
            depth: Bucket::ticks(step, rate.burst),
        }
    }

    fn ticks(step: u64, units: u64) -> u64 {
        u64::try_from((u128::from(step) * u128::from(units)) >> FRACTION).unwrap_or(u64::MAX)
    }

    /// Take `units` if they fit at `now`; on `false` nothing was taken.
    pub fn conform(&self, now: u64, units: u64) -> bool {
        let cost = Bucket::ticks(self.step, units);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost);
            if next - now > self.depth {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Take `units` whether they fit or not (traffic within a guarantee), going into debt by at
    /// most one more depth, so that a burst of guaranteed traffic cannot silence the rest for
    /// longer than the bucket's depth.
    pub fn charge(&self, now: u64, units: u64) {
        let cost = Bucket::ticks(self.step, units);
        let limit = now.saturating_add(self.depth.saturating_mul(2));
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost).min(limit);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Which limit a packet went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Over {
    /// Packets or bits per second of a tenant or segment-pair limit.
    Rate,
    /// New connections per second.
    Connections,
    /// Beyond every guarantee while the wire is full.
    Congestion,
}

impl Over {
    pub const ALL: [Over; 3] = [Over::Rate, Over::Connections, Over::Congestion];

    pub fn as_str(self) -> &'static str {
        match self {
            Over::Rate => "rate-limit",
            Over::Connections => "connection-limit",
            Over::Congestion => "congestion",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the limits say about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Pass,
    /// Pass with DSCP Lower Effort; the packet went over this limit.
    Mark(Over),
    Drop(Over),
}

/// The buckets of one `[[limit]]`.
#[derive(Debug)]
struct Buckets {
    packets: Option<Bucket>,
    /// In bytes.
    bytes: Option<Bucket>,
    connections: Option<Bucket>,
    /// In bytes, at the guaranteed rate.
    committed: Option<Bucket>,
    action: OverLimit,
}

/// A budget of `bits_per_second` in bytes, with a burst of 10 ms of it (at least 64 KiB): the
/// wire's budget and a guarantee's.
fn budget(bits_per_second: u64) -> Rate {
    Rate {
        per_second: (bits_per_second / 8).max(1),
        burst: (bits_per_second / 800).max(64 << 10),
    }
}

impl Buckets {
    fn new(l: &warden_policy::Limit) -> Buckets {
        let bytes = |r: Rate| Rate {
            per_second: (r.per_second / 8).max(1),
            burst: r.burst,
        };
        Buckets {
            packets: l.packets.map(Bucket::new),
            bytes: l.bits.map(|r| Bucket::new(bytes(r))),
            connections: l.connections.map(Bucket::new),
            committed: l.guaranteed_bits.map(|g| Bucket::new(budget(g))),
            action: l.action,
        }
    }

    /// The first of this limit's rates the packet goes over, if any.
    fn over(&self, now: u64, bytes: u64, new_connection: bool) -> Option<Over> {
        if new_connection {
            if let Some(b) = &self.connections {
                if !b.conform(now, 1) {
                    return Some(Over::Connections);
                }
            }
        }
        if let Some(b) = &self.packets {
            if !b.conform(now, 1) {
                return Some(Over::Rate);
            }
        }
        if let Some(b) = &self.bytes {
            if !b.conform(now, bytes) {
                return Some(Over::Rate);
            }
        }
        None
    }
}

/// The limits of one policy, by tenant and by segment pair, and the wire bucket.
#[derive(Debug)]
pub struct Limiter {
    by_tenant: Vec<Option<Buckets>>,
    by_pair: HashMap<(usize, usize), Buckets>,
    /// In bytes, at the wire's rate.
    wire: Option<Bucket>,
    /// No limit at all: the data path skips the limiter (decided once, not per packet).
    empty: bool,
}

impl Limiter {
    pub fn new(policy: &Policy) -> Limiter {
        let mut by_tenant: Vec<Option<Buckets>> = policy.tenants.iter().map(|_| None).collect();
        let mut by_pair = HashMap::new();
        for l in &policy.limits {
            match l.scope {
                LimitScope::Tenant(t) => {
                    if let Some(slot) = by_tenant.get_mut(t) {
                        *slot = Some(Buckets::new(l));
                    }
                }
                LimitScope::Pair { from, to } => {
                    by_pair.insert((from, to), Buckets::new(l));
                }
            }
        }
        let wire = policy
            .wire_bits_per_second
            .map(|bps| Bucket::new(budget(bps)));
        Limiter {
            empty: wire.is_none() && by_pair.is_empty() && by_tenant.iter().all(Option::is_none),
            by_tenant,
            by_pair,
            wire,
        }
    }

    /// Whether any limit exists (so the data path can skip the rest).
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Decide for one packet of `bytes` from `tenant`, segment `src` to segment `dst`, at
    /// `now` (ticks). The pair's limit is checked first, then the tenant's, then the wire.
    pub fn check(
        &self,
        now: u64,
        tenant: usize,
        src: usize,
        dst: usize,
        bytes: u64,
        new_connection: bool,
    ) -> Decision {
        let pair = self.by_pair.get(&(src, dst));
        let own = self.by_tenant.get(tenant).and_then(Option::as_ref);
        let mut marked = None;
        for b in [pair, own].into_iter().flatten() {
            if let Some(over) = b.over(now, bytes, new_connection) {
                match b.action {
                    OverLimit::Drop => return Decision::Drop(over),
                    OverLimit::Mark => marked = marked.or(Some(over)),
                }
            }
        }
        if let Some(wire) = &self.wire {
            let committed = [pair, own]
                .into_iter()
                .flatten()
                .find_map(|b| b.committed.as_ref());
            if committed.is_some_and(|c| c.conform(now, bytes)) {
                wire.charge(now, bytes);
            } else if !wire.conform(now, bytes) {
                return Decision::Drop(Over::Congestion);
            }
        }
        match marked {
            Some(over) => Decision::Mark(over),
            None => Decision::Pass,
        }
    }
}

/// DSCP Lower Effort (RFC 8622).
pub const DSCP_LE: u8 = 1;

/// Set the DSCP of the IP packet in `packet` to `dscp`, keeping ECN; fixes the IPv4 header
/// checksum (RFC 1624). `false` if it is not an IP packet this can mark.
pub fn set_dscp(packet: &mut [u8], dscp: u8) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let (Some(&b0), Some(&old), Some(&c0), Some(&c1)) = (
                packet.first(),
                packet.get(1),
                packet.get(10),
                packet.get(11),
            ) else {
                return false;
            };
            let new = (dscp << 2) | (old & 0x03);
            // The TOS byte is the low byte of the first 16-bit word: HC' = ~(~HC + ~m + m').
            let old_word = u16::from_be_bytes([b0, old]);
            let new_word = u16::from_be_bytes([b0, new]);
            let sum = u16::from_be_bytes([c0, c1]);
            let mut acc = u32::from(!sum) + u32::from(!old_word) + u32::from(new_word);
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            let [f0, f1] = (!(u16::try_from(acc).unwrap_or(0xffff))).to_be_bytes();
            for (i, v) in [(1, new), (10, f0), (11, f1)] {
                if let Some(b) = packet.get_mut(i) {
                    *b = v;
                }
            }
            true
        }
        Some(6) if packet.len() >= 40 => {
            // Traffic class: the low 4 bits of byte 0 and the high 4 bits of byte 1.
            let (Some(&b0), Some(&b1)) = (packet.first(), packet.get(1)) else {
                return false;
            };
            let tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
            let tc = (dscp << 2) | (tc & 0x03);
            if let Some(b) = packet.get_mut(0) {
                *b = (b0 & 0xf0) | (tc >> 4);
            }
            if let Some(b) = packet.get_mut(1) {
                *b = (tc << 4) | (b1 & 0x0f);
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const MS: u64 = 1_000_000 * TICKS_PER_NS;

    fn bucket(per_second: u64, burst: u64) -> Bucket {
        Bucket::new(Rate { per_second, burst })
    }

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let b = bucket(1000, 10);
        let t0 = 5 * MS;
        assert_eq!((0..20).filter(|_| b.conform(t0, 1)).count(), 10);
        assert!(!b.conform(t0, 1), "the burst is spent");
        // One unit per millisecond comes back.
        assert!(b.conform(t0 + MS, 1));
        assert!(!b.conform(t0 + MS, 1));
        // Idle long enough, the whole burst again and no more.
        let t1 = t0 + 1000 * MS;
        assert_eq!((0..20).filter(|_| b.conform(t1, 1)).count(), 10);
    }

    #[test]
    fn a_unit_larger_than_the_burst_never_passes() {
        let b = bucket(1_000_000, 1500);
        assert!(!b.conform(1000 * MS, 1501));
        assert!(b.conform(1000 * MS, 1500));
    }

    #[test]
    fn over_a_second_the_rate_is_kept_within_one_burst() {
        // 12.5 MB/s (100 Mbit/s), 1400-byte packets offered every 10 µs (140 MB/s).
        let b = bucket(12_500_000, 64 << 10);
        let step = 10_000 * TICKS_PER_NS;
        let passed: u64 = (0..100_000u64)
            .filter(|i| b.conform(i * step, 1400))
            .map(|_| 1400)
            .sum();
        assert!(
            (12_500_000 - 1400..=12_500_000 + (64 << 10)).contains(&passed),
            "{passed} bytes passed in one second"
        );
    }

    #[test]
    fn charged_traffic_takes_room_from_the_rest_but_debt_is_bounded() {
        let b = bucket(1000, 10);
        let now = 100 * MS;
        for _ in 0..1000 {
            b.charge(now, 1);
        }
        assert!(!b.conform(now, 1));
        // The debt is at most two depths (20 ms here): room again after 21 ms.
        assert!(b.conform(now + 21 * MS, 1));
    }

    #[test]
    fn buckets_are_shared_safely_between_threads() {
        let b = std::sync::Arc::new(bucket(1000, 500));
        let passed: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let b = std::sync::Arc::clone(&b);
                    s.spawn(move || (0..1000).filter(|_| b.conform(7 * MS, 1)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            passed, 500,
            "exactly the burst passes, however the threads race"
        );
    }

    fn policy(extra: &str) -> Policy {
        warden_policy::parse(
            &format!(
                r#"
version = 1
[[node]]
id = "a"
address = "192.0.2.1"
[[tenant]]
id = "acme"
[[tenant]]
id = "globex"
[[segment]]
name = "acme-1"
tenant = "acme"
cidrs = ["198.51.100.0/28"]
[[segment]]
name = "acme-2"
tenant = "acme"
cidrs = ["198.51.100.16/28"]
[[segment]]
name = "globex-1"
tenant = "globex"
cidrs = ["203.0.113.0/28"]
[[segment]]
name = "globex-2"
tenant = "globex"
cidrs = ["203.0.113.16/28"]
[[rule]]
from = "acme-1"
to = "acme-2"
proto = "any"
[[rule]]
from = "globex-1"
to = "globex-2"
proto = "any"
{extra}
"#
            ),
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn without_limits_everything_passes() {
        let l = Limiter::new(&policy(""));
        assert!(l.is_empty());
        for i in 0..10_000 {
            assert_eq!(l.check(i, 0, 0, 1, 1500, true), Decision::Pass);
        }
    }

    #[test]
    fn a_tenant_limit_drops_that_tenant_only() {
        let l = Limiter::new(&policy(
            "[[limit]]\ntenant = \"globex\"\npackets_per_second = 1000\nburst_packets = 5\n",
        ));
        let now = MS;
        let globex: Vec<_> = (0..10).map(|_| l.check(now, 1, 2, 3, 100, false)).collect();
        assert_eq!(globex.iter().filter(|d| **d == Decision::Pass).count(), 5);
        assert_eq!(globex[9], Decision::Drop(Over::Rate));
        for _ in 0..100 {
            assert_eq!(l.check(now, 0, 0, 1, 100, false), Decision::Pass);
        }
    }

    #[test]
    fn a_pair_limit_applies_to_its_pair_and_connections_are_counted_on_syn() {
        let l = Limiter::new(&policy(
            "[[limit]]\nfrom = \"acme-1\"\nto = \"acme-2\"\nnew_connections_per_second = 10\nburst_connections = 2\n",
        ));
        let now = MS;
        assert_eq!(l.check(now, 0, 0, 1, 60, true), Decision::Pass);
        assert_eq!(l.check(now, 0, 0, 1, 60, true), Decision::Pass);
        assert_eq!(
            l.check(now, 0, 0, 1, 60, true),
            Decision::Drop(Over::Connections)
        );
        // Packets of established connections are not new connections.
        assert_eq!(l.check(now, 0, 0, 1, 1500, false), Decision::Pass);
        // The reverse direction is another pair.
        assert_eq!(l.check(now, 0, 1, 0, 60, true), Decision::Pass);
    }

    #[test]
    fn a_mark_limit_passes_over_limit_packets_marked() {
        let l = Limiter::new(&policy(
            "[[limit]]\ntenant = \"acme\"\npackets_per_second = 1000\nburst_packets = 1\naction = \"mark\"\n",
        ));
        assert_eq!(l.check(MS, 0, 0, 1, 100, false), Decision::Pass);
        assert_eq!(l.check(MS, 0, 0, 1, 100, false), Decision::Mark(Over::Rate));
    }

    #[test]
    fn a_guarantee_holds_against_a_flood_and_lends_its_share_when_idle() {
        // A 100 Mbit/s wire (12.5 MB/s); acme is guaranteed 60 Mbit/s (7.5 MB/s).
        let l = Limiter::new(&policy(
            "[wire]\nbits_per_second = \"100M\"\n[[limit]]\ntenant = \"acme\"\nguaranteed_bits_per_second = \"60M\"\n",
        ));
        let step = 100_000 * TICKS_PER_NS; // every 100 µs, for one second
        let (mut acme, mut globex) = (0u64, 0u64);
        for i in 0..10_000u64 {
            let now = 1000 * MS + i * step;
            // Each offers 1400 bytes per 100 µs: 14 MB/s each, 28 MB/s together, in turns.
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for t in order {
                let (src, dst) = (2 * t, 2 * t + 1);
                if l.check(now, t, src, dst, 1400, false) == Decision::Pass {
                    *[&mut acme, &mut globex][t] += 1400;
                }
            }
        }
        assert!(
            acme >= 7_400_000,
            "acme got {acme} B/s, under its guarantee"
        );
        assert!(
            acme + globex <= 12_500_000 + 2 * (1 << 20),
            "{acme} + {globex} B/s is more than the wire"
        );
        // Beyond the guarantee, the rest (5 MB/s) goes to whoever comes first: about half each.
        assert!(globex >= 2_000_000, "globex got {globex} B/s of the rest");

        // acme idle: globex gets the whole wire.
        let mut globex = 0u64;
        for i in 0..10_000u64 {
            let now = 3000 * MS + i * step;
            if l.check(now, 1, 2, 3, 1400, false) == Decision::Pass {
                globex += 1400;
            }
        }
        assert!(
            globex >= 12_000_000,
            "globex got only {globex} B/s of an idle wire"
        );
    }

    #[test]
    fn dscp_marks_keep_ecn_and_a_valid_ipv4_checksum() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[1] = 0xb9; // DSCP 46 (EF), ECN 01
        v4[2..4].copy_from_slice(&20u16.to_be_bytes());
        v4[8] = 64;
        v4[9] = 6;
        v4[12..16].copy_from_slice(&[198, 51, 100, 1]);
        v4[16..20].copy_from_slice(&[198, 51, 100, 17]);
        let sum = checksum(&v4);
        v4[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(set_dscp(&mut v4, DSCP_LE));
        assert_eq!(v4[1], (DSCP_LE << 2) | 0x01);
        assert_eq!(checksum(&v4), 0, "the header checksum no longer verifies");

        let mut v6 = [0u8; 40];
        v6[0] = 0x6b; // traffic class 0xb8 = DSCP 46, ECN 00
        v6[1] = 0x8f; // flow label bits 0xf...
        assert!(set_dscp(&mut v6, DSCP_LE));
        assert_eq!(((v6[0] & 0x0f) << 4) | (v6[1] >> 4), DSCP_LE << 2);
        assert_eq!(v6[0] >> 4, 6);
        assert_eq!(v6[1] & 0x0f, 0x0f, "the flow label changed");

        assert!(!set_dscp(&mut [0x45u8; 10], DSCP_LE));
        assert!(!set_dscp(&mut [], DSCP_LE));
        assert!(!set_dscp(&mut [0x20u8; 60], DSCP_LE));
    }

    fn checksum(h: &[u8]) -> u16 {
        let mut acc: u32 = h
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }
}
