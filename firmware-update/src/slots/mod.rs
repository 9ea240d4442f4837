//! A/B firmware slots: boot counting, trial boots, mark-good and automatic fallback.
//!
//! Two slots (files standing in for flash partitions, see [`slot_path`]) and one boot-control
//! record, [`BootControl`]. Every operation here is pure: it changes the record in memory and
//! returns what happened. The caller persists the record ([`BootControl::store`]) after each
//! operation and *before* acting on it, so a crash at any point leaves a record that still
//! describes the disk. An operation that fails leaves the record exactly as it was.
//!
//! One slot's life:
//!
//! ```text
//!              begin_write           finish_write           activate
//!   Empty ──────────────────▶ Writing ────────────▶ Staged ────────────▶ Trial{n = max}
//!   (also Staged, Bad, or a     │ crash: stays Writing,                   │   │ boot(): n > 0,
//!    Good slot that is neither  │ never boots; begin_write                │   │ svn ≥ floor,
//!    active nor running)        ╰ may pick it again                       │   │ check ok
//!                                                                         │   ╰─▶ Trial{n-1}, runs
//!                mark_good (the slot running on trial; it becomes active) │
//!          Good ◀─────────────────────────────────────────────────────────┤
//!           │                                                             │ boot(): n = 0, or
//!           │ boot(): svn < floor or check fails (event Refused)          │ svn < floor, or check
//!           ▼                                                             ▼ fails (event Fallback)
//!          Bad ◀──────────────────────────────────────────────────────────╯
//! ```
//!
//! A slot on Trial blocks `begin_write` and `activate` of the other slot: one update at a time.
//!
//! [`BootControl::boot`] (the boot loader, `boot.rs`) tries a trial first, then the committed
//! slot, then the other Good slot, and falls back to the factory image; it never fails.
//! [`BootControl::load`] and [`BootControl::store`] (`store.rs`) keep the record in one file,
//! replaced atomically.

mod boot;
mod store;
mod update;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use boot::{BootDecision, BootEvent, BootReason};
pub use store::{slot_path, MAX_BOOT_CONTROL_BYTES};

/// The only boot-control record format this code reads and writes.
pub const FORMAT: u32 = 1;
/// The range `max_trial_boots` must be in.
pub const TRIAL_BOOTS_RANGE: std::ops::RangeInclusive<u32> = 1..=16;
/// Longest `target` or `release` an [`Installed`] may record, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Reasons (from a failed check, say) are cut to this many bytes before they are recorded,
/// so the record always fits in [`MAX_BOOT_CONTROL_BYTES`].
pub const MAX_REASON_BYTES: usize = 1024;

/// One of the two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    /// Both slots, in the order ties are broken.
    pub const ALL: [SlotId; 2] = [SlotId::A, SlotId::B];

    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a slot holds (recorded when the image was verified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    pub target: String,
    pub release: String,
    pub svn: u64,
    pub length: u64,
    /// SHA-256 of the image, 64 lowercase hex digits.
    pub sha256: String,
    /// SHA-256 of the signed targets payload that listed the image, 64 lowercase hex digits.
    pub manifest_sha256: String,
}

impl Installed {
    /// The checks [`BootControl::finish_write`] and [`BootControl::load`] make: bounded names,
    /// digests that are 64 lowercase hex digits. `Err((field, reason))`.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [("target", &self.target), ("release", &self.release)] {
            if value.len() > MAX_NAME_BYTES {
                return Err((
                    field,
                    format!("{} bytes; the limit is {MAX_NAME_BYTES}", value.len()),
                ));
            }
        }
        for (field, value) in [
            ("sha256", &self.sha256),
            ("manifest_sha256", &self.manifest_sha256),
        ] {
            let lower_hex = value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if value.len() != 64 || !lower_hex {
                return Err((field, "not 64 lowercase hex digits".into()));
            }
        }
        Ok(())
    }
}

