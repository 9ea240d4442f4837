//! SVN anti-rollback floors (an NV counter and a write-once base index per component) against a
//! real software TPM: each test manufactures its own swtpm.
//!
//! Skips with a message only when swtpm is missing, the process is not root and `CI` is unset
//! (`warden_testkit::skip_without_swtpm`). `warden_testkit::Swtpm` sets
//! `TSS2_LOG=esys+none,tcti+none` (`QUIET_TSS_LOG`) for this process, so the TPM errors the
//! negative tests provoke are not logged by tpm2-tss.
//!
//! Crash states are built by hand with tss-esapi ([`raw`]): the helpers below restate the
//! on-TPM format (attributes, size, write policy) independently of the driver, so a driver that
//! drifted from its documented format would fail here. swtpm serves one client at a time:
//! every test drops its `Tpm` before it opens a raw context, and the other way round.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::str::FromStr;
use std::time::Instant;

use tss_esapi::attributes::{NvIndexAttributes, NvIndexAttributesBuilder};
use tss_esapi::constants::{
    CapabilityType, CommandCode, NvIndexType, SessionType, Tss2ResponseCodeKind,
};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, MaxNvBuffer, NvPublic, NvPublicBuilder, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;
use warden_attest::tpm::{Tpm, TpmError, MAX_SVN_STEP};
use warden_testkit::Swtpm;

/// Component A's counter and base.
const COUNTER: u32 = 0x0150_0000;
const BASE: u32 = 0x0150_0001;
/// Component B's.
const COUNTER_B: u32 = 0x0150_0010;
const BASE_B: u32 = 0x0150_0011;
/// Another counter on the same TPM, not an SVN.
const OTHER: u32 = 0x0150_0020;
/// A spare index for showing the write-once policy on a fresh index.
const SPARE: u32 = 0x0150_0030;

/// PolicyCommandCode(TPM_CC_NV_Write) then PolicyNvWritten(NO), SHA-256, as tpm2-tools 5.4
/// prints it on swtpm 0.7.1.
const BASE_POLICY: &str = "b7afecee9bf7bcbd5078f264de85f7e361dc84f745da7efa34e91fdaf200ee9b";

fn swtpm(test: &str) -> Option<Swtpm> {
    if warden_testkit::skip_without_swtpm(test) {
        return None;
    }
    Some(Swtpm::start().unwrap())
}

fn tpm(sw: &Swtpm) -> Tpm {
    Tpm::open(&sw.tcti()).unwrap()
}

/// A plain tss-esapi context on the same swtpm (drop every `Tpm` first).
fn raw(sw: &Swtpm) -> Context {
    Context::new(TctiNameConf::from_str(&sw.tcti()).unwrap()).unwrap()
}

fn rc(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn invalid<T: std::fmt::Debug>(r: Result<T, TpmError>) -> bool {
    matches!(r, Err(TpmError::InvalidArgument { .. }))
}

/// The `Unexpected` error's reason, or a panic naming what came instead.
fn unexpected<T: std::fmt::Debug>(r: Result<T, TpmError>) -> String {
    match r {
        Err(TpmError::Unexpected { reason, .. }) => reason,
        other => panic!("expected TpmError::Unexpected, got {other:?}"),
    }
}

// ---- the on-TPM format, restated ----

/// The SVN counter: TPM_NT_COUNTER, OWNERWRITE | OWNERREAD.
fn counter_attributes() -> NvIndexAttributes {
    NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_owner_write(true)
        .with_owner_read(true)
        .build()
        .unwrap()
}

/// The SVN base: TPM_NT_ORDINARY, POLICYWRITE | WRITEALL | OWNERREAD (authPolicy: the
/// write-once policy).
fn base_attributes() -> NvIndexAttributes {
    NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Ordinary)
        .with_policy_write(true)
        .with_write_all(true)
        .with_owner_read(true)
        .build()
        .unwrap()
}

fn nv(ctx: &mut Context, index: u32) -> NvIndexHandle {
    let handle = NvIndexTpmHandle::new(index).unwrap();
    ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(handle)))
        .unwrap()
        .into()
}

