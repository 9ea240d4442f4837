//! A running appliance for end-to-end tests and the demo: its own swtpm, certificates, config
//! and wardend process, all removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_testkit::Swtpm;

pub mod capture;
pub mod workload;

/// One appliance: swtpm + wardend.
pub struct Node {
    pub swtpm: Swtpm,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub name: String,
    child: Option<Child>,
    wardend: PathBuf,
    /// Appended to the generated configuration.
    extra_config: String,
    /// The network namespace wardend (and its swtpm) run in, if not ours.
    pub netns: Option<String>,
}

impl Node {
    /// Start swtpm and wardend; `wardend` is the daemon binary.
    pub fn start(wardend: &Path, name: &str) -> Node {
        Self::start_with_reference(wardend, name, None)
    }

    /// Like [`Node::start`], with reference values (TOML) for `POST /v1/appraisals`.
    pub fn start_with_reference(wardend: &Path, name: &str, reference: Option<&str>) -> Node {
        Self::start_with_config(wardend, name, reference, "")
    }

    /// Like [`Node::start_with_reference`], with `extra` TOML appended to the configuration
    /// (relative paths in it resolve against the node's directory, [`Node::dir`]).
    pub fn start_with_config(
        wardend: &Path,
        name: &str,
        reference: Option<&str>,
        extra: &str,
    ) -> Node {
        Self::start_full(wardend, name, reference, extra, None)
    }

    /// Like [`Node::start_with_config`], with swtpm and wardend inside the network namespace
    /// `netns` (its API is then reachable only from there: use `warden_testkit::command_in`).
    pub fn start_in_netns(wardend: &Path, name: &str, netns: &str, extra: &str) -> Node {
        Self::start_full(wardend, name, None, extra, Some(netns.to_owned()))
    }

    fn start_full(
        wardend: &Path,
        name: &str,
        reference: Option<&str>,
        extra: &str,
        netns: Option<String>,
    ) -> Node {
        std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
        let swtpm = match &netns {
            Some(ns) => Swtpm::start_in_netns(ns),
            None => Swtpm::start(),
        }
        .expect("starting swtpm");
        let dir = tempfile::tempdir().unwrap();
        warden::pki::generate_demo_pki(&dir.path().join("tls"), &[name.to_owned()]).unwrap();
        let mut node = Node {
            swtpm,
            dir,
            port: 0,
            name: name.to_owned(),
            child: None,
            wardend: wardend.to_owned(),
            extra_config: extra.to_owned(),
            netns,
        };
        if let Some(r) = reference {
            std::fs::write(node.dir.path().join("appraisal-reference.toml"), r).unwrap();
        }
        node.write_config(reference.is_some());
        node.spawn();
        node
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wardend.toml")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wardend.log")
    }

    fn write_config(&mut self, with_reference: bool) {
        self.port = warden_testkit::free_port_pair();
        let text = format!(
            r#"# Generated for a test or the demo.
name = "{name}"
state_dir = "state"

[log]
format = "json"
level = "info"

[tpm]
tcti = "{tcti}"
ak_handle = 0x81010002
appliance_pcr = 15
quote_pcrs = [0, 1, 2, 3, 4, 5, 6, 7]

[api]
listen = "127.0.0.1:{port}"
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.crt"
"#,
            name = self.name,
            tcti = self.swtpm.tcti(),
            port = self.port
        ) + if with_reference {
            "\n[attestation]\nreference = \"appraisal-reference.toml\"\n"
        } else {
            ""
        } + &self.extra_config;
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = warden_testkit::command_in(ns);
                c.arg(&self.wardend);
                c
            }
            None => Command::new(&self.wardend),
        };
        let child = command
            .arg("--config")
            .arg(self.config_path())
            .env("TSS2_LOG", "esys+none,tcti+none")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning wardend");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("wardend exited with {status}:\n{}", self.log());
            }
            if self.listening() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wardend did not listen within 30 s:\n{}", self.log());
    }

    /// Whether wardend's API port accepts connections (inside its namespace, if it has one).
    fn listening(&self) -> bool {
        match &self.netns {
            None => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            Some(ns) => warden_testkit::command_in(ns)
                .args(["bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}", self.port))
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    /// A client certificate and key for `identity` ("warden:tenant:acme"), from the node's CA.
    pub fn client_cert(&self, identity: &str) -> (PathBuf, PathBuf) {
        let id = warden::identity::parse_uri(identity).expect("a warden identity URI");
        warden::pki::issue_client_cert(&self.dir.path().join("tls"), &id).unwrap()
    }

    /// The operator certificate the demo PKI made.
    pub fn operator_cert(&self) -> (PathBuf, PathBuf) {
        let tls = self.dir.path().join("tls");
        (tls.join("operator.crt"), tls.join("operator.key"))
    }

    /// The audit log's directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("state/audit")
    }

    /// wardend's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stop wardend (SIGTERM, then SIGKILL after 40 s: longer than wardend's own drain of
    /// open connections, 30 s, so an orderly stop is never cut short).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("wardend did not stop within 40 s of SIGTERM; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill wardend with SIGKILL (no chance to flush or close anything).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start wardend again after [`Node::stop`] or [`Node::kill9`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Restart wardend on the same TPM and state (the TPM keeps running).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every audit entry's kind and JSON, through the operator's audit API.
pub async fn audit_kinds(node: &Node) -> Vec<(String, serde_json::Value)> {
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    let page: warden::audit_api::EntriesResponse = http
        .get(format!("{}/v1/audit/entries?start=0", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page.entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            (v["kind"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// The long operation logged its steps in order, and is no longer listed in
/// `GET /v1/operations`, which operators may read and tenants may not.
pub async fn operations_were_shown(node: &Node, kind: &str, steps: &[&str]) {
    let log = node.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"operation step\"") && l.contains(kind))
        .collect();
    assert_eq!(logged.len(), steps.len(), "{logged:?}");
    for (line, step) in logged.iter().zip(steps) {
        assert!(line.contains(step), "{step:?} not in {line}");
    }
    let (cert, key) = node.operator_cert();
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    let url = format!("{}/v1/operations", node.url());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let running: Vec<warden::progress::OperationStatus> = r.json().await.unwrap();
    assert!(running.is_empty(), "{running:?}");
    let (cert, key) = node.client_cert("warden:tenant:acme");
    let http = warden::tls::client_with_identity(&node.ca(), &cert, &key).unwrap();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 403);
}

/// The appliance events in fresh evidence.
pub async fn appliance_events(node: &Node) -> Vec<(String, String)> {
    use base64::Engine as _;
    let http = warden::tls::client(&node.ca()).unwrap();
    let nonce = base64::engine::general_purpose::STANDARD
        .encode(warden_attest::binding::Nonce::random().unwrap().as_bytes());
    let ev: serde_json::Value = http
        .post(format!("{}/v1/attestation", node.url()))
        .json(&serde_json::json!({ "nonce": nonce }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ev["appliance_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Skip (outside CI) when swtpm is not installed.
pub fn tools_or_skip() -> bool {
    if warden_testkit::tools_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "swtpm is required in CI (scripts/deps.sh installs it)"
    );
    eprintln!("skipping: swtpm/swtpm_setup not installed (run scripts/deps.sh)");
    false
}