/// The state of one slot. See the diagram in the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
#[serde(from = "SlotStateRecord")]
pub enum SlotState {
    /// Nothing installed.
    Empty,
    /// An image is being written; after a crash, a half-written slot. Never boots.
    Writing,
    /// A verified image, not switched to yet. Never boots until activated.
    Staged { image: Installed },
    /// Switched to: boots on trial until marked good, at most `boots_left` more times.
    Trial { image: Installed, boots_left: u32 },
    /// Committed (marked good after a trial boot).
    Good { image: Installed },
    /// Failed: a trial that ran out of boots, an image that failed its check, an SVN below the
    /// floor. Never boots again; only a new write replaces it.
    Bad { image: Installed, reason: String },
}

/// How [`SlotState`] is read: serde ignores `deny_unknown_fields` for the unit variants of an
/// internally tagged enum (`{"state": "empty", "extra": 1}` would load), so the unit variants
/// are read as empty struct variants, which do refuse unknown fields.
#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
enum SlotStateRecord {
    Empty {},
    Writing {},
    Staged { image: Installed },
    Trial { image: Installed, boots_left: u32 },
    Good { image: Installed },
    Bad { image: Installed, reason: String },
}

impl From<SlotStateRecord> for SlotState {
    fn from(r: SlotStateRecord) -> SlotState {
        match r {
            SlotStateRecord::Empty {} => SlotState::Empty,
            SlotStateRecord::Writing {} => SlotState::Writing,
            SlotStateRecord::Staged { image } => SlotState::Staged { image },
            SlotStateRecord::Trial { image, boots_left } => SlotState::Trial { image, boots_left },
            SlotStateRecord::Good { image } => SlotState::Good { image },
            SlotStateRecord::Bad { image, reason } => SlotState::Bad { image, reason },
        }
    }
}

impl SlotState {
    /// The state's name as it appears in the record (`"trial"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Writing => "writing",
            SlotState::Staged { .. } => "staged",
            SlotState::Trial { .. } => "trial",
            SlotState::Good { .. } => "good",
            SlotState::Bad { .. } => "bad",
        }
    }

    /// The image the slot holds, if it holds a complete one.
    pub fn image(&self) -> Option<&Installed> {
        match self {
            SlotState::Empty | SlotState::Writing => None,
            SlotState::Staged { image }
            | SlotState::Trial { image, .. }
            | SlotState::Good { image }
            | SlotState::Bad { image, .. } => Some(image),
        }
    }

    /// Has this slot been switched to at least once (a trial, a commit, a failure)?
    fn installed(&self) -> bool {
        matches!(
            self,
            SlotState::Trial { .. } | SlotState::Good { .. } | SlotState::Bad { .. }
        )
    }

    /// Why this slot did not boot, for [`BootEvent::Unbootable`].
    fn not_booted_reason(&self) -> String {
        match self {
            SlotState::Empty => "empty".into(),
            SlotState::Writing => "an interrupted write".into(),
            SlotState::Staged { .. } => "staged, not activated".into(),
            SlotState::Trial { .. } => "on trial, not chosen".into(),
            SlotState::Good { .. } => "good, not chosen".into(),
            SlotState::Bad { reason, .. } => format!("bad: {reason}"),
        }
    }
}

/// The boot-control record: both slots, the committed one, the running one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootControl {
    /// Always [`FORMAT`].
    pub format: u32,
    pub a: SlotState,
    pub b: SlotState,
    /// The committed slot; when set, that slot is Good.
    // `deserialize_with` so that a missing field is an error, not a silent `None`.
    #[serde(deserialize_with = "Option::deserialize")]
    pub active: Option<SlotId>,
    /// What the last [`BootControl::boot`] chose (None: the factory image).
    #[serde(deserialize_with = "Option::deserialize")]
    pub booted: Option<SlotId>,
    /// How many boots a trial gets to be marked good, in [`TRIAL_BOOTS_RANGE`].
    pub max_trial_boots: u32,
}

