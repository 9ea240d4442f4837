//! Table tests of the session core: time and messages in, actions out.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
use super::*;

const T: Timers = Timers {
    keepalive: Duration::from_secs(5),
    peer_timeout: Duration::from_secs(15),
    reattest_interval: Duration::from_secs(60),
    rekey_interval: Duration::from_secs(3600),
    grace: Duration::from_secs(5),
    handshake: Duration::from_secs(30),
};

fn evidence() -> Evidence {
    serde_json::from_value(serde_json::json!({
        "version": 1, "purpose": "warden/peer-channel/v1", "attest": "", "signature": "",
        "pcrs": {}, "ak_public": "", "appliance_pcr": 15, "appliance_log": []
    }))
    .unwrap()
}

fn sends(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn closed(actions: &[Action]) -> Option<&Close> {
    actions.iter().find_map(|a| match a {
        Action::Close(c) => Some(c),
        _ => None,
    })
}

/// `Session::tick` without the `keys` announcements (the tests below look at SAs; the
/// announcements have their own tests).
fn tick(
    s: &mut Session,
    now: Instant,
    keys: &BTreeMap<String, u32>,
    rekey_wanted: &[(String, u64)],
) -> Vec<Action> {
    s.tick(now, keys, rekey_wanted)
        .into_iter()
        .filter(|a| !matches!(a, Action::Send(Message::Keys { .. })))
        .collect()
}

fn keys(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
    list.iter().map(|(t, v)| ((*t).to_owned(), *v)).collect()
}

/// A session of node-a with node-b, driven to `Attested`; returns it and the time.
fn attested() -> (Session, Instant) {
    let t0 = Instant::now();
    let mut s = Session::new("node-a", "node-b", 2, 4, Some(vec![0, 7]), T, t0);
    let hello = s.start();
    assert!(
        matches!(&sends(&hello)[..], [Message::Hello { node, workers: 2, policy_version: 4 }] if node == "node-a")
    );
    let a = s.on_message(
        Message::Hello {
            node: "node-b".into(),
            workers: 3,
            policy_version: 4,
        },
        t0,
    );
    let Some(Message::Challenge { pcrs, .. }) = sends(&a).first().copied() else {
        panic!("{a:?}")
    };
    assert_eq!(pcrs, &vec![0, 7]);
    // Their challenge, our evidence, their verdict; our appraisal of theirs.
    let a = s.on_message(
        Message::Challenge {
            nonce: vec![1; 32],
            pcrs: vec![0],
        },
        t0,
    );
    assert!(matches!(a[..], [Action::Attest { .. }]));
    let a = s.evidence_ready(Ok(evidence()));
    assert!(matches!(sends(&a)[..], [Message::Evidence { .. }]));
    let a = s.on_message(
        Message::Evidence {
            evidence: Box::new(evidence()),
        },
        t0,
    );
    assert!(matches!(a[..], [Action::Verify { first: true, .. }]));
    assert!(
        tick(&mut s, t0, &keys(&[("acme", 1)]), &[])
            .iter()
            .all(|a| !matches!(a, Action::InstallInbound { .. })),
        "no SA before attestation"
    );
    let a = s.verified(Ok(4), t0);
    assert!(matches!(sends(&a)[..], [Message::Verdict { ok: true, .. }]));
    assert_eq!(s.phase(), Phase::Attesting, "one direction is not enough");
    let a = s.on_message(
        Message::Verdict {
            ok: true,
            reason: String::new(),
        },
        t0,
    );
    assert!(matches!(a[..], [Action::Attested]));
    assert_eq!(s.phase(), Phase::Attested);
    // The peer holds every version the tests use: this side's own version decides.
    let a = s.on_message(
        Message::Keys {
            versions: keys(&[("acme", 1000), ("globex", 1000)]),
        },
        t0,
    );
    assert!(a.is_empty(), "{a:?}");
    (s, t0)
}

#[test]
fn the_receiver_installs_offers_and_the_sender_installs_on_offer() {
    let (mut s, t0) = attested();
    let a = tick(&mut s, t0, &keys(&[("acme", 2)]), &[]);
    let [Action::InstallInbound {
        tenant,
        epoch: 1,
        key_version: 2,
        peer_workers: 3,
        ..
    }] = &a[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!(tenant, "acme");
    // While the install runs, no second one.
    assert!(tick(&mut s, t0, &keys(&[("acme", 2)]), &[]).is_empty());
    let a = s.inbound_installed("acme", 1, 2, 0x100, t0);
    assert!(matches!(
        sends(&a)[..],
        [Message::Offer {
            epoch: 1,
            key_version: 2,
            spi_base: 0x100,
            workers: 3,
            ..
        }]
    ));
    // The peer's offer to us.
    let offer = |epoch| Message::Offer {
        tenant: "acme".into(),
        epoch,
        key_version: 2,
        spi_base: 0x200,
        workers: 2,
    };
    let a = s.on_message(offer(1), t0);
    assert!(matches!(
        a[..],
        [Action::InstallOutbound {
            epoch: 1,
            spi_base: 0x200,
            ..
        }]
    ));
    s.outbound_installed("acme", 1);
    assert_eq!(s.outbound_epoch("acme"), Some(1));
    // A replayed or older epoch would reuse keys: the channel closes.
    let a = s.on_message(offer(1), t0);
    assert!(
        matches!(closed(&a), Some(Close::Lost(r)) if r.contains("never reused")),
        "{a:?}"
    );
}

#[test]
fn rekey_is_make_before_break_and_requested_once_per_epoch() {
    let (mut s, t0) = attested();
    let k = keys(&[("acme", 1)]);
    tick(&mut s, t0, &k, &[]);
    s.inbound_installed("acme", 1, 1, 0x100, t0);
    s.on_message(
        Message::Offer {
            tenant: "acme".into(),
            epoch: 1,
            key_version: 1,
            spi_base: 0x300,
            workers: 2,
        },
        t0,
    );
    s.outbound_installed("acme", 1);

    // Sender side: the tunnel wants a rekey; one request per epoch.
    let want = vec![("acme".to_owned(), 1)];
    let a = tick(&mut s, t0, &k, &want);
    assert!(matches!(sends(&a)[..], [Message::RekeyRequest { .. }]));
    assert!(sends(&tick(&mut s, t0, &k, &want)).is_empty());

    // Receiver side: the peer asks; honoured once MIN_REKEY_SPACING has passed.
    s.on_message(
        Message::RekeyRequest {
            tenant: "acme".into(),
        },
        t0,
    );
    assert!(tick(&mut s, t0, &k, &[]).is_empty());
    let t1 = t0 + MIN_REKEY_SPACING;
    let a = tick(&mut s, t1, &k, &[]);
    assert!(
        matches!(a[..], [Action::InstallInbound { epoch: 2, .. }]),
        "{a:?}"
    );
    let a = s.inbound_installed("acme", 2, 1, 0x400, t1);
    assert_eq!(s.inbound_epoch("acme"), Some(2));
    assert!(matches!(
        sends(&a)[..],
        [Message::Offer {
            epoch: 2,
            spi_base: 0x400,
            ..
        }]
    ));
    // The old inbound SA stays for the grace period, then goes.
    let a = tick(&mut s, t1 + T.grace - Duration::from_millis(1), &k, &[]);
    assert!(
        !a.iter().any(|a| matches!(a, Action::RemoveInbound { .. })),
        "{a:?}"
    );
    let a = tick(&mut s, t1 + T.grace, &k, &[]);
    assert!(
        matches!(
            a[..],
            [Action::RemoveInbound {
                spi_base: 0x100,
                ..
            }]
        ),
        "{a:?}"
    );

    // Age and a new key version also rekey.
    let t2 = t1 + T.grace + Duration::from_millis(1);
    let a = tick(&mut s, t2, &keys(&[("acme", 2)]), &[]);
    assert!(
        matches!(
            a[..],
            [Action::InstallInbound {
                epoch: 3,
                key_version: 2,
                ..
            }]
        ),
        "{a:?}"
    );
    s.inbound_installed("acme", 3, 2, 0x500, t2);
    s.on_message(Message::Pong {}, t2 + T.rekey_interval);
    let a = tick(&mut s, t2 + T.rekey_interval, &keys(&[("acme", 2)]), &[]);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::InstallInbound { epoch: 4, .. })),
        "{a:?}"
    );
}

