//! warden-testkit: a fresh software TPM per test, free ports, temp dirs, always torn down.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! if warden_testkit::skip_without_swtpm("my_test") {
//!     return Ok(());
//! }
//! let tpm = warden_testkit::Swtpm::start()?; // manufactured with EK certificates
//! let tcti = tpm.tcti(); // "swtpm:host=127.0.0.1,port=N" for tss-esapi / tpm2-tools
//! # Ok(()) }
//! ```
//!
//! Each [`Swtpm`] owns a temporary directory (TPM state, a private `swtpm_localca` CA and its
//! configuration, logs) and two loopback ports, so any number of tests can run in parallel.
//!
//! **Logging.** tpm2-tss prints its own errors to stderr (e.g. an expected `TPM_RC_HANDLE` in a
//! negative test). [`Swtpm::start`] sets `TSS2_LOG=esys+none,tcti+none` ([`QUIET_TSS_LOG`]) for
//! the test process unless `TSS2_LOG` is already set (`esys+none` alone still lets the TCTI
//! loader print e.g. "Connection refused"); run with `TSS2_LOG=all+error` to see everything. It is set once, before
//! the first instance exists, so no tpm2-tss context can be reading the environment meanwhile.
//!
//! **Skipping.** Tests that need swtpm call [`skip_without_swtpm`]: it skips (with a message) only
//! when the tools are missing, the process is not root and `CI` is unset. In CI, or as root, a
//! missing tool makes the test fail instead (STYLE.md: such tests run for real in CI).

mod netns;
mod ports;
mod rsyslog;
mod swtpm;

pub use netns::{command_in, skip_without_netns, veth, Netns};
pub use ports::free_port_pair;
pub use rsyslog::{rsyslog_available, Rsyslog, RsyslogTls};
pub use swtpm::{Swtpm, SwtpmOptions, QUIET_TSS_LOG};

use std::path::Path;

/// Programs [`Swtpm`] runs. `swtpm_localca` (and the `certtool` it calls) make the EK
/// certificates; all three come with Debian's `swtpm` and `swtpm-tools`.
const TOOLS: [&str; 3] = ["swtpm", "swtpm_setup", "swtpm_localca"];

/// Whether `swtpm`, `swtpm_setup` and `swtpm_localca` are on `PATH`.
pub fn tools_available() -> bool {
    TOOLS.iter().all(|tool| find_on_path(tool).is_some())
}

/// Full path of `program` on `PATH`, if present.
pub(crate) fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether the process runs with real user id 0 (read from `/proc/self/status`).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// The skip policy for swtpm tests: `true` (after printing why) only when the swtpm tools are
/// missing, the process is not root and the `CI` environment variable is unset. Otherwise the
/// test must run, and fails if the tools are missing.
pub fn skip_without_swtpm(test: &str) -> bool {
    if tools_available() || std::env::var_os("CI").is_some() || running_as_root() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs {} on PATH (Debian: apt install swtpm swtpm-tools); \
         never skipped when CI is set or as root",
        TOOLS.join(", ")
    );
    true
}
