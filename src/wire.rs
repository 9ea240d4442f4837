//! JSON bodies of the tenant API, shared by wardend and wardctl. docs/openapi.yaml describes the
//! same shapes.

use serde::{Deserialize, Serialize};
use warden_attest::ear::Jwk;

/// `POST /v1/attestation` request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequest {
    /// The verifier's challenge, base64 (16 to 64 bytes once decoded).
    pub nonce: String,
    /// PCRs to quote (SHA-256 bank); default: the configured platform PCRs and the appliance PCR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs: Option<Vec<u8>>,
}

/// `GET /v1/identity` response: who this appliance is, for enrolment and pinning.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    /// Marshalled TPMT_PUBLIC of the attestation key, base64.
    pub ak_public: String,
    /// TPM name of the AK (nameAlg ‖ H(public)), hex: what reference values pin.
    pub ak_name: String,
    pub ak_algorithm: String,
    /// DER EK certificate from the TPM's NV, base64, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
    /// SubjectPublicKeyInfo (DER, base64) of the API's TLS certificate: evidence is bound to it.
    pub tls_spki: String,
    /// Key that signs attestation results (EAR JWTs).
    pub result_key: Jwk,
    pub appliance_pcr: u8,
    pub quote_pcrs: Vec<u8>,
    /// Signed-note verifier key of the audit log (`name+keyid+key`); also measured into the
    /// appliance PCR as the `audit-key` event.
    pub audit_key: String,
}

/// Error body of every 4xx/5xx.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/challenges` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub nonce: String,
    pub expires_in_secs: u64,
}

/// `POST /v1/appraisals` request: evidence from another party (a peer appliance or a workload)
/// answering a challenge this appliance issued.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppraisalRequest {
    pub nonce: String,
    /// The key the evidence is bound to (base64), e.g. the workload's ephemeral public key.
    pub bound_key: String,
    pub evidence: warden_attest::Evidence,
}

/// `POST /v1/appraisals` response: the verdict and a signed result (EAR JWT) to cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppraisalResponse {
    pub status: warden_attest::ear::Status,
    pub failures: Vec<String>,
    pub token: String,
}
