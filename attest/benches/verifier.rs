//! Verifier throughput on a recorded swtpm quote (attest/tests/data/recorded/): how many
//! complete verifications (decode, signature, every check, reference values) one core does per
//! second. bench/attestation.sh puts the figure next to `openssl speed ecdsap256` from the
//! same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::reference::ReferenceValues;
use warden_attest::verify::{verify, Expected};
use warden_attest::Evidence;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/recorded");

fn load(alg: &str) -> (Evidence, ReferenceValues, Nonce, Vec<u8>) {
    let read = |f: &str| std::fs::read(format!("{DIR}/{alg}-{f}")).unwrap();
    let evidence = Evidence::from_json(&read("evidence.json")).unwrap();
    let reference =
        ReferenceValues::from_toml(&String::from_utf8(read("reference.toml")).unwrap()).unwrap();
    let nonce = Nonce::try_from(hex::decode(read("nonce.hex")).unwrap().as_slice()).unwrap();
    let key = read("bound-key.bin");
    (evidence, reference, nonce, key)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    for alg in ["ecc", "rsa"] {
        let (evidence, reference, nonce, key) = load(alg);
        g.bench_function(alg, |b| {
            b.iter(|| {
                verify(
                    &evidence,
                    Expected {
                        nonce: FreshNonce::issued_just_now(nonce.clone()),
                        purpose: purpose::TENANT_API,
                        bound_key: &key,
                        reference: &reference,
                        previous: None,
                    },
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
