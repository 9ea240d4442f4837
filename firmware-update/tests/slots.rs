//! A/B slots over real files: each test runs the daemon's sequence (operation, store, act) and
//! restarts by loading the record again, the way a crash or a reboot would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use ring::digest::{digest, SHA256};
use warden_firmware_update::slots::{
    slot_path, BootControl, BootDecision, BootEvent, BootReason, Installed, SlotError, SlotId,
    SlotState, MAX_BOOT_CONTROL_BYTES,
};

use SlotId::{A, B};

const MAX_TRIALS: u32 = 3;

/// The appliance's update directory: `boot.json` and the two slot files.
struct Disk {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Disk {
    fn new() -> Disk {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        Disk { _tmp: tmp, dir }
    }

    fn boot_path(&self) -> PathBuf {
        self.dir.join("boot.json")
    }

    fn load(&self) -> BootControl {
        BootControl::load(&self.boot_path(), MAX_TRIALS).unwrap()
    }

    fn store(&self, bc: &BootControl) {
        bc.store(&self.boot_path()).unwrap();
    }

    /// What the daemon's check does: length and SHA-256 of the slot file.
    fn check(&self, slot: SlotId, image: &Installed) -> Result<(), String> {
        let bytes = std::fs::read(slot_path(&self.dir, slot)).map_err(|e| e.to_string())?;
        if bytes.len() as u64 != image.length {
            return Err(format!("{} bytes, {} recorded", bytes.len(), image.length));
        }
        if hex::encode(digest(&SHA256, &bytes)) != image.sha256 {
            return Err("SHA-256 differs from the verified one".into());
        }
        Ok(())
    }

    /// Stage a release as the daemon does: choose, persist, write, persist, switch, persist.
    fn stage(&self, svn: u64) -> SlotId {
        let mut bc = self.load();
        let slot = bc.begin_write().unwrap();
        self.store(&bc);
        let content = format!("firmware release {svn}").into_bytes();
        std::fs::write(slot_path(&self.dir, slot), &content).unwrap();
        bc.finish_write(slot, image(svn, &content)).unwrap();
        self.store(&bc);
        bc.activate(slot).unwrap();
        self.store(&bc);
        slot
    }

    /// A start: load, choose, persist.
    fn restart(&self, floor: u64) -> BootDecision {
        let mut bc = self.load();
        let d = bc.boot(floor, |s, i| self.check(s, i));
        self.store(&bc);
        d
    }

    fn commit(&self) -> Installed {
        let mut bc = self.load();
        let (slot, _, trial) = bc.booted_image().unwrap();
        assert!(trial);
        let image = bc.mark_good(slot).unwrap().clone();
        self.store(&bc);
        image
    }

    fn damage(&self, slot: SlotId) {
        std::fs::write(slot_path(&self.dir, slot), b"bit rot").unwrap();
    }
}

fn image(svn: u64, content: &[u8]) -> Installed {
    Installed {
        target: format!("fw-{svn}.img"),
        release: format!("{svn}.0.0"),
        svn,
        length: content.len() as u64,
        sha256: hex::encode(digest(&SHA256, content)),
        manifest_sha256: "cd".repeat(32),
    }
}

/// A disk with release 1 committed in slot A.
fn committed_v1() -> Disk {
    let disk = Disk::new();
    assert_eq!(disk.stage(1), A);
    assert_eq!(disk.restart(0).slot, Some(A));
    disk.commit();
    disk
}

fn state_name(bc: &BootControl, slot: SlotId) -> &'static str {
    bc.slot(slot).name()
}

