//! Errors, each with a stable reason name for the audit log and the operator.

use thiserror::Error;

use crate::x509::ChainError;

/// A metadata file that cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("{what} is too large: {len} bytes or more, the limit is {limit}")]
    TooLarge { what: String, len: u64, limit: u64 },
    #[error("{what} is not valid: {reason}")]
    Malformed { what: String, reason: String },
    #[error("field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("unsafe target name {name:?}: {reason}")]
    UnsafeTargetName { name: String, reason: &'static str },
}

/// Why an update was refused. [`UpdateError::reason`] names it in one word.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UpdateError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{file} could not be fetched: {reason}")]
    Fetch { file: String, reason: String },
    #[error("{role} metadata: {valid} valid signature(s) from distinct keys, {threshold} required{}", rejections_suffix(.rejected))]
    Threshold {
        role: &'static str,
        valid: usize,
        threshold: u32,
        /// Signatures that were present but did not count, with why.
        rejected: Vec<Rejection>,
    },
    #[error("{role} metadata: key {keyid} signed more than once")]
    DuplicateSignature { role: &'static str, keyid: String },
    #[error("{role} metadata version {version} expired at {expires}")]
    Expired {
        role: &'static str,
        version: u64,
        expires: String,
    },
    #[error("{role} metadata version {version} is older than the trusted version {trusted}")]
    Rollback {
        role: &'static str,
        version: u64,
        trusted: u64,
    },
    #[error("root rotation: expected version {expected}, the file says {found}")]
    RootVersion { expected: u64, found: u64 },
    #[error("{role} metadata does not match what {listed_by} lists: {reason}")]
    MixAndMatch {
        role: &'static str,
        listed_by: &'static str,
        reason: String,
    },
    #[error("no target for component {component:?} on hardware {hardware_id:?}{}", if .other_hardware.is_empty() { String::new() } else { format!(" (targets exist for hardware {:?})", .other_hardware) })]
    WrongHardware {
        component: String,
        hardware_id: String,
        other_hardware: Vec<String>,
    },
    #[error("no target named {name:?} for component {component:?}")]
    NoTarget { name: String, component: String },
    #[error("target {target} has security version {svn}, below the floor {floor}")]
    BelowFloor {
        target: String,
        svn: u64,
        floor: u64,
    },
    #[error("image {target}: {reason}")]
    TamperedImage { target: String, reason: String },
}

/// A signature that did not count towards a threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub keyid: String,
    pub why: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The key is not one of the role's keys.
    NotARoleKey,
    /// The signature does not verify.
    BadSignature,
    /// Same public key as a signature already counted (under another key id).
    SameKeyTwice,
    /// The certificate chain was refused.
    Certificate(ChainError),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.why {
            RejectReason::NotARoleKey => write!(f, "{}: not a key of this role", self.keyid),
            RejectReason::BadSignature => write!(f, "{}: signature does not verify", self.keyid),
            RejectReason::SameKeyTwice => {
                write!(f, "{}: same public key as another signature", self.keyid)
            }
            RejectReason::Certificate(e) => write!(f, "{}: {e}", self.keyid),
        }
    }
}

fn rejections_suffix(rejected: &[Rejection]) -> String {
    if rejected.is_empty() {
        return String::new();
    }
    let list: Vec<String> = rejected.iter().map(|r| r.to_string()).collect();
    format!(" (not counted: {})", list.join("; "))
}

impl UpdateError {
    /// One stable word for the audit log, the API and the tests.
    pub fn reason(&self) -> &'static str {
        match self {
            UpdateError::Metadata(MetadataError::TooLarge { .. }) => "too-large",
            UpdateError::Metadata(MetadataError::UnsafeTargetName { .. }) => "unsafe-target-name",
            UpdateError::Metadata(_) => "malformed",
            UpdateError::Fetch { .. } => "fetch",
            UpdateError::Threshold { rejected, .. } => {
                // A certificate problem is the more useful name when it is why the count fell short.
                rejected
                    .iter()
                    .find_map(|r| match &r.why {
                        RejectReason::Certificate(e) => Some(e.reason()),
                        _ => None,
                    })
                    .unwrap_or("threshold")
            }
            UpdateError::DuplicateSignature { .. } => "duplicate-signature",
            UpdateError::Expired { .. } => "expired",
            UpdateError::Rollback { .. } => "rollback",
            UpdateError::RootVersion { .. } => "root-rotation",
            UpdateError::MixAndMatch { .. } => "mix-and-match",
            UpdateError::WrongHardware { .. } => "wrong-hardware",
            UpdateError::NoTarget { .. } => "no-target",
            UpdateError::BelowFloor { .. } => "below-floor",
            UpdateError::TamperedImage { .. } => "tampered-image",
        }
    }
}
