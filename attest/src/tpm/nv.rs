//! Anti-rollback floors for security versions (SVN), kept in TPM NV: per component, one NV
//! counter and one write-once *base* index that records the counter's first value.
//!
//! ```text
//!   first use:  NV_DefineSpace(counter) ─ NV_Increment ─ NV_Read → v
//!               ─ NV_DefineSpace(base) ─ NV_Write(v) under the write-once policy
//!   floor:      NV_Read(counter) − NV_Read(base)
//!   raise(svn): NV_Increment(counter) × (svn − floor), at most MAX_SVN_STEP per call
//! ```
//!
//! **Why a base.** A new NV counter does not start at 0, and cannot be read before its first
//! TPM2_NV_Increment (TPM_RC_NV_UNINITIALIZED; NOTES.md). On swtpm 0.7.1 the first increment
//! takes it one past the highest value of any counter *undefined* so far (a counter that is
//! still defined does not count; `tests/tpm_nv.rs` shows both), so undefining and redefining a
//! counter never resets it. The floor is therefore the counter's value minus the value it had
//! right after that first increment, which the base index keeps.
//!
//! **The counter** (TCG TPM 2.0 Library Part 2, §13.2 TPM_NT_COUNTER: "contains an 8-octet
//! value that is to be used as a counter and can only be modified with TPM2_NV_Increment()";
//! §13.4 TPMA_NV): OWNERWRITE | OWNERREAD, nameAlg SHA-256, no authPolicy, 8 bytes. Owner
//! authorised, not platform (PLATFORMCREATE clear): the OS defines it. Not ORDERLY, so each
//! increment is committed to NV before the command returns. The TPM requires nothing else of
//! a counter (Part 3 §31.3 TPM2_NV_DefineSpace: dataSize 8, no CLEAR_STCLEAR).
//!
//! **The base** (TPM_NT_ORDINARY, 8 bytes, the big-endian u64 `v`): POLICYWRITE | WRITEALL |
//! OWNERREAD, nameAlg SHA-256, authPolicy = PolicyCommandCode(TPM_CC_NV_Write) then
//! PolicyNvWritten(NO) ([`base_write_policy`]). Part 3 §23.20 TPM2_PolicyNvWritten binds the
//! policy to TPMA_NV_WRITTEN of the index being authorised, so the write policy can be met only
//! while the index has never been written: the first write is the last. OWNERWRITE, AUTHWRITE
//! and PPWRITE are clear, so neither the owner, the index's authValue nor the platform can
//! write it either; it can only be undefined (which the owner can also do to the counter).
//!
//! Off-brief: the design asked for OWNERWRITE | WRITEDEFINE and TPM2_NV_WriteLock after the
//! write. tss-esapi 7.6 has no NV_WriteLock (its `non_volatile_storage.rs`: "Missing function:
//! NV_WriteLock") and this crate forbids unsafe code, so the raw ESYS call is out. The policy
//! gives the same guarantee (no rewrite until the index is undefined) in a single command, so
//! the "written but not yet locked" window, in which the owner could rewrite the base, is gone.
//!
//! **Crash consistency.** A process may die between any two TPM commands; the next call finds
//! the state and finishes the first use (every step is idempotent in effect):
//!
//! | state found | what the next call does |
//! |---|---|
//! | counter defined, never incremented (WRITTEN clear) | increment it once |
//! | counter written, no base | define the base and write the counter's value (floor 0: no raise happens before a base is written) |
//! | base defined, never written | write the counter's value |
//! | base without counter, or beside a never-incremented counter | error: no crash leaves it (the counter is defined and incremented first); the counter was replaced |
//! | a raise cut short | nothing: the floor is wherever the increments got to, never lower |
//!
//! An index that exists with another type, attributes, size, nameAlg or authPolicy is neither
//! used nor undefined nor overwritten: the call fails naming the index and the difference.
//!
//! **Limits.** Whoever holds Owner authorization (the empty password on swtpm and on many
//! devices) can undefine both indices and so reset a floor to 0; only a platform-created
//! index with POLICY_DELETE would stop that. Two processes raising the same floor at once can
//! overshoot (the TPM has no compare-and-increment): serialize raises per component.

