//! The attestation key: created once, persisted, refused if something else sits at its handle.
//!
//! Choice: the AK is a **primary key in the Endorsement hierarchy** (TPM2_CreatePrimary, then
//! TPM2_EvictControl to the persistent handle). A primary needs no parent key loaded and no
//! saved private blob, so there is nothing on disk to lose or protect; it derives from the
//! endorsement primary seed, so it lives exactly as long as the EK does (TPM2_Clear keeps it;
//! changing the endorsement seed destroys both). The Owner authorizes EvictControl (empty
//! owner auth assumed, as on a freshly provisioned TPM or swtpm).
//!
//! Template (TCG TPM 2.0 Library Part 2, §8.3 TPMA_OBJECT, §12.2.3 TPMS_*_PARMS):
//! fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign — and noDA: its
//! authValue is empty, so dictionary-attack protection guards no secret, while unorderly
//! shutdowns (power loss) count against the DA counter and could lock quoting out.
//! nameAlg SHA-256, symmetric NULL, scheme fixed in the key (ECDSA-SHA256 / RSASSA-SHA256),
//! empty authPolicy, empty unique.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::handles::PersistentTpmHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme,
    SymmetricDefinitionObject,
};

use super::{marshal, tss, AkAlgorithm, Tpm, TpmError};

const OP: &str = "ensure_ak";

impl Tpm {
    /// Load the AK from persistent `handle` (e.g. 0x8101_0002) if present, else create it and
    /// persist it there. Returns the AK's marshalled `TPMT_PUBLIC` (no `TPM2B` size prefix).
    ///
    /// An object already at `handle` that is not a usable AK of `alg` is an error
    /// ([`TpmError::NotAnAk`]); it is never used or overwritten. Usable: restricted, sign, not
    /// decrypt, fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, nameAlg SHA-256, and
    /// the curve or key size and signature scheme of `alg`.
    pub fn ensure_ak(&mut self, handle: u32, alg: AkAlgorithm) -> Result<Vec<u8>, TpmError> {
        let persistent =
            PersistentTpmHandle::new(handle).map_err(|_| TpmError::InvalidArgument {
                op: OP,
                reason: format!("{handle:#010x} is not a persistent handle (0x81xxxxxx)"),
            })?;
        if !self.handle_exists(handle)? {
            self.create_ak(persistent, alg)?;
        }
        let public = self.read_public(handle)?;
        check_ak(&public, alg).map_err(|reason| TpmError::NotAnAk {
            handle,
            expected: alg,
            reason,
        })?;
        marshal(&public, "marshal AK TPMT_PUBLIC")
    }

    /// TPM2_ReadPublic of the persistent object at `handle`.
    pub(super) fn read_public(&mut self, handle: u32) -> Result<Public, TpmError> {
        self.with_persistent(handle, "TPM2_ReadPublic", |ctx, key| {
            ctx.execute_without_session(|ctx| ctx.read_public(key))
                .map(|(public, _name, _qualified_name)| public)
                .map_err(tss("TPM2_ReadPublic"))
        })
    }

    fn create_ak(&mut self, handle: PersistentTpmHandle, alg: AkAlgorithm) -> Result<(), TpmError> {
        let template = ak_template(alg).map_err(tss("build AK template"))?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(tss("TPM2_CreatePrimary(endorsement, AK)"))?;
        let key = created.key_handle;
        let persisted = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, key.into(), Persistent::Persistent(handle))
            });
        let flushed = Tpm::flush(&mut self.ctx, key);
        let mut persistent = persisted.map_err(tss("TPM2_EvictControl(AK)"))?;
        flushed?;
        self.ctx
            .tr_close(&mut persistent)
            .map_err(tss("Esys_TR_Close(AK)"))
    }
}

/// The attributes every AK must have, and the ones it must not.
fn ak_attributes() -> Result<ObjectAttributes, tss_esapi::Error> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
}

