//! Sealing a secret in the TPM under a policy that an authority signs: TPM2_PolicyAuthorize over
//! TPM2_PolicyPCR, the systemd-pcrlock pattern. The pure half — blob format, authority key,
//! signed policies, policy digests — is [`crate::sealed`].
//!
//! ```text
//!   seal:   LoadExternal(authority) ─ ReadPublic: name = ours? ─ flush
//!           CreatePrimary(SRK) ─ salted HMAC session (decrypt) ─ Create(sealed object) ─ flush all
//!   unseal: software: signature, blob shape, blob authPolicy = PolicyAuthorize(authority)?
//!           LoadExternal(authority) ─ name = ours? ─ VerifySignature(aHash) → ticket ─ flush
//!           CreatePrimary(SRK) ─ Load(blob) ─ policy session:
//!             PolicyPCR(pcrs, current values) ─ PolicyGetDigest = approved? ─ PolicyAuthorize
//!           ─ salted HMAC session (encrypt) ─ Unseal ─ flush sessions, object, SRK
//! ```
//!
//! The sealed object (TCG TPM 2.0 Library Part 2, §8.3 TPMA_OBJECT, §12.2.4): KeyedHash,
//! scheme NULL, nameAlg SHA-256, fixedTPM, fixedParent, adminWithPolicy, noDA; userWithAuth
//! CLEAR so only a policy session satisfying authPolicy can unseal it (and adminWithPolicy:
//! no admin action is possible either — the policy never grants one); sensitiveDataOrigin CLEAR
//! (the data is ours). authPolicy = PolicyAuthorize(authority name, empty policyRef).
//!
//! **SRK choice: recreated per call, never persisted.** Each seal and unseal runs
//! TPM2_CreatePrimary in the Owner hierarchy with the TCG standard ECC P-256 SRK template
//! (TCG TPM v2.0 Provisioning Guidance §7.5.1: restricted decrypt, AES-128-CFB, fixedTPM,
//! fixedParent, sensitiveDataOrigin, userWithAuth, noDA, unique x = y = 32 zero bytes) and
//! flushes it afterwards. A primary is a deterministic function of the owner seed and the
//! template, so it is the same key every time without any state to manage, no handle
//! (0x81000001) to squat or replace, and no owner authorization beyond the empty password that
//! CreatePrimary already uses. It costs one ECC key derivation per call (see the test timings).
//! TPM2_Clear (a new owner seed) makes existing blobs unloadable, as a persistent SRK would.
//!
//! The secret never crosses the TPM interface in the clear: TPM2_Create's inSensitive is
//! encrypted by a session salted with the SRK (`decrypt`), and TPM2_Unseal's outData by another
//! (`encrypt`), so a bus or TCTI observer sees neither.
//!
//! Only three transient objects fit in swtpm; at most two are loaded at once here (SRK and the
//! sealed object, or just the authority key), and every object and session is flushed on every
//! path, success or error.

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, EccSignature, KeyDerivationFunctionScheme,
    KeyedHashScheme, Name, Nonce, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private,
    Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    Signature, SymmetricDefinition, SymmetricDefinitionObject, VerifiedTicket,
};
use tss_esapi::traits::UnMarshall;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::{marshal, tss, Tpm, TpmError};
use crate::sealed::{self, SealedBlob, SealedError, SignedPolicy, MAX_SECRET};

/// The hierarchy the authority's public key is loaded into for TPM2_VerifySignature.
///
/// Not NULL: for a key loaded into the NULL hierarchy, TPM2_VerifySignature returns a NULL
/// ticket (hierarchy TPM_RH_NULL, empty digest; Part 3 §20.1), which TPM2_PolicyAuthorize
/// (§23.16) refuses with TPM_RC_VALUE on checkTicket — verified on swtpm, and the reason
/// tpm2-tools' tpm2_policyauthorize example loads the key with `-C o` (tpm2-tools #1184).
/// Loading a *public* key into the Owner hierarchy needs no authorization (TPM2_LoadExternal
/// has no auth handle); systemd does the same.
const AUTHORITY_HIERARCHY: Hierarchy = Hierarchy::Owner;

