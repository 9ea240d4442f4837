//! A workload with its own software TPM, producing evidence for appraisals and key releases.
#![allow(dead_code, clippy::unwrap_used)]

use warden_attest::applog::ApplianceEvent;
use warden_attest::binding::{purpose, Nonce};
use warden_attest::collect::{collect, Request};
use warden_attest::reference::ReferenceValues;
use warden_attest::tpm::{AkAlgorithm, Tpm};
use warden_attest::Evidence;

const AK: u32 = 0x8101_0002;

pub struct Workload {
    _swtpm: warden_testkit::Swtpm,
    pub tpm: Tpm,
    ak_public: Vec<u8>,
    log: Vec<ApplianceEvent>,
}

impl Workload {
    /// A TPM whose PCR 15 holds one measurement ("workload" = sha256:model-server).
    pub fn start() -> Workload {
        let swtpm = warden_testkit::Swtpm::start().unwrap();
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak_public = tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
        let e = ApplianceEvent::new("workload", "sha256:model-server").unwrap();
        tpm.pcr_extend_sha256(15, e.computed_digest().unwrap())
            .unwrap();
        Workload {
            _swtpm: swtpm,
            tpm,
            ak_public,
            log: vec![e],
        }
    }

    /// Evidence for an appraisal or a release, bound to `nonce` and `key`.
    pub fn evidence(&mut self, nonce: &Nonce, key: &[u8]) -> Evidence {
        collect(
            &mut self.tpm,
            &Request {
                ak_handle: AK,
                ak_public: &self.ak_public,
                ek_certificate: None,
                nonce,
                purpose: purpose::APPRAISAL,
                bound_key: key,
                pcrs: &[0, 1, 2, 3, 4, 5, 6, 7, 15],
                appliance_pcr: 15,
                appliance_log: &self.log,
                tcg_event_log: None,
            },
        )
        .unwrap()
    }

    /// Reference values matching the workload as it is now.
    pub fn reference(&mut self) -> ReferenceValues {
        let e = self.evidence(&Nonce::random().unwrap(), b"reference capture");
        ReferenceValues::from_evidence(&e).unwrap()
    }
}