fn exists(ctx: &mut Context, index: u32) -> bool {
    let (data, _) = ctx
        .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, index, 1))
        .unwrap();
    match data {
        CapabilityData::Handles(list) => list.first().is_some_and(|&h| u32::from(h) == index),
        other => panic!("not a handle list: {other:?}"),
    }
}

fn define(ctx: &mut Context, index: u32, attributes: NvIndexAttributes, policy: &[u8]) {
    let public = NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index).unwrap())
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_index_auth_policy(Digest::try_from(policy.to_vec()).unwrap())
        .with_data_area_size(8)
        .build()
        .unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_define_space(Provision::Owner, None, public)
    })
    .unwrap();
}

fn public(ctx: &mut Context, index: u32) -> NvPublic {
    let nv = nv(ctx, index);
    ctx.execute_without_session(|ctx| ctx.nv_read_public(nv))
        .unwrap()
        .0
}

fn increment(ctx: &mut Context, index: u32) {
    let nv = nv(ctx, index);
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_increment(NvAuth::Owner, nv)
    })
    .unwrap();
}

/// The index's 8 bytes, big-endian, read with Owner authorization.
fn read(ctx: &mut Context, index: u32) -> Result<u64, tss_esapi::Error> {
    let nv = nv(ctx, index);
    let data = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_read(NvAuth::Owner, nv, 8, 0)
    })?;
    Ok(u64::from_be_bytes(data.value().try_into().unwrap()))
}

fn buffer(value: u64) -> MaxNvBuffer {
    MaxNvBuffer::try_from(value.to_be_bytes().to_vec()).unwrap()
}

fn write_as_owner(ctx: &mut Context, index: u32, value: u64) -> Result<(), tss_esapi::Error> {
    let nv = nv(ctx, index);
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_write(NvAuth::Owner, nv, buffer(value), 0)
    })
}

/// A write authorised by the index's own (empty) authValue.
fn write_with_index_auth(
    ctx: &mut Context,
    index: u32,
    value: u64,
) -> Result<(), tss_esapi::Error> {
    let nv = nv(ctx, index);
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_write(NvAuth::NvIndex(nv), nv, buffer(value), 0)
    })
}

/// Run the write-once assertions in a fresh session of `kind` and hand it to `f`; the session
/// is flushed afterwards.
fn with_base_policy<T>(
    ctx: &mut Context,
    kind: SessionType,
    f: impl FnOnce(&mut Context, AuthSession, PolicySession) -> T,
) -> T {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            kind,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .unwrap()
        .unwrap();
    let policy = PolicySession::try_from(session).unwrap();
    ctx.policy_command_code(policy, CommandCode::NvWrite)
        .unwrap();
    ctx.policy_nv_written(policy, false).unwrap();
    let out = f(ctx, session, policy);
    // A successful command with continueSession clear has flushed the session already.
    let _ = ctx.flush_context(ObjectHandle::from(SessionHandle::from(session)));
    out
}

/// A write authorised by the write-once policy.
fn write_by_policy(ctx: &mut Context, index: u32, value: u64) -> Result<(), tss_esapi::Error> {
    let nv = nv(ctx, index);
    with_base_policy(ctx, SessionType::Policy, |ctx, session, _| {
        ctx.execute_with_session(Some(session), |ctx| {
            ctx.nv_write(NvAuth::NvIndex(nv), nv, buffer(value), 0)
        })
    })
}

/// The write-once policy digest, from a trial session on the TPM.
fn trial_base_policy(ctx: &mut Context) -> Vec<u8> {
    with_base_policy(ctx, SessionType::Trial, |ctx, _, policy| {
        ctx.policy_get_digest(policy).unwrap().value().to_vec()
    })
}

/// A TPM where component A's counter and base are in first use's state right after `steps`
/// of its TPM commands (define counter, increment, define base), made by hand.
fn crashed_after(sw: &Swtpm, steps: usize) {
    let mut ctx = raw(sw);
    let policy = trial_base_policy(&mut ctx);
    if steps >= 1 {
        define(&mut ctx, COUNTER, counter_attributes(), &[]);
    }
    if steps >= 2 {
        increment(&mut ctx, COUNTER);
    }
    if steps >= 3 {
        define(&mut ctx, BASE, base_attributes(), &policy);
    }
}

