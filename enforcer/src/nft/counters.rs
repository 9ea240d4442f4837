//! The counters of Warden's table, read back as a rule dump and sorted by what they count.

use std::collections::BTreeMap;

use super::layout::names;

/// Verdict codes (`NF_DROP`, `NF_ACCEPT`).
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;

/// A rule of Warden's table as dumped: its chain, its counter and its verdict, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DumpedRule {
    pub chain: String,
    /// (packets, bytes)
    pub counter: Option<(u64, u64)>,
    /// `NF_ACCEPT`, `NF_DROP`, `NFT_JUMP`, ...
    pub verdict: Option<i32>,
    /// Names of the sets and maps the rule looks up.
    pub lookups: Vec<String>,
}

/// Packets and bytes of one nftables counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, (packets, bytes): (u64, u64)) {
        self.packets = self.packets.saturating_add(packets);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// What Warden's table has counted since it was last applied (every apply starts from zero).
///
/// Packets of established and related connections are accepted before any counter, so the
/// counters count the packets that *open* flows: per rule, the packets a flow rule admitted
/// (for TCP, the SYN; for UDP, the first datagram of each new conntrack entry); on the wire,
/// new ESP-in-UDP associations and connections to the appliance's TCP services, and what was
/// dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Per flow rule, by `FlowRule::name`.
    pub rules: BTreeMap<String, Count>,
    /// New flows the wire checks accepted (in and out, to/from this host and forwarded).
    pub wire_accepted: Count,
    /// Packets the wire checks dropped.
    pub wire_dropped: Count,
    /// Forwarded tenant packets no rule allowed.
    pub flows_dropped: Count,
    /// Per limit rule, by `LimitRule::name`: packets over one of its rates (dropped, or
    /// marked and passed).
    pub limits: BTreeMap<String, Count>,
}

impl Counters {
    /// Sorts dumped rules into counters: a counter in a flow rule's chain counts for that
    /// rule; in the wire checks by verdict; in `flows` the drop.
    pub(crate) fn from_rules(rules: &[DumpedRule]) -> Counters {
        let mut c = Counters::default();
        for rule in rules {
            let Some(counter) = rule.counter else {
                continue;
            };
            let accept = rule.verdict == Some(NF_ACCEPT);
            let drop = rule.verdict == Some(NF_DROP);
            match rule.chain.as_str() {
                names::WIRE_IN_CHECKS | names::WIRE_OUT_CHECKS if accept => {
                    c.wire_accepted.add(counter)
                }
                names::WIRE_IN_CHECKS | names::WIRE_OUT_CHECKS if drop => {
                    c.wire_dropped.add(counter)
                }
                names::FLOWS if drop => c.flows_dropped.add(counter),
                // A flow rule's chain accepts; a limit's chain drops or jumps to mark_le.
                chain if !names::CHAINS.contains(&chain) && accept => {
                    c.rules.entry(chain.to_owned()).or_default().add(counter)
                }
                chain if !names::CHAINS.contains(&chain) => {
                    c.limits.entry(chain.to_owned()).or_default().add(counter)
                }
                _ => {}
            }
        }
        c
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

    fn rule(chain: &str, counter: Option<(u64, u64)>, verdict: Option<i32>) -> DumpedRule {
        DumpedRule {
            chain: chain.into(),
            counter,
            verdict,
            lookups: vec![],
        }
    }

    #[test]
    fn counters_are_attributed_by_chain_and_verdict() {
        let c = Counters::from_rules(&[
            rule("r0", Some((3, 180)), Some(NF_ACCEPT)),
            rule("r1", Some((0, 0)), Some(NF_ACCEPT)),
            rule("wire_in_checks", None, Some(NF_ACCEPT)),
            rule("wire_in_checks", Some((2, 100)), Some(NF_ACCEPT)),
            rule("wire_out_checks", Some((1, 50)), Some(NF_ACCEPT)),
            rule("wire_in_checks", Some((5, 500)), Some(NF_DROP)),
            rule("flows", Some((7, 700)), Some(NF_DROP)),
            rule("flows", None, None),
            rule("l0", Some((4, 400)), Some(NF_DROP)),
            rule("l0", Some((1, 100)), Some(-3)),
        ]);
        assert_eq!(
            c.limits["l0"],
            Count {
                packets: 5,
                bytes: 500
            }
        );
        assert_eq!(c.limits.len(), 1);
        assert_eq!(
            c.rules["r0"],
            Count {
                packets: 3,
                bytes: 180
            }
        );
        assert_eq!(c.rules["r1"], Count::default());
        assert_eq!(c.rules.len(), 2);
        assert_eq!(
            c.wire_accepted,
            Count {
                packets: 3,
                bytes: 150
            }
        );
        assert_eq!(
            c.wire_dropped,
            Count {
                packets: 5,
                bytes: 500
            }
        );
        assert_eq!(
            c.flows_dropped,
            Count {
                packets: 7,
                bytes: 700
            }
        );
    }
}
