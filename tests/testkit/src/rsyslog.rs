//! A real syslog collector for export tests: Debian's rsyslogd with its GnuTLS stream driver,
//! receiving RFC 5425 (octet-counted syslog over TLS) on a loopback port, writing each message
//! as one JSON line.
//!
//! The collector is configured the way a loss-averse site would: a direct main queue (a message
//! is written to the file before the next one is read from the socket), and messages up to
//! 128 KiB (an audit entry is at most 64 KiB). Stop and start it again on the same port to
//! test restarts of the collector.

use std::fs;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::find_on_path;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The collector's TLS material (PEM files).
#[derive(Clone, Debug)]
pub struct RsyslogTls {
    /// CA certificate(s): client certificates must chain to them.
    pub ca: PathBuf,
    /// The collector's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `true`: senders must present a certificate from `ca` (`x509/certvalid`); `false`:
    /// anonymous senders (`anon`).
    pub require_client_cert: bool,
}

/// A running rsyslogd.
pub struct Rsyslog {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// Whether rsyslogd and its GnuTLS driver are installed (Debian: rsyslog, rsyslog-gnutls).
pub fn rsyslog_available() -> bool {
    find_on_path("rsyslogd").is_some() && gtls_driver().is_some()
}

fn gtls_driver() -> Option<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu/rsyslog",
        "/usr/lib/aarch64-linux-gnu/rsyslog",
        "/usr/lib/rsyslog",
    ];
    dirs.iter()
        .map(|d| Path::new(d).join("lmnsd_gtls.so"))
        .find(|p| p.exists())
}

impl Rsyslog {
    /// Start rsyslogd listening on `127.0.0.1:port`.
    pub fn start(port: u16, tls: &RsyslogTls) -> io::Result<Rsyslog> {
        let dir = tempfile::tempdir()?;
        fs::create_dir(dir.path().join("work"))?;
        let auth = if tls.require_client_cert {
            "x509/certvalid"
        } else {
            "anon"
        };
        let config = format!(
            r#"global(
  workDirectory="{work}"
  maxMessageSize="128k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}")
main_queue(queue.type="Direct")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{auth}")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="line" type="list" option.jsonf="on") {{
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{out}" template="line")
"#,
            work = dir.path().join("work").display(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            out = dir.path().join("messages.jsonl").display(),
        );
        fs::write(dir.path().join("rsyslog.conf"), config)?;
        let mut r = Rsyslog {
            dir,
            port,
            child: None,
        };
        r.start_again()?;
        Ok(r)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The received messages, one JSON object per line.
    pub fn output(&self) -> PathBuf {
        self.dir.path().join("messages.jsonl")
    }

    /// The output file's lines (empty before the first message).
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.output())
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// rsyslogd's own messages (start-up, TLS errors).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    /// Start (again, after [`Rsyslog::stop`]) on the same port.
    pub fn start_again(&mut self) -> io::Result<()> {
        let rsyslogd = find_on_path("rsyslogd").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "rsyslogd not found (Debian: apt install rsyslog rsyslog-gnutls)",
            )
        })?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rsyslogd.log"))?;
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "rsyslogd exited with {status}: {}",
                    self.log()
                )));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "rsyslogd did not listen within {READY_TIMEOUT:?}: {}",
                self.log()
            ),
        ))
    }

    /// Orderly stop (SIGTERM: rsyslogd finishes what it read and closes its files).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