// ---- the floor ----

#[test]
fn floor_starts_at_zero_and_only_rises_across_reopen_and_restart() {
    let Some(mut sw) = swtpm("floor_starts_at_zero_and_only_rises_across_reopen_and_restart")
    else {
        return;
    };
    {
        let mut tpm = tpm(&sw);
        assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 0);
        assert_eq!(
            tpm.svn_floor(COUNTER, BASE).unwrap(),
            0,
            "a read is not a raise"
        );
        assert_eq!(tpm.svn_raise(COUNTER, BASE, 3).unwrap(), 3);
        assert_eq!(tpm.svn_raise(COUNTER, BASE, 2).unwrap(), 3, "never lowered");
        assert_eq!(tpm.svn_raise(COUNTER, BASE, 3).unwrap(), 3, "no-op");
        assert_eq!(tpm.svn_raise(COUNTER, BASE, 0).unwrap(), 3, "never lowered");
        assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 3);
    }
    // A new connection (new ESYS context) to the same TPM.
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 3);
    // A power cycle: NV stays.
    sw.restart().unwrap();
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 3);
    // On the TPM: the floor is the counter minus the base, and the no-op raises incremented
    // nothing.
    let mut ctx = raw(&sw);
    let (counter, base) = (
        read(&mut ctx, COUNTER).unwrap(),
        read(&mut ctx, BASE).unwrap(),
    );
    assert_eq!(counter - base, 3, "counter {counter}, base {base}");
}

#[test]
fn components_are_independent() {
    let Some(sw) = swtpm("components_are_independent") else {
        return;
    };
    let mut tpm = tpm(&sw);
    assert_eq!(tpm.svn_raise(COUNTER, BASE, 5).unwrap(), 5);
    assert_eq!(tpm.svn_floor(COUNTER_B, BASE_B).unwrap(), 0);
    assert_eq!(tpm.svn_raise(COUNTER_B, BASE_B, 2).unwrap(), 2);
    assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 5);
    assert_eq!(tpm.svn_raise(COUNTER, BASE, 6).unwrap(), 6);
    assert_eq!(tpm.svn_floor(COUNTER_B, BASE_B).unwrap(), 2);
}

/// A new counter does not start at 0 (NOTES.md). On swtpm 0.7.1 it starts after the highest
/// value of any counter *undefined* so far (libtpms keeps that maximum; live counters do not
/// raise it). The floor starts at 0 either way.
#[test]
fn a_new_counter_starts_at_floor_zero_after_another_counter_ran_ahead() {
    let Some(sw) = swtpm("a_new_counter_starts_at_floor_zero_after_another_counter_ran_ahead")
    else {
        return;
    };
    let other = {
        let mut ctx = raw(&sw);
        define(&mut ctx, OTHER, counter_attributes(), &[]);
        for _ in 0..7 {
            increment(&mut ctx, OTHER);
        }
        read(&mut ctx, OTHER).unwrap()
    };
    assert!(other >= 7, "other counter at {other}");
    // The other counter is still defined.
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 0);
    let first = {
        let mut ctx = raw(&sw);
        let counter = read(&mut ctx, COUNTER).unwrap();
        assert_eq!(read(&mut ctx, BASE).unwrap(), counter);
        // Now undefine it: the next new counter starts beyond it.
        let nv = nv(&mut ctx, OTHER);
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_undefine_space(Provision::Owner, nv)
        })
        .unwrap();
        counter
    };
    eprintln!("swtpm: other counter at {other}; first value of a new counter beside it: {first}");
    assert_eq!(tpm(&sw).svn_floor(COUNTER_B, BASE_B).unwrap(), 0);
    {
        // The raw counter is not the floor.
        let mut ctx = raw(&sw);
        let counter = read(&mut ctx, COUNTER_B).unwrap();
        eprintln!("swtpm: first value of a new counter after undefining it: {counter}");
        assert!(counter > other, "new counter {counter}, other {other}");
        assert_eq!(read(&mut ctx, BASE_B).unwrap(), counter);
    }
    let mut tpm = tpm(&sw);
    assert_eq!(tpm.svn_raise(COUNTER, BASE, 1).unwrap(), 1);
    assert_eq!(tpm.svn_raise(COUNTER_B, BASE_B, 1).unwrap(), 1);
    assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 1);
    assert_eq!(tpm.svn_floor(COUNTER_B, BASE_B).unwrap(), 1);
}