fn ak_template(alg: AkAlgorithm) -> Result<Public, tss_esapi::Error> {
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(ak_attributes()?);
    let sha256 = HashScheme::new(HashingAlgorithm::Sha256);
    match alg {
        AkAlgorithm::EccP256 => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_ecc_scheme(EccScheme::EcDsa(sha256))
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build(),
        AkAlgorithm::Rsa2048 => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_scheme(RsaScheme::RsaSsa(sha256))
                    .with_key_bits(RsaKeyBits::Rsa2048)
                    .with_exponent(RsaExponent::default())
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build(),
    }
}

/// Whether `public` is an AK of `alg` we can use: a restricted signing (not decrypting) key,
/// fixedTPM and fixedParent, usable with an empty password (userWithAuth), nameAlg SHA-256,
/// and the algorithm, curve or size, and signature scheme of `alg`. Extra attributes (noDA,
/// adminWithPolicy, stClear) and an authPolicy are tolerated. The reason names the first
/// mismatch.
pub(super) fn check_ak(public: &Public, alg: AkAlgorithm) -> Result<(), String> {
    let attrs = public.object_attributes();
    let required = [
        (attrs.restricted(), "restricted"),
        (attrs.sign_encrypt(), "sign"),
        (attrs.fixed_tpm(), "fixedTPM"),
        (attrs.fixed_parent(), "fixedParent"),
        (attrs.sensitive_data_origin(), "sensitiveDataOrigin"),
        (attrs.user_with_auth(), "userWithAuth"),
    ];
    if let Some((_, name)) = required.iter().find(|(set, _)| !set) {
        return Err(format!("attribute {name} is not set"));
    }
    if attrs.decrypt() {
        return Err("it is also a decryption key".into());
    }
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(format!(
            "nameAlg is {:?}, not SHA-256",
            public.name_hashing_algorithm()
        ));
    }
    let sha256 = HashScheme::new(HashingAlgorithm::Sha256);
    match (alg, public) {
        (AkAlgorithm::EccP256, Public::Ecc { parameters, .. }) => {
            if parameters.ecc_curve() != EccCurve::NistP256 {
                return Err(format!(
                    "curve is {:?}, not NIST P-256",
                    parameters.ecc_curve()
                ));
            }
            if parameters.ecc_scheme() != EccScheme::EcDsa(sha256) {
                return Err(format!(
                    "scheme is {:?}, not ECDSA-SHA256",
                    parameters.ecc_scheme()
                ));
            }
            Ok(())
        }
        (AkAlgorithm::Rsa2048, Public::Rsa { parameters, .. }) => {
            if parameters.key_bits() != RsaKeyBits::Rsa2048 {
                return Err(format!(
                    "key size is {:?}, not 2048 bits",
                    parameters.key_bits()
                ));
            }
            if parameters.rsa_scheme() != RsaScheme::RsaSsa(sha256) {
                return Err(format!(
                    "scheme is {:?}, not RSASSA-SHA256",
                    parameters.rsa_scheme()
                ));
            }
            Ok(())
        }
        (_, other) => Err(format!("it is {}", public_kind(other))),
    }
}

fn public_kind(public: &Public) -> &'static str {
    match public {
        Public::Rsa { .. } => "an RSA key",
        Public::Ecc { .. } => "an ECC key",
        Public::KeyedHash { .. } => "a keyed-hash object",
        Public::SymCipher { .. } => "a symmetric cipher object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_pass_their_own_check_and_not_the_other() {
        for alg in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048] {
            let public = ak_template(alg).unwrap();
            assert_eq!(check_ak(&public, alg), Ok(()));
        }
        let ecc = ak_template(AkAlgorithm::EccP256).unwrap();
        let err = check_ak(&ecc, AkAlgorithm::Rsa2048).unwrap_err();
        assert!(err.contains("ECC"), "{err}");
    }
}