use tss_esapi::attributes::{
    NvIndexAttributes, NvIndexAttributesBuilder, SessionAttributesBuilder,
};
use tss_esapi::constants::{CommandCode, NvIndexType, SessionType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, MaxNvBuffer, NvPublic, NvPublicBuilder, SymmetricDefinition};
use tss_esapi::tss2_esys::TPMA_NV;
use tss_esapi::Context;

use super::{tss, Tpm, TpmError};
use crate::alg::HashAlg;

/// Largest number of increments one raise may make (bounds the time and NV wear of one call).
pub const MAX_SVN_STEP: u64 = 4096;

/// The NV index handle range (Part 2 §13.1 TPM_NV_INDEX: handle type TPM_HT_NV_INDEX, 0x01).
const NV_INDEX_FIRST: u32 = 0x0100_0000;
const NV_INDEX_LAST: u32 = 0x01FF_FFFF;

/// Both indices hold one big-endian u64.
const VALUE_SIZE: u16 = 8;

/// Command codes in the base's write policy (Part 2 §6.5.2 TPM_CC).
const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
const TPM_CC_POLICY_COMMAND_CODE: u32 = 0x0000_016C;
const TPM_CC_POLICY_NV_WRITTEN: u32 = 0x0000_018F;

/// TPMA_NV bits that record the index's state rather than how it was defined (Part 2 §13.4):
/// WRITELOCKED (11), READLOCKED (28), WRITTEN (29). Ignored when comparing attributes.
const TPMA_NV_STATE: TPMA_NV = (1 << 11) | (1 << 28) | (1 << 29);

/// TPMA_NV bit names (Part 2 §13.4), for error messages. Bits 4..7 are TPM_NT (the type).
const TPMA_NV_NAMES: [(u32, &str); 23] = [
    (0, "PPWRITE"),
    (1, "OWNERWRITE"),
    (2, "AUTHWRITE"),
    (3, "POLICYWRITE"),
    (8, "reserved bit 8"),
    (9, "reserved bit 9"),
    (10, "POLICY_DELETE"),
    (11, "WRITELOCKED"),
    (12, "WRITEALL"),
    (13, "WRITEDEFINE"),
    (14, "WRITE_STCLEAR"),
    (15, "GLOBALLOCK"),
    (16, "PPREAD"),
    (17, "OWNERREAD"),
    (18, "AUTHREAD"),
    (19, "POLICYREAD"),
    (25, "NO_DA"),
    (26, "ORDERLY"),
    (27, "CLEAR_STCLEAR"),
    (28, "READLOCKED"),
    (29, "WRITTEN"),
    (30, "PLATFORMCREATE"),
    (31, "READ_STCLEAR"),
];

impl Tpm {
    /// The component's SVN floor: counter value minus the base recorded at first use.
    ///
    /// The first call for a pair of indices defines them (module docs), so a fresh component's
    /// floor is 0; a call after a crash finishes what the crashed one started. `counter_index`
    /// and `base_index` must be distinct NV indices (0x01000000..=0x01FFFFFF).
    pub fn svn_floor(&mut self, counter_index: u32, base_index: u32) -> Result<u64, TpmError> {
        let indices = SvnIndices::new("svn_floor", counter_index, base_index)?;
        self.svn_open("svn_floor", indices).map(|open| open.floor)
    }