#[test]
fn indices_have_the_documented_format() {
    let Some(sw) = swtpm("indices_have_the_documented_format") else {
        return;
    };
    tpm(&sw).svn_floor(COUNTER, BASE).unwrap();
    let mut ctx = raw(&sw);

    let counter = public(&mut ctx, COUNTER);
    let attrs = counter.attributes();
    assert_eq!(attrs.index_type().unwrap(), NvIndexType::Counter);
    assert!(attrs.owner_write() && attrs.owner_read() && attrs.written());
    assert!(!attrs.platform_create() && !attrs.auth_write() && !attrs.policy_write());
    assert!(!attrs.orderly(), "every increment is committed");
    assert_eq!(counter.data_size(), 8);
    assert!(counter.authorization_policy().value().is_empty());

    let base = public(&mut ctx, BASE);
    let attrs = base.attributes();
    assert_eq!(attrs.index_type().unwrap(), NvIndexType::Ordinary);
    assert!(attrs.policy_write() && attrs.write_all() && attrs.owner_read() && attrs.written());
    assert!(!attrs.owner_write() && !attrs.auth_write() && !attrs.pp_write());
    assert!(!attrs.platform_create());
    assert_eq!(base.data_size(), 8);
    assert_eq!(base.name_algorithm(), HashingAlgorithm::Sha256);
    assert_eq!(
        hex::encode(base.authorization_policy().value()),
        BASE_POLICY
    );
}

#[test]
fn the_base_policy_is_what_a_trial_session_computes() {
    let Some(sw) = swtpm("the_base_policy_is_what_a_trial_session_computes") else {
        return;
    };
    tpm(&sw).svn_floor(COUNTER, BASE).unwrap();
    let mut ctx = raw(&sw);
    let trial = trial_base_policy(&mut ctx);
    assert_eq!(hex::encode(&trial), BASE_POLICY);
    assert_eq!(
        public(&mut ctx, BASE).authorization_policy().value(),
        trial.as_slice()
    );
}

#[test]
fn the_base_is_written_once() {
    let Some(sw) = swtpm("the_base_is_written_once") else {
        return;
    };
    assert_eq!(tpm(&sw).svn_raise(COUNTER, BASE, 2).unwrap(), 2);
    {
        let mut ctx = raw(&sw);
        let base = read(&mut ctx, BASE).unwrap();
        let owner = write_as_owner(&mut ctx, BASE, 0).unwrap_err();
        assert_eq!(
            rc(&owner),
            Some(Tss2ResponseCodeKind::NvAuthorization),
            "{owner}"
        );
        let own_auth = write_with_index_auth(&mut ctx, BASE, 0).unwrap_err();
        assert_eq!(
            rc(&own_auth),
            Some(Tss2ResponseCodeKind::AuthUnavailable),
            "{own_auth}"
        );
        let policy = write_by_policy(&mut ctx, BASE, 0).unwrap_err();
        assert_eq!(
            rc(&policy),
            Some(Tss2ResponseCodeKind::PolicyFail),
            "{policy}"
        );
        assert_eq!(read(&mut ctx, BASE).unwrap(), base, "the base is unchanged");

        // The policy does allow the first write: a fresh index with the same format takes one
        // write, then no more.
        let policy = trial_base_policy(&mut ctx);
        define(&mut ctx, SPARE, base_attributes(), &policy);
        write_by_policy(&mut ctx, SPARE, 5).unwrap();
        assert_eq!(read(&mut ctx, SPARE).unwrap(), 5);
        let again = write_by_policy(&mut ctx, SPARE, 6).unwrap_err();
        assert_eq!(
            rc(&again),
            Some(Tss2ResponseCodeKind::PolicyFail),
            "{again}"
        );
        assert_eq!(read(&mut ctx, SPARE).unwrap(), 5);
    }
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 2);
}