/// Why a slot operation, or the boot-control file, was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SlotError {
    #[error("max_trial_boots is {value}; it must be in 1..=16")]
    TrialBootsOutOfRange { value: u32 },
    #[error("slot {slot} is on trial: commit it (mark it good) or let it fall back first")]
    TrialInProgress { slot: SlotId },
    #[error("no slot can be written: {}", no_free_slot(*.active, *.booted))]
    NoFreeSlot {
        active: Option<SlotId>,
        booted: Option<SlotId>,
    },
    #[error("slot {slot}: {op} needs a {expected} slot, but it is {found}")]
    WrongState {
        slot: SlotId,
        op: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("slot {slot}: mark-good needs the slot that is running on trial, but {}", match .booted {
        Some(b) => format!("slot {b} is running"),
        None => "no slot is running (factory image)".to_owned(),
    })]
    NotBooted {
        slot: SlotId,
        booted: Option<SlotId>,
    },
    #[error("slot {slot}: image field {field}: {reason}")]
    InvalidImage {
        slot: SlotId,
        field: &'static str,
        reason: String,
    },
    /// The boot-control file cannot be used as it is. It is never reset silently.
    #[error("boot-control file {}: {reason}", .path.display())]
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The record in memory would not load back (its public fields were set by hand).
    #[error("boot-control record not written: {reason}")]
    Inconsistent { reason: String },
    #[error("boot-control file {}: {op}: {error}", .path.display())]
    Io {
        path: std::path::PathBuf,
        op: &'static str,
        error: std::io::Error,
    },
}

fn no_free_slot(active: Option<SlotId>, booted: Option<SlotId>) -> String {
    match (active, booted) {
        (Some(a), Some(b)) => format!("slot {a} is the committed slot and slot {b} is running"),
        _ => "every slot is committed or running".to_owned(),
    }
}

impl SlotError {
    /// One stable word for the audit log and the API.
    pub fn reason(&self) -> &'static str {
        match self {
            SlotError::TrialBootsOutOfRange { .. } => "trial-boots-out-of-range",
            SlotError::TrialInProgress { .. } => "trial-in-progress",
            SlotError::NoFreeSlot { .. } => "no-free-slot",
            SlotError::WrongState { .. } => "wrong-slot-state",
            SlotError::NotBooted { .. } => "not-booted",
            SlotError::InvalidImage { .. } => "invalid-image",
            SlotError::Corrupt { .. } => "corrupt-boot-control",
            SlotError::Inconsistent { .. } => "inconsistent-boot-control",
            SlotError::Io { .. } => "io",
        }
    }
}

impl BootControl {
    /// A record with both slots empty.
    pub fn new(max_trial_boots: u32) -> Result<BootControl, SlotError> {
        if !TRIAL_BOOTS_RANGE.contains(&max_trial_boots) {
            return Err(SlotError::TrialBootsOutOfRange {
                value: max_trial_boots,
            });
        }
        Ok(BootControl {
            format: FORMAT,
            a: SlotState::Empty,
            b: SlotState::Empty,
            active: None,
            booted: None,
            max_trial_boots,
        })
    }

    pub fn slot(&self, slot: SlotId) -> &SlotState {
        match slot {
            SlotId::A => &self.a,
            SlotId::B => &self.b,
        }
    }

    fn slot_mut(&mut self, slot: SlotId) -> &mut SlotState {
        match slot {
            SlotId::A => &mut self.a,
            SlotId::B => &mut self.b,
        }
    }

    /// The slot the last boot chose, its image, and whether it runs on trial.
    pub fn booted_image(&self) -> Option<(SlotId, &Installed, bool)> {
        let slot = self.booted?;
        match self.slot(slot) {
            SlotState::Trial { image, .. } => Some((slot, image, true)),
            SlotState::Good { image } => Some((slot, image, false)),
            _ => None,
        }
    }