/// A rekey wish from a snapshot built before the new SAs were installed names the old epoch;
/// it must not spend the new epoch's one request, or the request the new SAs need later is
/// never sent and they run into their hard limit.
#[test]
fn a_stale_rekey_wish_does_not_spend_the_new_epochs_request() {
    let (mut s, t0) = attested();
    let k = keys(&[("acme", 1)]);
    tick(&mut s, t0, &k, &[]);
    s.outbound_installed("acme", 1);
    let a = tick(&mut s, t0, &k, &[("acme".to_owned(), 1)]);
    assert!(matches!(sends(&a)[..], [Message::RekeyRequest { .. }]));
    s.outbound_installed("acme", 2);
    // Still the epoch-1 wish: ignored.
    assert!(sends(&tick(&mut s, t0, &k, &[("acme".to_owned(), 1)])).is_empty());
    // Epoch 2 reaches its limit: asked for at once, and only once.
    let a = tick(&mut s, t0, &k, &[("acme".to_owned(), 2)]);
    assert!(
        matches!(sends(&a)[..], [Message::RekeyRequest { .. }]),
        "{a:?}"
    );
    assert!(sends(&tick(&mut s, t0, &k, &[("acme".to_owned(), 2)])).is_empty());
}

#[test]
fn tenants_without_a_key_are_withdrawn_and_epochs_never_restart() {
    let (mut s, t0) = attested();
    tick(&mut s, t0, &keys(&[("acme", 1)]), &[]);
    s.inbound_installed("acme", 1, 1, 0x100, t0);
    s.on_message(
        Message::Offer {
            tenant: "acme".into(),
            epoch: 1,
            key_version: 1,
            spi_base: 0x300,
            workers: 2,
        },
        t0,
    );
    s.outbound_installed("acme", 1);
    let a = tick(&mut s, t0, &keys(&[]), &[]);
    assert!(a.iter().any(|a| matches!(
        a,
        Action::RemoveInbound {
            spi_base: 0x100,
            ..
        }
    )));
    assert!(a.iter().any(|a| matches!(a, Action::RemoveOutbound { .. })));
    assert!(matches!(sends(&a)[..], [Message::Withdraw { .. }]));
    // Back again: the next epoch, not 1.
    let a = tick(&mut s, t0, &keys(&[("acme", 1)]), &[]);
    assert!(
        matches!(a[..], [Action::InstallInbound { epoch: 2, .. }]),
        "{a:?}"
    );
    // The peer withdraws its side.
    s.outbound_installed("acme", 2);
    let a = s.on_message(
        Message::Withdraw {
            tenant: "acme".into(),
        },
        t0,
    );
    assert!(matches!(a[..], [Action::RemoveOutbound { .. }]));
}

