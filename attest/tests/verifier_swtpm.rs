//! The verifier against real evidence from swtpm: a good quote verifies, and every attack is
//! refused by the check named for it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use warden_attest::applog::ApplianceEvent;
use warden_attest::binding::{extra_data, purpose, ChallengeError, Challenges, FreshNonce, Nonce};
use warden_attest::collect::{collect, Request};
use warden_attest::eventlog::{EventLog, EventLogBuilder, EV_NO_ACTION};
use warden_attest::evidence::Evidence;
use warden_attest::reference::{AllowedTcgEvent, ReferenceValues};
use warden_attest::tpm::{forge, AkAlgorithm, Tpm};
use warden_attest::tpm2::{self, Attest, Attested, ClockInfo, PcrSelection, Signature};
use warden_attest::verify::{verify, Check, Expected, Rejected, Verified};
use warden_attest::HashAlg;
use warden_testkit::{Swtpm, SwtpmOptions};

const AK: u32 = 0x8101_0002;
const APP_PCR: u8 = 15;
const PLATFORM: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const KEY: &[u8] = b"tls-spki-of-the-appliance";

struct Fixture {
    _swtpm: Swtpm,
    tpm: Tpm,
    ak_public: Vec<u8>,
    log: Vec<ApplianceEvent>,
}

fn fixture_with(opts: SwtpmOptions, alg: AkAlgorithm) -> Option<Fixture> {
    if !warden_testkit::tools_available() {
        assert!(std::env::var_os("CI").is_none(), "swtpm is required in CI");
        eprintln!("skipping: swtpm/swtpm_setup not installed (run scripts/deps.sh)");
        return None;
    }
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    let swtpm = Swtpm::start_with(opts).unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ak_public = tpm.ensure_ak(AK, alg).unwrap();
    // The appliance measures something, as wardend does at start.
    let e = ApplianceEvent::new("wardend-binary", "sha256:00ff").unwrap();
    tpm.pcr_extend_sha256(APP_PCR, e.computed_digest().unwrap())
        .unwrap();
    Some(Fixture {
        _swtpm: swtpm,
        tpm,
        ak_public,
        log: vec![e],
    })
}

fn fixture() -> Option<Fixture> {
    fixture_with(SwtpmOptions::default(), AkAlgorithm::EccP256)
}

fn pcrs() -> Vec<u8> {
    let mut p = PLATFORM.to_vec();
    p.push(APP_PCR);
    p
}

impl Fixture {
    fn evidence_for(&mut self, nonce: &Nonce, pcrs: &[u8], tcg: Option<&[u8]>) -> Evidence {
        collect(
            &mut self.tpm,
            &Request {
                ak_handle: AK,
                ak_public: &self.ak_public,
                ek_certificate: None,
                nonce,
                purpose: purpose::TENANT_API,
                bound_key: KEY,
                pcrs,
                appliance_pcr: APP_PCR,
                appliance_log: &self.log,
                tcg_event_log: tcg,
            },
        )
        .unwrap()
    }

    fn evidence(&mut self, nonce: &Nonce) -> Evidence {
        self.evidence_for(nonce, &pcrs(), None)
    }
}

/// Reference values that accept exactly what `e` shows (golden PCRs, events, AK pin).
fn reference_from(e: &Evidence) -> ReferenceValues {
    ReferenceValues::from_evidence(e).unwrap()
}

fn check(e: &Evidence, nonce: &Nonce, r: &ReferenceValues) -> Result<Verified, Rejected> {
    verify(
        e,
        Expected {
            nonce: FreshNonce::issued_just_now(nonce.clone()),
            purpose: purpose::TENANT_API,
            bound_key: KEY,
            reference: r,
            previous: None,
        },
    )
}

/// Assert a rejection whose first failure is `want`.
fn refused(result: Result<Verified, Rejected>, want: Check) -> Rejected {
    let r = result.expect_err("evidence should have been refused");
    assert_eq!(
        r.failures[0].check(),
        want,
        "expected [{}] first, got: {r}",
        want.name()
    );
    r
}

#[test]
fn quote_made_by_the_appliance_verifies() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence(&nonce);
    let r = reference_from(&e);
    let v = check(&e, &nonce, &r).unwrap();
    assert_eq!(v.pcrs.len(), 9);
    assert_eq!(v.appliance_log, fx.log);
    // Evidence survives the JSON round trip it makes over the wire.
    let e2 = Evidence::from_json(&e.to_json()).unwrap();
    assert!(check(&e2, &nonce, &r).is_ok());
}

