//! One swtpm process per test: manufactured by `swtpm_setup` with its own CA, served on loopback.
//!
//! ```text
//!   start_with ── swtpm_setup (state/, EK + certs via a private swtpm_localca) ──► launch
//!   launch ── spawn `swtpm socket` ── ctrl probe answers ──► running ──restart──► launch
//!              └─ server port taken by another process ──► new port pair, launch again
//!   drop ── kill + wait, temp dir removed
//! ```
//!
//! The control port `N + 1` is bound by this process and handed to swtpm as an inherited
//! listening socket (`--ctrl type=tcp,fd=0`, swtpm's stdin), and kept for the instance's life.
//! The server port `N` is bound by swtpm itself (its `--server` `fd=` takes an already
//! *connected* socket, not a listener). swtpm binds both before it enters its main loop, so the
//! first answer on the control socket — which no other process can own — proves the server
//! port is ours too; if swtpm exits first because the port was taken, we retry with a new pair.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{find_on_path, ports};

/// Upper bound for swtpm to come up (brief: ≤ 10 s).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for an orderly stop before we kill.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Port pairs tried when other processes keep taking the server port.
const LAUNCH_ATTEMPTS: usize = 8;
/// swtpm control-channel commands (swtpm `tpm_ioctl.h`): 4-byte big-endian command codes.
const CMD_GET_CAPABILITY: u32 = 0x01;
const CMD_SHUTDOWN: u32 = 0x03;
/// TPM2_Shutdown(TPM_SU_CLEAR): tag NO_SESSIONS, size 12, TPM_CC_Shutdown (0x145), CLEAR (0).
const TPM2_SHUTDOWN_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x45, 0, 0];

static QUIET_TSS: Once = Once::new();
/// `esys+none` alone leaves the TCTI loader's errors (e.g. "Connection refused") on stderr.
pub const QUIET_TSS_LOG: &str = "esys+none,tcti+none";

/// How to manufacture the software TPM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwtpmOptions {
    /// PCR banks to allocate, comma-separated swtpm_setup names ("sha256", "sha1,sha256").
    pub pcr_banks: &'static str,
    /// `true`: RSA and ECC EKs with certificates in NV (RSA 2048 at 0x01c00002; swtpm 0.7's ECC
    /// EK is P-384, its certificate at 0x01c00016) plus a platform certificate at 0x01c08000.
    /// `false`: the EKs are created but no certificate is written.
    pub ek_cert: bool,
}

impl Default for SwtpmOptions {
    fn default() -> Self {
        SwtpmOptions {
            pcr_banks: "sha256",
            ek_cert: true,
        }
    }
}

/// A running swtpm with its own state directory and ports; killed and removed on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    /// Holds port `N + 1`; a clone is swtpm's control listener.
    ctrl: TcpListener,
    state: PathBuf,
    dir: tempfile::TempDir,
    /// The network namespace swtpm serves in (its server port lives there), if not ours.
    netns: Option<String>,
}

enum LaunchError {
    /// swtpm could not bind the server port: another process took it after our probe.
    PortTaken(String),
    Other(io::Error),
}

impl From<io::Error> for LaunchError {
    fn from(e: io::Error) -> Self {
        LaunchError::Other(e)
    }
}

impl Swtpm {
    /// A TPM with the default options: SHA-256 bank, EK certificates.
    pub fn start() -> io::Result<Swtpm> {
        Swtpm::start_with(SwtpmOptions::default())
    }

    /// Manufacture a TPM in a new temp dir (`swtpm_setup`) and serve it on loopback.
    pub fn start_with(opts: SwtpmOptions) -> io::Result<Swtpm> {
        Swtpm::start_inner(opts, None)
    }

    /// Like [`Swtpm::start`], serving the TPM on the loopback of the named network namespace
    /// (`nsenter`), for a wardend that runs there. The control port stays in ours.
    pub fn start_in_netns(netns: &str) -> io::Result<Swtpm> {
        Swtpm::start_inner(SwtpmOptions::default(), Some(netns.to_owned()))
    }

