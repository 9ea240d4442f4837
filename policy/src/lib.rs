//! warden-policy: Warden's microsegmentation policy.
//!
//! ```text
//!  policy.toml ──parse + validate──► Policy ──classifier()──► Classifier   (data path: O(log n))
//!   (untrusted text,                  (names resolved,  ──nft_plan()───► NftPlan      (enforcer: nftables)
//!    ≤ MAX_POLICY_BYTES)               CIDRs disjoint,
//!                                      version + digest)
//! ```
//!
//! Pure: text in, validated types out; no I/O. Validation reports every problem it finds, each
//! with file, line, column, what is wrong and a hint (docs/policy.md has the catalogue).
//! Default deny: only what a rule names is allowed, and a rule between two tenants needs a
//! grant from both.
#![forbid(unsafe_code)]

mod classify;
mod diag;
pub mod limits;
mod model;
mod parse;
pub mod plan;
pub mod synthetic;

pub use classify::{Allow, Classifier, DenyReason, Verdict};
pub use diag::{Diagnostic, PolicyError};
pub use limits::{Limit, LimitScope, OverLimit, Rate};
pub use model::{Node, Policy, PortRange, Rule, Segment, Tenant, WireSettings};
pub use parse::{parse, MAX_POLICY_BYTES};
pub use plan::Proto;