#[test]
fn rsa_attestation_key_verifies() {
    let Some(mut fx) = fixture_with(SwtpmOptions::default(), AkAlgorithm::Rsa2048) else {
        return;
    };
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence(&nonce);
    assert!(matches!(
        Signature::decode(&e.signature).unwrap(),
        Signature::RsaSsa { .. }
    ));
    check(&e, &nonce, &reference_from(&e)).unwrap();
}

#[test]
fn bad_magic_signed_by_the_ak_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let mut e = fx.evidence(&nonce);
    let r = reference_from(&e);
    // A look-alike quote without TPM_GENERATED: the restricted AK signs it via TPM2_Hash's ticket.
    let mut attest = Attest::decode(&e.attest).unwrap();
    attest.magic = 0x0054_4347;
    e.attest = attest.encode();
    e.signature = forge::sign_with_ak(&mut fx.tpm, AK, &e.attest).unwrap();
    refused(check(&e, &nonce, &r), Check::Magic);
    // And the TPM refuses to sign one that does start with the magic.
    let genuine = fx.evidence(&nonce);
    assert!(forge::sign_with_ak(&mut fx.tpm, AK, &genuine.attest).is_err());
}

#[test]
fn certify_structure_signed_by_the_ak_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let mut e = fx.evidence(&nonce);
    let r = reference_from(&e);
    let binding = extra_data(&nonce, purpose::TENANT_API, KEY).unwrap();
    let q = forge::certify_with_ak(&mut fx.tpm, AK, &binding).unwrap();
    e.attest = q.attest;
    e.signature = q.signature;
    let rej = refused(check(&e, &nonce, &r), Check::AttestType);
    assert!(rej.to_string().contains("0x8017"), "{rej}");
}

#[test]
fn relabelled_pcr_values_are_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    // Swap the values of PCR 0 and the appliance PCR.
    let mut e = good.clone();
    let bank = e.pcrs.get_mut("sha256").unwrap();
    let (a, b) = (bank[&0].clone(), bank[&APP_PCR].clone());
    bank.insert(0, b);
    bank.insert(APP_PCR, a);
    refused(check(&e, &nonce, &r), Check::PcrDigest);
    // Move the appliance PCR's value to another index.
    let mut e = good.clone();
    let bank = e.pcrs.get_mut("sha256").unwrap();
    let v = bank.remove(&APP_PCR).unwrap();
    bank.insert(16, v);
    let rej = refused(check(&e, &nonce, &r), Check::PcrValues);
    assert!(rej.to_string().contains("PCR 16"), "{rej}");
    // A signed selection other than the requested one.
    let mut other = r.clone();
    other.appliance_pcr = 14;
    refused(check(&good, &nonce, &other), Check::PcrSelection);
}

#[test]
fn pcr_value_the_quote_does_not_cover_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let mut e = fx.evidence(&nonce);
    let r = reference_from(&e);
    e.pcrs
        .get_mut("sha256")
        .unwrap()
        .insert(20, "00".repeat(32));
    let rej = refused(check(&e, &nonce, &r), Check::PcrValues);
    assert!(rej.to_string().contains("PCR 20"), "{rej}");
    // A value in a bank the quote does not cover at all.
    let mut e = fx.evidence(&nonce);
    e.pcrs
        .insert("sha384".into(), BTreeMap::from([(0u8, "00".repeat(48))]));
    refused(check(&e, &nonce, &r), Check::PcrValues);
}

#[test]
fn missing_required_pcr_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let full = fx.evidence(&nonce);
    let r = reference_from(&full);
    // The appliance quotes without PCR 7.
    let short: Vec<u8> = pcrs().into_iter().filter(|p| *p != 7).collect();
    let e = fx.evidence_for(&nonce, &short, None);
    let rej = refused(check(&e, &nonce, &r), Check::PcrSelection);
    assert!(rej.to_string().contains("7"), "{rej}");
    // The quote covers PCR 7 but the evidence omits its value.
    let mut e = full.clone();
    e.pcrs.get_mut("sha256").unwrap().remove(&7);
    let rej = refused(check(&e, &nonce, &r), Check::PcrValues);
    assert!(rej.to_string().contains("PCR 7"), "{rej}");
}

