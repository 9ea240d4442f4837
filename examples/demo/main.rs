//! The README's first command: the whole appliance on two nodes.
//!
//! Two network namespaces stand in for two nodes of an AI-inference cluster, joined by a veth
//! "wire"; on each, swtpm is the TPM and wardend the DPU appliance, with their own generated
//! configuration and certificates. Two tenants, acme and globex, share the cluster. The story:
//!
//! ```text
//!  setup  vendor keys + root v1; namespaces, wire, PKI, swtpm + wardend per node, TUN addresses
//!  1      reference values → policy v1 → peers attest each other; acme runs wardctl attest
//!  2      acme and globex put their east-west keys on both nodes → SAs
//!  3      TCP + UDP per tenant; tcpdump on the wire: only ESP-in-UDP, no payload marker
//!  4      globex → acme: denied by policy, counted
//!  5      a long transfer across rekeys by packet count and acme's key rotation: intact, nothing dropped
//!  6      release 2.0.0 signed, published, staged, approved (policy v2), booted, measured
//!         (PCR 15 moves, firmware event), peers re-key, committed (floor 2)
//!  7      release 1.5.0 (svn 1): below-floor
//!  8      audit verify (signature, consistency, every entry); acme reads and proves its own
//!  summary table; exit 1 if any step did not give the expected result
//! ```
//!
//! `--short` uses smaller transfers (CI); `--keep` leaves the cluster running and prints how
//! to reach it and how to tear it down. Ctrl-C (or SIGTERM) at any point cleans up
//! (`teardown.rs`). Run through `scripts/demo.sh`, which installs what is missing and builds
//! the binaries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../../tests/support/cluster.rs"]
mod cluster;
mod operations;
mod show;
mod story;
#[path = "../../tests/support/mod.rs"]
mod support;
mod teardown;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use cluster::{Bins, Cluster, Options, SiteLayout, POLICY_SECTION, TUN};
use show::{bold, say, Row};
use story::{Demo, Sizes, ACME_A, ACME_B, GLOBEX_A, GLOBEX_B, REKEY_AFTER_PACKETS, WORKERS};

/// Panic messages since the step began (the step's failure reason).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panic(msg: String) {
    if let Ok(mut p) = PANICS.lock() {
        p.push(msg);
    }
}

struct Args {
    short: bool,
    keep: bool,
}

fn args() -> Args {
    let mut a = Args {
        short: false,
        keep: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--short" => a.short = true,
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--short] [--keep]\n  --short  smaller transfers (CI)\n  \
                     --keep   leave the cluster running; prints how to reach it and tear it down"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("demo: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    a
}

/// target/<profile>/examples/demo → target/<profile>/<name>
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .unwrap_or_default()
}

/// Why the demo cannot run here, if it cannot.
fn preflight(keep: bool) -> Result<Bins, String> {
    if !warden_testkit::running_as_root() {
        return Err("the demo makes network namespaces: run it as root".into());
    }
    if !warden_testkit::tools_available() {
        return Err("swtpm is not installed: run scripts/demo.sh, which installs it".into());
    }
    for tool in ["tcpdump", "nsenter", "ip", "nft"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "{tool} is not installed: run scripts/demo.sh, which installs it"
            ));
        }
    }
    let bins = Bins {
        wardend: bin("wardend"),
        wardctl: bin("wardctl"),
    };
    for b in [&bins.wardend, &bins.wardctl] {
        if !b.exists() {
            return Err(format!(
                "{} is missing: cargo build --bins --example demo",
                b.display()
            ));
        }
    }
    if keep && teardown::kept_cluster_exists() {
        return Err(format!(
            "a cluster from an earlier --keep still runs ({}): tear it down first with \
             sh /tmp/warden-demo-*/teardown.sh",
            teardown::KEPT_NAMES.join(", ")
        ));
    }
    Ok(bins)
}

/// Run one step: its result, or the failure (an error or a panic) with the reason.
fn run_step(
    rows: &mut Vec<Row>,
    n: usize,
    title: &str,
    expected: &str,
    f: impl FnOnce() -> Result<String, String>,
) -> bool {
    show::header(&n.to_string(), title);
    if let Ok(mut p) = PANICS.lock() {
        p.clear();
    }
    let started = Instant::now();
    let result = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(PANICS
            .lock()
            .ok()
            .and_then(|p| p.first().cloned())
            .unwrap_or_else(|| "panicked".into())),
    };
    match &result {
        Ok(r) => println!("    {} {r}", show::green("=>")),
        Err(e) => {
            let first = e.lines().next().unwrap_or_default();
            println!("    {} {}", show::red("=> FAILED:"), show::short(first));
            show::output(e, 30);
        }
    }
    let ok = result.is_ok();
    rows.push(Row {
        step: format!("{n}. {title}"),
        expected: expected.to_owned(),
        result: result.map_err(|e| show::short(e.lines().next().unwrap_or_default())),
        secs: started.elapsed().as_secs_f64(),
    });
    ok
}