#[test]
fn failed_installs_and_offers_are_retried_later() {
    let (mut s, t0) = attested();
    let k = keys(&[("acme", 1)]);
    tick(&mut s, t0, &k, &[]);
    s.inbound_failed("acme", t0);
    assert!(tick(&mut s, t0 + Duration::from_secs(1), &k, &[]).is_empty());
    let a = tick(&mut s, t0 + RETRY_AFTER, &k, &[]);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::InstallInbound { epoch: 2, .. })),
        "{a:?}"
    );

    s.outbound_failed("globex", 1, t0);
    // Without a key for it there is nothing to ask for.
    assert!(sends(&tick(&mut s, t0 + RETRY_AFTER, &k, &[])).is_empty());
    let a = tick(
        &mut s,
        t0 + RETRY_AFTER,
        &keys(&[("acme", 1), ("globex", 1)]),
        &[],
    );
    assert!(sends(&a)
        .iter()
        .any(|m| matches!(m, Message::RekeyRequest { tenant } if tenant == "globex")));
}

/// The peer got the tenant's new key version first and offered SAs under it; this side
/// could not take the offer. It asks again as soon as it holds that version, not
/// RETRY_AFTER later (meanwhile its old SAs run towards their hard limit).
#[test]
fn a_refused_offer_is_asked_again_once_the_key_version_arrives() {
    let (mut s, t0) = attested();
    tick(&mut s, t0, &keys(&[("acme", 1)]), &[]);
    s.outbound_installed("acme", 1);
    s.on_message(
        Message::Offer {
            tenant: "acme".into(),
            epoch: 2,
            key_version: 2,
            spi_base: 0x400,
            workers: 2,
        },
        t0,
    );
    s.outbound_failed("acme", 2, t0);
    // Still version 1 here: nothing to ask for yet.
    assert!(sends(&tick(&mut s, t0, &keys(&[("acme", 1)]), &[])).is_empty());
    // Version 2 arrives: asked at once, once.
    let a = tick(&mut s, t0, &keys(&[("acme", 2)]), &[]);
    assert!(
        sends(&a)
            .iter()
            .any(|m| matches!(m, Message::RekeyRequest { tenant } if tenant == "acme")),
        "{a:?}"
    );
    let a = tick(&mut s, t0, &keys(&[("acme", 2)]), &[]);
    assert!(
        !sends(&a)
            .iter()
            .any(|m| matches!(m, Message::RekeyRequest { .. })),
        "{a:?}"
    );
}