#[test]
fn wrong_nonce_purpose_or_bound_key_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence(&nonce);
    let r = reference_from(&e);
    let other = Nonce::random().unwrap();
    refused(check(&e, &other, &r), Check::Binding);
    let relayed = verify(
        &e,
        Expected {
            nonce: FreshNonce::issued_just_now(nonce.clone()),
            purpose: purpose::TENANT_API,
            bound_key: b"the key the client actually saw",
            reference: &r,
            previous: None,
        },
    );
    refused(relayed, Check::Binding);
    let wrong_purpose = verify(
        &e,
        Expected {
            nonce: FreshNonce::issued_just_now(nonce.clone()),
            purpose: purpose::APPRAISAL,
            bound_key: KEY,
            reference: &r,
            previous: None,
        },
    );
    refused(wrong_purpose, Check::Binding);
}

#[test]
fn expired_and_replayed_nonces_are_refused() {
    let Some(mut fx) = fixture() else { return };
    let mut challenges = Challenges::new(60, 16);
    let nonce = challenges.issue(1_000).unwrap();
    let e = fx.evidence(&nonce);
    let r = reference_from(&e);
    let fresh = challenges.redeem(&nonce, 1_010).unwrap();
    let expected = |fresh| Expected {
        nonce: fresh,
        purpose: purpose::TENANT_API,
        bound_key: KEY,
        reference: &r,
        previous: None,
    };
    verify(&e, expected(fresh)).unwrap();
    // The same evidence again: its nonce is spent.
    assert_eq!(
        challenges.redeem(&nonce, 1_011).unwrap_err(),
        ChallengeError::Replayed
    );
    // Old evidence offered against a new challenge does not bind.
    let next = challenges.issue(1_020).unwrap();
    let fresh = challenges.redeem(&next, 1_021).unwrap();
    refused(verify(&e, expected(fresh)), Check::Binding);
    // A challenge answered too late.
    let late = challenges.issue(2_000).unwrap();
    let _ = fx.evidence(&late);
    assert!(matches!(
        challenges.redeem(&late, 2_061).unwrap_err(),
        ChallengeError::Expired { .. }
    ));
}

#[test]
fn sha1_bank_is_refused() {
    let opts = SwtpmOptions {
        pcr_banks: "sha1,sha256",
        ..SwtpmOptions::default()
    };
    let Some(mut fx) = fixture_with(opts, AkAlgorithm::EccP256) else {
        return;
    };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    let binding = extra_data(&nonce, purpose::TENANT_API, KEY).unwrap();
    let q = fx.tpm.quote(AK, &binding, HashAlg::Sha1, &pcrs()).unwrap();
    let values = fx.tpm.pcr_read(HashAlg::Sha1, &pcrs()).unwrap();
    let mut e = good.clone();
    e.attest = q.attest;
    e.signature = q.signature;
    e.pcrs = BTreeMap::from([(
        "sha1".to_string(),
        values.iter().map(|(k, v)| (*k, hex::encode(v))).collect(),
    )]);
    let rej = refused(check(&e, &nonce, &r), Check::PcrBank);
    assert!(rej.to_string().contains("sha1"), "{rej}");
    // Reference values cannot ask for SHA-1 either.
    let text = r.to_toml().replace("\"sha256\"", "\"sha1\"");
    assert!(ReferenceValues::from_toml(&text).is_err());
}

#[test]
fn signature_scheme_mismatch_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    let Signature::Ecdsa { r: sr, s, .. } = Signature::decode(&good.signature).unwrap() else {
        panic!("ECC AK signs with ECDSA");
    };
    // The same signature relabelled as SHA-1, then as RSASSA.
    let mut e = good.clone();
    e.signature = Signature::Ecdsa {
        hash: HashAlg::Sha1.tpm_id(),
        r: sr.clone(),
        s: s.clone(),
    }
    .encode();
    let rej = refused(check(&e, &nonce, &r), Check::SignatureScheme);
    assert!(rej.to_string().contains("sha1"), "{rej}");
    let mut e = good.clone();
    e.signature = Signature::RsaSsa {
        hash: HashAlg::Sha256.tpm_id(),
        sig: [sr, s].concat(),
    }
    .encode();
    refused(check(&e, &nonce, &r), Check::SignatureScheme);
}