fn intro(root: &Path, short: bool) {
    println!(
        "{}",
        bold("Warden demo: two nodes of an AI-inference cluster, each with its DPU appliance")
    );
    println!(
        "(wardend on a TPM), joined by a wire; two tenants, acme and globex, share the cluster."
    );
    println!(
        "Mode: {}. Files: $DEMO = {}",
        if short {
            "--short (smaller transfers)"
        } else {
            "full"
        },
        root.display()
    );
    println!(
        r#"
  netns node-a                                              netns node-b
   swtpm ─ wardend node-a                                    wardend node-b ─ swtpm
   acme {ACME_A}, globex {GLOBEX_A}                          acme {ACME_B}, globex {GLOBEX_B}
     on {TUN} (TUN) ── wire 198.51.100.1 ══════ 198.51.100.2 wire ── {TUN} (TUN)
                        ESP-in-UDP :4500, attested control channel (TLS 1.3) :4501

Every wardctl below runs inside the node's namespace with --url and --ca, and the caller's
--cert/--key (operator or tenant); those arguments are left out of what is printed."#
    );
}

/// Setup: the vendor's keys, then the cluster.
fn setup(bins: &Bins, root: &Path, sizes: Sizes) -> Result<Demo, String> {
    show::header(
        "setup",
        "vendor keys, two namespaces and a wire, swtpm and wardend per node",
    );
    let vendor = root.join("vendor");
    say("The vendor makes its release keys and signs root v1, which the appliances will trust:");
    operations::vendor_setup(&vendor)?;
    let extra = format!("rekey_after_packets = {REKEY_AFTER_PACKETS}\n{POLICY_SECTION}")
        + &operations::updates_section(&vendor.join("repo/1.root.json"));
    say("Starting two swtpm (with EK certificates) and two wardend, each with its own CA,");
    say("certificates and configuration ([tpm], [api], [keys], [peering], [dataplane], [policy],");
    say("[updates]), in parallel:");
    let started = Instant::now();
    let c = Cluster::boot(&Options {
        bins: bins.clone(),
        workers: WORKERS,
        extra,
        a: SiteLayout::new(&[ACME_A, GLOBEX_A], &["203.0.113.16/28", "203.0.113.48/28"]),
        b: SiteLayout::new(&[ACME_B, GLOBEX_B], &["203.0.113.0/28", "203.0.113.32/28"]),
    });
    for site in [&c.a, &c.b] {
        say(&format!(
            "  {}: netns {}, TPM {}, API {}, state {}",
            site.node.name,
            site.ns.name(),
            site.node.swtpm.tcti(),
            site.node.url(),
            site.node.dir.path().display()
        ));
    }
    say(&format!(
        "  both up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let published = [
        root.join("published/node-a.toml"),
        root.join("published/node-b.toml"),
    ];
    std::fs::create_dir_all(root.join("published")).map_err(|e| e.to_string())?;
    Ok(Demo {
        c,
        root: root.to_owned(),
        sizes,
        vendor,
        golden: [toml::Table::new(), toml::Table::new()],
        published,
        policy_version: 0,
    })
}

fn main() {
    let args = args();
    let bins = match preflight(args.keep) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    // Everything the demo makes lives under one directory: the tempdirs of the nodes, the
    // TPMs and the captures follow TMPDIR. Set before any thread exists.
    let root = match tempfile::Builder::new()
        .prefix("warden-demo-")
        .tempdir()
        .map(tempfile::TempDir::keep)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: making a temporary directory: {e}");
            std::process::exit(2);
        }
    };
    std::env::set_var("TMPDIR", &root);
    std::env::set_var("TSS2_LOG", "esys+none,tcti+none");
    if let Err(e) = teardown::install(root.clone()) {
        eprintln!("demo: cannot watch for signals: {e}");
        let _ = std::fs::remove_dir_all(&root);
        std::process::exit(2);
    }
    teardown::panic_hook(record_panic);
    show::init(&root, &bins.wardctl);
    intro(&root, args.short);

    let started = Instant::now();
    let mut rows = Vec::new();
    let setup_started = Instant::now();
    let demo = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        setup(&bins, &root, Sizes::new(args.short))
    })) {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            println!("    {} {}", show::red("=> FAILED:"), show::short(&e));
            None
        }
        Err(_) => {
            let why = PANICS
                .lock()
                .ok()
                .and_then(|p| p.first().cloned())
                .unwrap_or_default();
            println!("    {} {}", show::red("=> FAILED:"), show::short(&why));
            None
        }
    };
    rows.push(Row {
        step: "0. setup".into(),
        expected: "two nodes up: swtpm + wardend each, wire, TUN".into(),
        result: if demo.is_some() {
            Ok("both appliances running".into())
        } else {
            Err("the cluster did not start".into())
        },
        secs: setup_started.elapsed().as_secs_f64(),
    });
    let Some(mut d) = demo else {
        show::summary(&rows);
        let _held = teardown::lock();
        let _ = std::fs::remove_dir_all(&root);
        std::process::exit(1);
    };

    type Step = fn(&mut Demo) -> Result<String, String>;
    let steps: [(&str, &str, Step); 8] = [
        (
            "the appliances attest to each other",
            "peers attested both ways (PQ hybrid TLS); the tenant's wardctl attest passes",
            story::attest,
        ),
        (
            "tenants provision their keys",
            "acme's and globex's keys sealed on both nodes; their SAs installed",
            story::provision,
        ),
        (
            "tenant traffic crosses the wire encrypted",
            "data intact; the wire carries only ESP-in-UDP (and the control channel); no marker",
            story::traffic,
        ),
        (
            "a cross-tenant flow is denied",
            "globex → acme refused, counted as a policy drop",
            story::cross_tenant,
        ),
        (
            "rekey and key rotation under traffic",
            "several rekeys and a tenant key rotation during one TCP stream; intact; no packet dropped",
            story::rekey,
        ),
        (
            "a signed update installs",
            "staged, measured at boot (PCR 15 moves, firmware event), re-attested, committed",
            operations::update,
        ),
        (
            "a rollback is refused",
            "an older release (lower SVN) refused: below-floor",
            operations::rollback,
        ),
        (
            "the audit log verifies",
            "signature, consistency and every entry check; the tenant sees and proves its own",
            operations::audit,
        ),
    ];
    for (i, (title, expected, f)) in steps.into_iter().enumerate() {
        run_step(&mut rows, i + 1, title, expected, || f(&mut d));
    }

    show::summary(&rows);
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    println!(
        "\n{} in {:.0} s",
        if failed == 0 {
            show::green(&format!(
                "all {} steps gave the expected result",
                rows.len()
            ))
        } else {
            show::red(&format!(
                "{failed} of {} steps did not give the expected result",
                rows.len()
            ))
        },
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        println!("\n{}", d.c.logs());
    }
    let code = i32::from(failed > 0);

    let _held = teardown::lock();
    if args.keep {
        keep(d, &bins);
    } else {
        println!("\ncleaning up: stopping wardend and swtpm, deleting the namespaces and $DEMO…");
        drop(d);
        let _ = std::fs::remove_dir_all(&root);
    }
    std::process::exit(code);
}