    fn start_inner(opts: SwtpmOptions, netns: Option<String>) -> io::Result<Swtpm> {
        QUIET_TSS.call_once(|| {
            if std::env::var_os("TSS2_LOG").is_none() {
                std::env::set_var("TSS2_LOG", QUIET_TSS_LOG);
            }
        });
        let dir = tempfile::Builder::new().prefix("warden-swtpm-").tempdir()?;
        manufacture(dir.path(), &opts)?;
        let mut last = String::new();
        for _ in 0..LAUNCH_ATTEMPTS {
            let (port, ctrl) = ports::reserve_pair()?;
            match launch(dir.path(), port, &ctrl, netns.as_deref()) {
                Ok(child) => {
                    let state = dir.path().join("state");
                    return Ok(Swtpm {
                        child: Some(child),
                        port,
                        ctrl,
                        state,
                        dir,
                        netns,
                    });
                }
                Err(LaunchError::PortTaken(log)) => last = log,
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("swtpm could not bind a server port in {LAUNCH_ATTEMPTS} attempts: {last}"),
        ))
    }

    /// TCTI string for tss-esapi and tpm2-tools: `swtpm:host=127.0.0.1,port=N`.
    /// It can change across [`Swtpm::restart`] (only if another process took the port).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM state directory (`tpm2-00.permall`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Power cycle on the same state: TPM2_Shutdown(CLEAR), stop swtpm, drop any saved volatile
    /// state, start again (with `startup-clear`): PCRs are reset, persistent objects and NV stay.
    /// Drop every TPM connection first: swtpm serves one client at a time (a connected client
    /// costs a few seconds of timeouts here, and is cut off).
    pub fn restart(&mut self) -> io::Result<()> {
        if let Some(child) = self.child.take() {
            stop_orderly(child, self.port)?;
        }
        discard_volatile_state(&self.state)?;
        let mut port = self.port;
        let mut last = String::new();
        for _ in 0..LAUNCH_ATTEMPTS {
            match launch(self.dir.path(), port, &self.ctrl, self.netns.as_deref()) {
                Ok(child) => {
                    self.child = Some(child);
                    self.port = port;
                    return Ok(());
                }
                Err(LaunchError::PortTaken(log)) => last = log,
                Err(LaunchError::Other(e)) => return Err(e),
            }
            let (new_port, new_ctrl) = ports::reserve_pair()?;
            port = new_port;
            self.ctrl = new_ctrl;
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("swtpm restart could not bind a server port: {last}"),
        ))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `swtpm_setup` with a config, a `swtpm_localca` config and a CA state dir all inside `dir`,
/// so it needs nothing from `/etc`, `$HOME` or `/var/lib/swtpm-localca` and works as root.
fn manufacture(dir: &Path, opts: &SwtpmOptions) -> io::Result<()> {
    let banks_ok = !opts.pcr_banks.is_empty()
        && opts
            .pcr_banks
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b',');
    if !banks_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "pcr_banks {:?}: expected e.g. \"sha1,sha256\"",
                opts.pcr_banks
            ),
        ));
    }
    let localca = find_on_path("swtpm_localca").ok_or_else(|| not_found("swtpm_localca"))?;
    let setup = find_on_path("swtpm_setup").ok_or_else(|| not_found("swtpm_setup"))?;
    let state = dir.join("state");
    let ca = dir.join("localca");
    fs::create_dir(&state)?;
    fs::create_dir(&ca)?;
    let ca_conf = dir.join("swtpm-localca.conf");
    let ca_opts = dir.join("swtpm-localca.options");
    let setup_conf = dir.join("swtpm_setup.conf");
    fs::write(
        &ca_conf,
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
             certserial = {ca}/certserial\n",
            ca = ca.display()
        ),
    )?;
    fs::write(
        &ca_opts,
        "--platform-manufacturer Warden\n--platform-version 2.1\n--platform-model swtpm\n",
    )?;
    fs::write(
        &setup_conf,
        format!(
            "create_certs_tool = {}\ncreate_certs_tool_config = {}\n\
             create_certs_tool_options = {}\nactive_pcr_banks = {}\n",
            localca.display(),
            ca_conf.display(),
            ca_opts.display(),
            opts.pcr_banks
        ),
    )?;
    let mut cmd = Command::new(setup);
    cmd.arg("--tpm2")
        .arg("--tpmstate")
        .arg(&state)
        .arg("--config")
        .arg(&setup_conf)
        .args(["--pcr-banks", opts.pcr_banks, "--overwrite"])
        .env("XDG_CONFIG_HOME", dir)
        .env("TMPDIR", dir)
        .stdin(Stdio::null());
    if opts.ek_cert {
        cmd.args(["--create-ek-cert", "--create-platform-cert"]);
    } else {
        cmd.arg("--createek");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "swtpm_setup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(())
}

