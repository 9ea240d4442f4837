//! Errors of the nftables enforcer: a plan that fails validation (before anything is sent), a
//! batch the kernel rejects (nothing changed), or trouble talking to netlink.

use std::io;

/// Why a plan was not applied, or counters could not be read.
///
/// Validation errors name the plan field (`flows[3]`, `wire.interface`); kernel errors name
/// the object whose message failed and the errno. After any error from [`super::apply`] the
/// previously installed table (if any) is still in force: validation errors happen before
/// anything is sent, and the kernel applies a batch all or nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftError {
    /// `wire.interface` is not a valid Linux interface name.
    #[error("wire.interface {name:?}: {reason}")]
    InterfaceName { name: String, reason: &'static str },

    /// A wire port is 0.
    #[error("{field} is 0; ports are 1-65535")]
    ZeroPort {
        /// `wire.esp_udp_port` or `wire.tcp_ports[i]`.
        field: String,
    },

    /// A flow rule's name cannot be a chain name.
    #[error("flows[{index}].name {name:?}: {reason}")]
    RuleName {
        index: usize,
        name: String,
        reason: &'static str,
    },

    /// Two flow rules share a name (their chains and counters would merge).
    #[error("flows[{first}] and flows[{second}] are both named {name:?}")]
    DuplicateRuleName {
        name: String,
        first: usize,
        second: usize,
    },

    /// A flow rule has no source or no destination CIDR.
    #[error("flows[{index}] ({rule}): {side} is empty")]
    EmptySide {
        index: usize,
        rule: String,
        /// `src` or `dst`.
        side: &'static str,
    },

    /// A flow rule has no source and destination of the same address family, so it could
    /// never match a packet.
    #[error(
        "flows[{index}] ({rule}): src is {src} and dst is {dst}; no source and destination \
         share an address family"
    )]
    FamilyMismatch {
        index: usize,
        rule: String,
        src: &'static str,
        dst: &'static str,
    },

    /// A TCP or UDP rule without ports.
    #[error("flows[{index}] ({rule}): {proto} needs at least one port range")]
    MissingPorts {
        index: usize,
        rule: String,
        proto: &'static str,
    },

    /// Ports on a rule whose protocol has none (ICMP, any).
    #[error("flows[{index}] ({rule}): {proto} has no ports, but ports[{port_index}] is given")]
    UnexpectedPorts {
        index: usize,
        rule: String,
        proto: &'static str,
        port_index: usize,
    },

    /// A port range whose start is above its end.
    #[error("flows[{index}] ({rule}): ports[{port_index}] {start}-{end} is empty")]
    EmptyPortRange {
        index: usize,
        rule: String,
        port_index: usize,
        start: u16,
        end: u16,
    },

    /// A limit rule that cannot be installed.
    #[error("limits[{index}] ({name}): {reason}")]
    LimitRule {
        index: usize,
        name: String,
        reason: String,
    },

    /// The plan would not fit the limits the enforcer sets itself.
    #[error("the plan has {count} {what}; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        count: usize,
        limit: usize,
    },

    /// Opening, configuring or using the netlink socket failed (nothing was changed unless
    /// the batch was sent: see [`NftError::Unconfirmed`]).
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The kernel rejected a message of the batch, so it applied none of it.
    #[error(
        "the kernel rejected {object}: {}{}{}; nothing was changed",
        errno_text(*errno),
        kernel_message.as_deref().map(|m| format!(", kernel says: {m}")).unwrap_or_default(),
        if *more_errors > 0 { format!(" (and {more_errors} more failing messages)") } else { String::new() }
    )]
    Rejected {
        /// The object of the first failing message, e.g. `elements of rule "r3" in map
        /// flows_ports_v4` or `chain "flows"`.
        object: String,
        /// The positive errno (EEXIST = 17 for overlapping or duplicate elements).
        errno: i32,
        /// The kernel's extended-ack message, if it sent one.
        kernel_message: Option<String>,
        more_errors: usize,
    },

    /// The batch was sent but its outcome could not be read back; check with
    /// `nft list table inet warden`.
    #[error("the batch was sent but its outcome is unknown: {detail}")]
    Unconfirmed { detail: String },

    /// A reply from the kernel that does not parse.
    #[error("malformed netlink reply: {detail}")]
    Malformed { detail: String },

    /// [`super::counters`]: Warden's table is not installed.
    #[error("table inet warden is not installed")]
    NotInstalled,
}

impl NftError {
    /// The kernel's errno for [`NftError::Rejected`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `File exists (EEXIST, errno 17)`.
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text
        .split(" (os error")
        .next()
        .unwrap_or(text.as_str())
        .to_owned();
    let name = match errno {
        libc_errno::EPERM => "EPERM, ",
        libc_errno::ENOENT => "ENOENT, ",
        libc_errno::E2BIG => "E2BIG, ",
        libc_errno::ENOMEM => "ENOMEM, ",
        libc_errno::EBUSY => "EBUSY, ",
        libc_errno::EEXIST => "EEXIST, ",
        libc_errno::EINVAL => "EINVAL, ",
        libc_errno::ENFILE => "ENFILE, ",
        libc_errno::ENOSPC => "ENOSPC, ",
        libc_errno::ERANGE => "ERANGE, ",
        libc_errno::ENOTEMPTY => "ENOTEMPTY, ",
        libc_errno::ELOOP => "ELOOP, ",
        libc_errno::EMLINK => "EMLINK, ",
        libc_errno::EMSGSIZE => "EMSGSIZE, ",
        libc_errno::EOPNOTSUPP => "EOPNOTSUPP, ",
        libc_errno::ENOBUFS => "ENOBUFS, ",
        _ => "",
    };
    format!("{text} ({name}errno {errno})")
}

/// Linux errno values (asm-generic), so the pure part of the crate needs no libc.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENFILE: i32 = 23;
    pub const ENOSPC: i32 = 28;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const EMSGSIZE: i32 = 90;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENOBUFS: i32 = 105;
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    #[test]
    fn rejection_names_object_and_errno() {
        let e = NftError::Rejected {
            object: "elements of rule \"r5\" in map flows_ports_v4_b (1 elements)".into(),
            errno: 17,
            kernel_message: None,
            more_errors: 0,
        };
        assert_eq!(
            e.to_string(),
            "the kernel rejected elements of rule \"r5\" in map flows_ports_v4_b (1 elements): \
             File exists (EEXIST, errno 17); nothing was changed"
        );
        assert_eq!(e.errno(), Some(17));
    }
}