/// What went wrong sealing or unsealing. Messages name the step; they never contain the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("nothing to seal: the secret is empty")]
    EmptySecret,
    #[error("the secret is {len} bytes; a sealed object holds at most {max}")]
    SecretTooLong { len: usize, max: usize },
    /// The authority key or the signed policy is malformed (checked in software).
    #[error("approved policy: {0}")]
    Policy(SealedError),
    /// The approved policy's signature does not verify under the authority key given.
    #[error("the approved policy's signature does not verify ({by})")]
    SignatureRejected { by: &'static str },
    /// The current PCR values differ from the state the authority approved (or the approved
    /// policy selects other PCRs than it was computed over).
    #[error(
        "PCR state does not match the approved policy: the current values of sha256 PCRs \
         {pcrs:?} do not give the approved PolicyPCR digest ({step})"
    )]
    PcrMismatch { pcrs: Vec<u8>, step: &'static str },
    /// TPM2_PolicyAuthorize refused the TPM's own TPM2_VerifySignature ticket, although the
    /// session digest had been checked to equal the approved one (e.g. a ticket for a key in
    /// the NULL hierarchy). Not a PCR mismatch: that is detected before.
    #[error("TPM2_PolicyAuthorize refused the signature verification ticket: {source}")]
    TicketRejected {
        #[source]
        source: tss_esapi::Error,
    },
    /// The blob was sealed to a different authority (or policyRef) than the one given.
    #[error(
        "the blob's authPolicy is not PolicyAuthorize by this authority with this policyRef: \
         it was sealed to another authority"
    )]
    AuthorityMismatch,
    /// TPM2_LoadExternal refused the authority's public key (e.g. a point not on P-256).
    #[error("the TPM refused the authority public key in TPM2_LoadExternal: {source}")]
    AuthorityKeyRejected {
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM names the authority key differently than we compute it: the two disagree on
    /// the TPMT_PUBLIC, and a policy bound to our name could never be satisfied.
    #[error("authority key name: computed {computed}, the TPM says {tpm}")]
    AuthorityNameMismatch { computed: String, tpm: String },
    /// The blob is not a sealed object this module makes.
    #[error("sealed blob: {reason}")]
    InvalidBlob { reason: String },
    /// TPM2_Load refused the blob: made by another TPM or owner seed, or corrupted.
    #[error("the TPM refused to load the sealed blob (another TPM or owner seed, or corrupted): {source}")]
    BlobRejected {
        #[source]
        source: tss_esapi::Error,
    },
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

impl From<SealedError> for SealError {
    fn from(e: SealedError) -> Self {
        match e {
            SealedError::BadSignature => SealError::SignatureRejected {
                by: "software check, before the TPM",
            },
            other => SealError::Policy(other),
        }
    }
}

impl Tpm {
    /// Seal `secret` (1..=128 bytes) so that only a policy approved by the authority with
    /// public key `authority_public_sec1` (uncompressed SEC1 P-256) can unseal it, under the
    /// SRK recreated in the Owner hierarchy (module docs).
    pub fn seal(
        &mut self,
        secret: &[u8],
        authority_public_sec1: &[u8],
    ) -> Result<SealedBlob, SealError> {
        if secret.is_empty() {
            return Err(SealError::EmptySecret);
        }
        if secret.len() > MAX_SECRET {
            return Err(SealError::SecretTooLong {
                len: secret.len(),
                max: MAX_SECRET,
            });
        }
        let name = sealed::authority_name(authority_public_sec1)?;
        with_authority(&mut self.ctx, authority_public_sec1, &name, |_, _| Ok(()))?;
        let template = sealed_object_template(&sealed::policy_authorize_digest(&name, &[]))
            .map_err(tss("build sealed object template"))?;
        let data = SensitiveData::try_from(secret.to_vec()).map_err(tss("TPM2_Create"))?;
        let created = self.with_srk(|ctx, srk| {
            with_session(
                ctx,
                SessionType::Hmac,
                Some(srk),
                Crypt::Decrypt,
                |ctx, session| {
                    ctx.execute_with_session(Some(session), |ctx| {
                        ctx.create(srk, template, None, Some(data), None, None)
                    })
                    .map_err(|e| tss("TPM2_Create(sealed object)")(e).into())
                },
            )
        })?;
        let public = marshal(&created.out_public, "marshal sealed object TPMT_PUBLIC")?;
        SealedBlob::new(public, created.out_private.value().to_vec()).map_err(|e| {
            SealError::Tpm(TpmError::Unexpected {
                op: "TPM2_Create(sealed object)",
                reason: format!("the TPM's answer does not fit a sealed blob: {e}"),
            })
        })
    }

    /// Unseal `blob` with a policy `approved` by the authority `authority_public_sec1`.
    ///
    /// The signature is verified in software first, then by the TPM (TPM2_VerifySignature),
    /// whose ticket TPM2_PolicyAuthorize requires; the policy session's PolicyPCR uses the
    /// current values of `approved.pcrs` (an empty pcrDigest, Part 3 §23.7), so it reaches
    /// `approved.policy_digest` only if the PCRs hold the approved state.
    pub fn unseal(
        &mut self,
        blob: &SealedBlob,
        approved: &SignedPolicy,
        authority_public_sec1: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        approved.verify(authority_public_sec1)?;
        let name = sealed::authority_name(authority_public_sec1)?;
        let (public, private) = sealed_object(blob)?;
        let expected = sealed::policy_authorize_digest(&name, &approved.policy_ref);
        if public.auth_policy().value() != expected {
            return Err(SealError::AuthorityMismatch);
        }
        let selection = pcr_selection(&approved.pcrs)?;
        let ticket = with_authority(&mut self.ctx, authority_public_sec1, &name, |ctx, key| {
            verify_approval(ctx, key, approved)
        })?;
        let name = Name::try_from(name).map_err(tss("authority name"))?;
        self.with_srk(|ctx, srk| {
            let object = ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.load(srk, private, public)
                })
                .map_err(load_error)?;
            let result = policy_unseal(ctx, srk, object, approved, selection, &name, ticket);
            let flushed = Tpm::flush(ctx, object);
            let secret = result?;
            flushed?;
            Ok(secret)
        })
    }

    /// The PolicyPCR digest of the current values of `pcrs` (SHA-256 bank), from a trial
    /// session: what an authority approves to accept the present state. Equals
    /// [`sealed::policy_pcr_digest`] of the values TPM2_PCR_Read returns.
    pub fn pcr_policy_digest(&mut self, pcrs: &[u8]) -> Result<Vec<u8>, SealError> {
        let selection = pcr_selection(pcrs)?;
        with_session(
            &mut self.ctx,
            SessionType::Trial,
            None,
            Crypt::None,
            |ctx, session| {
                let policy = policy_session(session)?;
                ctx.policy_pcr(policy, Digest::default(), selection)
                    .map_err(tss("TPM2_PolicyPCR(trial)"))?;
                let digest = ctx
                    .policy_get_digest(policy)
                    .map_err(tss("TPM2_PolicyGetDigest(trial)"))?;
                Ok(digest.value().to_vec())
            },
        )
    }

    /// Run `f` with the SRK (module docs), flushing it afterwards whatever happens.
    fn with_srk<T>(
        &mut self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, SealError>,
    ) -> Result<T, SealError> {
        let template = srk_template().map_err(tss("build SRK template"))?;
        let srk = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(tss("TPM2_CreatePrimary(owner, SRK)"))?
            .key_handle;
        let result = f(&mut self.ctx, srk);
        let flushed = Tpm::flush(&mut self.ctx, srk);
        let value = result?;
        flushed?;
        Ok(value)
    }
}