#[test]
fn update_boots_on_trial_then_commits() {
    let disk = Disk::new();
    // Factory: nothing installed, nothing to say.
    let d = disk.restart(0);
    assert_eq!(
        (d.slot, d.trial, d.reason),
        (None, false, BootReason::Factory)
    );
    assert!(d.events.is_empty());

    assert_eq!(disk.stage(1), A);
    let d = disk.restart(0);
    assert_eq!(
        (d.slot, d.trial, d.reason),
        (Some(A), true, BootReason::Trial)
    );
    assert_eq!(
        d.events,
        [BootEvent::TrialBoot {
            slot: A,
            boots_left: MAX_TRIALS - 1
        }]
    );
    assert_eq!(d.image.unwrap().svn, 1);
    assert_eq!(disk.commit().svn, 1);
    let bc = disk.load();
    assert_eq!(
        (bc.active, bc.booted, bc.pending_trial()),
        (Some(A), Some(A), None)
    );
    assert_eq!(bc.booted_image().map(|(s, _, t)| (s, t)), Some((A, false)));

    let d = disk.restart(1);
    assert_eq!(
        (d.slot, d.trial, d.reason),
        (Some(A), false, BootReason::Active)
    );

    // The second update goes to B; A stays good, as the fallback.
    assert_eq!(disk.stage(2), B);
    let d = disk.restart(1);
    assert_eq!((d.slot, d.trial), (Some(B), true));
    disk.commit();
    let bc = disk.load();
    assert_eq!((state_name(&bc, A), state_name(&bc, B)), ("good", "good"));
    assert_eq!(bc.active, Some(B));
    // The third goes to A, the previous release, never to the committed B.
    assert_eq!(disk.stage(3), A);
}

#[test]
fn uncommitted_trial_falls_back_after_max_boots() {
    let disk = committed_v1();
    assert_eq!(disk.stage(2), B);
    for left in (0..MAX_TRIALS).rev() {
        let d = disk.restart(1);
        assert_eq!((d.slot, d.trial), (Some(B), true));
        assert_eq!(
            d.events,
            [BootEvent::TrialBoot {
                slot: B,
                boots_left: left
            }]
        );
    }
    let d = disk.restart(1);
    assert_eq!(
        (d.slot, d.trial, d.reason),
        (Some(A), false, BootReason::Fallback)
    );
    let reason = format!("trial boot did not reach mark-good after {MAX_TRIALS} boots");
    assert_eq!(
        d.events,
        [BootEvent::Fallback {
            from: B,
            to: Some(A),
            reason: reason.clone()
        }]
    );
    let bc = disk.load();
    assert_eq!(
        bc.b,
        SlotState::Bad {
            image: bc.b.image().unwrap().clone(),
            reason
        }
    );
    assert_eq!((bc.active, bc.booted), (Some(A), Some(A)));
    // The failed slot is written again by the next update.
    assert_eq!(disk.stage(3), B);
}

#[test]
fn damaged_trial_image_falls_back_at_once() {
    let disk = committed_v1();
    assert_eq!(disk.stage(2), B);
    disk.damage(B);
    let d = disk.restart(1);
    assert_eq!((d.slot, d.trial), (Some(A), false));
    let [BootEvent::Fallback {
        from: B,
        to: Some(A),
        reason,
    }] = d.events.as_slice()
    else {
        panic!("{:?}", d.events)
    };
    assert!(reason.contains("image check failed"), "{reason}");
    assert_eq!(state_name(&disk.load(), B), "bad");
}

#[test]
fn trial_below_the_floor_falls_back() {
    let disk = committed_v1();
    assert_eq!(disk.stage(2), B);
    let d = disk.restart(1);
    assert_eq!(d.slot, Some(B));
    // The floor rose to 5 meanwhile (another component's commit, a restored TPM...): 2 < 5.
    let mut bc = disk.load();
    bc.a = SlotState::Good {
        image: image(5, b"firmware release 5"),
    };
    disk.store(&bc);
    std::fs::write(slot_path(&disk.dir, A), b"firmware release 5").unwrap();
    let d = disk.restart(5);
    assert_eq!((d.slot, d.reason), (Some(A), BootReason::Fallback));
    assert_eq!(
        d.events,
        [BootEvent::Fallback {
            from: B,
            to: Some(A),
            reason: "security version 2 is below the floor 5".into()
        }]
    );
}

