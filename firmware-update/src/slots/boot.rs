//! The boot loader: which slot runs at this start, and what that does to the slots.

use serde::Serialize;

use super::{BootControl, Installed, SlotId, SlotState, MAX_REASON_BYTES};

/// Why [`BootControl::boot`] chose what it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootReason {
    /// A slot on trial.
    Trial,
    /// The committed slot, nothing went wrong.
    Active,
    /// A Good slot, after a trial or another Good slot failed.
    Fallback,
    /// Nothing was ever installed: the factory image runs.
    Factory,
    /// Installed slots exist but none can boot: the factory image runs.
    Unbootable,
}

impl BootReason {
    pub fn name(self) -> &'static str {
        match self {
            BootReason::Trial => "trial",
            BootReason::Active => "active",
            BootReason::Fallback => "fallback",
            BootReason::Factory => "factory",
            BootReason::Unbootable => "unbootable",
        }
    }
}

/// Something the boot loader did that the audit log should show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum BootEvent {
    /// `slot` runs on trial; `boots_left` more boots after this one.
    TrialBoot { slot: SlotId, boots_left: u32 },
    /// The trial in `from` failed (it is now Bad); `to` runs instead (None: the factory image).
    Fallback {
        from: SlotId,
        to: Option<SlotId>,
        reason: String,
    },
    /// The Good slot `slot` cannot boot any more (it is now Bad).
    Refused { slot: SlotId, reason: String },
    /// Installed slots exist but none can boot; one reason per slot.
    Unbootable { reasons: Vec<String> },
}

/// What [`BootControl::boot`] chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootDecision {
    /// The slot to run; None: the factory image.
    pub slot: Option<SlotId>,
    /// What that slot holds.
    pub image: Option<Installed>,
    /// The slot runs on trial: it must be marked good before its boots run out.
    pub trial: bool,
    pub reason: BootReason,
    pub events: Vec<BootEvent>,
}