    /// Raise the floor to `svn` (no-op if already >= svn); returns the new floor.
    ///
    /// Refuses (InvalidArgument) a raise by more than [`MAX_SVN_STEP`] in one call; raise in
    /// steps instead. The floor never goes down: a raise cut short (a crash, or a TPM that
    /// throttles NV writes with TPM_RC_NV_RATE, returned as [`TpmError::Tss`]) leaves it between
    /// the old floor and `svn`, and the next raise continues from there. Serialize raises of one
    /// component: two at once can overshoot `svn`.
    pub fn svn_raise(
        &mut self,
        counter_index: u32,
        base_index: u32,
        svn: u64,
    ) -> Result<u64, TpmError> {
        const OP: &str = "svn_raise";
        let indices = SvnIndices::new(OP, counter_index, base_index)?;
        let open = self.svn_open(OP, indices)?;
        let steps = raise_steps(open.floor, svn)?;
        if steps == 0 {
            return Ok(open.floor);
        }
        let counter = index(
            &mut self.ctx,
            Role::Counter,
            indices.counter,
            true,
            |ctx, nv, _| {
                for _ in 0..steps {
                    increment(ctx, nv)?;
                }
                read_value(ctx, nv, Role::Counter)
            },
        )?;
        let floor = floor(OP, counter, open.base)?;
        if floor < svn {
            return Err(TpmError::Unexpected {
                op: "TPM2_NV_Increment(SVN counter)",
                reason: format!(
                    "{steps} increments of NV index {:#010x} raised the floor from {} to {floor}, \
                     not to {svn}",
                    u32::from(indices.counter),
                    open.floor
                ),
            });
        }
        Ok(floor)
    }

    /// Both indices, defined and written (first use or crash repair, module docs): the base
    /// and the floor.
    ///
    /// Every index that exists is checked before anything is defined, incremented or written,
    /// so a call that finds a foreign index changes nothing. The counter is defined before the
    /// base, so that no crash can leave a base without its counter.
    fn svn_open(&mut self, op: &'static str, indices: SvnIndices) -> Result<Open, TpmError> {
        let counter_exists = self.handle_exists(indices.counter.into())?;
        let base_exists = self.handle_exists(indices.base.into())?;
        if base_exists && !counter_exists {
            return Err(indices.replaced(op, "does not exist"));
        }
        let counter_value = |ctx: &mut Context, nv: NvIndexHandle, written: bool| {
            if !written {
                // Defined but never incremented (first use, or a crash right after the
                // define): NV_Read would answer TPM_RC_NV_UNINITIALIZED.
                increment(ctx, nv)?;
            }
            read_value(ctx, nv, Role::Counter)
        };
        let base_value = |ctx: &mut Context, nv: NvIndexHandle, written: bool, counter: u64| {
            if !written {
                // No raise happens before the base is written, so the counter still has the
                // value of its first increment: the floor starts at 0.
                write_base(ctx, nv, counter)?;
            }
            read_value(ctx, nv, Role::Base)
        };
        let existing_counter = |ctx: &mut Context, nv: NvIndexHandle, written: bool| {
            if !written {
                return Err(indices.replaced(op, "has never been incremented"));
            }
            read_value(ctx, nv, Role::Counter)
        };
        let ctx = &mut self.ctx;
        let (counter, base) = if base_exists {
            // Both exist: both are checked before anything is written.
            index(ctx, Role::Base, indices.base, true, |ctx, nv, written| {
                let counter = index(ctx, Role::Counter, indices.counter, true, existing_counter)?;
                Ok((counter, base_value(ctx, nv, written, counter)?))
            })?
        } else {
            let counter = index(
                ctx,
                Role::Counter,
                indices.counter,
                counter_exists,
                counter_value,
            )?;
            let base = index(ctx, Role::Base, indices.base, false, |ctx, nv, written| {
                base_value(ctx, nv, written, counter)
            })?;
            (counter, base)
        };
        Ok(Open {
            base,
            floor: floor(op, counter, base)?,
        })
    }
}