/// The policy session part of unseal, then TPM2_Unseal; the caller flushes `object`.
fn policy_unseal(
    ctx: &mut Context,
    srk: KeyHandle,
    object: KeyHandle,
    approved: &SignedPolicy,
    selection: PcrSelectionList,
    name: &Name,
    ticket: VerifiedTicket,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    with_session(
        ctx,
        SessionType::Policy,
        None,
        Crypt::None,
        |ctx, session| {
            satisfy_policy(ctx, session, approved, selection, name, ticket)?;
            with_session(
                ctx,
                SessionType::Hmac,
                Some(srk),
                Crypt::Encrypt,
                |ctx, crypt| {
                    let data = ctx
                        .execute_with_sessions((Some(session), Some(crypt), None), |ctx| {
                            ctx.unseal(ObjectHandle::from(object))
                        })
                        .map_err(|e| match rc_kind(&e) {
                            // A PCR changed since PolicyPCR (Part 3 §23.7, TPM_RC_PCR_CHANGED).
                            Some(Tss2ResponseCodeKind::PcrChanged) => SealError::PcrMismatch {
                                pcrs: approved.pcrs.clone(),
                                step: "a PCR changed during the unseal",
                            },
                            _ => tss("TPM2_Unseal")(e).into(),
                        })?;
                    Ok(Zeroizing::new(data.value().to_vec()))
                },
            )
        },
    )
}

