//! Flow telemetry on the data path: per-worker tables of flow records, filled from sampled
//! packets, drained by an exporter (wardend's `telemetry` module: IPFIX and OCSF).
//!
//! A record is one (tenant, direction, 5-tuple, outcome): packets and bytes, first and last
//! seen, the segments. Packets of one flow with another outcome (allowed, or dropped for a
//! reason) make another record, as IPFIX's forwardingStatus would. Sampling is systematic
//! count-based (RFC 5475 §5.1): one packet in `sampling` per worker, so a record's counts are
//! those of the sampled packets; multiply by `sampling` to estimate the flow.
//!
//! **Cost.** Telemetry off: one branch per packet. On: a counter per packet, and per sampled
//! packet a lock of the worker's own table (uncontended: only its worker and, once a second,
//! the exporter take it) and a hash-map update. A table holds at most `max_flows` records;
//! past that, new flows are counted as lost until the exporter drains expired ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Direction, Drop};

/// How telemetry samples and bounds its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// Record one packet in this many (1: every packet).
    pub sampling: u32,
    /// Most records per worker.
    pub max_flows: usize,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            sampling: 1,
            max_flows: 65_536,
        }
    }
}

/// What happened to a flow's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allowed,
    Dropped(Drop),
}

impl Outcome {
    /// The drop reason, if dropped (`Drop::as_str`).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Outcome::Allowed => None,
            Outcome::Dropped(d) => Some(d.as_str()),
        }
    }
}

/// The key of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Index of the tenant in the policy in force, if the packet had one.
    pub tenant: Option<u32>,
    /// `Outbound`: from the host into the tunnel; `Inbound`: from the wire to the host.
    pub direction: Direction,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub outcome: Outcome,
}

/// A record's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCounts {
    pub src_segment: Option<u32>,
    pub dst_segment: Option<u32>,
    /// Sampled packets and their inner bytes.
    pub packets: u64,
    pub bytes: u64,
    pub first: Instant,
    pub last: Instant,
}

/// A finished (or, for a live view, current) record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub counts: FlowCounts,
}

/// What the data path learned about a packet on its way, for its record.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Note {
    pub tenant: Option<u32>,
    pub src_segment: Option<u32>,
    pub dst_segment: Option<u32>,
    /// (src, dst, proto, src port, dst port), once parsed.
    pub five_tuple: Option<(IpAddr, IpAddr, u8, u16, u16)>,
}

#[derive(Default)]
#[repr(align(128))]
struct SampleCounter(AtomicU64);

/// One worker's records.
#[derive(Default)]
struct Table {
    flows: HashMap<FlowKey, FlowCounts>,
}

/// Every worker's flow table.
pub struct FlowTables {
    settings: FlowSettings,
    counters: Box<[SampleCounter]>,
    tables: Box<[Mutex<Table>]>,
    /// New flows not recorded because their worker's table was full.
    lost: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FlowTables {
    pub fn new(workers: u16, settings: FlowSettings) -> FlowTables {
        let n = usize::from(workers.max(1));
        FlowTables {
            settings: FlowSettings {
                sampling: settings.sampling.max(1),
                max_flows: settings.max_flows.max(1),
            },
            counters: (0..n).map(|_| SampleCounter::default()).collect(),
            tables: (0..n).map(|_| Mutex::new(Table::default())).collect(),
            lost: AtomicU64::new(0),
        }
    }

    /// Whether this packet of `worker` is sampled.
    pub(crate) fn sample(&self, worker: u16) -> bool {
        if self.settings.sampling == 1 {
            return true;
        }
        let Some(c) = self.counters.get(usize::from(worker)) else {
            return false;
        };
        c.0.fetch_add(1, Ordering::Relaxed) % u64::from(self.settings.sampling) == 0
    }

    /// Account one sampled packet of `bytes`.
    pub(crate) fn record(
        &self,
        worker: u16,
        direction: Direction,
        note: &Note,
        outcome: Outcome,
        bytes: usize,
        now: Instant,
    ) {
        let Some((src, dst, proto, src_port, dst_port)) = note.five_tuple else {
            // Not even an IP packet: counted by the drop counters, no flow to speak of.
            return;
        };
        let Some(table) = self.tables.get(usize::from(worker)) else {
            return;
        };
        let key = FlowKey {
            tenant: note.tenant,
            direction,
            src,
            dst,
            proto,
            src_port,
            dst_port,
            outcome,
        };
        let mut t = lock(table);
        let full = t.flows.len() >= self.settings.max_flows;
        match t.flows.get_mut(&key) {
            Some(c) => {
                c.packets += 1;
                c.bytes += bytes as u64;
                c.last = now;
            }
            None if full => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                t.flows.insert(
                    key,
                    FlowCounts {
                        src_segment: note.src_segment,
                        dst_segment: note.dst_segment,
                        packets: 1,
                        bytes: bytes as u64,
                        first: now,
                        last: now,
                    },
                );
            }
        }
    }