/// The NV index for `role` at `at`: defined first unless it `exists`, then checked to be
/// exactly what this module defines; `f` runs with it and whether it has been written, and the
/// ESYS reference is closed afterwards (metadata only: the index stays).
fn index<T>(
    ctx: &mut Context,
    role: Role,
    at: NvIndexTpmHandle,
    exists: bool,
    f: impl FnOnce(&mut Context, NvIndexHandle, bool) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let object = if exists {
        ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(at)))
            .map_err(tss("Esys_TR_FromTPMPublic(NV index)"))?
    } else {
        let template = role.template(at).map_err(tss(role.op_define()))?;
        let nv = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_define_space(Provision::Owner, None, template)
            })
            .map_err(tss(role.op_define()))?;
        ObjectHandle::from(nv)
    };
    close_after(ctx, object, |ctx, nv| {
        let (public, _name) = ctx
            .execute_without_session(|ctx| ctx.nv_read_public(nv))
            .map_err(tss(role.op_read_public()))?;
        check_public(role, at, &public).map_err(|reason| TpmError::Unexpected {
            op: role.op_read_public(),
            reason: format!(
                "NV index {:#010x} ({}) is not one this module defines, so it is neither used \
                 nor replaced: {reason}",
                u32::from(at),
                role.name()
            ),
        })?;
        f(ctx, nv, public.attributes().written())
    })
}

/// The two indices of one component, checked.
#[derive(Clone, Copy)]
struct SvnIndices {
    counter: NvIndexTpmHandle,
    base: NvIndexTpmHandle,
}

impl SvnIndices {
    fn new(op: &'static str, counter: u32, base: u32) -> Result<SvnIndices, TpmError> {
        let invalid = |reason: String| TpmError::InvalidArgument { op, reason };
        for (what, index) in [("counter", counter), ("base", base)] {
            if !(NV_INDEX_FIRST..=NV_INDEX_LAST).contains(&index) {
                return Err(invalid(format!(
                    "{what} index {index:#010x} is not an NV index \
                     ({NV_INDEX_FIRST:#010x}..={NV_INDEX_LAST:#010x})"
                )));
            }
        }
        if counter == base {
            return Err(invalid(format!(
                "counter and base are the same NV index {counter:#010x}"
            )));
        }
        let handle = |index: u32| {
            NvIndexTpmHandle::new(index).map_err(|e| invalid(format!("{index:#010x}: {e}")))
        };
        Ok(SvnIndices {
            counter: handle(counter)?,
            base: handle(base)?,
        })
    }

    /// The base exists but its counter `what`: the counter is defined and incremented before
    /// the base is defined, so no crash leaves this; the counter was undefined or replaced.
    fn replaced(self, op: &'static str, what: &str) -> TpmError {
        TpmError::Unexpected {
            op,
            reason: format!(
                "SVN counter NV index {:#010x} {what} but its base {:#010x} exists (no crash \
                 leaves this state): the counter was undefined or replaced after first use; \
                 refusing to start a new count under the old base",
                u32::from(self.counter),
                u32::from(self.base)
            ),
        }
    }
}

/// A component's indices after [`Tpm::svn_open`].
struct Open {
    base: u64,
    floor: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Counter,
    Base,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Counter => "SVN counter",
            Role::Base => "SVN base",
        }
    }

    fn op_define(self) -> &'static str {
        match self {
            Role::Counter => "TPM2_NV_DefineSpace(SVN counter)",
            Role::Base => "TPM2_NV_DefineSpace(SVN base)",
        }
    }

    fn op_read_public(self) -> &'static str {
        match self {
            Role::Counter => "TPM2_NV_ReadPublic(SVN counter)",
            Role::Base => "TPM2_NV_ReadPublic(SVN base)",
        }
    }

    fn op_read(self) -> &'static str {
        match self {
            Role::Counter => "TPM2_NV_Read(SVN counter)",
            Role::Base => "TPM2_NV_Read(SVN base)",
        }
    }

    fn index_type(self) -> NvIndexType {
        match self {
            Role::Counter => NvIndexType::Counter,
            Role::Base => NvIndexType::Ordinary,
        }
    }

    /// The attributes this module defines the index with (module docs).
    fn attributes(self) -> Result<NvIndexAttributes, tss_esapi::Error> {
        let builder = NvIndexAttributesBuilder::new().with_nv_index_type(self.index_type());
        match self {
            Role::Counter => builder.with_owner_write(true).with_owner_read(true),
            Role::Base => builder
                .with_policy_write(true)
                .with_write_all(true)
                .with_owner_read(true),
        }
        .build()
    }

    fn auth_policy(self) -> Vec<u8> {
        match self {
            Role::Counter => Vec::new(),
            Role::Base => base_write_policy(),
        }
    }

    fn template(self, index: NvIndexTpmHandle) -> Result<NvPublic, tss_esapi::Error> {
        NvPublicBuilder::new()
            .with_nv_index(index)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(self.attributes()?)
            .with_index_auth_policy(Digest::try_from(self.auth_policy())?)
            .with_data_area_size(usize::from(VALUE_SIZE))
            .build()
    }
}

