//! warden-enforcer: puts a compiled policy into force on the host.
//!
//! [`nft`] installs the policy's [`warden_policy::plan::NftPlan`] as Warden's own nftables
//! table, `inet warden`, replacing the previous one atomically, and reads its counters.
#![deny(unsafe_code)]

pub mod esp;
#[cfg(all(target_os = "linux", feature = "io"))]
pub mod io;
pub mod nft;
pub mod offload;
pub mod tunnel;