/// PolicyPCR over the current values of the approved PCRs, then PolicyAuthorize with the
/// ticket: afterwards the session's digest is the sealed object's authPolicy.
fn satisfy_policy(
    ctx: &mut Context,
    session: AuthSession,
    approved: &SignedPolicy,
    selection: PcrSelectionList,
    name: &Name,
    ticket: VerifiedTicket,
) -> Result<(), SealError> {
    const OP: &str = "TPM2_PolicyAuthorize";
    let policy = policy_session(session)?;
    // Part 3 §23.7: an empty pcrDigest makes the TPM hash the current PCR values.
    ctx.policy_pcr(policy, Digest::default(), selection)
        .map_err(tss("TPM2_PolicyPCR"))?;
    // PolicyAuthorize refuses a different digest with TPM_RC_VALUE, which it also uses for a
    // bad ticket; comparing first says precisely what is wrong. (For the message only: the
    // TPM enforces the same equality.)
    let current = ctx
        .policy_get_digest(policy)
        .map_err(tss("TPM2_PolicyGetDigest"))?;
    if current.value() != approved.policy_digest.as_slice() {
        return Err(SealError::PcrMismatch {
            pcrs: approved.pcrs.clone(),
            step: "PolicyPCR over the current values",
        });
    }
    let approved_digest = Digest::try_from(approved.policy_digest.clone()).map_err(tss(OP))?;
    let policy_ref = Nonce::try_from(approved.policy_ref.clone()).map_err(tss(OP))?;
    // Part 3 §23.16: approvedPolicy must equal the session's digest (checked just above) and
    // the ticket must be the TPM's for aHash and keySign; both fail with TPM_RC_VALUE (or
    // POLICY_FAIL), so here such an error can only be about the ticket.
    ctx.policy_authorize(policy, approved_digest, policy_ref, name, ticket)
        .map_err(|e| match rc_kind(&e) {
            Some(Tss2ResponseCodeKind::Value | Tss2ResponseCodeKind::PolicyFail) => {
                SealError::TicketRejected { source: e }
            }
            _ => tss(OP)(e).into(),
        })
}

/// TPM2_VerifySignature of the approval's aHash by the loaded authority key → the ticket
/// TPM2_PolicyAuthorize needs.
fn verify_approval(
    ctx: &mut Context,
    key: KeyHandle,
    approved: &SignedPolicy,
) -> Result<VerifiedTicket, SealError> {
    const OP: &str = "TPM2_VerifySignature";
    let a_hash = Digest::try_from(approved.a_hash().to_vec()).map_err(tss(OP))?;
    let r = EccParameter::try_from(approved.signature_r.to_vec()).map_err(tss(OP))?;
    let s = EccParameter::try_from(approved.signature_s.to_vec()).map_err(tss(OP))?;
    let signature =
        Signature::EcDsa(EccSignature::create(HashingAlgorithm::Sha256, r, s).map_err(tss(OP))?);
    ctx.execute_without_session(|ctx| ctx.verify_signature(key, a_hash, signature))
        .map_err(|e| match rc_kind(&e) {
            Some(Tss2ResponseCodeKind::Signature) => SealError::SignatureRejected { by: OP },
            _ => tss(OP)(e).into(),
        })
}

