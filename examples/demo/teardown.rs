//! Cleaning up: on a normal end (drop the cluster), on SIGINT/SIGTERM/SIGHUP (a watcher
//! thread stops every process in the demo's namespaces, deletes the namespaces and the demo
//! directory, and exits 130), and `--keep` (stable namespace names, a teardown script).
//!
//! ```text
//!  install() ── watcher thread: tokio signal handlers for SIGINT, SIGTERM, SIGHUP
//!  signal ──► INTERRUPTED ── lock ──► SIGTERM every pid in wd-<our pid>-* namespaces
//!             (5 s, then SIGKILL) ──► ip netns delete ──► rm -rf the demo dir ──► exit 130
//!  main, at the end ── lock (waits out a running signal cleanup) ──► drop the cluster
//! ```
//!
//! Drop alone is not enough: a signal's default action ends the process without unwinding,
//! and would leave namespaces, wardend, swtpm and tcpdump behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set once a signal arrived; the story stops caring about failures from then on.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Held by whoever tears the cluster down (the watcher or the main thread), never both.
static TEARDOWN: Mutex<()> = Mutex::new(());

/// The stable names `--keep` gives the two namespaces.
pub const KEPT_NAMES: [&str; 2] = ["warden-demo-a", "warden-demo-b"];

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Take the teardown lock (waits while a signal cleanup runs; that one ends the process).
pub fn lock() -> MutexGuard<'static, ()> {
    TEARDOWN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Catch SIGINT, SIGTERM and SIGHUP (tokio's handlers: no `unsafe` here) in a watcher
/// thread that cleans up and exits 130; returns once the handlers are in place.
///
/// Handlers, unlike a blocked signal mask or an inherited SIG_IGN, do not pass to the
/// children: on exec a caught signal goes back to its default action, so wardend, swtpm and
/// tcpdump (which `support::capture` stops with SIGINT) still stop when told to, however the
/// demo was started (a shell without job control starts background jobs with SIGINT ignored).
pub fn install(root: PathBuf) -> std::io::Result<()> {
    let (ready, registered) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let signal = rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let handlers = (|| {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::interrupt())?,
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::hangup())?,
                    ))
                })();
                let (mut int, mut term, mut hup) = match handlers {
                    Ok(h) => {
                        let _ = ready.send(Ok(()));
                        h
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return None;
                    }
                };
                Some(tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                })
            });
            let Some(signal) = signal else {
                return;
            };
            INTERRUPTED.store(true, Ordering::SeqCst);
            let _held = lock();
            eprintln!("\n\n{signal}: stopping the cluster and cleaning up…");
            let (processes, namespaces) = stop_namespaces(&our_namespaces());
            let removed = std::fs::remove_dir_all(&root).is_ok();
            eprintln!(
                "stopped {processes} processes, deleted {namespaces} network namespaces{}",
                if removed {
                    format!(", removed {}", root.display())
                } else {
                    String::new()
                }
            );
            std::process::exit(130);
        })?;
    registered
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended")))
}

/// A panic hook: messages go to `record` (the step that failed reports them); after a signal
/// the panicking thread just waits for the watcher to end the process.
pub fn panic_hook(record: fn(String)) {
    std::panic::set_hook(Box::new(move |info| {
        if interrupted() {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        record(format!("{msg}{at}"));
    }));
}

fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The namespaces warden-testkit made for this process: `wd-<pid>-<n>`.
fn our_namespaces() -> Vec<String> {
    let prefix = format!("wd-{}-", std::process::id());
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The processes inside network namespace `name` (never this one).
pub fn pids_in(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p != me)
        .collect()
}

/// Whether `pid` still runs (a zombie child of ours does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGTERM every process in `names`, SIGKILL what is left after 5 s, delete the namespaces.
/// Returns (processes stopped, namespaces deleted).
fn stop_namespaces(names: &[String]) -> (usize, usize) {
    let pids: Vec<i32> = names.iter().flat_map(|n| pids_in(n)).collect();
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in pids.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let deleted = names
        .iter()
        .filter(|n| ip(&["netns", "delete", n]).is_ok())
        .count();
    (pids.len(), deleted)
}

/// Whether a cluster kept by an earlier `--keep` still exists.
pub fn kept_cluster_exists() -> bool {
    KEPT_NAMES
        .iter()
        .any(|n| Path::new("/run/netns").join(n).exists())
}

/// `--keep`: give namespace `from` (one of ours) the stable name `to`, then drop the old name
/// (the namespace lives on in its processes and the new name; warden-testkit would otherwise
/// reap `wd-<pid>-*` once this process is gone).
pub fn rename_namespace(from: &str, to: &str) -> Result<(), String> {
    let pid = pids_in(from)
        .into_iter()
        .next()
        .ok_or_else(|| format!("no process left in {from}"))?;
    ip(&["netns", "attach", to, &pid.to_string()])?;
    ip(&["netns", "delete", from]).map(drop)
}

/// The script that ends a kept cluster: processes in the two namespaces, the namespaces, the
/// demo directory.
pub fn write_teardown_script(root: &Path) -> std::io::Result<PathBuf> {
    let path = root.join("teardown.sh");
    let names = KEPT_NAMES.join(" ");
    let script = format!(
        r#"#!/bin/sh
# Stops the Warden demo cluster kept with --keep and removes what it made.
for ns in {names}; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill $pids
done
for i in $(seq 50); do
    left=""
    for ns in {names}; do left="$left$(ip netns pids "$ns" 2>/dev/null)"; done
    [ -z "$left" ] && break
    sleep 0.1
done
for ns in {names}; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids
    ip netns delete "$ns" 2>/dev/null
done
rm -rf '{root}'
echo "the Warden demo cluster is gone"
"#,
        root = root.display()
    );
    std::fs::write(&path, script)?;
    Ok(path)
}
