//! `[updates]`: signed firmware updates (docs/updates.md).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

/// `[updates] component` when absent.
pub const DEFAULT_COMPONENT: &str = "firmware";
/// `[updates] counter_nv_index` when absent: the TPM NV counter (its base record is the next
/// index). Both lie in the owner range of TCG's NV index registry.
pub const DEFAULT_COUNTER_NV_INDEX: u32 = 0x0150_0100;
pub const DEFAULT_MAX_TRIAL_BOOTS: u32 = 3;
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Upper bound for `max_image_bytes` (a slot is a file on the appliance's own disk).
pub const MAX_IMAGE_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Steps of an update a crash can be injected at (tests only; refused in production).
pub const CRASH_STEPS: [&str; 6] = ["download", "verify", "write", "switch", "save", "mark-good"];

/// Whether the system clock may be trusted for expiry checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The system clock is trusted (synchronised by the DPU's own time source).
    System,
    /// No trusted clock: only the stored time floor is known (docs/updates.md).
    Untrusted,
}

/// `[updates]`: which component this appliance updates, the root it trusts first, and the TPM
/// counter that keeps its security floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatesConfig {
    /// The root metadata the appliance trusts before any update (shipped with it).
    pub root: PathBuf,
    /// This appliance's hardware id; targets for other hardware are refused.
    pub hardware_id: String,
    pub component: String,
    /// TPM NV index of the SVN counter; `counter_nv_index + 1` holds its base.
    pub counter_nv_index: u32,
    /// Boots a staged release may take to be committed before the appliance falls back.
    pub max_trial_boots: u32,
    pub max_image_bytes: u64,
    pub clock: Clock,
    /// Test aid: kill the process (SIGKILL) at this step. Refused when `production = true`.
    pub insecure_crash_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdates {
    root: Spanned<PathBuf>,
    hardware_id: Spanned<String>,
    #[serde(default)]
    component: Option<Spanned<String>>,
    #[serde(default)]
    counter_nv_index: Option<Spanned<u32>>,
    #[serde(default)]
    max_trial_boots: Option<Spanned<u32>>,
    #[serde(default)]
    max_image_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    clock: Option<Spanned<String>>,
    #[serde(default)]
    insecure_crash_at: Option<Spanned<String>>,
}

fn label_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