impl BootControl {
    /// The boot loader, run once per start. `floor` is the security floor (the lowest SVN that
    /// may run); `check` verifies a slot's file on disk against its recorded image (length and
    /// SHA-256). Never fails: the worst outcome is the factory image. The rules, in order:
    ///
    /// ```text
    ///  1. the slot on Trial ── boots left, svn ≥ floor, check ok ──▶ runs on trial (a boot spent)
    ///        │ otherwise: Bad; event Fallback { from, to: what 2. chooses }
    ///  2. the active Good slot, then the other Good slot ── svn ≥ floor, check ok ──▶ runs
    ///        │ each one that fails: Bad; event Refused                    (and becomes active)
    ///  3. Writing and Staged slots never boot.
    ///  4. none: nothing ever installed ──▶ factory image, no event
    ///           installed, none bootable ──▶ factory image; event Unbootable { reasons }
    /// ```
    ///
    /// The caller stores the record before running the slot, so a spent trial boot is never
    /// lost to a crash.
    #[must_use = "the decision says which slot to run; persist the record before running it"]
    pub fn boot(
        &mut self,
        floor: u64,
        mut check: impl FnMut(SlotId, &Installed) -> Result<(), String>,
    ) -> BootDecision {
        let mut admit = |slot: SlotId, image: &Installed| -> Result<(), String> {
            if image.svn < floor {
                return Err(format!(
                    "security version {} is below the floor {floor}",
                    image.svn
                ));
            }
            check(slot, image).map_err(|e| clip(format!("image check failed: {e}")))
        };
        let active_before = self.active;
        let mut chosen: Option<(SlotId, bool)> = None;
        let mut events = Vec::new();
        let mut failed_trials: Vec<(SlotId, String)> = Vec::new();

        // 1. A slot on trial gets one more boot, if it has one left and its image is sound.
        for id in SlotId::ALL {
            let SlotState::Trial { image, boots_left } = self.slot(id) else {
                continue;
            };
            let image = image.clone();
            let outcome = if *boots_left == 0 {
                Err(format!(
                    "trial boot did not reach mark-good after {} boots",
                    self.max_trial_boots
                ))
            } else {
                // The spent boot counts whatever happens next: it is written down first.
                let boots_left = boots_left.saturating_sub(1);
                *self.slot_mut(id) = SlotState::Trial {
                    image: image.clone(),
                    boots_left,
                };
                admit(id, &image).map(|()| boots_left)
            };
            match outcome {
                Ok(boots_left) => {
                    events.push(BootEvent::TrialBoot {
                        slot: id,
                        boots_left,
                    });
                    chosen = Some((id, true));
                    break;
                }
                Err(reason) => {
                    *self.slot_mut(id) = SlotState::Bad {
                        image,
                        reason: reason.clone(),
                    };
                    failed_trials.push((id, reason));
                }
            }
        }

        // 2. The committed slot, then the other Good slot (the previous release).
        if chosen.is_none() {
            let first = self.active.unwrap_or(SlotId::A);
            for id in [first, first.other()] {
                let SlotState::Good { image } = self.slot(id) else {
                    continue;
                };
                let image = image.clone();
                match admit(id, &image) {
                    Ok(()) => {
                        chosen = Some((id, false));
                        break;
                    }
                    Err(reason) => {
                        *self.slot_mut(id) = SlotState::Bad {
                            image,
                            reason: reason.clone(),
                        };
                        events.push(BootEvent::Refused { slot: id, reason });
                    }
                }
            }
        }

        // `active` always names a Good slot: the one that runs if it is not a trial.
        if let Some(a) = self.active {
            if !matches!(self.slot(a), SlotState::Good { .. }) {
                self.active = None;
            }
        }
        if let Some((id, false)) = chosen {
            self.active = Some(id);
        }
        self.booted = chosen.map(|(id, _)| id);

        let to = self.booted;
        let fallbacks = failed_trials
            .into_iter()
            .map(|(from, reason)| BootEvent::Fallback { from, to, reason });
        events.splice(0..0, fallbacks);

        let reason = match chosen {
            Some((_, true)) => BootReason::Trial,
            Some((id, false)) if events.is_empty() && active_before == Some(id) => {
                BootReason::Active
            }
            Some((_, false)) => BootReason::Fallback,
            None if SlotId::ALL.iter().any(|s| self.slot(*s).installed()) => {
                let reasons = SlotId::ALL
                    .iter()
                    .map(|s| format!("slot {s}: {}", self.slot(*s).not_booted_reason()))
                    .collect();
                events.push(BootEvent::Unbootable { reasons });
                BootReason::Unbootable
            }
            None => BootReason::Factory,
        };
        BootDecision {
            slot: self.booted,
            image: chosen.and_then(|(id, _)| self.slot(id).image().cloned()),
            trial: matches!(chosen, Some((_, true))),
            reason,
            events,
        }
    }
}