#[test]
fn reattestation_must_be_answered_within_the_interval() {
    let (mut s, t0) = attested();
    let k = keys(&[]);
    let t1 = t0 + T.reattest_interval;
    s.on_message(Message::Pong {}, t1);
    let a = tick(&mut s, t1, &k, &[]);
    assert!(
        sends(&a)
            .iter()
            .any(|m| matches!(m, Message::Challenge { .. })),
        "{a:?}"
    );
    // Pings keep the channel alive, but the challenge goes unanswered.
    for i in 1..=12 {
        s.on_message(Message::Pong {}, t1 + Duration::from_secs(5 * i));
    }
    let a = tick(
        &mut s,
        t1 + T.reattest_interval + Duration::from_millis(1),
        &k,
        &[],
    );
    assert!(
        matches!(closed(&a), Some(Close::AttestationFailed(r)) if r.contains("no evidence")),
        "{a:?}"
    );
    assert_eq!(s.phase(), Phase::Closed);
    assert!(tick(&mut s, t1 + T.reattest_interval * 2, &k, &[]).is_empty());
}

#[test]
fn a_refused_reattestation_closes_with_a_verdict() {
    let (mut s, t0) = attested();
    let t1 = t0 + T.reattest_interval;
    s.on_message(Message::Pong {}, t1);
    tick(&mut s, t1, &keys(&[]), &[]);
    let a = s.on_message(
        Message::Evidence {
            evidence: Box::new(evidence()),
        },
        t1,
    );
    assert!(matches!(a[..], [Action::Verify { first: false, .. }]));
    let a = s.verified(Err("[reference-values] PCR 7 differs".into()), t1);
    let close = closed(&a).unwrap();
    assert!(matches!(close, Close::AttestationFailed(_)));
    assert!(
        matches!(close.verdict(), Some(Message::Verdict { ok: false, reason }) if reason.contains("PCR 7"))
    );
    assert_eq!(Close::Lost("x".into()).verdict(), None);

    // And the peer refusing our re-attestation closes too.
    let (mut s, t0) = attested();
    s.on_message(
        Message::Challenge {
            nonce: vec![2; 32],
            pcrs: vec![],
        },
        t0 + Duration::from_secs(1),
    );
    s.evidence_ready(Ok(evidence()));
    let a = s.on_message(
        Message::Verdict {
            ok: false,
            reason: "no".into(),
        },
        t0 + Duration::from_secs(1),
    );
    assert!(matches!(closed(&a), Some(Close::AttestationFailed(_))));
}

