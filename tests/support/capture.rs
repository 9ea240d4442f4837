//! A packet capture on a network namespace's wire interface (tcpdump), for the tests that
//! check what crosses the wire.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use warden_testkit::Netns;

pub fn tcpdump_or_skip(test: &str) -> bool {
    if Path::new("/usr/bin/tcpdump").exists() || Path::new("/usr/sbin/tcpdump").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: tcpdump is missing (scripts/deps.sh installs it)"
    );
    eprintln!("{test}: skipped, tcpdump is missing");
    false
}

/// tcpdump on a namespace's interface (the wire by default), into a pcap file.
pub struct Capture {
    child: std::process::Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    pub fn start(ns: &Netns) -> Capture {
        Capture::start_on(ns, "wire", &[])
    }

    /// tcpdump on `interface` of `ns`, with a capture `filter` (tcpdump expression words).
    pub fn start_on(ns: &Netns, interface: &str, filter: &[&str]) -> Capture {
        let file = tempfile::NamedTempFile::new().unwrap();
        let child = warden_testkit::command_in(ns.name())
            .args([
                "tcpdump", "-i", interface, "-U", "-s", "0", "-B", "65536", "-w",
            ])
            .arg(file.path())
            .args(filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump (scripts/deps.sh installs it)");
        // tcpdump needs a moment to open the interface.
        std::thread::sleep(Duration::from_millis(700));
        Capture { child, file }
    }

    pub fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        std::fs::read(self.file.path()).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Only if stop() was not reached (a failed assertion): do not leave tcpdump behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
