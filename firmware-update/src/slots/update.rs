//! The writer's side of an update: choose a slot, write it, switch to it, commit it.
//! The states and transitions are drawn in the module documentation (`slots/mod.rs`).
//!
//! ```text
//!  begin_write ─▶ (caller writes the slot file) ─▶ finish_write ─▶ activate ─▶ (restart: boot)
//!      ─▶ mark_good      each step persisted before the next one acts on it
//! ```

use super::{BootControl, Installed, SlotError, SlotId, SlotState};

impl BootControl {
    /// Choose the slot to write the next image to, and mark it Writing.
    ///
    /// Never the active (committed) slot, never the slot that is running; refused while a slot
    /// is on trial. Of two candidates, the one holding least: Empty or Writing, then Bad, then
    /// Staged, then Good (A before B on a tie).
    pub fn begin_write(&mut self) -> Result<SlotId, SlotError> {
        if let Some(slot) = self.pending_trial() {
            return Err(SlotError::TrialInProgress { slot });
        }
        let rank = |s: &SlotState| match s {
            SlotState::Empty | SlotState::Writing => 0,
            SlotState::Bad { .. } => 1,
            SlotState::Staged { .. } => 2,
            SlotState::Trial { .. } | SlotState::Good { .. } => 3,
        };
        let mut chosen: Option<SlotId> = None;
        for s in SlotId::ALL {
            if Some(s) == self.active || Some(s) == self.booted {
                continue;
            }
            chosen = match chosen {
                Some(c) if rank(self.slot(c)) <= rank(self.slot(s)) => Some(c),
                _ => Some(s),
            };
        }
        let slot = chosen.ok_or(SlotError::NoFreeSlot {
            active: self.active,
            booted: self.booted,
        })?;
        *self.slot_mut(slot) = SlotState::Writing;
        Ok(slot)
    }

    /// The image is written and verified: Writing → Staged.
    pub fn finish_write(&mut self, slot: SlotId, image: Installed) -> Result<(), SlotError> {
        self.expect_state(slot, "finish_write", "writing", |s| {
            matches!(s, SlotState::Writing)
        })?;
        image
            .validate()
            .map_err(|(field, reason)| SlotError::InvalidImage {
                slot,
                field,
                reason,
            })?;
        *self.slot_mut(slot) = SlotState::Staged { image };
        Ok(())
    }

    /// The switch: Staged → Trial with `max_trial_boots` boots. Takes effect at the next boot.
    /// Refused while the other slot is on trial (one update at a time).
    pub fn activate(&mut self, slot: SlotId) -> Result<(), SlotError> {
        self.expect_state(slot, "activate", "staged", |s| {
            matches!(s, SlotState::Staged { .. })
        })?;
        if matches!(self.slot(slot.other()), SlotState::Trial { .. }) {
            return Err(SlotError::TrialInProgress { slot: slot.other() });
        }
        let boots_left = self.max_trial_boots;
        let st = self.slot_mut(slot);
        *st = match std::mem::replace(st, SlotState::Empty) {
            SlotState::Staged { image } => SlotState::Trial { image, boots_left },
            other => other,
        };
        Ok(())
    }

    /// Commit: the slot running on trial → Good, and it becomes the active slot. The other
    /// slot keeps its state (a previous Good slot stays as the fallback).
    pub fn mark_good(&mut self, slot: SlotId) -> Result<&Installed, SlotError> {
        if self.booted != Some(slot) {
            return Err(SlotError::NotBooted {
                slot,
                booted: self.booted,
            });
        }
        self.expect_state(slot, "mark_good", "trial", |s| {
            matches!(s, SlotState::Trial { .. })
        })?;
        let st = self.slot_mut(slot);
        *st = match std::mem::replace(st, SlotState::Empty) {
            SlotState::Trial { image, .. } => SlotState::Good { image },
            other => other,
        };
        self.active = Some(slot);
        self.slot(slot).image().ok_or(SlotError::Inconsistent {
            reason: format!("slot {slot} lost its image in mark_good"),
        })
    }