#[test]
fn silence_and_slow_handshakes_close_the_channel() {
    let (mut s, t0) = attested();
    let a = tick(&mut s, t0 + T.keepalive, &keys(&[]), &[]);
    assert!(matches!(sends(&a)[..], [Message::Ping {}]));
    let a = tick(
        &mut s,
        t0 + T.peer_timeout + Duration::from_millis(1),
        &keys(&[]),
        &[],
    );
    assert!(matches!(closed(&a), Some(Close::Lost(r)) if r.contains("peer_timeout")));

    let t0 = Instant::now();
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.start();
    s.on_message(
        Message::Hello {
            node: "node-b".into(),
            workers: 1,
            policy_version: 0,
        },
        t0,
    );
    for i in 1..=6 {
        s.on_message(Message::Pong {}, t0 + Duration::from_secs(5 * i));
    }
    let a = tick(
        &mut s,
        t0 + T.handshake + Duration::from_millis(1),
        &keys(&[]),
        &[],
    );
    assert!(matches!(closed(&a), Some(Close::Lost(r)) if r.contains("did not complete")));
}

#[test]
fn identity_reference_and_order_are_enforced_before_attestation() {
    let t0 = Instant::now();
    let hello = |node: &str| Message::Hello {
        node: node.into(),
        workers: 1,
        policy_version: 0,
    };
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    let a = s.on_message(hello("node-c"), t0);
    assert!(matches!(closed(&a), Some(Close::Refused(r)) if r.contains("node-c")));

    // No reference values: refused, fail closed.
    let mut s = Session::new("node-a", "node-b", 1, 0, None, T, t0);
    let a = s.on_message(hello("node-b"), t0);
    assert!(matches!(closed(&a), Some(Close::Refused(r)) if r.contains("no reference values")));

    // Anything but Hello first; keys before attestation; unasked evidence; verdicts on
    // nothing; a flood of challenges.
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    assert!(matches!(
        closed(&s.on_message(Message::Ping {}, t0)),
        Some(Close::Refused(_))
    ));
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.on_message(hello("node-b"), t0);
    let a = s.on_message(
        Message::Withdraw {
            tenant: "acme".into(),
        },
        t0,
    );
    assert!(matches!(closed(&a), Some(Close::Refused(r)) if r.contains("before both sides")));
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.on_message(hello("node-b"), t0);
    let a = s.on_message(
        Message::Verdict {
            ok: true,
            reason: String::new(),
        },
        t0,
    );
    assert!(closed(&a).is_some());
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.on_message(hello("node-b"), t0);
    s.on_message(
        Message::Evidence {
            evidence: Box::new(evidence()),
        },
        t0,
    );
    let a = s.on_message(
        Message::Evidence {
            evidence: Box::new(evidence()),
        },
        t0,
    );
    assert!(closed(&a).is_some(), "{a:?}");
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.on_message(hello("node-b"), t0);
    let c = || Message::Challenge {
        nonce: vec![3; 32],
        pcrs: vec![],
    };
    s.on_message(c(), t0);
    assert!(closed(&s.on_message(c(), t0)).is_some());

    // The peer refusing us at the first attestation.
    let mut s = Session::new("node-a", "node-b", 1, 0, Some(vec![]), T, t0);
    s.on_message(hello("node-b"), t0);
    s.on_message(c(), t0);
    s.evidence_ready(Ok(evidence()));
    let a = s.on_message(
        Message::Verdict {
            ok: false,
            reason: "[pcr-values] x".into(),
        },
        t0,
    );
    assert!(matches!(closed(&a), Some(Close::RefusedByPeer(r)) if r.contains("pcr-values")));
}