#[test]
fn non_restricted_key_forging_a_quote_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    // Forge a quote claiming golden PCR values, signed by a key the TPM lets sign anything.
    let mut attest = Attest::decode(&good.attest).unwrap();
    let mut concat = Vec::new();
    for v in good.pcrs["sha256"].values() {
        concat.extend_from_slice(&hex::decode(v).unwrap());
    }
    attest.attested = Attested::Quote {
        selection: PcrSelection::single(HashAlg::Sha256, &pcrs()),
        pcr_digest: HashAlg::Sha256.digest(&[&concat]),
    };
    let forged = attest.encode();
    let (public, sig) = forge::sign_with_unrestricted_key(&mut fx.tpm, &forged).unwrap();
    let mut e = good.clone();
    e.attest = forged.clone();
    e.signature = sig.clone();
    e.ak_public = public;
    let mut unpinned = r.clone();
    unpinned.ak_name = None;
    let rej = refused(check(&e, &nonce, &unpinned), Check::AkAttributes);
    assert!(rej.to_string().contains("restricted"), "{rej}");
    // Presented with the real AK's public area instead, the signature does not verify.
    let mut e = good.clone();
    e.attest = forged;
    e.signature = sig;
    refused(check(&e, &nonce, &r), Check::Signature);
}

#[test]
fn truncated_and_oversized_fields_are_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    for n in [0, 1, 6, good.attest.len() - 1] {
        let mut e = good.clone();
        e.attest.truncate(n);
        refused(check(&e, &nonce, &r), Check::Decode);
    }
    let mut e = good.clone();
    e.attest.extend_from_slice(&[0; 4]);
    refused(check(&e, &nonce, &r), Check::Decode);
    let mut e = good.clone();
    e.signature = vec![0; tpm2::MAX_SIGNATURE_BYTES + 1];
    refused(check(&e, &nonce, &r), Check::Decode);
    let mut e = good.clone();
    e.ak_public.truncate(e.ak_public.len() - 3);
    refused(check(&e, &nonce, &r), Check::Decode);
    let mut e = good.clone();
    let v = e.pcrs.get_mut("sha256").unwrap().get_mut(&0).unwrap();
    v.push_str("00");
    refused(check(&e, &nonce, &r), Check::PcrValues);
}

#[test]
fn clock_going_backwards_is_refused() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let first = fx.evidence(&nonce);
    let r = reference_from(&first);
    let v1 = check(&first, &nonce, &r).unwrap();
    let n2 = Nonce::random().unwrap();
    let second = fx.evidence(&n2);
    let with_prev = |e: &Evidence, n: &Nonce, prev: ClockInfo| {
        verify(
            e,
            Expected {
                nonce: FreshNonce::issued_just_now(n.clone()),
                purpose: purpose::TENANT_API,
                bound_key: KEY,
                reference: &r,
                previous: Some(prev),
            },
        )
    };
    // Newer evidence after older: fine. Older evidence after newer: refused.
    let v2 = with_prev(&second, &n2, v1.clock).unwrap();
    refused(with_prev(&first, &nonce, v2.clock), Check::Clock);
    let mut future = v2.clock;
    future.reset_count += 1;
    refused(with_prev(&second, &n2, future), Check::Clock);
}

#[test]
fn ak_pin_and_golden_values_are_enforced() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence(&nonce);
    let r = reference_from(&e);
    let mut other_ak = r.clone();
    other_ak.ak_name = Some(vec![0, 0x0b, 1, 2, 3]);
    refused(check(&e, &nonce, &other_ak), Check::AkPin);
    let mut golden = r.clone();
    golden.pcrs.insert(3, vec![0x33; 32]);
    let rej = refused(check(&e, &nonce, &golden), Check::ReferenceValues);
    assert!(rej.to_string().contains("PCR 3"), "{rej}");
}

#[test]
fn appliance_log_must_replay_and_be_allowed() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence(&nonce);
    let r = reference_from(&good);
    // Content edited after the fact.
    let mut e = good.clone();
    e.appliance_log[0].detail = "sha256:1111".into();
    refused(check(&e, &nonce, &r), Check::ApplianceLog);
    // A consistent log (digest recomputed) that no longer replays to the PCR.
    let mut e = good.clone();
    e.appliance_log[0] = ApplianceEvent::new("wardend-binary", "sha256:1111").unwrap();
    let rej = refused(check(&e, &nonce, &r), Check::ApplianceLog);
    assert!(rej.to_string().contains("replays"), "{rej}");
    // A measurement the reference does not allow.
    let mut strict = r.clone();
    strict.appliance_events.clear();
    let rej = refused(check(&good, &nonce, &strict), Check::ApplianceLog);
    assert!(rej.to_string().contains("wardend-binary"), "{rej}");
}

