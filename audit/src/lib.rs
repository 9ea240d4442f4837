//! warden-audit: the tamper-evident audit log.
//!
//! - [`merkle`]: RFC 9162 Merkle tree hashing, inclusion and consistency proofs (pure);
//! - [`checkpoint`]: C2SP tlog-checkpoints in signed notes, Ed25519 (pure);
//! - [`store`]: durable storage in checksummed segment files with group commit (files).
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod event;
pub mod merkle;
pub mod ocsf;
pub mod store;
pub mod syslog;

/// A SHA-256 hash: leaf, node or root.
pub type Hash = [u8; 32];
