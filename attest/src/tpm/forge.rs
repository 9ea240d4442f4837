//! TPM capabilities for negative tests: they produce *forged* evidence with real TPM
//! operations, so the verifier's tests can prove it rejects each kind. Nothing in Warden's
//! production paths calls them.
//!
//! | function | what a verifier must catch |
//! |---|---|
//! | [`certify_with_ak`] | a genuine AK signature over a TPMS_ATTEST that is not a quote (type ATTEST_CERTIFY, 0x8017) |
//! | [`sign_with_ak`] | TPM2_Sign by the AK over caller-chosen bytes; the TPM refuses bytes that start with TPM_GENERATED_VALUE (0xff544347), which is why a verifier checks the magic |
//! | [`sign_with_unrestricted_key`] | a structurally perfect "quote" signed by a key that is not restricted |

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyDerivationFunctionScheme,
    MaxBuffer, Public, PublicBuilder, PublicEccParametersBuilder, SignatureScheme,
    SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::pcr::qualifying_data;
use super::{marshal, tss, Quote, Tpm, TpmError};

/// TPM2_Certify of the AK by itself (objectHandle = signHandle = AK): a TPMS_ATTEST of type
/// TPM_ST_ATTEST_CERTIFY (0x8017), signed by the AK, with `extra_data` as qualifying data.
pub fn certify_with_ak(
    tpm: &mut Tpm,
    ak_handle: u32,
    extra_data: &[u8],
) -> Result<Quote, TpmError> {
    const OP: &str = "TPM2_Certify(AK, AK)";
    let data = qualifying_data(OP, extra_data)?;
    tpm.with_persistent(ak_handle, OP, |ctx, key| {
        // Two authorizations (object: ADMIN role, signer: USER role); both the empty password.
        let sessions = (
            Some(AuthSession::Password),
            Some(AuthSession::Password),
            None,
        );
        let (attest, signature) = ctx
            .execute_with_sessions(sessions, |ctx| {
                ctx.certify(key.into(), key, data, SignatureScheme::Null)
            })
            .map_err(tss(OP))?;
        Ok(Quote {
            attest: marshal(&attest, "marshal TPMS_ATTEST")?,
            signature: marshal(&signature, "marshal TPMT_SIGNATURE")?,
        })
    })
}

/// Sign `data` (≤ 1024 bytes) with the restricted AK the legitimate way: TPM2_Hash(SHA-256)
/// in the Endorsement hierarchy, then TPM2_Sign with the hashcheck ticket. Returns the
/// marshalled TPMT_SIGNATURE.
///
/// TCG TPM 2.0 Library Part 3, §15.4 TPM2_Hash: "If the digest is computed on data that
/// starts with TPM_GENERATED_VALUE, the ticket is a NULL ticket"; §20.2 TPM2_Sign: a
/// restricted key requires a valid ticket — so this fails (TPM_RC_TICKET) for data starting
/// with 0xff544347.
pub fn sign_with_ak(tpm: &mut Tpm, ak_handle: u32, data: &[u8]) -> Result<Vec<u8>, TpmError> {
    const OP: &str = "TPM2_Sign(AK)";
    let buffer = MaxBuffer::try_from(data.to_vec()).map_err(|_| TpmError::InvalidArgument {
        op: "TPM2_Hash",
        reason: format!(
            "{} bytes is more than TPM2_Hash takes ({})",
            data.len(),
            MaxBuffer::MAX_SIZE
        ),
    })?;
    let (digest, ticket) = tpm
        .ctx
        .execute_without_session(|ctx| {
            ctx.hash(buffer, HashingAlgorithm::Sha256, Hierarchy::Endorsement)
        })
        .map_err(tss("TPM2_Hash"))?;
    tpm.with_persistent(ak_handle, OP, |ctx, key| {
        let signature = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(key, digest, SignatureScheme::Null, ticket)
            })
            .map_err(tss(OP))?;
        marshal(&signature, "marshal TPMT_SIGNATURE")
    })
}

/// Create a transient, NOT restricted ECC P-256 signing key (primary, Owner hierarchy,
/// ECDSA-SHA256), sign SHA-256(`data`) with it, flush it. Returns (marshalled TPMT_PUBLIC,
/// marshalled TPMT_SIGNATURE). An unrestricted key signs any digest: no ticket is needed.
pub fn sign_with_unrestricted_key(
    tpm: &mut Tpm,
    data: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    const OP: &str = "TPM2_Sign(unrestricted key)";
    let template = unrestricted_template().map_err(tss("build unrestricted key template"))?;
    let digest = Digest::try_from(
        ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec(),
    )
    .map_err(tss(OP))?;
    let null_ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Digest::default().into(),
    })
    .map_err(tss(OP))?;
    let created = tpm
        .ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(tss("TPM2_CreatePrimary(owner, unrestricted key)"))?;
    let key = created.key_handle;
    let signed = tpm
        .ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.sign(key, digest, SignatureScheme::Null, null_ticket)
        });
    let flushed = Tpm::flush(&mut tpm.ctx, key);
    let signature = signed.map_err(tss(OP))?;
    flushed?;
    Ok((
        marshal(&created.out_public, "marshal TPMT_PUBLIC")?,
        marshal(&signature, "marshal TPMT_SIGNATURE")?,
    ))
}

fn unrestricted_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(false)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}
