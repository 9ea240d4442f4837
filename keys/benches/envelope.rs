//! Provisioning envelopes (HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! AES-256-GCM; RFC 9180): what a tenant's `wardctl keys put` costs on each side for a 32-byte
//! key. `wrap` is the tenant's side (an ephemeral X25519 key pair and one X25519, the key
//! schedule, one seal, the JSON envelope); `parse+open` is the appliance's side (the JSON
//! parse and field checks, every binding check, one X25519, the key schedule, one open).
//! bench/keys.sh puts them next to `openssl speed ecdhx25519` from the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use warden_keys::{wrap, Binding, Envelope, Expected, KeyKind, Label, Purpose, RecipientKey};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn bench(c: &mut Criterion) {
    let binding = Binding {
        appliance: "node-a".into(),
        appliance_key: vec![0x04; 65],
        nonce: vec![9u8; 32],
    };
    let label = Label {
        tenant: "acme".into(),
        key_id: "east-west".into(),
        kind: KeyKind::EastWest,
        version: 1,
        not_after: 0,
    };
    let expected = Expected {
        purpose: Purpose::Provision,
        binding: &binding,
        tenant: "acme",
        now: 1_000,
    };
    let recipient = RecipientKey::generate();
    let public = recipient.public();
    let bytes =
        serde_json::to_vec(&wrap(Purpose::Provision, &public, &binding, &label, KEY).unwrap())
            .unwrap();

    let mut g = c.benchmark_group("envelope");
    g.bench_function("wrap", |b| {
        b.iter(|| {
            let env = wrap(Purpose::Provision, &public, &binding, &label, KEY).unwrap();
            serde_json::to_vec(&env).unwrap()
        })
    });
    g.bench_function("parse+open", |b| {
        b.iter(|| {
            let (_, key) = Envelope::parse(&bytes)
                .unwrap()
                .open(&recipient, &expected)
                .unwrap();
            assert_eq!(key.len(), KEY.len());
        })
    });
    g.bench_function("recipient-keygen", |b| b.iter(RecipientKey::generate));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
