//! Records a quote from a fresh swtpm as a fixture for the pure verifier tests and benchmarks:
//! `cargo run -p warden-attest --example record -- attest/tests/data/recorded`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use warden_attest::applog::ApplianceEvent;
use warden_attest::binding::{purpose, Nonce};
use warden_attest::collect::{collect, Request};
use warden_attest::reference::ReferenceValues;
use warden_attest::tpm::{AkAlgorithm, Tpm};

fn main() {
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: record OUT_DIR"));
    std::fs::create_dir_all(&out).unwrap();
    for (name, alg) in [("ecc", AkAlgorithm::EccP256), ("rsa", AkAlgorithm::Rsa2048)] {
        let swtpm = warden_testkit::Swtpm::start().unwrap();
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak_public = tpm.ensure_ak(0x8101_0002, alg).unwrap();
        let event = ApplianceEvent::new("wardend-binary", "sha256:recorded-fixture").unwrap();
        tpm.pcr_extend_sha256(15, event.computed_digest().unwrap())
            .unwrap();
        let nonce = Nonce::random().unwrap();
        let key = b"recorded-fixture-bound-key".to_vec();
        let pcrs = [0, 1, 2, 3, 4, 5, 6, 7, 15];
        let log = [event];
        let evidence = collect(
            &mut tpm,
            &Request {
                ak_handle: 0x8101_0002,
                ak_public: &ak_public,
                ek_certificate: None,
                nonce: &nonce,
                purpose: purpose::TENANT_API,
                bound_key: &key,
                pcrs: &pcrs,
                appliance_pcr: 15,
                appliance_log: &log,
                tcg_event_log: None,
            },
        )
        .unwrap();
        let reference = ReferenceValues::from_evidence(&evidence).unwrap();
        let w = |f: &str, b: &[u8]| std::fs::write(out.join(format!("{name}-{f}")), b).unwrap();
        w("evidence.json", &evidence.to_json());
        w("reference.toml", reference.to_toml().as_bytes());
        w("nonce.hex", hex::encode(nonce.as_bytes()).as_bytes());
        w("bound-key.bin", &key);
        println!("recorded {name} quote into {}", out.display());
    }
}
