//! Quote latency against swtpm: `collect` (TPM2_Quote + TPM2_PCR_Read + assembly, what one
//! `POST /v1/attestation` costs at the TPM) and TPM2_Quote alone, over 9 SHA-256 PCRs.
//! bench/attestation.sh runs it next to tpm2-tools' `tpm2_quote` on the same kind of swtpm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use warden_attest::binding::{purpose, Nonce};
use warden_attest::collect::{collect, Request};
use warden_attest::tpm::{AkAlgorithm, Tpm};
use warden_attest::HashAlg;

const AK: u32 = 0x8101_0002;
const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 15];

fn bench(c: &mut Criterion) {
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    if !warden_testkit::tools_available() {
        eprintln!("quote bench needs swtpm (scripts/deps.sh)");
        return;
    }
    let mut g = c.benchmark_group("quote");
    g.sample_size(30);
    for (name, alg) in [("ecc", AkAlgorithm::EccP256), ("rsa", AkAlgorithm::Rsa2048)] {
        let swtpm = warden_testkit::Swtpm::start().unwrap();
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak_public = tpm.ensure_ak(AK, alg).unwrap();
        let nonce = Nonce::random().unwrap();
        g.bench_function(format!("collect-{name}"), |b| {
            b.iter(|| {
                collect(
                    &mut tpm,
                    &Request {
                        ak_handle: AK,
                        ak_public: &ak_public,
                        ek_certificate: None,
                        nonce: &nonce,
                        purpose: purpose::TENANT_API,
                        bound_key: b"bench",
                        pcrs: &PCRS,
                        appliance_pcr: 15,
                        appliance_log: &[],
                        tcg_event_log: None,
                    },
                )
                .unwrap()
            })
        });
        g.bench_function(format!("tpm2_quote-{name}"), |b| {
            b.iter(|| tpm.quote(AK, &[7u8; 32], HashAlg::Sha256, &PCRS).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