    /// Remove and return the records that ended: idle for `idle`, or active for `active`
    /// (those are cut and start again with the next packet), or every record with `all`.
    pub fn drain(
        &self,
        now: Instant,
        idle: Duration,
        active: Duration,
        all: bool,
    ) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for table in self.tables.iter() {
            let mut t = lock(table);
            t.flows.retain(|key, counts| {
                let ended = all
                    || now.saturating_duration_since(counts.last) >= idle
                    || now.saturating_duration_since(counts.first) >= active;
                if ended {
                    out.push(FlowRecord {
                        key: *key,
                        counts: *counts,
                    });
                }
                !ended
            });
        }
        out
    }

    /// The records as they are now (for a live view), without removing them.
    pub fn snapshot(&self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for table in self.tables.iter() {
            let t = lock(table);
            out.extend(t.flows.iter().map(|(key, counts)| FlowRecord {
                key: *key,
                counts: *counts,
            }));
        }
        out
    }

    /// New flows lost to full tables since start.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| lock(t).flows.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn note(sport: u16) -> Note {
        Note {
            tenant: Some(0),
            src_segment: Some(0),
            dst_segment: Some(1),
            five_tuple: Some((
                "198.51.100.1".parse().unwrap(),
                "198.51.100.70".parse().unwrap(),
                6,
                sport,
                5432,
            )),
        }
    }

    #[test]
    fn packets_of_a_flow_add_up_and_outcomes_are_separate_records() {
        let t = FlowTables::new(1, FlowSettings::default());
        let t0 = Instant::now();
        for i in 0..5 {
            t.record(
                0,
                Direction::Outbound,
                &note(40000),
                Outcome::Allowed,
                100,
                t0 + Duration::from_millis(i),
            );
        }
        t.record(
            0,
            Direction::Outbound,
            &note(40000),
            Outcome::Dropped(Drop::RateLimit),
            100,
            t0,
        );
        let mut all = t.drain(t0, Duration::from_secs(60), Duration::from_secs(60), true);
        all.sort_by_key(|r| r.counts.packets);
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].counts.packets, all[1].counts.bytes), (5, 500));
        assert_eq!(
            all[1].counts.last - all[1].counts.first,
            Duration::from_millis(4)
        );
        assert_eq!(all[0].key.outcome.reason(), Some("rate-limit"));
        assert!(t.is_empty());
    }

    #[test]
    fn sampling_keeps_one_packet_in_n() {
        let t = FlowTables::new(
            2,
            FlowSettings {
                sampling: 10,
                max_flows: 100,
            },
        );
        let sampled = (0..1000).filter(|_| t.sample(1)).count();
        assert_eq!(sampled, 100);
        let every = FlowTables::new(1, FlowSettings::default());
        assert!((0..10).all(|_| every.sample(0)));
        assert!(!t.sample(7), "an unknown worker samples nothing");
    }

    #[test]
    fn idle_and_active_timeouts_end_records_and_a_full_table_counts_what_it_lost() {
        let t = FlowTables::new(
            1,
            FlowSettings {
                sampling: 1,
                max_flows: 2,
            },
        );
        let t0 = Instant::now();
        t.record(0, Direction::Outbound, &note(1), Outcome::Allowed, 60, t0);
        t.record(
            0,
            Direction::Outbound,
            &note(2),
            Outcome::Allowed,
            60,
            t0 + Duration::from_secs(9),
        );
        t.record(0, Direction::Outbound, &note(3), Outcome::Allowed, 60, t0);
        assert_eq!((t.len(), t.lost()), (2, 1));
        let idle = Duration::from_secs(5);
        let ended = t.drain(
            t0 + Duration::from_secs(10),
            idle,
            Duration::from_secs(60),
            false,
        );
        assert_eq!(ended.len(), 1, "only the flow idle for 10 s ended");
        assert_eq!(ended[0].key.src_port, 1);
        // A long flow is cut at the active timeout.
        let ended = t.drain(
            t0 + Duration::from_secs(70),
            Duration::from_secs(600),
            Duration::from_secs(60),
            false,
        );
        assert_eq!(ended.len(), 1);
        assert!(t.is_empty());
        // No five-tuple, no record.
        t.record(
            0,
            Direction::Inbound,
            &Note::default(),
            Outcome::Dropped(Drop::Malformed),
            10,
            t0,
        );
        assert!(t.is_empty());
    }
}