/// The base's authPolicy, SHA-256 (Part 3 §23.11, §23.20):
/// `d1 = H(0³² ‖ TPM_CC_PolicyCommandCode ‖ TPM_CC_NV_Write)`,
/// `authPolicy = H(d1 ‖ TPM_CC_PolicyNvWritten ‖ NO)` with NO the one-octet TPMI_YES_NO 0.
/// The same policy tpm2-tools builds for a write-once index
/// (`tpm2_policycommandcode TPM2_CC_NV_Write` then `tpm2_policynvwritten c`).
fn base_write_policy() -> Vec<u8> {
    let command_code = HashAlg::Sha256.digest(&[
        &[0; 32],
        &TPM_CC_POLICY_COMMAND_CODE.to_be_bytes(),
        &TPM_CC_NV_WRITE.to_be_bytes(),
    ]);
    HashAlg::Sha256.digest(&[&command_code, &TPM_CC_POLICY_NV_WRITTEN.to_be_bytes(), &[0]])
}

/// Whether `public` is exactly what [`Role::template`] defines at `index`, apart from the
/// state bits (WRITTEN, WRITELOCKED, READLOCKED); the reason if not.
fn check_public(role: Role, index: NvIndexTpmHandle, public: &NvPublic) -> Result<(), String> {
    if public.nv_index() != index {
        return Err(format!(
            "the TPM describes index {:#010x}",
            u32::from(public.nv_index())
        ));
    }
    let attributes = public.attributes();
    match attributes.index_type() {
        Ok(t) if t == role.index_type() => {}
        Ok(t) => return Err(format!("type is {t:?}, expected {:?}", role.index_type())),
        Err(e) => return Err(format!("unknown type: {e}")),
    }
    let expected = role
        .attributes()
        .and_then(TPMA_NV::try_from)
        .map_err(|e| format!("expected attributes: {e}"))?;
    let actual = TPMA_NV::try_from(attributes).map_err(|e| format!("attributes: {e}"))?;
    if actual & !TPMA_NV_STATE != expected {
        return Err(format!(
            "attributes {actual:#010x}, expected {expected:#010x} (state bits aside): {}",
            attribute_difference(actual & !TPMA_NV_STATE, expected)
        ));
    }
    if public.name_algorithm() != HashingAlgorithm::Sha256 {
        return Err(format!(
            "nameAlg is {:?}, expected Sha256",
            public.name_algorithm()
        ));
    }
    if public.data_size() != usize::from(VALUE_SIZE) {
        return Err(format!(
            "size is {} bytes, expected {VALUE_SIZE}",
            public.data_size()
        ));
    }
    if public.authorization_policy().value() != role.auth_policy().as_slice() {
        return Err(format!(
            "authPolicy is {:?}, expected {:?}",
            hex::encode(public.authorization_policy().value()),
            hex::encode(role.auth_policy())
        ));
    }
    Ok(())
}