/// Cut a reason to [`MAX_REASON_BYTES`] (on a character boundary).
fn clip(mut s: String) -> String {
    if s.len() <= MAX_REASON_BYTES {
        return s;
    }
    let mut end = MAX_REASON_BYTES.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.truncate(end);
    s.push_str("...");
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bad, bc, good, img, staged, trial};
    use super::*;
    use SlotId::{A, B};
    use SlotState::{Empty, Writing};

    fn describe_state(s: &SlotState) -> String {
        match s {
            SlotState::Trial { boots_left, .. } => format!("trial:{boots_left}"),
            SlotState::Bad { reason, .. } => format!("bad:{reason}"),
            other => other.name().to_owned(),
        }
    }

    fn describe_event(e: &BootEvent) -> String {
        let name = |s: Option<SlotId>| s.map_or("none".to_owned(), |s| s.to_string());
        match e {
            BootEvent::TrialBoot { slot, boots_left } => format!("trial-boot {slot} {boots_left}"),
            BootEvent::Fallback { from, to, reason } => {
                format!("fallback {from}->{}: {reason}", name(*to))
            }
            BootEvent::Refused { slot, reason } => format!("refused {slot}: {reason}"),
            BootEvent::Unbootable { reasons } => format!("unbootable: {}", reasons.join(" | ")),
        }
    }

    struct Case {
        name: &'static str,
        before: BootControl,
        floor: u64,
        /// Slots whose image check fails.
        fails: &'static [SlotId],
        slot: Option<SlotId>,
        reason: BootReason,
        /// Slot states after, as `describe_state` prints them (a prefix).
        after: [&'static str; 2],
        active: Option<SlotId>,
        /// Events, as `describe_event` prints them (each a prefix).
        events: &'static [&'static str],
    }

    const EXHAUSTED: &str = "trial boot did not reach mark-good after 3 boots";
    const DIGEST: &str = "image check failed: digest mismatch";

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "factory: nothing installed",
                before: bc(Empty, Empty, None, None),
                floor: 0,
                fails: &[],
                slot: None,
                reason: BootReason::Factory,
                after: ["empty", "empty"],
                active: None,
                events: &[],
            },
            Case {
                name: "factory: an interrupted write and a staged slot never boot",
                before: bc(Writing, staged(1), None, None),
                floor: 0,
                fails: &[],
                slot: None,
                reason: BootReason::Factory,
                after: ["writing", "staged"],
                active: None,
                events: &[],
            },
            Case {
                name: "trial boots, one boot spent",
                before: bc(trial(2, 3), good(1), Some(B), Some(B)),
                floor: 1,
                fails: &[],
                slot: Some(A),
                reason: BootReason::Trial,
                after: ["trial:2", "good"],
                active: Some(B),
                events: &["trial-boot a 2"],
            },
            Case {
                name: "trial's last boot",
                before: bc(trial(2, 1), good(1), Some(B), Some(A)),
                floor: 1,
                fails: &[],
                slot: Some(A),
                reason: BootReason::Trial,
                after: ["trial:0", "good"],
                active: Some(B),
                events: &["trial-boot a 0"],
            },
            Case {
                name: "trial out of boots falls back to the committed slot",
                before: bc(trial(2, 0), good(1), Some(B), Some(A)),
                floor: 1,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:trial boot did not reach mark-good after 3 boots", "good"],
                active: Some(B),
                events: &["fallback a->b: trial boot did not reach mark-good after 3 boots"],
            },
            Case {
                name: "trial image damaged: immediate fallback",
                before: bc(good(1), trial(2, 3), Some(A), Some(A)),
                floor: 0,
                fails: &[B],
                slot: Some(A),
                reason: BootReason::Fallback,
                after: ["good", "bad:image check failed: digest mismatch"],
                active: Some(A),
                events: &["fallback b->a: image check failed: digest mismatch"],
            },
            Case {
                name: "trial below the floor: fallback",
                before: bc(trial(2, 3), good(3), Some(B), Some(B)),
                floor: 3,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:security version 2 is below the floor 3", "good"],
                active: Some(B),
                events: &["fallback a->b: security version 2 is below the floor 3"],
            },
            Case {
                name: "failed trial, nothing to fall back to",
                before: bc(trial(1, 0), Empty, None, Some(A)),
                floor: 0,
                fails: &[],
                slot: None,
                reason: BootReason::Unbootable,
                after: ["bad:trial boot", "empty"],
                active: None,
                events: &[
                    "fallback a->none: trial boot did not reach",
                    "unbootable: slot a: bad: trial boot did not reach mark-good after 3 boots | slot b: empty",
                ],
            },
            Case {
                name: "failed trial, a good slot that is not active (hand-made record)",
                before: bc(trial(2, 0), good(1), None, Some(A)),
                floor: 0,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:", "good"],
                active: Some(B),
                events: &["fallback a->b: trial boot"],
            },
            Case {
                name: "the committed slot boots; the previous good stays",
                before: bc(good(2), good(1), Some(A), Some(A)),
                floor: 1,
                fails: &[],
                slot: Some(A),
                reason: BootReason::Active,
                after: ["good", "good"],
                active: Some(A),
                events: &[],
            },
            Case {
                name: "committed slot below the floor: the other good slot boots",
                before: bc(good(1), good(2), Some(A), Some(A)),
                floor: 2,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:security version 1 is below the floor 2", "good"],
                active: Some(B),
                events: &["refused a: security version 1 is below the floor 2"],
            },
            Case {
                name: "committed slot damaged: the other good slot boots",
                before: bc(good(2), good(1), Some(A), Some(A)),
                floor: 0,
                fails: &[A],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:image check failed", "good"],
                active: Some(B),
                events: &["refused a: image check failed: digest mismatch"],
            },
            Case {
                name: "both good slots fail: unbootable",
                before: bc(good(2), good(1), Some(A), Some(A)),
                floor: 0,
                fails: &[A, B],
                slot: None,
                reason: BootReason::Unbootable,
                after: ["bad:", "bad:"],
                active: None,
                events: &[
                    "refused a: image check failed",
                    "refused b: image check failed",
                    "unbootable: slot a: bad: image check failed: digest mismatch | slot b: bad: image check failed: digest mismatch",
                ],
            },
            Case {
                name: "failed trial and a damaged committed slot: unbootable",
                before: bc(trial(3, 2), good(2), Some(B), Some(B)),
                floor: 0,
                fails: &[A, B],
                slot: None,
                reason: BootReason::Unbootable,
                after: ["bad:", "bad:"],
                active: None,
                events: &[
                    "fallback a->none: image check failed",
                    "refused b: image check failed",
                    "unbootable: ",
                ],
            },
            Case {
                name: "a bad slot never boots",
                before: bc(bad(5), Empty, None, None),
                floor: 0,
                fails: &[],
                slot: None,
                reason: BootReason::Unbootable,
                after: ["bad:test", "empty"],
                active: None,
                events: &["unbootable: slot a: bad: test | slot b: empty"],
            },
            Case {
                name: "a bad slot never boots; the good one does",
                before: bc(bad(5), good(1), Some(B), Some(B)),
                floor: 0,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Active,
                after: ["bad:test", "good"],
                active: Some(B),
                events: &[],
            },
            Case {
                name: "an interrupted write beside the committed slot is ignored",
                before: bc(Writing, good(1), Some(B), Some(B)),
                floor: 0,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Active,
                after: ["writing", "good"],
                active: Some(B),
                events: &[],
            },
            Case {
                name: "a staged slot is not booted until activated",
                before: bc(good(1), staged(2), Some(A), Some(A)),
                floor: 0,
                fails: &[],
                slot: Some(A),
                reason: BootReason::Active,
                after: ["good", "staged"],
                active: Some(A),
                events: &[],
            },
            Case {
                name: "hand-made record: active names a bad slot",
                before: bc(bad(1), good(2), Some(A), Some(A)),
                floor: 0,
                fails: &[],
                slot: Some(B),
                reason: BootReason::Fallback,
                after: ["bad:test", "good"],
                active: Some(B),
                events: &[],
            },
            Case {
                name: "hand-made record: both on trial, the first that boots wins",
                before: bc(trial(1, 2), trial(2, 2), None, None),
                floor: 0,
                fails: &[],
                slot: Some(A),
                reason: BootReason::Trial,
                after: ["trial:1", "trial:2"],
                active: None,
                events: &["trial-boot a 1"],
            },
        ]
    }

    #[test]
    fn boot_rules() {
        for c in cases() {
            let mut bc = c.before.clone();
            let d = bc.boot(c.floor, |slot, _| {
                if c.fails.contains(&slot) {
                    Err("digest mismatch".into())
                } else {
                    Ok(())
                }
            });
            let name = c.name;
            assert_eq!(d.slot, c.slot, "{name}: slot");
            assert_eq!(d.trial, c.reason == BootReason::Trial, "{name}: trial");
            assert_eq!(d.reason, c.reason, "{name}: reason");
            assert_eq!(bc.booted, c.slot, "{name}: booted");
            assert_eq!(bc.active, c.active, "{name}: active");
            assert_eq!(
                d.image.as_ref(),
                c.slot.and_then(|s| bc.slot(s).image()),
                "{name}: image"
            );
            for (id, want) in SlotId::ALL.into_iter().zip(c.after) {
                let got = describe_state(bc.slot(id));
                assert!(
                    got.starts_with(want),
                    "{name}: slot {id} is {got}, want {want}"
                );
            }
            let got: Vec<String> = d.events.iter().map(describe_event).collect();
            assert_eq!(got.len(), c.events.len(), "{name}: events {got:#?}");
            for (g, w) in got.iter().zip(c.events) {
                assert!(g.starts_with(w), "{name}: event {g:?}, want {w:?}");
            }
            if c.before.validate().is_ok() {
                assert_eq!(bc.validate(), Ok(()), "{name}: the record still loads");
            }
        }
    }

    #[test]
    fn check_runs_only_on_slots_that_may_boot() {
        let run = |mut c: BootControl, floor: u64| {
            let mut checked = Vec::new();
            let _ = c.boot(floor, |s, _| {
                checked.push(s);
                Ok(())
            });
            checked
        };
        // A trial that boots: the committed slot is not checked.
        assert_eq!(run(bc(trial(2, 3), good(1), Some(B), Some(B)), 0), [A]);
        // Below the floor: no check at all.
        assert_eq!(
            run(bc(trial(2, 3), good(1), Some(B), Some(B)), 5),
            Vec::<SlotId>::new()
        );
        // Out of boots: no check for the trial, then the committed slot.
        assert_eq!(run(bc(trial(2, 0), good(1), Some(B), Some(A)), 0), [B]);
        // Bad, Staged, Writing, Empty: never checked.
        assert_eq!(
            run(bc(bad(1), staged(1), None, None), 0),
            Vec::<SlotId>::new()
        );
        assert_eq!(run(bc(Writing, Empty, None, None), 0), Vec::<SlotId>::new());
    }

    #[test]
    fn long_reasons_are_clipped_on_a_char_boundary() {
        let mut c = bc(trial(2, 3), good(1), Some(B), Some(B));
        let d = c.boot(0, |s, _| {
            if s == A {
                Err("é".repeat(10_000))
            } else {
                Ok(())
            }
        });
        assert_eq!(d.slot, Some(B));
        let SlotState::Bad { reason, .. } = &c.a else {
            panic!("{:?}", c.a)
        };
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(reason.starts_with("image check failed: éé") && reason.ends_with("..."));
        assert_eq!(clip("short".into()), "short");
    }

    #[test]
    fn events_serialize_for_the_audit_log() {
        let e = BootEvent::Fallback {
            from: A,
            to: Some(B),
            reason: EXHAUSTED.into(),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "fallback", "from": "a", "to": "b", "reason": EXHAUSTED})
        );
        let e = BootEvent::TrialBoot {
            slot: B,
            boots_left: 2,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "trial-boot", "slot": "b", "boots_left": 2})
        );
        let mut c = bc(good(1), Empty, Some(A), Some(A));
        let d = c.boot(0, |_, _| Err(DIGEST.into()));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["reason"], "unbootable");
        assert_eq!(json["events"][0]["event"], "refused");
        assert_eq!(json["events"][1]["event"], "unbootable");
        assert_eq!(img(1).svn, 1);
        assert_eq!(BootReason::Factory.name(), "factory");
    }
}
