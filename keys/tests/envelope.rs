//! Wrapped keys open only where and as they were meant to: every binding check refuses with
//! its own reason, any altered byte fails the decryption, and the parser refuses malformed
//! input without panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use proptest::prelude::*;
use warden_keys::{
    wrap, Binding, Envelope, EnvelopeError, Expected, KeyKind, Label, Purpose, RecipientKey,
    MAX_ENVELOPE_BYTES,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn binding() -> Binding {
    Binding {
        appliance: "node-a".into(),
        appliance_key: vec![0x00, 0x0b, 1, 2, 3, 4],
        nonce: vec![9u8; 32],
    }
}

fn label() -> Label {
    Label {
        tenant: "acme".into(),
        key_id: "ew-root".into(),
        kind: KeyKind::EastWest,
        version: 1,
        not_after: 0,
    }
}

fn expected(b: &Binding) -> Expected<'_> {
    Expected {
        purpose: Purpose::Provision,
        binding: b,
        tenant: "acme",
        now: 1_000,
    }
}

fn sealed(r: &RecipientKey) -> Vec<u8> {
    let env = wrap(Purpose::Provision, &r.public(), &binding(), &label(), KEY).unwrap();
    serde_json::to_vec(&env).unwrap()
}

fn open(r: &RecipientKey, bytes: &[u8], b: &Binding) -> Result<Vec<u8>, EnvelopeError> {
    let (l, k) = Envelope::parse(bytes)?.open(r, &expected(b))?;
    assert_eq!(l, label());
    Ok(k.expose().to_vec())
}