/// "extra X, Y; missing Z" for two TPMA_NV values of the same type.
fn attribute_difference(actual: TPMA_NV, expected: TPMA_NV) -> String {
    let names = |bits: TPMA_NV| {
        TPMA_NV_NAMES
            .iter()
            .filter(|(bit, _)| bits & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (extra, missing) = (actual & !expected, expected & !actual);
    match (extra != 0, missing != 0) {
        (true, true) => format!("extra {}; missing {}", names(extra), names(missing)),
        (true, false) => format!("extra {}", names(extra)),
        (false, _) => format!("missing {}", names(missing)),
    }
}

/// counter − base; a counter below its base means the base was not written by this module.
fn floor(op: &'static str, counter: u64, base: u64) -> Result<u64, TpmError> {
    counter.checked_sub(base).ok_or(TpmError::Unexpected {
        op,
        reason: format!("the SVN counter ({counter}) is below its base ({base})"),
    })
}

/// Increments needed to raise `floor` to `svn`: 0 if it is already there, at most
/// [`MAX_SVN_STEP`].
fn raise_steps(floor: u64, svn: u64) -> Result<u64, TpmError> {
    let steps = svn.saturating_sub(floor);
    if steps > MAX_SVN_STEP {
        return Err(TpmError::InvalidArgument {
            op: "svn_raise",
            reason: format!(
                "raising the SVN floor from {floor} to {svn} takes {steps} increments, more \
                 than MAX_SVN_STEP ({MAX_SVN_STEP}) in one call"
            ),
        });
    }
    Ok(steps)
}

/// TPM2_NV_Increment with Owner authorization (Part 3 §31.8).
fn increment(ctx: &mut Context, nv: NvIndexHandle) -> Result<(), TpmError> {
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_increment(NvAuth::Owner, nv)
    })
    .map_err(tss("TPM2_NV_Increment(SVN counter)"))
}