#[test]
fn committed_slot_below_the_floor_boots_the_other_good_slot() {
    let disk = Disk::new();
    disk.stage(2);
    disk.restart(0);
    disk.commit();
    // A deliberate downgrade to svn 1 was committed while the floor was still 1.
    assert_eq!(disk.stage(1), B);
    disk.restart(1);
    disk.commit();
    let d = disk.restart(2);
    assert_eq!((d.slot, d.reason), (Some(A), BootReason::Fallback));
    assert_eq!(
        d.events,
        [BootEvent::Refused {
            slot: B,
            reason: "security version 1 is below the floor 2".into()
        }]
    );
    let bc = disk.load();
    assert_eq!((bc.active, state_name(&bc, B)), (Some(A), "bad"));
}

#[test]
fn both_slots_bad_is_unbootable_not_a_panic() {
    let disk = committed_v1();
    disk.stage(2);
    disk.restart(1);
    disk.commit();
    disk.damage(A);
    disk.damage(B);
    let d = disk.restart(1);
    assert_eq!(
        (d.slot, d.image.as_ref(), d.reason),
        (None, None, BootReason::Unbootable)
    );
    let kinds: Vec<_> = d
        .events
        .iter()
        .map(|e| match e {
            BootEvent::Refused { slot, .. } => format!("refused {slot}"),
            BootEvent::Unbootable { reasons } => format!("unbootable {}", reasons.len()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["refused b", "refused a", "unbootable 2"]);
    let bc = disk.load();
    assert_eq!((bc.active, bc.booted), (None, None));
    // The next start says the same, without refusing anything again.
    let d = disk.restart(1);
    assert!(
        matches!(d.events.as_slice(), [BootEvent::Unbootable { .. }]),
        "{:?}",
        d.events
    );
    // And an update can still be written.
    assert_eq!(disk.stage(3), A);
    assert_eq!(disk.restart(1).slot, Some(A));
}

#[test]
fn factory_boot_has_no_events() {
    let disk = Disk::new();
    for _ in 0..2 {
        let d = disk.restart(0);
        assert_eq!(
            d,
            BootDecision {
                slot: None,
                image: None,
                trial: false,
                reason: BootReason::Factory,
                events: vec![]
            }
        );
    }
}

#[test]
fn interrupted_write_is_ignored_and_written_again() {
    let disk = committed_v1();
    let mut bc = disk.load();
    assert_eq!(bc.begin_write().unwrap(), B);
    disk.store(&bc);
    std::fs::write(slot_path(&disk.dir, B), b"half an ima").unwrap();
    // Crash. The next start runs A and leaves B as it is.
    let d = disk.restart(1);
    assert_eq!(
        (d.slot, d.reason, d.events.len()),
        (Some(A), BootReason::Active, 0)
    );
    let mut bc = disk.load();
    assert_eq!(bc.b, SlotState::Writing);
    assert_eq!(bc.activate(B).unwrap_err().reason(), "wrong-slot-state");
    assert_eq!(bc.begin_write().unwrap(), B);

    // From the factory state too: an interrupted first write is not an installed slot.
    let disk = Disk::new();
    let mut bc = disk.load();
    assert_eq!(bc.begin_write().unwrap(), A);
    disk.store(&bc);
    assert_eq!(disk.restart(0).reason, BootReason::Factory);
    assert_eq!(disk.stage(1), A);
}

#[test]
fn begin_write_is_refused_during_a_trial_and_never_picks_the_active_slot() {
    let disk = committed_v1();
    assert_eq!(disk.stage(2), B);
    // Activated, not booted yet; then booted: refused both times.
    for _ in 0..2 {
        let mut bc = disk.load();
        let e = bc.begin_write().unwrap_err();
        assert!(matches!(e, SlotError::TrialInProgress { slot: B }), "{e}");
        assert_eq!(bc, disk.load());
        disk.restart(1);
    }
    disk.commit();
    // Now B is active and running: A is the one to write.
    let mut bc = disk.load();
    assert_eq!(bc.begin_write().unwrap(), A);
}

#[test]
fn mark_good_only_for_the_slot_running_on_trial() {
    let disk = committed_v1();
    assert_eq!(disk.stage(2), B);
    let mut bc = disk.load();
    // On trial but not running yet (A runs).
    assert_eq!(bc.mark_good(B).unwrap_err().reason(), "not-booted");
    // Running but committed already.
    assert_eq!(bc.mark_good(A).unwrap_err().reason(), "wrong-slot-state");
    assert_eq!(bc, disk.load());
    disk.restart(1);
    let mut bc = disk.load();
    assert_eq!(bc.mark_good(A).unwrap_err().reason(), "not-booted");
    assert_eq!(bc.mark_good(B).unwrap().svn, 2);
    assert_eq!(bc.a, disk.load().a, "the previous good slot stays good");
}

#[test]
fn activate_only_a_staged_slot() {
    let disk = committed_v1();
    let mut bc = disk.load();
    for slot in [A, B] {
        let e = bc.activate(slot).unwrap_err();
        assert_eq!(e.reason(), "wrong-slot-state", "{e}");
    }
    assert_eq!(bc, disk.load());
}

#[test]
fn store_load_round_trip() {
    let disk = Disk::new();
    let path = disk.boot_path();
    let mut bc = BootControl::new(5).unwrap();
    let mut seen = vec![bc.clone()];
    bc.begin_write().unwrap();
    seen.push(bc.clone());
    bc.finish_write(A, image(1, b"x")).unwrap();
    seen.push(bc.clone());
    bc.activate(A).unwrap();
    seen.push(bc.clone());
    let _ = bc.boot(0, |_, _| Ok(()));
    seen.push(bc.clone());
    bc.mark_good(A).unwrap();
    seen.push(bc.clone());
    bc.b = SlotState::Bad {
        image: image(2, b"y"),
        reason: "a \"quoted\" reason\n".into(),
    };
    seen.push(bc.clone());
    for want in seen {
        want.store(&path).unwrap();
        // The stored max_trial_boots wins over the default.
        assert_eq!(BootControl::load(&path, 3).unwrap(), want);
        assert!(!path.with_file_name("boot.json.tmp").exists());
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["format"], 1);
    assert_eq!(json["a"]["state"], "good");
    assert_eq!(json["active"], "a");
}

#[test]
fn missing_file_is_a_new_record() {
    let disk = Disk::new();
    let bc = BootControl::load(&disk.boot_path(), 4).unwrap();
    assert_eq!(bc, BootControl::new(4).unwrap());
    assert!(!disk.boot_path().exists(), "load does not create the file");
    let e = BootControl::load(&disk.boot_path(), 0).unwrap_err();
    assert_eq!(e.reason(), "trial-boots-out-of-range");
}

/// A valid record as JSON, to break in one place.
fn valid_json() -> serde_json::Value {
    let mut bc = BootControl::new(3).unwrap();
    bc.begin_write().unwrap();
    bc.finish_write(A, image(1, b"x")).unwrap();
    bc.activate(A).unwrap();
    let _ = bc.boot(0, |_, _| Ok(()));
    serde_json::to_value(&bc).unwrap()
}

#[test]
fn corrupt_files_are_refused_never_reset() {
    let valid = serde_json::to_vec(&valid_json()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = valid_json();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let mut padded = valid.clone();
    padded.resize(MAX_BOOT_CONTROL_BYTES as usize + 1, b' ');
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "EOF"),
        ("truncated", valid[..valid.len() / 2].to_vec(), "EOF"),
        ("garbage", b"\x7fELF\x02\x01".to_vec(), "expected value"),
        (
            "trailing bytes",
            [valid.as_slice(), b"{}"].concat(),
            "trailing",
        ),
        (
            "oversized (valid JSON padded)",
            padded,
            "the limit is 65536",
        ),
        (
            "unknown field",
            edit(&|v| v["extra"] = 1.into()),
            "unknown field `extra`",
        ),
        (
            "unknown slot field",
            edit(&|v| v["a"]["extra"] = 1.into()),
            "unknown field `extra`",
        ),
        (
            "unknown image field",
            edit(&|v| v["a"]["image"]["x"] = 1.into()),
            "unknown field `x`",
        ),
        (
            "unknown state",
            edit(&|v| v["b"]["state"] = "maybe".into()),
            "unknown variant",
        ),
        (
            "missing active",
            edit(&|v| _ = v.as_object_mut().unwrap().remove("active")),
            "missing field `active`",
        ),
        (
            "missing booted",
            edit(&|v| _ = v.as_object_mut().unwrap().remove("booted")),
            "missing field `booted`",
        ),
        (
            "missing boots_left",
            edit(&|v| _ = v["a"].as_object_mut().unwrap().remove("boots_left")),
            "missing field `boots_left`",
        ),
        (
            "format 2",
            edit(&|v| v["format"] = 2.into()),
            "field format: 2",
        ),
        (
            "no trial boots",
            edit(&|v| v["max_trial_boots"] = 0.into()),
            "field max_trial_boots: 0",
        ),
        (
            "17 trial boots",
            edit(&|v| v["max_trial_boots"] = 17.into()),
            "field max_trial_boots: 17",
        ),
        (
            "boots left above the max",
            edit(&|v| v["a"]["boots_left"] = 9.into()),
            "field a.boots_left: 9",
        ),
        (
            "negative boots left",
            edit(&|v| v["a"]["boots_left"] = (-1).into()),
            "invalid value",
        ),
        (
            "active not good",
            edit(&|v| v["active"] = "a".into()),
            "field active: slot a is trial",
        ),
        (
            "booted empty",
            edit(&|v| v["booted"] = "b".into()),
            "field booted: slot b is empty",
        ),
        (
            "both on trial",
            edit(&|v| v["b"] = v["a"].clone()),
            "both slots are on trial",
        ),
        (
            "digest not hex",
            edit(&|v| v["a"]["image"]["sha256"] = "zz".repeat(32).into()),
            "field a.image.sha256",
        ),
        (
            "digest short",
            edit(&|v| v["a"]["image"]["manifest_sha256"] = "ab".into()),
            "field a.image.manifest_sha256",
        ),
    ];
    let disk = Disk::new();
    let path = disk.boot_path();
    for (name, bytes, want) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let e = BootControl::load(&path, 3).unwrap_err();
        assert!(matches!(e, SlotError::Corrupt { .. }), "{name}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: {msg} should say {want:?}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: the file is left as it was"
        );
    }
    // Not a file at all.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = BootControl::load(&path, 3).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn crash_before_rename_leaves_the_old_record() {
    let disk = committed_v1();
    let path = disk.boot_path();
    let before = disk.load();
    // A crash after writing (part of) path.tmp, before the rename.
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut newer = before.clone();
    newer.begin_write().unwrap();
    let json = serde_json::to_vec(&newer).unwrap();
    for stray in [&json[..json.len() / 3], &json[..], b"garbage"] {
        std::fs::write(&tmp, stray).unwrap();
        assert_eq!(disk.load(), before);
        assert_eq!(disk.restart(1).slot, Some(A));
    }
    // The next store replaces the stray file.
    disk.store(&newer);
    assert!(!tmp.exists());
    assert_eq!(disk.load(), newer);
}

