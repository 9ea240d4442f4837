//! The Debian package: `cargo deb` builds it from the binaries of this build; it is unpacked
//! into a clean directory tree with `dpkg -x`, and what it installs must work there: the
//! binaries run and answer `--help`, the shipped default configuration validates, the systemd
//! unit starts the installed binary on the installed configuration with the hardening the
//! operations guide promises, and the unpacked wardend starts on a TPM and serves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{tools_or_skip, Node};

/// `cargo deb` must be there in CI (scripts/deps.sh installs it); elsewhere the test skips.
fn cargo_deb_or_skip() -> bool {
    let ok = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo-deb is required in CI (scripts/deps.sh installs it)"
        );
        eprintln!("skipping: cargo-deb is not installed (run scripts/deps.sh)");
    }
    ok
}

/// Build the package from this build's binaries (no rebuild) into `out`.
fn build_deb(out: &Path) -> PathBuf {
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_wardend"))
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let profile = if profile_dir == "debug" {
        "dev"
    } else {
        profile_dir.as_str()
    };
    let o = Command::new("cargo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--profile",
            profile,
            "-o",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo deb failed: {}", cli::text(&o));
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let o = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", cli::text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// `Key=value` lines of a unit file section, in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_package_installs_into_a_clean_tree_and_starts() {
    if !cargo_deb_or_skip() || !tools_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(&tmp.path().join("out"));

    // Control data: dependencies on the TPM and netfilter libraries, the config as a conffile,
    // the maintainer scripts that create the user.
    let control = dpkg_deb(&["-f"], &deb);
    for dep in [
        "libtss2-esys-3.0.2-0",
        "libtss2-tctildr0",
        "libnftnl11",
        "libmnl0",
        "adduser",
    ] {
        assert!(control.contains(dep), "Depends lacks {dep}:\n{control}");
    }
    let ctl = tmp.path().join("control");
    let o = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctl)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", cli::text(&o));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/warden/wardend.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system") && postinst.contains("warden"));
    for script in ["postinst", "postrm"] {
        let o = Command::new("sh")
            .arg("-n")
            .arg(ctl.join(script))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script} is not valid sh: {}",
            cli::text(&o)
        );
    }

    // Unpack into a clean tree.
    let root = tmp.path().join("root");
    let o = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", cli::text(&o));
    let wardend = root.join("usr/bin/wardend");
    let wardctl = root.join("usr/bin/wardctl");
    for f in [
        "usr/bin/wardend",
        "usr/bin/wardctl",
        "etc/warden/wardend.toml",
        "usr/lib/systemd/system/wardend.service",
        "usr/share/doc/warden/config.example.toml",
        "usr/share/doc/warden/operations.md",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the package");
    }

    // The binaries run and explain themselves.
    for (bin, needle) in [(&wardend, "--check-config"), (&wardctl, "update")] {
        let o = Command::new(bin).arg("--help").output().unwrap();
        assert!(
            o.status.success() && cli::text(&o).contains(needle),
            "{}",
            cli::text(&o)
        );
    }
    // The shipped default configuration is valid as installed.
    let o = Command::new(&wardend)
        .arg("--check-config")
        .arg("--config")
        .arg(root.join("etc/warden/wardend.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", cli::text(&o));
    // A broken one is refused with its position (the check can fail).
    let broken = tmp.path().join("broken.toml");
    std::fs::write(&broken, "name = \"x\"\nstate_dir = 5\n").unwrap();
    let o = Command::new(&wardend)
        .arg("--check-config")
        .arg("--config")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", cli::text(&o));

    // The unit runs the installed binary on the installed config, hardened.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/wardend.service")).unwrap();
    let settings = unit_settings(&unit);
    let has = |k: &str, v: &str| settings.iter().any(|(a, b)| a == k && b == v);
    assert!(
        has(
            "ExecStart",
            "/usr/bin/wardend --config /etc/warden/wardend.toml"
        ),
        "{unit}"
    );
    for (k, v) in [
        ("User", "warden"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        ("AmbientCapabilities", "CAP_NET_ADMIN"),
        ("DevicePolicy", "closed"),
        ("StateDirectory", "warden"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert!(has(k, v), "unit lacks {k}={v}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(root.join("usr/lib/systemd/system/wardend.service"))
            .output()
            .unwrap();
        // Only syntax errors matter here: the unpacked tree is not installed at /usr/bin.
        let text = cli::text(&o);
        assert!(
            !text.contains("Unknown key") && !text.contains("Failed to parse"),
            "{text}"
        );
    }

    // The unpacked wardend starts on a TPM and serves; the unpacked wardctl talks to it.
    let node = Node::start(&wardend, "pkg-node");
    let o = Command::new(&wardctl)
        .args(["identity", "--url", &node.url(), "--ca"])
        .arg(node.ca())
        .output()
        .unwrap();
    assert!(
        o.status.success() && cli::text(&o).contains("pkg-node"),
        "{}",
        cli::text(&o)
    );
}