    fn expect_state(
        &self,
        slot: SlotId,
        op: &'static str,
        expected: &'static str,
        ok: impl Fn(&SlotState) -> bool,
    ) -> Result<(), SlotError> {
        let st = self.slot(slot);
        if ok(st) {
            Ok(())
        } else {
            Err(SlotError::WrongState {
                slot,
                op,
                expected,
                found: st.name(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bad, bc, good, img, staged, trial};
    use super::super::MAX_NAME_BYTES;
    use super::*;
    use SlotId::{A, B};
    use SlotState::{Empty, Writing};

    /// begin_write: (a, b, active, booted) → the slot chosen, or the refusal.
    #[test]
    fn begin_write_choice() {
        let cases: Vec<(&str, BootControl, Result<SlotId, &str>)> = vec![
            ("factory: A first", bc(Empty, Empty, None, None), Ok(A)),
            (
                "never the active slot",
                bc(good(1), Empty, Some(A), Some(A)),
                Ok(B),
            ),
            (
                "never the active slot (B)",
                bc(Empty, good(1), Some(B), Some(B)),
                Ok(A),
            ),
            (
                "replaces the previous good",
                bc(good(2), good(1), Some(A), Some(A)),
                Ok(B),
            ),
            (
                "replaces a bad slot",
                bc(bad(2), good(1), Some(B), Some(B)),
                Ok(A),
            ),
            (
                "interrupted write is reused",
                bc(Writing, Empty, None, None),
                Ok(A),
            ),
            (
                "interrupted write over bad",
                bc(bad(1), Writing, None, None),
                Ok(B),
            ),
            (
                "empty before staged",
                bc(staged(1), Empty, None, None),
                Ok(B),
            ),
            (
                "staged again when it is the only choice",
                bc(good(1), staged(2), Some(A), Some(A)),
                Ok(B),
            ),
            ("both bad: A", bc(bad(1), bad(2), None, None), Ok(A)),
            (
                "never the running slot",
                bc(good(1), Empty, None, Some(A)),
                Ok(B),
            ),
            (
                "refused during a trial",
                bc(trial(2, 2), good(1), Some(B), Some(A)),
                Err("trial-in-progress"),
            ),
            (
                "refused during a trial not yet booted",
                bc(good(1), trial(2, 3), Some(A), Some(A)),
                Err("trial-in-progress"),
            ),
            (
                "active and running differ",
                bc(good(1), good(2), Some(A), Some(B)),
                Err("no-free-slot"),
            ),
        ];
        for (name, mut c, want) in cases {
            let before = c.clone();
            match (c.begin_write(), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "{name}");
                    assert_eq!(c.slot(got), &Writing, "{name}");
                    assert_eq!(c.slot(got.other()), before.slot(got.other()), "{name}");
                    assert_eq!(
                        (c.active, c.booted),
                        (before.active, before.booted),
                        "{name}"
                    );
                }
                (Err(e), Err(reason)) => {
                    assert_eq!(e.reason(), reason, "{name}: {e}");
                    assert_eq!(c, before, "{name}: a refusal changes nothing");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn refusals_say_which_slot() {
        let mut c = bc(trial(2, 2), good(1), Some(B), Some(A));
        let e = c.begin_write().unwrap_err().to_string();
        assert!(e.contains("slot a is on trial"), "{e}");
        let mut c = bc(good(1), good(2), Some(A), Some(B));
        let e = c.begin_write().unwrap_err().to_string();
        assert!(
            e.contains("slot a is the committed slot and slot b is running"),
            "{e}"
        );
        let mut c = bc(Empty, Writing, None, None);
        let e = c.activate(B).unwrap_err().to_string();
        assert_eq!(e, "slot b: activate needs a staged slot, but it is writing");
    }

    /// Each operation from each state: accepted only from the state the diagram shows.
    #[test]
    fn transitions_from_each_state() {
        let states = [Empty, Writing, staged(2), trial(2, 3), good(2), bad(2)];
        for st in states {
            let name = st.name();
            // finish_write: only Writing.
            let mut c = bc(st.clone(), Empty, None, None);
            let before = c.clone();
            match c.finish_write(A, img(5)) {
                Ok(()) => {
                    assert_eq!(name, "writing");
                    assert_eq!(c.a, staged(5));
                }
                Err(e) => {
                    assert_ne!(name, "writing");
                    assert_eq!(e.reason(), "wrong-slot-state", "{name}");
                    assert_eq!(c, before);
                }
            }
            // activate: only Staged.
            let mut c = bc(st.clone(), Empty, None, None);
            let before = c.clone();
            match c.activate(A) {
                Ok(()) => {
                    assert_eq!(name, "staged");
                    assert_eq!(c.a, trial(2, 3));
                }
                Err(e) => {
                    assert_ne!(name, "staged");
                    assert_eq!(e.reason(), "wrong-slot-state", "{name}");
                    assert_eq!(c, before);
                }
            }
            // mark_good of the running slot: only Trial.
            let mut c = bc(st.clone(), good(1), Some(B), Some(A));
            let before = c.clone();
            match c.mark_good(A) {
                Ok(image) => {
                    assert_eq!(name, "trial");
                    assert_eq!(image, &img(2));
                    assert_eq!(
                        (c.a.clone(), c.b.clone(), c.active),
                        (good(2), good(1), Some(A))
                    );
                }
                Err(e) => {
                    assert_ne!(name, "trial");
                    assert_eq!(e.reason(), "wrong-slot-state", "{name}");
                    assert_eq!(c, before);
                }
            }
        }
    }

    #[test]
    fn activate_refused_while_the_other_slot_is_on_trial() {
        let mut c = bc(trial(2, 3), staged(3), None, None);
        let before = c.clone();
        let e = c.activate(B).unwrap_err();
        assert!(matches!(e, SlotError::TrialInProgress { slot: A }), "{e}");
        assert_eq!(c, before);
    }

    #[test]
    fn activate_uses_max_trial_boots() {
        let mut c = BootControl::new(7).unwrap();
        assert_eq!(c.begin_write().unwrap(), A);
        c.finish_write(A, img(1)).unwrap();
        c.activate(A).unwrap();
        assert_eq!(c.a, trial(1, 7));
        assert_eq!(c.pending_trial(), Some(A));
    }

    #[test]
    fn mark_good_needs_the_slot_running_on_trial() {
        // On trial but not running (activated, not booted yet): refused.
        for booted in [None, Some(B)] {
            let mut c = bc(trial(2, 3), good(1), Some(B), booted);
            let before = c.clone();
            let e = c.mark_good(A).unwrap_err();
            assert_eq!(e.reason(), "not-booted", "{e}");
            assert!(e.to_string().starts_with("slot a: mark-good"), "{e}");
            assert_eq!(c, before);
        }
        // Running, already good: nothing on trial.
        let mut c = bc(good(2), good(1), Some(A), Some(A));
        assert_eq!(c.mark_good(A).unwrap_err().reason(), "wrong-slot-state");
    }

    #[test]
    fn finish_write_checks_the_image_record() {
        let cases: Vec<(&str, Installed)> = vec![
            (
                "sha256",
                Installed {
                    sha256: "AB".repeat(32),
                    ..img(1)
                },
            ),
            (
                "sha256",
                Installed {
                    sha256: "ab".repeat(31),
                    ..img(1)
                },
            ),
            (
                "sha256",
                Installed {
                    sha256: "zz".repeat(32),
                    ..img(1)
                },
            ),
            (
                "manifest_sha256",
                Installed {
                    manifest_sha256: String::new(),
                    ..img(1)
                },
            ),
            (
                "target",
                Installed {
                    target: "x".repeat(MAX_NAME_BYTES + 1),
                    ..img(1)
                },
            ),
            (
                "release",
                Installed {
                    release: "x".repeat(MAX_NAME_BYTES + 1),
                    ..img(1)
                },
            ),
        ];
        for (field, image) in cases {
            let mut c = bc(Writing, Empty, None, None);
            let e = c.finish_write(A, image).unwrap_err();
            assert!(
                matches!(&e, SlotError::InvalidImage { slot: A, field: f, .. } if *f == field),
                "{field}: {e}"
            );
            assert!(e.to_string().contains(field), "{e}");
            assert_eq!(c.a, Writing);
        }
    }
}