#[test]
fn store_refuses_a_record_that_would_not_load() {
    let disk = committed_v1();
    let path = disk.boot_path();
    let before = std::fs::read(&path).unwrap();
    let mut bc = disk.load();
    bc.active = Some(B);
    let e = bc.store(&path).unwrap_err();
    assert_eq!(e.reason(), "inconsistent-boot-control", "{e}");
    assert!(
        e.to_string().contains("field active: slot b is empty"),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let e = disk
        .load()
        .store(&disk.dir.join("missing/boot.json"))
        .unwrap_err();
    assert!(matches!(e, SlotError::Io { .. }), "{e}");
    assert!(
        e.to_string().contains("missing/boot.json.tmp: creating"),
        "{e}"
    );
}

#[test]
fn slot_paths() {
    let dir = Path::new("/state/updates");
    assert_eq!(slot_path(dir, A), Path::new("/state/updates/slot-a.img"));
    assert_eq!(slot_path(dir, B), Path::new("/state/updates/slot-b.img"));
}

// ---- Random sequences of operations -------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    BeginWrite,
    /// Finish the slot being written (or A if none is).
    FinishWrite {
        svn: u64,
    },
    /// Activate the staged slot (or `slot` if none is staged).
    Activate {
        slot: SlotId,
    },
    /// Start: each slot's check fails or passes.
    Boot {
        fail_a: bool,
        fail_b: bool,
    },
    /// Commit the running slot (`None`) or a given one; the floor rises to its SVN, as the
    /// daemon does.
    MarkGood {
        slot: Option<SlotId>,
    },
    RaiseFloor {
        to: u64,
    },
    /// The daemon's stage: begin_write, finish_write, activate.
    Stage {
        svn: u64,
    },
}