/// An event-log policy that lists exactly the events of `log`.
fn policy_from(log: &EventLog) -> BTreeSet<AllowedTcgEvent> {
    log.events
        .iter()
        .map(|ev| AllowedTcgEvent {
            pcr: ev.pcr,
            event_type: ev.event_type,
            digest: ev.digests[0].1.clone(),
        })
        .collect()
}

/// A platform event log made in the test and extended into swtpm, as firmware would.
fn measured_boot(fx: &mut Fixture) -> (Vec<u8>, EventLogBuilder) {
    let mut b = EventLogBuilder::new(&[HashAlg::Sha256]);
    let events: [(u32, u32, &[u8]); 4] = [
        (0, 0x0000_0001, b"POST CODE"),
        (4, 0x0000_000D, b"bootloader"),
        (7, 0x8000_0001, b"SecureBoot=1"),
        (0, 0x0000_0004, &[0, 0, 0, 0]),
    ];
    for (pcr, t, data) in events {
        let digests = b.measure(pcr, t, data);
        let d: [u8; 32] = digests[0].1.clone().try_into().unwrap();
        fx.tpm.pcr_extend_sha256(pcr as u8, d).unwrap();
    }
    (b.build(), b)
}

#[test]
fn event_log_replays_to_the_quoted_pcrs() {
    let Some(mut fx) = fixture() else { return };
    let (log, _) = measured_boot(&mut fx);
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence_for(&nonce, &pcrs(), Some(&log));
    let mut r = reference_from(&e);
    check(&e, &nonce, &r).unwrap();
    // With an event-log policy listing exactly these events.
    let parsed = warden_attest::eventlog::parse(&log).unwrap();
    r.tcg_events = policy_from(&parsed);
    check(&e, &nonce, &r).unwrap();
}

#[test]
fn relabelled_event_type_is_caught() {
    let Some(mut fx) = fixture() else { return };
    let (log, _) = measured_boot(&mut fx);
    let nonce = Nonce::random().unwrap();
    let good = fx.evidence_for(&nonce, &pcrs(), Some(&log));
    let mut r = reference_from(&good);
    let parsed = warden_attest::eventlog::parse(&log).unwrap();
    r.tcg_events = policy_from(&parsed);
    // Rebuild the log with one event's type changed.
    let relabel = |new_type: u32| {
        let mut b = EventLogBuilder::new(&[HashAlg::Sha256]);
        for (i, ev) in parsed.events.iter().enumerate() {
            let t = if i == 1 { new_type } else { ev.event_type };
            b.raw_event(ev.pcr, t, ev.digests.clone(), &ev.data);
        }
        b.build()
    };
    // Relabelled as EV_NO_ACTION: no longer extended, so the replay breaks.
    let mut e = good.clone();
    e.tcg_event_log = Some(relabel(EV_NO_ACTION));
    let rej = refused(check(&e, &nonce, &r), Check::EventLog);
    assert!(rej.to_string().contains("PCR 4"), "{rej}");
    // Relabelled as another type: replays, but the policy names (pcr, type, digest).
    let mut e = good.clone();
    e.tcg_event_log = Some(relabel(0x0000_0005));
    let rej = refused(check(&e, &nonce, &r), Check::EventLog);
    assert!(rej.to_string().contains("not allowed"), "{rej}");
}

#[test]
fn forged_appended_event_is_caught() {
    let Some(mut fx) = fixture() else { return };
    let (_, mut builder) = measured_boot(&mut fx);
    let nonce = Nonce::random().unwrap();
    // An event added to the log but never extended into the TPM.
    builder.measure(4, 0x0000_000D, b"a second bootloader");
    let log = builder.build();
    let e = fx.evidence_for(&nonce, &pcrs(), Some(&log));
    let r = reference_from(&e);
    let rej = refused(check(&e, &nonce, &r), Check::EventLog);
    assert!(rej.to_string().contains("PCR 4"), "{rej}");
}

#[test]
fn all_failures_are_reported_not_just_the_first() {
    let Some(mut fx) = fixture() else { return };
    let nonce = Nonce::random().unwrap();
    let e = fx.evidence(&nonce);
    let mut r = reference_from(&e);
    r.pcrs.insert(1, vec![1; 32]);
    r.appliance_events.clear();
    let rej = check(&e, &Nonce::random().unwrap(), &r).unwrap_err();
    for c in [Check::Binding, Check::ApplianceLog, Check::ReferenceValues] {
        assert!(rej.failed(c), "{} missing from {rej}", c.name());
    }
}