/// Load the authority's public key (TPM2_LoadExternal, [`AUTHORITY_HIERARCHY`]), check that
/// the TPM's name for it is `name`, run `f`, and flush the key whatever happens.
fn with_authority<T>(
    ctx: &mut Context,
    authority_public_sec1: &[u8],
    name: &[u8],
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, SealError>,
) -> Result<T, SealError> {
    let public = Public::unmarshall(&sealed::authority_tpm_public(authority_public_sec1)?)
        .map_err(tss("unmarshal authority TPMT_PUBLIC"))?;
    let key = ctx
        .execute_without_session(|ctx| ctx.load_external_public(public, AUTHORITY_HIERARCHY))
        .map_err(|e| match rc_kind(&e) {
            Some(
                Tss2ResponseCodeKind::EccPoint
                | Tss2ResponseCodeKind::Value
                | Tss2ResponseCodeKind::Key
                | Tss2ResponseCodeKind::Curve,
            ) => SealError::AuthorityKeyRejected { source: e },
            _ => tss("TPM2_LoadExternal(authority)")(e).into(),
        })?;
    let result = ctx
        .execute_without_session(|ctx| ctx.read_public(key))
        .map_err(|e| tss("TPM2_ReadPublic(authority)")(e).into())
        .and_then(|(_, tpm_name, _)| {
            if tpm_name.value() == name {
                Ok(())
            } else {
                Err(SealError::AuthorityNameMismatch {
                    computed: hex::encode(name),
                    tpm: hex::encode(tpm_name.value()),
                })
            }
        })
        .and_then(|()| f(ctx, key));
    let flushed = Tpm::flush(ctx, key);
    let value = result?;
    flushed?;
    Ok(value)
}

/// Parameter encryption on a session (Part 1 §21: the first command parameter or response
/// parameter, here inSensitive of Create and outData of Unseal).
#[derive(Clone, Copy)]
enum Crypt {
    None,
    /// Command parameter encryption (TPMA_SESSION decrypt).
    Decrypt,
    /// Response parameter encryption (TPMA_SESSION encrypt).
    Encrypt,
}