// ---- crash states: each is finished by the next call ----

#[test]
fn a_counter_defined_but_never_incremented_is_repaired() {
    let Some(sw) = swtpm("a_counter_defined_but_never_incremented_is_repaired") else {
        return;
    };
    crashed_after(&sw, 1);
    {
        let mut ctx = raw(&sw);
        // NOTES.md: an unincremented counter cannot be read.
        let e = read(&mut ctx, COUNTER).unwrap_err();
        assert_eq!(rc(&e), Some(Tss2ResponseCodeKind::NvUninitialized), "{e}");
    }
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 0);
    {
        let mut ctx = raw(&sw);
        assert!(public(&mut ctx, COUNTER).attributes().written());
        assert_eq!(
            read(&mut ctx, BASE).unwrap(),
            read(&mut ctx, COUNTER).unwrap()
        );
    }
    assert_eq!(tpm(&sw).svn_raise(COUNTER, BASE, 1).unwrap(), 1);
}

#[test]
fn a_counter_without_a_base_is_repaired_at_floor_zero() {
    let Some(sw) = swtpm("a_counter_without_a_base_is_repaired_at_floor_zero") else {
        return;
    };
    crashed_after(&sw, 2);
    let counter = {
        let mut ctx = raw(&sw);
        assert!(!exists(&mut ctx, BASE));
        read(&mut ctx, COUNTER).unwrap()
    };
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 0);
    {
        let mut ctx = raw(&sw);
        assert_eq!(
            read(&mut ctx, COUNTER).unwrap(),
            counter,
            "not incremented again"
        );
        assert_eq!(read(&mut ctx, BASE).unwrap(), counter);
    }
    assert_eq!(tpm(&sw).svn_raise(COUNTER, BASE, 4).unwrap(), 4);
}

#[test]
fn a_base_defined_but_never_written_is_repaired() {
    let Some(sw) = swtpm("a_base_defined_but_never_written_is_repaired") else {
        return;
    };
    crashed_after(&sw, 3);
    let counter = {
        let mut ctx = raw(&sw);
        assert!(!public(&mut ctx, BASE).attributes().written());
        read(&mut ctx, COUNTER).unwrap()
    };
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 0);
    {
        let mut ctx = raw(&sw);
        assert!(public(&mut ctx, BASE).attributes().written());
        assert_eq!(read(&mut ctx, BASE).unwrap(), counter);
        // Written through the driver, it is as final as any other base.
        let e = write_by_policy(&mut ctx, BASE, 0).unwrap_err();
        assert_eq!(rc(&e), Some(Tss2ResponseCodeKind::PolicyFail), "{e}");
    }
    assert_eq!(tpm(&sw).svn_raise(COUNTER, BASE, 2).unwrap(), 2);
}

#[test]
fn a_raise_cut_short_leaves_a_floor_that_the_next_raise_completes() {
    let Some(sw) = swtpm("a_raise_cut_short_leaves_a_floor_that_the_next_raise_completes") else {
        return;
    };
    assert_eq!(tpm(&sw).svn_floor(COUNTER, BASE).unwrap(), 0);
    {
        // A raise to 5 killed after two of its five increments.
        let mut ctx = raw(&sw);
        increment(&mut ctx, COUNTER);
        increment(&mut ctx, COUNTER);
    }
    let mut tpm = tpm(&sw);
    assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 2);
    assert_eq!(tpm.svn_raise(COUNTER, BASE, 5).unwrap(), 5);
    assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), 5);
}

// ---- what is refused ----

