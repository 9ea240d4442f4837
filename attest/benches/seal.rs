//! Sealing against swtpm, as the key vault does it for every tenant key version: `seal` is
//! TPM2_Create of a sealed object under the SRK, bound by PolicyAuthorize to the PCR-policy
//! authority; `unseal` verifies the authority's signed policy (in software, then
//! TPM2_VerifySignature), loads the object, runs PolicyPCR + PolicyAuthorize in a policy
//! session, TPM2_Unseal, and flushes. A 32-byte secret, PCRs 0 and 7.
//! bench/keys.sh runs it next to tpm2-tools' `tpm2_create` / `tpm2_load` + `tpm2_unseal`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use warden_attest::sealed::PolicyAuthority;
use warden_attest::tpm::Tpm;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const PCRS: [u8; 2] = [0, 7];

fn bench(c: &mut Criterion) {
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    if !warden_testkit::tools_available() {
        eprintln!("seal bench needs swtpm (scripts/deps.sh)");
        return;
    }
    let swtpm = warden_testkit::Swtpm::start().unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1().to_vec();
    let digest = tpm.pcr_policy_digest(&PCRS).unwrap();
    let approved = authority.approve(&PCRS, &digest, b"").unwrap();
    let blob = tpm.seal(SECRET, &key).unwrap();
    assert_eq!(
        tpm.unseal(&blob, &approved, &key).unwrap().as_slice(),
        SECRET
    );

    let mut g = c.benchmark_group("seal");
    g.sample_size(30);
    g.bench_function("seal", |b| b.iter(|| tpm.seal(SECRET, &key).unwrap()));
    g.bench_function("unseal", |b| {
        b.iter(|| tpm.unseal(&blob, &approved, &key).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