/// Spawn `swtpm socket` on `port` with `ctrl` as its control listener; wait until it answers.
fn launch(
    dir: &Path,
    port: u16,
    ctrl: &TcpListener,
    netns: Option<&str>,
) -> Result<Child, LaunchError> {
    let swtpm = find_on_path("swtpm").ok_or_else(|| not_found("swtpm"))?;
    let log_path = dir.join("swtpm.log");
    let log = File::create(&log_path)?;
    let ctrl_fd = OwnedFd::from(ctrl.try_clone()?);
    let ctrl_port = ctrl.local_addr()?.port();
    // nsenter enters the namespace and execs swtpm: the same process, same pid.
    let mut command = match netns {
        Some(ns) => {
            let mut c = crate::command_in(ns);
            c.arg(swtpm);
            c
        }
        None => Command::new(swtpm),
    };
    command
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", dir.join("state").display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"));
    // In another namespace the TCTI needs the control port there too (it connects to
    // port + 1): swtpm binds both itself, and readiness is probed from inside.
    match netns {
        None => command
            .args(["--ctrl", "type=tcp,fd=0"])
            .stdin(Stdio::from(ctrl_fd)),
        Some(_) => command
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdin(Stdio::null()),
    };
    let mut child = command
        .args(["--flags", "not-need-init,startup-clear"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;
    let ready = match netns {
        None => wait_ready(&mut child, ctrl_port),
        Some(ns) => wait_ready_in(&mut child, ns, port),
    };
    match ready {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            Err(match e {
                ReadyError::Exited(_) if looks_like_bind_failure(&log) => {
                    LaunchError::PortTaken(format!("port {port}: {}", log.trim()))
                }
                ReadyError::Exited(status) => LaunchError::Other(io::Error::other(format!(
                    "swtpm exited early ({status}) on port {port}: {}",
                    log.trim()
                ))),
                ReadyError::Io(e) => LaunchError::Other(io::Error::new(
                    e.kind(),
                    format!(
                        "swtpm on port {port} did not come up: {e}; log: {}",
                        log.trim()
                    ),
                )),
            })
        }
    }
}

enum ReadyError {
    Exited(ExitStatus),
    Io(io::Error),
}

/// Send CMD_GET_CAPABILITY on the control socket and wait (bounded) for its 8-byte answer,
/// watching for the child exiting meanwhile.
/// Readiness inside a namespace: both of swtpm's ports accept connections there.
fn wait_ready_in(child: &mut Child, netns: &str, port: u16) -> Result<(), ReadyError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let probe = |p: u16| {
        crate::command_in(netns)
            .args(["bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{p}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    loop {
        if let Some(status) = child.try_wait().map_err(ReadyError::Io)? {
            return Err(ReadyError::Exited(status));
        }
        if probe(port) && probe(port + 1) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReadyError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("swtpm did not listen in namespace {netns}"),
            )));
        }
        sleep(Duration::from_millis(50));
    }
}

fn wait_ready(child: &mut Child, ctrl_port: u16) -> Result<(), ReadyError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let io = ReadyError::Io;
    let mut stream = TcpStream::connect_timeout(&loopback(ctrl_port), READY_TIMEOUT).map_err(io)?;
    stream
        .write_all(&CMD_GET_CAPABILITY.to_be_bytes())
        .map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(io)?;
    let mut answer = [0u8; 8];
    let mut got = 0;
    loop {
        let rest = answer.get_mut(got..).unwrap_or_default();
        match stream.read(rest) {
            Ok(0) => {} // swtpm closed the connection: it is exiting; try_wait below sees it
            Ok(n) => {
                got += n;
                if got >= answer.len() {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(ReadyError::Io(e)),
        }
        if let Some(status) = child.try_wait().map_err(io)? {
            return Err(ReadyError::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(ReadyError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no control-channel answer within {READY_TIMEOUT:?}"),
            )));
        }
        sleep(Duration::from_millis(5));
    }
}

