//! Network namespaces for tests: made with `ip netns add`, deleted on drop (also when the test
//! panics), with code run inside them.
//!
//! ```text
//!   Netns::new ── ip netns add wd-<pid>-<n>, lo up ──► Netns ── drop ──► ip netns delete
//!   ns.run(f)  ── new thread: setns(/run/netns/<name>, CLONE_NEWNET), f() ──► f's result
//!                 (sockets f opens, std or netlink, belong to the namespace for their life)
//!   veth(&a, "a0", &["198.51.100.2/24"], &b, "b0", &["198.51.100.1/24"]) ── a pair, addressed, up
//! ```
//!
//! Names carry the process id, so parallel test binaries never collide, and namespaces left
//! behind by a killed test process (whose pid is gone) are deleted by the next [`Netns::new`].
//! Tests use documentation addresses only (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32).

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

static NEXT: AtomicU32 = AtomicU32::new(0);
static REAP: Once = Once::new();
const PREFIX: &str = "wd-";
/// How long a new veth end may take to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// A command that runs `program` (the caller adds it with `.arg`) inside the named network
/// namespace: `nsenter --net=/run/netns/<name>`. Unlike `ip netns exec` and `ip -n`, it
/// switches only the network namespace and touches no mounts, so it also works where `/`
/// is not a mount point (a chroot). The program is exec'd: same process, same pid.
pub fn command_in(netns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"));
    c
}

/// Whether netns tests must be skipped: only when the process is not root and `CI` is unset
/// (prints why). As root, or in CI, they run, and fail if namespaces cannot be made.
pub fn skip_without_netns(test: &str) -> bool {
    if crate::running_as_root() || std::env::var_os("CI").is_some() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs root (network namespaces, nftables); never skipped when CI is \
         set or as root"
    );
    true
}

fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    check("ip", args, out)
}

fn check(program: &str, args: &[&str], out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes `wd-<pid>-<n>` namespaces whose process no longer exists.
fn reap_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl Netns {
    /// A fresh namespace `wd-<pid>-<n>` with `lo` up and IPv6 duplicate address detection off.
    pub fn new() -> io::Result<Netns> {
        REAP.call_once(reap_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on interfaces made later (link-local addresses
        // included): IPv6 works at once instead of after about a second.
        ns.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside this namespace and returns its result; a panic in `f`
    /// continues in the caller. Failing to enter the namespace panics (it fails the test).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            let joined = s
                .spawn(move || {
                    enter(&path);
                    f()
                })
                .join();
            match joined {
                Ok(value) => value,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Like [`Netns::run`] but in the background, for servers: the returned handle joins it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// `<args...>` run inside the namespace (see [`command_in`]), with its output whatever
    /// the exit status.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        command_in(&self.name).args(args).output()
    }

    /// [`Netns::exec`], failing unless the command succeeds; returns its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> io::Result<String> {
        let out = self.exec(args)?;
        check(&format!("in netns {}:", self.name), args, out)
    }

    /// `ip <args...>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["ip"];
        all.extend_from_slice(args);
        self.exec_ok(&all)
    }

    /// Adds `cidr` (IPv4 or IPv6; IPv6 without duplicate address detection) to `dev`.
    pub fn add_address(&self, dev: &str, cidr: &str) -> io::Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// `ip route add <dest> via <via>` (IPv4 or IPv6; `dest` may be `default`).
    pub fn add_route(&self, dest: &str, via: &str) -> io::Result<()> {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", dest, "via", via])
            .map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding.
    pub fn enable_forwarding(&self) -> io::Result<()> {
        self.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ])
        .map(drop)
    }
}

#[allow(clippy::panic)] // test helper: not entering the namespace must fail the test loudly
fn enter(path: &Path) {
    let file = File::open(path)
        .unwrap_or_else(|e| panic!("open network namespace {}: {e}", path.display()));
    if let Err(e) = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET) {
        panic!("setns({}): {e}", path.display());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!(
                "warden-testkit: deleting network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Connects `a` and `b` with a veth pair (`a_if` in `a`, `b_if` in `b`; names of at most 15
/// bytes), adds the addresses (CIDR notation) and brings both ends up.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> io::Result<()> {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    for (ns, dev, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for cidr in addrs {
            ns.add_address(dev, cidr)?;
        }
        ns.ip(&["link", "set", dev, "up"])?;
    }
    wait_ready(a, a_if)?;
    wait_ready(b, b_if)
}

/// Waits until `dev` has carrier as far as IPv6 is concerned: the kernel handles the carrier
/// change of a new veth asynchronously (linkwatch, up to a second later), and until then
/// drops neighbour solicitations to it (no multicast route yet). The link-local address
/// appears at the same moment.
fn wait_ready(ns: &Netns, dev: &str) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let out = ns.ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])?;
        if out.contains("fe80::") && !out.contains("tentative") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{dev} in {} not ready after {READY_TIMEOUT:?}",
                ns.name
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