#[test]
fn an_ordinary_index_at_the_counter_handle_is_refused_and_kept() {
    let Some(sw) = swtpm("an_ordinary_index_at_the_counter_handle_is_refused_and_kept") else {
        return;
    };
    let ordinary = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Ordinary)
        .with_owner_write(true)
        .with_owner_read(true)
        .build()
        .unwrap();
    let before = {
        let mut ctx = raw(&sw);
        define(&mut ctx, COUNTER, ordinary, &[]);
        write_as_owner(&mut ctx, COUNTER, 0x1122_3344_5566_7788).unwrap();
        public(&mut ctx, COUNTER)
    };
    {
        let mut tpm = tpm(&sw);
        let reason = unexpected(tpm.svn_floor(COUNTER, BASE));
        assert!(
            reason.contains("0x01500000") && reason.contains("type is Ordinary"),
            "{reason}"
        );
        let reason = unexpected(tpm.svn_raise(COUNTER, BASE, 1));
        assert!(reason.contains("0x01500000"), "{reason}");
    }
    let mut ctx = raw(&sw);
    assert_eq!(public(&mut ctx, COUNTER), before, "not redefined");
    assert_eq!(
        read(&mut ctx, COUNTER).unwrap(),
        0x1122_3344_5566_7788,
        "not overwritten"
    );
    assert!(!exists(&mut ctx, BASE), "nothing else was defined");
}

#[test]
fn a_counter_with_other_attributes_is_refused_untouched() {
    let Some(sw) = swtpm("a_counter_with_other_attributes_is_refused_untouched") else {
        return;
    };
    // AUTHWRITE: anyone knowing the index's (empty) authValue could increment it.
    let loose = NvIndexAttributesBuilder::with_attributes(counter_attributes())
        .with_auth_write(true)
        .build()
        .unwrap();
    define(&mut raw(&sw), COUNTER, loose, &[]);
    let reason = unexpected(tpm(&sw).svn_floor(COUNTER, BASE));
    assert!(
        reason.contains("0x01500000") && reason.contains("extra AUTHWRITE"),
        "{reason}"
    );
    let mut ctx = raw(&sw);
    assert!(
        !public(&mut ctx, COUNTER).attributes().written(),
        "not incremented"
    );
    assert!(!exists(&mut ctx, BASE));
}

/// The brief's first design for the base (OWNERWRITE | WRITEDEFINE, locked after the write):
/// without the lock the owner can rewrite it, so such an index is not accepted as a base.
#[test]
fn an_owner_writable_base_is_refused_untouched() {
    let Some(sw) = swtpm("an_owner_writable_base_is_refused_untouched") else {
        return;
    };
    let rewritable = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Ordinary)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_write_define(true)
        .build()
        .unwrap();
    let counter = {
        let mut ctx = raw(&sw);
        define(&mut ctx, COUNTER, counter_attributes(), &[]);
        increment(&mut ctx, COUNTER);
        define(&mut ctx, BASE, rewritable, &[]);
        write_as_owner(&mut ctx, BASE, 1).unwrap();
        read(&mut ctx, COUNTER).unwrap()
    };
    let reason = unexpected(tpm(&sw).svn_floor(COUNTER, BASE));
    assert!(
        reason.contains("0x01500001") && reason.contains("extra OWNERWRITE"),
        "{reason}"
    );
    let mut ctx = raw(&sw);
    assert_eq!(read(&mut ctx, BASE).unwrap(), 1, "not overwritten");
    assert_eq!(read(&mut ctx, COUNTER).unwrap(), counter, "not incremented");
}

/// The counter is defined and incremented before the base is defined, so no crash leaves a
/// base without a counter, or beside one that was never incremented: its counter was undefined
/// or replaced. A new count under the old base is refused.
#[test]
fn a_base_without_its_counter_is_refused() {
    let Some(sw) = swtpm("a_base_without_its_counter_is_refused") else {
        return;
    };
    {
        let mut ctx = raw(&sw);
        let policy = trial_base_policy(&mut ctx);
        define(&mut ctx, BASE, base_attributes(), &policy);
        write_by_policy(&mut ctx, BASE, 1).unwrap();
    }
    let reason = unexpected(tpm(&sw).svn_floor(COUNTER, BASE));
    assert!(
        reason.contains("0x01500000 does not exist") && reason.contains("0x01500001"),
        "{reason}"
    );
    let mut ctx = raw(&sw);
    assert!(!exists(&mut ctx, COUNTER), "no new counter");

    // A counter defined afterwards (never incremented) is refused too, and left alone.
    define(&mut ctx, COUNTER, counter_attributes(), &[]);
    drop(ctx);
    let reason = unexpected(tpm(&sw).svn_raise(COUNTER, BASE, 1));
    assert!(reason.contains("has never been incremented"), "{reason}");
    let mut ctx = raw(&sw);
    assert!(!public(&mut ctx, COUNTER).attributes().written());
    assert_eq!(read(&mut ctx, BASE).unwrap(), 1);
}