/// The index's 8 bytes as a big-endian u64, read with Owner authorization (Part 3 §31.13;
/// a counter reads as its UINT64 value).
fn read_value(ctx: &mut Context, nv: NvIndexHandle, role: Role) -> Result<u64, TpmError> {
    let data = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_read(NvAuth::Owner, nv, VALUE_SIZE, 0)
        })
        .map_err(tss(role.op_read()))?;
    let bytes = <[u8; 8]>::try_from(data.value()).map_err(|_| TpmError::Unexpected {
        op: role.op_read(),
        reason: format!("asked for {VALUE_SIZE} bytes, got {}", data.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The base's only write: `value` big-endian, authorised by a policy session that meets
/// [`base_write_policy`] (the assertions in the order the digest was computed).
fn write_base(ctx: &mut Context, nv: NvIndexHandle, value: u64) -> Result<(), TpmError> {
    const OP: &str = "TPM2_NV_Write(SVN base)";
    let data = MaxNvBuffer::try_from(value.to_be_bytes().to_vec()).map_err(tss(OP))?;
    with_policy_session(ctx, |ctx, session, policy| {
        ctx.policy_command_code(policy, CommandCode::NvWrite)
            .map_err(tss("TPM2_PolicyCommandCode(NV_Write)"))?;
        ctx.policy_nv_written(policy, false)
            .map_err(tss("TPM2_PolicyNvWritten(NO)"))?;
        ctx.execute_with_session(Some(session), |ctx| {
            ctx.nv_write(NvAuth::NvIndex(nv), nv, data, 0)
        })
        .map_err(tss(OP))
    })
}

/// Start an unsalted, unbound SHA-256 policy session (continueSession set), run `f`, and
/// flush the session whatever happens.
fn with_policy_session<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, AuthSession, PolicySession) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    const OP: &str = "TPM2_StartAuthSession(policy)";
    let session = ctx
        .execute_without_session(|ctx| {
            ctx.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::Null,
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
        .build();
    let result = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(tss("Esys_TRSess_SetAttributes"))
        .and_then(|()| PolicySession::try_from(session).map_err(tss(OP)))
        .and_then(|policy| f(ctx, session, policy));
    let flushed = ctx
        .flush_context(ObjectHandle::from(SessionHandle::from(session)))
        .map_err(tss("TPM2_FlushContext(policy session)"));
    let value = result?;
    flushed?;
    Ok(value)
}

/// Run `f` with the NV index `object`, then close the ESYS reference, keeping the first error.
fn close_after<T>(
    ctx: &mut Context,
    mut object: ObjectHandle,
    f: impl FnOnce(&mut Context, NvIndexHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx, NvIndexHandle::from(object));
    let closed = ctx.tr_close(&mut object).map_err(tss("Esys_TR_Close"));
    let value = result?;
    closed?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn handle(index: u32) -> NvIndexTpmHandle {
        NvIndexTpmHandle::new(index).unwrap()
    }

    fn invalid<T>(r: Result<T, TpmError>) -> bool {
        matches!(r, Err(TpmError::InvalidArgument { .. }))
    }

    #[test]
    fn indices_must_be_distinct_nv_indices() {
        assert!(SvnIndices::new("t", 0x0100_0000, 0x01FF_FFFF).is_ok());
        assert!(SvnIndices::new("t", 0x01FF_FFFF, 0x0100_0000).is_ok());
        for (c, b) in [
            (0x00FF_FFFF, 0x0150_0001),
            (0x0150_0000, 0x0200_0000),
            (0x8100_0001, 0x0150_0001),
            (0x0150_0000, 0x4000_0001),
            (0, 0x0150_0001),
            (0x0150_0000, u32::MAX),
            (0x0150_0000, 0x0150_0000),
        ] {
            assert!(invalid(SvnIndices::new("t", c, b)), "{c:#x}, {b:#x}");
        }
    }

    #[test]
    fn raises_are_bounded() {
        assert_eq!(raise_steps(3, 2).unwrap(), 0);
        assert_eq!(raise_steps(3, 3).unwrap(), 0);
        assert_eq!(raise_steps(3, 4).unwrap(), 1);
        assert_eq!(raise_steps(0, MAX_SVN_STEP).unwrap(), MAX_SVN_STEP);
        assert_eq!(raise_steps(5, 5 + MAX_SVN_STEP).unwrap(), MAX_SVN_STEP);
        assert!(invalid(raise_steps(0, MAX_SVN_STEP + 1)));
        assert!(invalid(raise_steps(0, u64::MAX)));
        assert_eq!(raise_steps(u64::MAX, 0).unwrap(), 0);
    }

    #[test]
    fn floor_is_counter_minus_base() {
        assert_eq!(floor("t", 10, 7).unwrap(), 3);
        assert_eq!(floor("t", 7, 7).unwrap(), 0);
        assert!(matches!(floor("t", 6, 7), Err(TpmError::Unexpected { .. })));
    }

    /// Known answer from a real TPM: tpm2-tools 5.4 on swtpm 0.7.1 (`tpm2_startauthsession`,
    /// `tpm2_policycommandcode TPM2_CC_NV_Write`, `tpm2_policynvwritten c`) printed this digest.
    /// The integration test `the_base_policy_is_what_a_trial_session_computes` re-derives it
    /// with tss-esapi.
    #[test]
    fn base_write_policy_known_answer() {
        assert_eq!(hex::encode(base_write_policy()), BASE_POLICY_KAT);
    }
    const BASE_POLICY_KAT: &str =
        "b7afecee9bf7bcbd5078f264de85f7e361dc84f745da7efa34e91fdaf200ee9b";

    #[test]
    fn templates_pass_their_own_check() {
        for role in [Role::Counter, Role::Base] {
            let public = role.template(handle(0x0150_0000)).unwrap();
            check_public(role, handle(0x0150_0000), &public).unwrap();
        }
    }

    /// Each property of an existing index is checked: a template differing in any one of them
    /// is refused, with a reason naming it.
    #[test]
    fn foreign_indices_are_refused_naming_the_difference() {
        let at = handle(0x0150_0000);
        let build = |attrs: NvIndexAttributesBuilder, alg, size, policy: Vec<u8>| {
            NvPublicBuilder::new()
                .with_nv_index(at)
                .with_index_name_algorithm(alg)
                .with_index_attributes(attrs.build().unwrap())
                .with_index_auth_policy(Digest::try_from(policy).unwrap())
                .with_data_area_size(size)
                .build()
                .unwrap()
        };
        let counter = || {
            NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Counter)
                .with_owner_write(true)
                .with_owner_read(true)
        };
        let base = || {
            NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Ordinary)
                .with_policy_write(true)
                .with_write_all(true)
                .with_owner_read(true)
        };
        let sha = HashingAlgorithm::Sha256;
        let policy = base_write_policy();
        let cases: Vec<(Role, NvPublic, &str)> = vec![
            // Counter: right but for one property.
            (
                Role::Counter,
                build(base(), sha, 8, vec![]),
                "type is Ordinary",
            ),
            (
                Role::Counter,
                build(counter().with_auth_write(true), sha, 8, vec![]),
                "extra AUTHWRITE",
            ),
            (
                Role::Counter,
                build(
                    counter().with_owner_write(false).with_auth_write(true),
                    sha,
                    8,
                    vec![],
                ),
                "extra AUTHWRITE; missing OWNERWRITE",
            ),
            (
                Role::Counter,
                build(counter().with_platform_create(true), sha, 8, vec![]),
                "extra PLATFORMCREATE",
            ),
            (
                Role::Counter,
                build(counter().with_orderly(true), sha, 8, vec![]),
                "extra ORDERLY",
            ),
            (
                Role::Counter,
                build(counter(), HashingAlgorithm::Sha1, 8, vec![]),
                "nameAlg",
            ),
            (
                Role::Counter,
                build(counter(), sha, 8, vec![1; 32]),
                "authPolicy",
            ),
            // Base: the brief's first design (OWNERWRITE, rewritable by the owner) and others.
            (
                Role::Base,
                build(
                    NvIndexAttributesBuilder::new()
                        .with_nv_index_type(NvIndexType::Ordinary)
                        .with_owner_write(true)
                        .with_owner_read(true)
                        .with_write_define(true),
                    sha,
                    8,
                    vec![],
                ),
                "extra OWNERWRITE, WRITEDEFINE; missing POLICYWRITE, WRITEALL",
            ),
            (
                Role::Base,
                build(base().with_owner_write(true), sha, 8, policy.clone()),
                "extra OWNERWRITE",
            ),
            (
                Role::Base,
                build(base().with_write_all(false), sha, 8, policy.clone()),
                "missing WRITEALL",
            ),
            (
                Role::Base,
                build(counter(), sha, 8, policy.clone()),
                "type is Counter",
            ),
            (
                Role::Base,
                build(base(), sha, 16, policy.clone()),
                "size is 16 bytes",
            ),
            (Role::Base, build(base(), sha, 8, vec![]), "authPolicy"),
            (Role::Base, build(base(), sha, 8, vec![0; 32]), "authPolicy"),
        ];
        for (role, public, expected) in cases {
            let reason = check_public(role, at, &public).unwrap_err();
            assert!(
                reason.contains(expected),
                "{role:?}: {reason:?} lacks {expected:?}"
            );
        }
        // Another index's public area is refused too.
        let public = Role::Counter.template(handle(0x0150_0001)).unwrap();
        assert!(check_public(Role::Counter, at, &public).is_err());
    }

    #[test]
    fn state_bits_are_not_differences() {
        let at = handle(0x0150_0000);
        for role in [Role::Counter, Role::Base] {
            let attrs = NvIndexAttributesBuilder::with_attributes(role.attributes().unwrap())
                .with_written(true)
                .with_write_locked(true)
                .with_read_locked(true)
                .build()
                .unwrap();
            let public = NvPublicBuilder::new()
                .with_nv_index(at)
                .with_index_name_algorithm(HashingAlgorithm::Sha256)
                .with_index_attributes(attrs)
                .with_index_auth_policy(Digest::try_from(role.auth_policy()).unwrap())
                .with_data_area_size(8)
                .build()
                .unwrap();
            check_public(role, at, &public).unwrap();
        }
    }
}