/// Re-encode an envelope after changing it.
fn edit(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn a_wrapped_key_opens_for_its_recipient() {
    let r = RecipientKey::generate();
    assert_eq!(open(&r, &sealed(&r), &binding()).unwrap(), KEY);
    // The recipient's secret never shows in Debug.
    let shown = format!("{r:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn binding_checks_refuse_with_their_reason() {
    let r = RecipientKey::generate();
    let bytes = sealed(&r);
    // A stale or replayed upload: the challenge now has another nonce.
    let mut other = binding();
    other.nonce = vec![8u8; 32];
    assert_eq!(open(&r, &bytes, &other), Err(EnvelopeError::WrongNonce));
    // Redirected: another appliance (name, then attestation key).
    let mut other = binding();
    other.appliance = "node-b".into();
    assert!(matches!(
        open(&r, &bytes, &other),
        Err(EnvelopeError::WrongAppliance { .. })
    ));
    let mut other = binding();
    other.appliance_key = vec![0x00, 0x0b, 9, 9];
    assert_eq!(
        open(&r, &bytes, &other),
        Err(EnvelopeError::WrongApplianceKey)
    );
    // Wrapped to a key this appliance did not issue.
    let stranger = RecipientKey::generate();
    assert_eq!(
        open(&stranger, &bytes, &binding()),
        Err(EnvelopeError::WrongRecipient)
    );
    // Another tenant's caller.
    let b = binding();
    let e = Expected {
        tenant: "globex",
        ..expected(&b)
    };
    assert!(matches!(
        Envelope::parse(&bytes).unwrap().open(&r, &e),
        Err(EnvelopeError::WrongTenant { .. })
    ));
    // A provisioning wrap is not a release.
    let e = Expected {
        purpose: Purpose::Release,
        ..expected(&b)
    };
    assert_eq!(
        Envelope::parse(&bytes).unwrap().open(&r, &e).err(),
        Some(EnvelopeError::Purpose(Purpose::Provision))
    );
}

#[test]
fn expired_keys_are_refused() {
    let r = RecipientKey::generate();
    let mut l = label();
    l.not_after = 999;
    let env = wrap(Purpose::Provision, &r.public(), &binding(), &l, KEY).unwrap();
    let b = binding();
    assert_eq!(
        env.check().unwrap().open(&r, &expected(&b)).err(),
        Some(EnvelopeError::Expired)
    );
}

#[test]
fn any_altered_field_fails_the_decryption() {
    let r = RecipientKey::generate();
    let bytes = sealed(&r);
    // Fields the receiver does not check itself are authenticated by HPKE.
    for (field, value) in [
        ("key_id", serde_json::json!("ew-root-2")),
        ("kind", serde_json::json!("secret")),
        ("key_version", serde_json::json!(2)),
    ] {
        let changed = edit(&bytes, |v| v[field] = value);
        assert_eq!(
            open(&r, &changed, &binding()),
            Err(EnvelopeError::Tampered),
            "{field}"
        );
    }
    // Flipped bits in the ciphertext or the encapsulated key.
    for field in ["ciphertext", "enc"] {
        let changed = edit(&bytes, |v| {
            let mut raw = B64.decode(v[field].as_str().unwrap()).unwrap();
            raw[0] ^= 1;
            v[field] = serde_json::json!(B64.encode(raw));
        });
        assert_eq!(
            open(&r, &changed, &binding()),
            Err(EnvelopeError::Tampered),
            "{field}"
        );
    }
}

#[test]
fn malformed_envelopes_are_refused() {
    let r = RecipientKey::generate();
    let bytes = sealed(&r);
    assert!(matches!(
        Envelope::parse(&vec![b' '; MAX_ENVELOPE_BYTES + 1]),
        Err(EnvelopeError::TooLarge(_))
    ));
    assert!(matches!(
        Envelope::parse(b"{"),
        Err(EnvelopeError::Malformed(_))
    ));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            edit(&bytes, |v| v["version"] = serde_json::json!(2)),
            "version 2",
        ),
        (
            edit(&bytes, |v| v["suite"] = serde_json::json!("RSA-PKCS1")),
            "suite",
        ),
        (
            edit(&bytes, |v| v["extra"] = serde_json::json!(1)),
            "unknown field",
        ),
        (
            edit(&bytes, |v| v["tenant"] = serde_json::json!("Acme")),
            "tenant",
        ),
        (
            edit(&bytes, |v| {
                v["nonce"] = serde_json::json!(B64.encode([1u8; 4]))
            }),
            "nonce",
        ),
        (
            edit(&bytes, |v| v["enc"] = serde_json::json!("not base64!")),
            "enc",
        ),
        (
            edit(&bytes, |v| {
                v["recipient"] = serde_json::json!(B64.encode([1u8; 31]))
            }),
            "recipient",
        ),
        (
            edit(&bytes, |v| {
                v["ciphertext"] = serde_json::json!(B64.encode(vec![1u8; 400]))
            }),
            "ciphertext",
        ),
    ];
    for (changed, needle) in cases {
        let err = Envelope::parse(&changed).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        // Errors never carry key bytes.
        assert!(!err.contains("0123456789abcdef"));
    }
}

#[test]
fn wrapping_refuses_bad_input() {
    let r = RecipientKey::generate();
    assert!(wrap(Purpose::Provision, &r.public(), &binding(), &label(), &[]).is_err());
    assert!(wrap(
        Purpose::Provision,
        &r.public(),
        &binding(),
        &label(),
        &[1u8; 129]
    )
    .is_err());
    assert!(wrap(Purpose::Provision, &[1u8; 5], &binding(), &label(), KEY).is_err());
    let mut l = label();
    l.key_id = "has space".into();
    assert!(wrap(Purpose::Provision, &r.public(), &binding(), &l, KEY).is_err());
}

proptest! {
    #[test]
    fn the_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Envelope::parse(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_open_to_another_key(pos in 0usize..2000, bit in 0u8..8) {
        let r = RecipientKey::generate();
        let mut bytes = sealed(&r);
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(k) = open(&r, &bytes, &binding()) {
            // Only a change that JSON ignores (e.g. in whitespace) may still open.
            prop_assert_eq!(k, KEY.to_vec());
        }
    }
}