/// `--keep`: stable namespace names, a teardown script, and how to reach the cluster.
fn keep(d: Demo, bins: &Bins) {
    let names = [d.c.a.ns.name().to_owned(), d.c.b.ns.name().to_owned()];
    for (from, to) in names.iter().zip(teardown::KEPT_NAMES) {
        if let Err(e) = teardown::rename_namespace(from, to) {
            eprintln!("demo: keeping {from} as {to}: {e}");
        }
    }
    let script = teardown::write_teardown_script(&d.root);
    let wardctl = bins.wardctl.display().to_string();
    println!("\n{}", bold("The cluster keeps running (--keep)."));
    for (site, ns) in [
        (&d.c.a, teardown::KEPT_NAMES[0]),
        (&d.c.b, teardown::KEPT_NAMES[1]),
    ] {
        let tls = site.node.dir.path().join("tls");
        let op = format!(
            "--url {} --ca {} --cert {} --key {}",
            site.node.url(),
            site.node.ca().display(),
            tls.join("operator.crt").display(),
            tls.join("operator.key").display()
        );
        let acme = format!(
            "--url {} --ca {} --cert {} --key {}",
            site.node.url(),
            site.node.ca().display(),
            tls.join("tenant-acme.crt").display(),
            tls.join("tenant-acme.key").display()
        );
        let reference = d.published[usize::from(site.node.name == "node-b")].display();
        println!(
            "\n  {} (netns {ns}), log {}",
            site.node.name,
            site.node.log_path().display()
        );
        println!("    ip netns exec {ns} {wardctl} attest --reference {reference} {acme}");
        println!("    ip netns exec {ns} {wardctl} policy show {op}");
        println!("    ip netns exec {ns} {wardctl} keys list {op}");
        println!("    ip netns exec {ns} {wardctl} update status {op}");
        println!(
            "    ip netns exec {ns} {wardctl} audit verify --all --reference {reference} {op}"
        );
        println!(
            "    ip netns exec {ns} curl -s --cacert {} --cert {} --key {} {}/v1/peers",
            site.node.ca().display(),
            tls.join("operator.crt").display(),
            tls.join("operator.key").display(),
            site.node.url()
        );
    }
    println!("\n  traffic (acme, allowed; with python3 and curl) and the wire:");
    println!(
        "    ip netns exec {} python3 -m http.server --bind {ACME_B} 5001 &",
        teardown::KEPT_NAMES[1]
    );
    println!(
        "    ip netns exec {} curl --interface {ACME_A} http://{ACME_B}:5001/",
        teardown::KEPT_NAMES[0]
    );
    println!(
        "    ip netns exec {} tcpdump -ni wire     # ESP-in-UDP :4500 and the control channel :4501",
        teardown::KEPT_NAMES[1]
    );
    match script {
        Ok(s) => println!("\n  tear it all down:  sh {}", s.display()),
        Err(e) => println!(
            "\n  writing the teardown script failed ({e}); tear down by hand: kill the processes \
             of `ip netns pids warden-demo-a` and `…-b`, `ip netns delete` both, rm -rf {}",
            d.root.display()
        ),
    }
    // Everything stays: processes, namespaces, files.
    std::mem::forget(d);
}