impl Validator<'_> {
    pub(super) fn updates(
        &self,
        raw: RawUpdates,
        production: bool,
    ) -> Result<UpdatesConfig, ConfigError> {
        let label = |key: &str, v: Spanned<String>| -> Result<String, ConfigError> {
            let span = v.span();
            let v = v.into_inner();
            if !label_ok(&v) {
                return Err(self.invalid(
                    key,
                    Some(span),
                    "must be 1 to 128 printable characters".to_owned(),
                ));
            }
            Ok(v)
        };
        let hardware_id = label("updates.hardware_id", raw.hardware_id)?;
        let component = match raw.component {
            Some(c) => label("updates.component", c)?,
            None => DEFAULT_COMPONENT.to_owned(),
        };
        let counter_nv_index = match raw.counter_nv_index {
            None => DEFAULT_COUNTER_NV_INDEX,
            Some(i) => {
                let v = *i.get_ref();
                // NV indices are 0x01xxxxxx; the base record takes the next one.
                if !(0x0100_0000..0x01FF_FFFF).contains(&v) {
                    return Err(self.invalid(
                        "updates.counter_nv_index",
                        Some(i.span()),
                        format!("{v:#010x} is not an NV index in 0x01000000..0x01fffffe"),
                    ));
                }
                v
            }
        };
        let max_trial_boots = match raw.max_trial_boots {
            None => DEFAULT_MAX_TRIAL_BOOTS,
            Some(n) if (1..=16).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(self.invalid(
                    "updates.max_trial_boots",
                    Some(n.span()),
                    "must be 1..=16".to_owned(),
                ))
            }
        };
        let max_image_bytes = match raw.max_image_bytes {
            None => DEFAULT_MAX_IMAGE_BYTES,
            Some(n) if (1..=MAX_IMAGE_BYTES).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(self.invalid(
                    "updates.max_image_bytes",
                    Some(n.span()),
                    format!("must be 1..={MAX_IMAGE_BYTES}"),
                ))
            }
        };
        let clock = match raw.clock {
            None => Clock::System,
            Some(c) => match c.get_ref().as_str() {
                "system" => Clock::System,
                "untrusted" => Clock::Untrusted,
                other => {
                    return Err(self.invalid(
                        "updates.clock",
                        Some(c.span()),
                        format!("{other:?} is not \"system\" or \"untrusted\""),
                    ))
                }
            },
        };
        let insecure_crash_at = match raw.insecure_crash_at {
            None => None,
            Some(s) if production => {
                return Err(self.invalid(
                    "updates.insecure_crash_at",
                    Some(s.span()),
                    "a crash injection point is a test aid, refused with `production = true`"
                        .to_owned(),
                ))
            }
            Some(s) => {
                if !CRASH_STEPS.contains(&s.get_ref().as_str()) {
                    return Err(self.invalid(
                        "updates.insecure_crash_at",
                        Some(s.span()),
                        format!("{:?} is not one of {CRASH_STEPS:?}", s.get_ref()),
                    ));
                }
                Some(s.into_inner())
            }
        };
        Ok(UpdatesConfig {
            root: self.path("updates.root", raw.root)?,
            hardware_id,
            component,
            counter_nv_index,
            max_trial_boots,
            max_image_bytes,
            clock,
            insecure_crash_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("{}{extra}", crate::config::tests::MINIMAL);
        Config::from_str(&text, Path::new("/etc/warden/wardend.toml"))
    }

    fn err(extra: &str) -> String {
        parse(extra).unwrap_err().to_string()
    }

    const BASE: &str = "[updates]\nroot = \"root.json\"\nhardware_id = \"bf3\"\n";

    #[test]
    fn defaults_and_paths() {
        let c = parse(BASE).unwrap();
        let u = c.updates.unwrap();
        assert_eq!(u.root, Path::new("/etc/warden/root.json"));
        assert_eq!(u.component, DEFAULT_COMPONENT);
        assert_eq!(u.counter_nv_index, DEFAULT_COUNTER_NV_INDEX);
        assert_eq!(u.max_trial_boots, DEFAULT_MAX_TRIAL_BOOTS);
        assert_eq!(u.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
        assert_eq!(u.clock, Clock::System);
        assert_eq!(u.insecure_crash_at, None);
        assert!(parse("").unwrap().updates.is_none());
    }

    #[test]
    fn every_setting_is_checked() {
        for (extra, needle) in [
            (
                "counter_nv_index = 0x81000000\n",
                "updates.counter_nv_index",
            ),
            (
                "counter_nv_index = 0x01ffffff\n",
                "updates.counter_nv_index",
            ),
            ("max_trial_boots = 0\n", "updates.max_trial_boots"),
            ("max_trial_boots = 17\n", "updates.max_trial_boots"),
            ("max_image_bytes = 0\n", "updates.max_image_bytes"),
            ("clock = \"ntp\"\n", "updates.clock"),
            ("component = \"\"\n", "updates.component"),
            (
                "insecure_crash_at = \"reboot\"\n",
                "updates.insecure_crash_at",
            ),
            ("surprise = 1\n", "surprise"),
        ] {
            let e = err(&format!("{BASE}{extra}"));
            assert!(e.contains(needle), "{extra}: {e}");
        }
        assert!(err("[updates]\nroot = \"r\"\n").contains("hardware_id"));
        assert!(err("[updates]\nhardware_id = \"h\"\n").contains("root"));
        let e = err("[updates]\nroot = \"r\"\nhardware_id = \"a\\u0007b\"\n");
        assert!(e.contains("updates.hardware_id"), "{e}");
    }

    #[test]
    fn crash_injection_is_refused_in_production() {
        let c = parse(&format!("{BASE}insecure_crash_at = \"write\"\n")).unwrap();
        assert_eq!(
            c.updates.unwrap().insecure_crash_at.as_deref(),
            Some("write")
        );
        let text = format!(
            "production = true\n{}{BASE}insecure_crash_at = \"write\"\n",
            crate::config::tests::MINIMAL
        );
        let e = Config::from_str(&text, Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("production"), "{e}");
        let u = parse(&format!(
            "{BASE}clock = \"untrusted\"\nmax_trial_boots = 16\n"
        ))
        .unwrap()
        .updates
        .unwrap();
        assert_eq!((u.clock, u.max_trial_boots), (Clock::Untrusted, 16));
    }
}