#[test]
fn key_versions_are_announced_once_attested_and_when_they_change() {
    let t0 = Instant::now();
    let mut s = Session::new("node-a", "node-b", 2, 4, None, T, t0);
    s.start();
    // Before attestation: nothing announced, and the peer's announcement is a violation.
    assert!(sends(&s.tick(t0, &keys(&[("acme", 1)]), &[]))
        .iter()
        .all(|m| !matches!(m, Message::Keys { .. })));
    let mut early = Session::new("node-a", "node-b", 2, 4, None, T, t0);
    early.start();
    let a = early.on_message(
        Message::Keys {
            versions: keys(&[("acme", 1)]),
        },
        t0,
    );
    assert!(matches!(closed(&a), Some(Close::Refused(_))), "{a:?}");

    let (mut s, t0) = attested();
    let announced = |a: &[Action]| -> Vec<BTreeMap<String, u32>> {
        sends(a)
            .into_iter()
            .filter_map(|m| match m {
                Message::Keys { versions } => Some(versions.clone()),
                _ => None,
            })
            .collect()
    };
    let k1 = keys(&[("acme", 1)]);
    assert_eq!(announced(&s.tick(t0, &k1, &[])), vec![k1.clone()]);
    assert!(
        announced(&s.tick(t0, &k1, &[])).is_empty(),
        "only on change"
    );
    let k2 = keys(&[("acme", 2), ("globex", 1)]);
    assert_eq!(announced(&s.tick(t0, &k2, &[])), vec![k2.clone()]);
    assert_eq!(announced(&s.tick(t0, &keys(&[]), &[])), vec![keys(&[])]);
}

/// A tenant rotates its east-west key and puts version 2 on this appliance (the receiver)
/// first. Its SAs stay on version 1 until the peer says it holds version 2, then move at once;
/// before the peer has said anything, no SA is offered at all.
#[test]
fn the_receiver_offers_the_older_of_both_sides_key_versions() {
    let t0 = Instant::now();
    let (mut s, _) = attested();
    // attested() announced 1000 for the peer; this peer announces what it really holds.
    s.on_message(
        Message::Keys {
            versions: keys(&[("acme", 1)]),
        },
        t0,
    );
    let installs = |a: &[Action]| -> Vec<(u64, u32)> {
        a.iter()
            .filter_map(|a| match a {
                Action::InstallInbound {
                    epoch, key_version, ..
                } => Some((*epoch, *key_version)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        installs(&s.tick(t0, &keys(&[("acme", 2)]), &[])),
        vec![(1, 1)]
    );
    s.inbound_installed("acme", 1, 1, 0x100, t0);
    // Still version 1 on the peer: no rekey for this side's version 2.
    assert!(installs(&s.tick(t0, &keys(&[("acme", 2)]), &[])).is_empty());
    // The peer gets version 2: the next epoch uses it, at once.
    s.on_message(
        Message::Keys {
            versions: keys(&[("acme", 2)]),
        },
        t0,
    );
    assert_eq!(
        installs(&s.tick(t0, &keys(&[("acme", 2)]), &[])),
        vec![(2, 2)]
    );

    // A tenant the peer has announced no key for gets no SA.
    let (mut s, t0) = attested();
    s.on_message(
        Message::Keys {
            versions: keys(&[]),
        },
        t0,
    );
    assert!(installs(&s.tick(t0, &keys(&[("acme", 1)]), &[])).is_empty());
}