#[test]
fn a_base_above_its_counter_is_refused() {
    let Some(sw) = swtpm("a_base_above_its_counter_is_refused") else {
        return;
    };
    {
        let mut ctx = raw(&sw);
        let policy = trial_base_policy(&mut ctx);
        define(&mut ctx, COUNTER, counter_attributes(), &[]);
        increment(&mut ctx, COUNTER);
        let counter = read(&mut ctx, COUNTER).unwrap();
        define(&mut ctx, BASE, base_attributes(), &policy);
        write_by_policy(&mut ctx, BASE, counter + 1).unwrap();
    }
    let reason = unexpected(tpm(&sw).svn_floor(COUNTER, BASE));
    assert!(reason.contains("below its base"), "{reason}");
    let reason = unexpected(tpm(&sw).svn_raise(COUNTER, BASE, 1));
    assert!(reason.contains("below its base"), "{reason}");
}

#[test]
fn a_raise_by_more_than_max_svn_step_is_refused() {
    let Some(sw) = swtpm("a_raise_by_more_than_max_svn_step_is_refused") else {
        return;
    };
    let mut tpm = tpm(&sw);
    assert!(invalid(tpm.svn_raise(COUNTER, BASE, MAX_SVN_STEP + 1)));
    assert!(invalid(tpm.svn_raise(COUNTER, BASE, u64::MAX)));
    assert_eq!(
        tpm.svn_floor(COUNTER, BASE).unwrap(),
        0,
        "nothing incremented"
    );

    // Exactly MAX_SVN_STEP is allowed (timing informational, never asserted).
    let t = Instant::now();
    assert_eq!(
        tpm.svn_raise(COUNTER, BASE, MAX_SVN_STEP).unwrap(),
        MAX_SVN_STEP
    );
    eprintln!(
        "swtpm: a raise by MAX_SVN_STEP ({MAX_SVN_STEP}) took {:?}",
        t.elapsed()
    );
    // The step is counted from the current floor.
    assert!(invalid(tpm.svn_raise(COUNTER, BASE, 2 * MAX_SVN_STEP + 1)));
    assert_eq!(
        tpm.svn_raise(COUNTER, BASE, MAX_SVN_STEP + 1).unwrap(),
        MAX_SVN_STEP + 1
    );
    assert_eq!(tpm.svn_floor(COUNTER, BASE).unwrap(), MAX_SVN_STEP + 1);
}

#[test]
fn bad_indices_are_refused_before_the_tpm() {
    let Some(sw) = swtpm("bad_indices_are_refused_before_the_tpm") else {
        return;
    };
    let bad = [
        (0x00FF_FFFF, BASE),    // below the NV range
        (COUNTER, 0x0200_0000), // above it
        (0x8101_0001, BASE),    // a persistent object (swtpm's EK)
        (COUNTER, 0x4000_0001), // TPM_RH_OWNER
        (0, BASE),
        (COUNTER, COUNTER), // the same index twice
    ];
    {
        let mut tpm = tpm(&sw);
        for (counter, base) in bad {
            assert!(
                invalid(tpm.svn_floor(counter, base)),
                "{counter:#x}, {base:#x}"
            );
            assert!(
                invalid(tpm.svn_raise(counter, base, 1)),
                "{counter:#x}, {base:#x}"
            );
        }
    }
    let mut ctx = raw(&sw);
    assert!(
        !exists(&mut ctx, COUNTER) && !exists(&mut ctx, BASE),
        "nothing defined"
    );
    // The ends of the range are accepted.
    drop(ctx);
    assert_eq!(tpm(&sw).svn_floor(0x0100_0000, 0x01FF_FFFF).unwrap(), 0);
}
