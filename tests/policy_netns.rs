//! The whole path on real traffic: wardend (with its swtpm) runs inside the appliance's
//! network namespace with `[policy] nftables = true`; the security team applies policies with
//! `wardctl policy apply`; TCP connections between two tenant namespaces pass or are dropped
//! as the policy in force says. Without a policy everything is denied; a bad or older policy
//! changes nothing; after a restart the stored policy is enforced again, even when the table
//! was deleted meanwhile; stopping wardend leaves the policy in force (fail closed).
//!
//! ```text
//!   ns A  a0 198.51.100.2 ──── ra 198.51.100.1  ns R (wardend, swtpm,   rb 203.0.113.1 ──── b0 203.0.113.2  ns B
//!                                                inet warden)                                (servers :8080, :9090)
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{tools_or_skip, Node};
use warden_testkit::{skip_without_netns, veth, Netns};

/// Shorter than Linux's first SYN retransmission (1 s): a timeout means the SYN was dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

fn wardend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wardend"))
}

/// A TCP server in `ns` that accepts and closes, until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, addr: SocketAddr) -> Server {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connects(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(|| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok())
}

/// `wardctl policy <verb> FILE` as the operator, run inside R (where the API is).
fn policy(r: &Netns, node: &Node, verb: &str, file: &Path) -> Output {
    let (cert, key) = node.operator_cert();
    let out = warden_testkit::command_in(r.name())
        .arg(env!("CARGO_BIN_EXE_wardctl"))
        .args(["policy", verb])
        .arg(file)
        .arg("--url")
        .arg(node.url())
        .arg("--ca")
        .arg(node.ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    out
}

/// `wardctl policy show` as the operator, inside R.
fn show(r: &Netns, node: &Node) -> Output {
    let (cert, key) = node.operator_cert();
    warden_testkit::command_in(r.name())
        .arg(env!("CARGO_BIN_EXE_wardctl"))
        .args(["policy", "show", "--url"])
        .arg(node.url())
        .arg("--ca")
        .arg(node.ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policy_text(version: u64, port: u16) -> String {
    format!(
        r#"version = {version}
[[node]]
id = "node-r"
address = "192.0.2.1"

[[tenant]]
id = "acme"

[[segment]]
name = "web"
tenant = "acme"
cidrs = ["198.51.100.0/24"]

[[segment]]
name = "db"
tenant = "acme"
cidrs = ["203.0.113.0/24"]
node = "node-r"

[[rule]]
from = "web"
to = "db"
proto = "tcp"
ports = [{port}]
"#
    )
}

#[test]
fn wardctl_apply_enforces_policies_on_real_traffic() {
    if skip_without_netns("wardctl_apply_enforces_policies_on_real_traffic") || !tools_or_skip() {
        return;
    }
    let (a, r, b) = (
        Netns::new().unwrap(),
        Netns::new().unwrap(),
        Netns::new().unwrap(),
    );
    veth(
        &a,
        "a0",
        &["198.51.100.2/24"],
        &r,
        "ra",
        &["198.51.100.1/24"],
    )
    .unwrap();
    veth(&b, "b0", &["203.0.113.2/24"], &r, "rb", &["203.0.113.1/24"]).unwrap();
    a.add_route("default", "198.51.100.1").unwrap();
    b.add_route("default", "203.0.113.1").unwrap();
    r.enable_forwarding().unwrap();
    let _s8080 = Server::start(&b, "203.0.113.2:8080".parse().unwrap());
    let _s9090 = Server::start(&b, "203.0.113.2:9090".parse().unwrap());
    assert!(
        connects(&a, "203.0.113.2:8080"),
        "the topology does not forward"
    );

    let mut node = Node::start_in_netns(
        wardend(),
        "node-r",
        r.name(),
        "\n[policy]\nnftables = true\n",
    );
    // Default deny before any policy.
    assert!(
        !connects(&a, "203.0.113.2:8080"),
        "forwarded without a policy"
    );
    assert!(!connects(&a, "203.0.113.2:9090"));

    let dir = node.dir.path().to_owned();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let v1 = write("v1.toml", &policy_text(1, 8080));
    let o = policy(&r, &node, "apply", &v1);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        connects(&a, "203.0.113.2:8080"),
        "the allowed flow is dropped"
    );
    assert!(
        !connects(&a, "203.0.113.2:9090"),
        "a flow no rule allows passes"
    );
    // Rules are directed: B may not open connections to A.
    let _sa = Server::start(&a, "198.51.100.2:8080".parse().unwrap());
    assert!(!connects(&b, "198.51.100.2:8080"));
    // The counters say so: the rule counted the allowed connection, the drops the rest.
    let o = show(&r, &node);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let packets = |marker: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{out}"));
        let digits: String = line
            .split(marker)
            .nth(1)
            .unwrap()
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    assert!(packets("web -> db tcp/8080") >= 1, "{out}");
    assert!(packets("denied") >= 2, "{out}");

    let v2 = write("v2.toml", &policy_text(2, 9090));
    let o = policy(&r, &node, "apply", &v2);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!connects(&a, "203.0.113.2:8080"));
    assert!(connects(&a, "203.0.113.2:9090"));

    // A bad policy and an older one change nothing.
    let bad = write(
        "bad.toml",
        &policy_text(3, 8080).replace("ports = [8080]", "ports = [\"9000-8000\"]"),
    );
    let o = policy(&r, &node, "apply", &bad);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let old = write(
        "old.toml",
        &policy_text(1, 8080).replace("version = 1", "version = 2\n# same version, other rules"),
    );
    let o = policy(&r, &node, "apply", &old);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!connects(&a, "203.0.113.2:8080"));
    assert!(connects(&a, "203.0.113.2:9090"));

    // Stopped: the policy stays in force (fail closed).
    node.stop();
    assert!(!connects(&a, "203.0.113.2:8080"));
    assert!(connects(&a, "203.0.113.2:9090"));
    // The table deleted by hand meanwhile: everything passes ...
    r.exec_ok(&["nft", "delete", "table", "inet", "warden"])
        .unwrap();
    assert!(connects(&a, "203.0.113.2:8080"));
    // ... until wardend starts again and enforces the stored policy.
    node.start_again();
    assert!(!connects(&a, "203.0.113.2:8080"));
    assert!(connects(&a, "203.0.113.2:9090"));
    let listing = r
        .exec_ok(&["nft", "list", "table", "inet", "warden"])
        .unwrap();
    assert!(listing.contains("policy v2 sha256:"), "{listing}");
}