    /// The slot on trial (activated, not yet marked good or failed), if any.
    pub fn pending_trial(&self) -> Option<SlotId> {
        SlotId::ALL
            .into_iter()
            .find(|s| matches!(self.slot(*s), SlotState::Trial { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn img(svn: u64) -> Installed {
        Installed {
            target: format!("fw-{svn}.img"),
            release: format!("{svn}.0.0"),
            svn,
            length: 4096,
            sha256: format!("{svn:064x}"),
            manifest_sha256: "ab".repeat(32),
        }
    }

    pub(super) fn bc(
        a: SlotState,
        b: SlotState,
        active: Option<SlotId>,
        booted: Option<SlotId>,
    ) -> BootControl {
        BootControl {
            format: FORMAT,
            a,
            b,
            active,
            booted,
            max_trial_boots: 3,
        }
    }

    use SlotId::{A, B};
    use SlotState::{Empty, Writing};
    pub(super) fn staged(svn: u64) -> SlotState {
        SlotState::Staged { image: img(svn) }
    }
    pub(super) fn trial(svn: u64, boots_left: u32) -> SlotState {
        SlotState::Trial {
            image: img(svn),
            boots_left,
        }
    }
    pub(super) fn good(svn: u64) -> SlotState {
        SlotState::Good { image: img(svn) }
    }
    pub(super) fn bad(svn: u64) -> SlotState {
        SlotState::Bad {
            image: img(svn),
            reason: "test".into(),
        }
    }

    #[test]
    fn new_accepts_only_1_to_16_trial_boots() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (3, true),
            (16, true),
            (17, false),
            (u32::MAX, false),
        ] {
            let r = BootControl::new(n);
            assert_eq!(r.is_ok(), ok, "max_trial_boots {n}");
            if let Ok(c) = r {
                assert_eq!((c.a, c.b, c.active, c.booted), (Empty, Empty, None, None));
                assert_eq!((c.format, c.max_trial_boots), (FORMAT, n));
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.reason(), "trial-boots-out-of-range");
                assert!(e.to_string().contains(&n.to_string()), "{e}");
            }
        }
    }

    #[test]
    fn slot_ids_name_and_other() {
        assert_eq!((A.to_string(), B.to_string()), ("a".into(), "b".into()));
        assert_eq!((A.other(), B.other()), (B, A));
        assert_eq!(serde_json::to_string(&[A, B]).unwrap(), r#"["a","b"]"#);
    }

    #[test]
    fn slot_state_json_shape() {
        let json = serde_json::to_value(trial(2, 1)).unwrap();
        assert_eq!(json["state"], "trial");
        assert_eq!(json["boots_left"], 1);
        assert_eq!(json["image"]["svn"], 2);
        assert_eq!(
            serde_json::to_value(Writing).unwrap(),
            serde_json::json!({"state": "writing"})
        );
        for refused in [
            r#"{"state":"empty","extra":1}"#,
            r#"{"state":"writing","extra":1}"#,
            r#"{"state":"nope"}"#,
            r#"{}"#,
            r#"{"state":"trial","image":null,"boots_left":1}"#,
        ] {
            assert!(
                serde_json::from_str::<SlotState>(refused).is_err(),
                "{refused}"
            );
        }
        for st in [Empty, Writing, staged(1), trial(1, 2), good(1), bad(1)] {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(
                serde_json::from_str::<SlotState>(&json).unwrap(),
                st,
                "{json}"
            );
        }
    }

    #[test]
    fn accessors() {
        let c = bc(trial(2, 1), good(1), Some(B), Some(A));
        assert_eq!(c.booted_image(), Some((A, &img(2), true)));
        assert_eq!(c.pending_trial(), Some(A));
        let c = bc(trial(2, 3), good(1), Some(B), Some(B));
        assert_eq!(c.booted_image(), Some((B, &img(1), false)));
        assert_eq!(c.pending_trial(), Some(A));
        let c = bc(Empty, Writing, None, None);
        assert_eq!((c.booted_image(), c.pending_trial()), (None, None));
        assert_eq!(c.slot(B), &Writing);
        assert_eq!(staged(4).image(), Some(&img(4)));
        assert_eq!(Writing.image(), None);
    }
}
