//! Loopback TCP ports for parallel test instances.
//!
//! swtpm's TCP transport needs two *consecutive* ports: the TPM command port `N` and the control
//! port `N + 1` (tpm2-tss's swtpm TCTI derives the control port that way). Ports come from a
//! per-process counter inside a range below Linux's ephemeral range (32768..), so the kernel never
//! hands them out for outgoing connections, and every candidate is bind-probed. Another process
//! can still take a port between the probe and swtpm's own bind: [`crate::Swtpm`] detects that
//! and retries with a fresh pair.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// First port of the range we hand out (inclusive).
const RANGE_START: u32 = 20_000;
/// End of the range (exclusive); stays below the default ephemeral range.
const RANGE_END: u32 = 32_000;
/// Candidates tried before giving up.
const MAX_PROBES: u32 = 2_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Start each process at a different place in the range so parallel test binaries rarely meet.
fn next_candidate() -> u16 {
    let span = (RANGE_END - RANGE_START) / 2;
    let seed = std::process::id().wrapping_mul(7919) % span;
    let step = NEXT.fetch_add(1, Ordering::Relaxed);
    let pair = (seed + step) % span;
    // Even ports only: pairs never overlap within one process.
    u16::try_from(RANGE_START + 2 * pair).unwrap_or(20_000)
}

/// Bind 127.0.0.1:`port`.
pub(crate) fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A port `N` that was free together with `N + 1` at probe time, and the listener that still
/// holds `N + 1` (handed to swtpm as its control socket, so that port can't be lost).
pub(crate) fn reserve_pair() -> io::Result<(u16, TcpListener)> {
    for _ in 0..MAX_PROBES {
        let port = next_candidate();
        let Some(ctrl_port) = port.checked_add(1) else {
            continue;
        };
        let Ok(server_probe) = bind(port) else {
            continue;
        };
        let Ok(ctrl) = bind(ctrl_port) else {
            continue;
        };
        drop(server_probe);
        return Ok((port, ctrl));
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no two consecutive free ports on 127.0.0.1 in {RANGE_START}..{RANGE_END}"),
    ))
}

/// Two consecutive free TCP ports on 127.0.0.1: returns `N`, with `N + 1` free too.
///
/// Safe to call from many tests at once: each call in a process gets a different pair, and each
/// pair is bind-probed. The ports are released before returning, so whoever binds them must be
/// ready to retry if another process won the race ([`crate::Swtpm`] does).
///
/// # Panics
/// If the whole range is exhausted (thousands of ports in use) — a test-environment failure.
#[allow(clippy::panic)]
pub fn free_port_pair() -> u16 {
    match reserve_pair() {
        Ok((port, _ctrl)) => port,
        Err(e) => panic!("free_port_pair: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_distinct_and_bindable() {
        let a = free_port_pair();
        let b = free_port_pair();
        assert_ne!(a, b);
        assert!(a.abs_diff(b) >= 2);
        let _x = bind(a).unwrap();
        let _y = bind(a + 1).unwrap();
    }
}