/// Start a SHA-256 session of `kind` (salted with `salt_key` if given; AES-128-CFB when it
/// encrypts parameters, continueSession set), run `f`, and flush the session whatever happens.
fn with_session<T>(
    ctx: &mut Context,
    kind: SessionType,
    salt_key: Option<KeyHandle>,
    crypt: Crypt,
    f: impl FnOnce(&mut Context, AuthSession) -> Result<T, SealError>,
) -> Result<T, SealError> {
    const OP: &str = "TPM2_StartAuthSession";
    let symmetric = match crypt {
        Crypt::None => SymmetricDefinition::Null,
        Crypt::Decrypt | Crypt::Encrypt => SymmetricDefinition::AES_128_CFB,
    };
    let session = ctx
        .execute_without_session(|ctx| {
            ctx.start_auth_session(
                salt_key,
                None,
                None,
                kind,
                symmetric,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(tss(OP))?
        .ok_or(TpmError::Unexpected {
            op: OP,
            reason: "no session handle returned".into(),
        })?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(matches!(crypt, Crypt::Decrypt))
        .with_encrypt(matches!(crypt, Crypt::Encrypt))
        .build();
    let result = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(|e| tss("Esys_TRSess_SetAttributes")(e).into())
        .and_then(|()| f(ctx, session));
    let flushed = ctx
        .flush_context(ObjectHandle::from(SessionHandle::from(session)))
        .map_err(tss("TPM2_FlushContext(session)"));
    let value = result?;
    flushed?;
    Ok(value)
}

fn policy_session(session: AuthSession) -> Result<PolicySession, SealError> {
    PolicySession::try_from(session).map_err(|e| tss("policy session")(e).into())
}

/// The SHA-256 bank selection of `pcrs` (strictly ascending, below 24).
fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, SealError> {
    const OP: &str = "PCR selection";
    sealed::check_pcr_indices(pcrs)
        .map_err(|reason| TpmError::InvalidArgument { op: OP, reason })?;
    let slots = pcrs
        .iter()
        .map(|&p| PcrSlot::try_from(1u32 << p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tss(OP))?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| tss(OP)(e).into())
}

/// The blob's public and private parts, checked to be a sealed object this module makes.
/// The TPM checks the pair's integrity on TPM2_Load; this only gives clear errors early.
fn sealed_object(blob: &SealedBlob) -> Result<(Public, Private), SealError> {
    let invalid = |reason: String| SealError::InvalidBlob { reason };
    let public = Public::unmarshall(blob.public())
        .map_err(|e| invalid(format!("public part is not a TPMT_PUBLIC: {e}")))?;
    // Unmarshalling ignores trailing bytes; the canonical re-encoding must be the input.
    if marshal(&public, "marshal sealed object TPMT_PUBLIC")? != blob.public() {
        return Err(invalid(
            "public part has trailing or non-canonical bytes".into(),
        ));
    }
    let attrs = public.object_attributes();
    match &public {
        Public::KeyedHash { .. } => {}
        _ => return Err(invalid("public part is not a KeyedHash object".into())),
    }
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(invalid("nameAlg is not SHA-256".into()));
    }
    if attrs.user_with_auth() || !attrs.fixed_tpm() || !attrs.fixed_parent() {
        return Err(invalid(
            "attributes are not those of a policy-only sealed object \
             (userWithAuth clear, fixedTPM, fixedParent)"
                .into(),
        ));
    }
    let private = Private::try_from(blob.private().to_vec())
        .map_err(|e| invalid(format!("private part: {e}")))?;
    Ok((public, private))
}

/// TPM2_Load errors that mean "this blob is not for this TPM/SRK, or was altered".
fn load_error(e: tss_esapi::Error) -> SealError {
    match rc_kind(&e) {
        Some(
            Tss2ResponseCodeKind::Integrity
            | Tss2ResponseCodeKind::Size
            | Tss2ResponseCodeKind::Value
            | Tss2ResponseCodeKind::Key
            | Tss2ResponseCodeKind::Binding
            | Tss2ResponseCodeKind::Attributes
            | Tss2ResponseCodeKind::Type
            | Tss2ResponseCodeKind::Hash
            | Tss2ResponseCodeKind::Symmetric,
        ) => SealError::BlobRejected { source: e },
        _ => tss("TPM2_Load(sealed object)")(e).into(),
    }
}

fn rc_kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// TCG standard ECC P-256 SRK (module docs).
fn srk_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let zero = || EccParameter::try_from(vec![0u8; 32]);
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(false)
                .with_is_decryption_key(true)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(zero()?, zero()?))
        .build()
}

/// The sealed data object (module docs) with `auth_policy`.
fn sealed_object_template(auth_policy: &[u8; 32]) -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_admin_with_policy(true)
        .with_no_da(true)
        .with_user_with_auth(false)
        .with_sensitive_data_origin(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(auth_policy.to_vec())?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn templates_build_and_the_sealed_object_is_policy_only() {
        srk_template().unwrap();
        let public = sealed_object_template(&[7; 32]).unwrap();
        let blob = SealedBlob::new(marshal(&public, "t").unwrap(), vec![0; 16]).unwrap();
        let (parsed, _) = sealed_object(&blob).unwrap();
        assert_eq!(parsed.auth_policy().value(), &[7; 32]);
        let attrs = parsed.object_attributes();
        assert!(!attrs.user_with_auth() && !attrs.sensitive_data_origin());
        assert!(attrs.fixed_tpm() && attrs.fixed_parent() && attrs.admin_with_policy());
    }

    #[test]
    fn foreign_publics_are_not_sealed_objects() {
        let srk = marshal(&srk_template().unwrap(), "t").unwrap();
        let blob = SealedBlob::new(srk, vec![0; 16]).unwrap();
        assert!(matches!(
            sealed_object(&blob),
            Err(SealError::InvalidBlob { .. })
        ));
        let mut public = marshal(&sealed_object_template(&[7; 32]).unwrap(), "t").unwrap();
        public.push(0);
        let blob = SealedBlob::new(public, vec![0; 16]).unwrap();
        assert!(matches!(
            sealed_object(&blob),
            Err(SealError::InvalidBlob { .. })
        ));
    }
}