fn slot_id() -> impl Strategy<Value = SlotId> {
    prop_oneof![Just(A), Just(B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::BeginWrite),
        2 => (0u64..6).prop_map(|svn| Op::FinishWrite { svn }),
        2 => slot_id().prop_map(|slot| Op::Activate { slot }),
        5 => (prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(fail_a, fail_b)| Op::Boot { fail_a, fail_b }),
        2 => prop::option::weighted(0.8, slot_id()).prop_map(|slot| Op::MarkGood { slot }),
        1 => (0u64..6).prop_map(|to| Op::RaiseFloor { to }),
        3 => (0u64..6).prop_map(|svn| Op::Stage { svn }),
    ]
}

/// Could `slot` boot now, by the rules (state, floor, check)?
fn bootable(bc: &BootControl, slot: SlotId, floor: u64, fails: bool) -> bool {
    match bc.slot(slot) {
        SlotState::Trial { image, boots_left } => *boots_left > 0 && image.svn >= floor && !fails,
        SlotState::Good { image } => image.svn >= floor && !fails,
        _ => false,
    }
}

fn run_ops(max_trials: u32, ops: &[Op]) {
    let mut bc = BootControl::new(max_trials).unwrap();
    let mut floor = 0u64;
    let mut trial_boots: HashMap<SlotId, u32> = HashMap::new();
    for op in ops {
        let before = bc.clone();
        let refused = match op {
            Op::BeginWrite => match bc.begin_write() {
                Ok(slot) => {
                    assert_ne!(Some(slot), before.active, "wrote over the active slot");
                    assert_ne!(Some(slot), before.booted, "wrote over the running slot");
                    assert_eq!(before.pending_trial(), None);
                    false
                }
                Err(_) => true,
            },
            Op::FinishWrite { svn } => {
                let slot = [A, B]
                    .into_iter()
                    .find(|s| bc.slot(*s) == &SlotState::Writing);
                let content = format!("{svn}");
                bc.finish_write(slot.unwrap_or(A), image(*svn, content.as_bytes()))
                    .is_err()
            }
            Op::Activate { slot } => {
                let staged = [A, B]
                    .into_iter()
                    .find(|s| matches!(bc.slot(*s), SlotState::Staged { .. }));
                let slot = staged.unwrap_or(*slot);
                match bc.activate(slot) {
                    Ok(()) => {
                        trial_boots.insert(slot, 0);
                        false
                    }
                    Err(_) => true,
                }
            }
            Op::Boot { fail_a, fail_b } => {
                let fails = |s: SlotId| if s == A { *fail_a } else { *fail_b };
                let trial_ok = [A, B].into_iter().find(|s| {
                    matches!(bc.slot(*s), SlotState::Trial { .. })
                        && bootable(&bc, *s, floor, fails(*s))
                });
                let some_good_ok = [A, B].into_iter().any(|s| {
                    matches!(bc.slot(s), SlotState::Good { .. })
                        && bootable(&bc, s, floor, fails(s))
                });
                let active_ok = bc.active.filter(|s| bootable(&bc, *s, floor, fails(*s)));
                let d = bc.boot(floor, |s, _| {
                    if fails(s) {
                        Err("digest".into())
                    } else {
                        Ok(())
                    }
                });

                // Never brick: a sound trial or Good slot means something boots.
                if trial_ok.is_some() {
                    assert_eq!((d.slot, d.trial), (trial_ok, true));
                } else if active_ok.is_some() {
                    assert_eq!((d.slot, d.trial), (active_ok, false));
                } else if some_good_ok {
                    assert!(
                        d.slot.is_some(),
                        "a good slot could boot: {before:?} → {d:?}"
                    );
                }
                // What boots was bootable, and the record says so.
                if let Some(s) = d.slot {
                    assert!(bootable(&before, s, floor, fails(s)), "{before:?} → {d:?}");
                    assert!(d.image.as_ref().unwrap().svn >= floor);
                }
                assert_eq!(d.slot, bc.booted);
                assert_eq!(
                    bc.booted_image().map(|(s, i, t)| (s, i.clone(), t)),
                    d.slot.map(|s| (s, d.image.clone().unwrap(), d.trial))
                );
                // A trial never boots more than max_trial_boots times.
                if let (Some(s), true) = (d.slot, d.trial) {
                    let n = trial_boots.entry(s).or_default();
                    *n += 1;
                    assert!(*n <= max_trials, "slot {s} booted {n} times on trial");
                }
                false
            }
            Op::MarkGood { slot } => {
                let slot = slot.or(bc.booted).unwrap_or(A);
                match bc.mark_good(slot) {
                    Ok(image) => {
                        floor = floor.max(image.svn);
                        assert_eq!(
                            before.booted_image().map(|(s, _, t)| (s, t)),
                            Some((slot, true))
                        );
                        false
                    }
                    Err(_) => true,
                }
            }
            Op::Stage { svn } => {
                let staged = bc.begin_write().and_then(|slot| {
                    bc.finish_write(slot, image(*svn, b"image"))?;
                    bc.activate(slot)?;
                    Ok(slot)
                });
                match staged {
                    Ok(slot) => {
                        trial_boots.insert(slot, 0);
                        assert_ne!(Some(slot), before.active, "wrote over the active slot");
                        false
                    }
                    Err(_) => true,
                }
            }
            Op::RaiseFloor { to } => {
                floor = floor.max(*to);
                false
            }
        };
        if refused {
            assert_eq!(bc, before, "a refused {op:?} changed the record");
        }
        // `active` always names a Good slot.
        if let Some(a) = bc.active {
            assert!(
                matches!(bc.slot(a), SlotState::Good { .. }),
                "{op:?}: {bc:?}"
            );
        }
        assert!(
            bc.pending_trial().is_none()
                || [A, B]
                    .iter()
                    .filter(|s| matches!(bc.slot(**s), SlotState::Trial { .. }))
                    .count()
                    == 1
        );
    }
    // Whatever the sequence, the record stores and loads back.
    let disk = Disk::new();
    disk.store(&bc);
    assert_eq!(BootControl::load(&disk.boot_path(), 1).unwrap(), bc);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_invariants(
        max_trials in 1u32..=4,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_ops(max_trials, &ops);
    }
}