fn looks_like_bind_failure(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("could not open tcp socket")
}

/// TPM2_Shutdown(CLEAR) as an OS would before power-off, then CMD_SHUTDOWN on the control
/// channel; kill if it has not exited within [`STOP_TIMEOUT`].
fn stop_orderly(mut child: Child, port: u16) -> io::Result<()> {
    let _ = exchange(port, &TPM2_SHUTDOWN_CLEAR, 10);
    let _ = exchange(port.saturating_add(1), &CMD_SHUTDOWN.to_be_bytes(), 4);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(10)),
            // Not exited in time, or its status unreadable: never leave it running.
            _ => {
                let _ = child.kill();
                return child.wait().map(drop);
            }
        }
    }
}

/// Send `request`, read a `response_len`-byte answer (short timeouts; best effort).
fn exchange(port: u16, request: &[u8], response_len: usize) -> io::Result<Vec<u8>> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut response = vec![0u8; response_len];
    stream.read_exact(&mut response)?;
    Ok(response)
}

/// swtpm may leave a saved volatile state that it would resume from on the next start: a
/// power cycle must not.
fn discard_volatile_state(state: &Path) -> io::Result<()> {
    for entry in fs::read_dir(state)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains("volatilestate") || name.contains("savestate") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn not_found(program: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program} not found on PATH"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TPM2_GetRandom(8): answers TPM_RC_SUCCESS once swtpm runs and has done TPM2_Startup.
    fn get_random(tpm: &Swtpm) -> Vec<u8> {
        let cmd = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8];
        exchange(tpm.port, &cmd, 20).unwrap()
    }

    #[test]
    fn serves_tpm_commands_and_restarts_on_the_same_port() {
        if crate::skip_without_swtpm("serves_tpm_commands_and_restarts_on_the_same_port") {
            return;
        }
        let mut tpm = Swtpm::start().unwrap();
        assert!(tpm.tcti().starts_with("swtpm:host=127.0.0.1,port="));
        assert!(tpm.state_dir().join("tpm2-00.permall").is_file());
        let rsp = get_random(&tpm);
        assert_eq!(
            rsp.get(6..10),
            Some(&[0u8, 0, 0, 0][..]),
            "rc in {rsp:02x?}"
        );
        let tcti = tpm.tcti();
        tpm.restart().unwrap();
        assert_eq!(tpm.tcti(), tcti);
        let rsp = get_random(&tpm);
        assert_eq!(
            rsp.get(6..10),
            Some(&[0u8, 0, 0, 0][..]),
            "rc in {rsp:02x?}"
        );
    }

    #[test]
    fn many_instances_run_in_parallel() {
        if crate::skip_without_swtpm("many_instances_run_in_parallel") {
            return;
        }
        let threads: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(|| {
                    Swtpm::start_with(SwtpmOptions {
                        ek_cert: false,
                        ..Default::default()
                    })
                    .unwrap()
                })
            })
            .collect();
        let tpms: Vec<Swtpm> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut ports: Vec<u16> = tpms.iter().map(|t| t.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), tpms.len());
        for tpm in &tpms {
            assert_eq!(get_random(tpm).len(), 20);
        }
    }

    #[test]
    fn early_exit_reports_swtpm_stderr() {
        if crate::skip_without_swtpm("early_exit_reports_swtpm_stderr") {
            return;
        }
        let mut tpm = Swtpm::start_with(SwtpmOptions {
            ek_cert: false,
            ..Default::default()
        })
        .unwrap();
        let state = tpm.state_dir().join("tpm2-00.permall");
        if let Some(child) = tpm.child.take() {
            stop_orderly(child, tpm.port).unwrap();
        }
        fs::write(&state, b"not a TPM state").unwrap();
        let err = tpm.restart().unwrap_err().to_string();
        assert!(err.contains("swtpm exited early"), "{err}");
    }

    #[test]
    fn bad_pcr_banks_are_refused() {
        let err = Swtpm::start_with(SwtpmOptions {
            pcr_banks: "sha256\nx=y",
            ek_cert: true,
        });
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
