//! Every folder under tests/data is one attack (or a control that must pass): the real client
//! runs on its trusted state and repository, then the image is streamed through the verifier.
//! The refusal must carry the named reason in `expect`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read as _;
use std::path::{Path, PathBuf};

use warden_firmware_update::client::{check_update, Request, TrustedState};
use warden_firmware_update::image::ImageVerifier;
use warden_firmware_update::repo::DirRepository;
use warden_firmware_update::time::{parse_rfc3339, TrustedTime};
use warden_firmware_update::UpdateError;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Run one fixture; `Ok(target name)` or the refusal.
fn run(dir: &Path) -> Result<String, UpdateError> {
    let state = TrustedState::from_json(&std::fs::read(dir.join("trusted.json")).unwrap()).unwrap();
    let req: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("request.json")).unwrap()).unwrap();
    let now = parse_rfc3339("now", req["now"].as_str().unwrap()).unwrap();
    let mut repo = DirRepository::new(&dir.join("repo"));
    let release = check_update(
        &state,
        &mut repo,
        &TrustedTime::Known(now),
        &Request {
            component: req["component"].as_str().unwrap(),
            hardware_id: req["hardware_id"].as_str().unwrap(),
            target: None,
            floor: req["floor"].as_u64().unwrap(),
        },
    )?;
    let mut verifier = ImageVerifier::new(&release);
    let path = repo.target_path(release.target_name()).unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = [0u8; 7];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
    }
    verifier.finish()?;
    Ok(release.target_name().to_owned())
}

fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expect").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_attack_is_refused_with_its_named_reason() {
    let dirs = fixtures();
    assert!(dirs.len() >= 20, "fixtures missing: {}", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let expect = std::fs::read_to_string(dir.join("expect")).unwrap();
        let expect = expect.trim();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        match (run(dir), expect) {
            (Ok(_), "ok") => println!("{name:<28} accepted"),
            (Ok(t), _) => failures.push(format!("{name}: accepted {t}, expected {expect}")),
            (Err(e), "ok") => failures.push(format!("{name}: refused ({}): {e}", e.reason())),
            (Err(e), want) if e.reason() == want => println!("{name:<28} refused ({want}): {e}"),
            (Err(e), want) => failures.push(format!(
                "{name}: refused as {} ({e}), expected {want}",
                e.reason()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The controls are really accepted: without them an attack folder could "pass" for any bug.
#[test]
fn the_controls_are_accepted() {
    for name in ["valid", "valid-x509", "valid-root-rotation"] {
        assert_eq!(run(&data().join(name)).unwrap(), "fw-2.0.0.img", "{name}");
    }
}

/// Endless data: a repository whose timestamp never ends (a symlink to /dev/zero) costs at
/// most the limit + 1 bytes and is refused as too large.
#[test]
fn endless_metadata_is_cut_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = data().join("valid");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("targets")).unwrap();
    for f in ["1.root.json", "snapshot.json", "targets.json"] {
        std::fs::copy(src.join("repo").join(f), repo.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("/dev/zero", repo.join("timestamp.json")).unwrap();
    std::fs::copy(src.join("trusted.json"), tmp.path().join("trusted.json")).unwrap();
    std::fs::copy(src.join("request.json"), tmp.path().join("request.json")).unwrap();
    let e = run(tmp.path()).unwrap_err();
    assert_eq!(e.reason(), "too-large", "{e}");
}

/// Without a trusted clock, only what expired before the stored floor is refused; with the
/// floor after the expiry, the freeze is still caught.
#[test]
fn unknown_time_uses_the_floor() {
    let dir = data().join("freeze-old-timestamp");
    let state = TrustedState::from_json(&std::fs::read(dir.join("trusted.json")).unwrap()).unwrap();
    let req = |floor| {
        let mut repo = DirRepository::new(&dir.join("repo"));
        check_update(
            &state,
            &mut repo,
            &TrustedTime::Unknown { floor },
            &Request {
                component: "firmware",
                hardware_id: "bf3-dpu-rev1",
                target: None,
                floor: 0,
            },
        )
    };
    // 2024: the timestamp (expired 2025-01-01) might still be valid: accepted.
    assert!(req(1_704_067_200).is_ok());
    // 2026: certainly expired.
    assert_eq!(req(1_767_225_600).unwrap_err().reason(), "expired");
}

/// The trusted state a successful update hands back carries the new metadata and the time
/// floor, and it verifies as trusted state again.
#[test]
fn new_state_is_consistent() {
    let dir = data().join("valid-root-rotation");
    let state = TrustedState::from_json(&std::fs::read(dir.join("trusted.json")).unwrap()).unwrap();
    let mut repo = DirRepository::new(&dir.join("repo"));
    let now = 1_893_456_000;
    let r = check_update(
        &state,
        &mut repo,
        &TrustedTime::Known(now),
        &Request {
            component: "firmware",
            hardware_id: "bf3-dpu-rev1",
            target: Some("fw-2.0.0.img"),
            floor: 0,
        },
    )
    .unwrap();
    assert_eq!(r.root_version(), 2);
    assert_eq!(r.new_state.time_floor, now);
    let parsed = r.new_state.parse().unwrap();
    assert_eq!(parsed.root.common.version, 2);
    assert!(parsed.targets.is_some());
    // A second run from the new state accepts the same release (equal versions are fine).
    let again = check_update(
        &r.new_state,
        &mut repo,
        &TrustedTime::Known(now),
        &Request {
            component: "firmware",
            hardware_id: "bf3-dpu-rev1",
            target: None,
            floor: 2,
        },
    )
    .unwrap();
    assert_eq!(again.target().svn, 2);
    // Unknown target name.
    let e = check_update(
        &r.new_state,
        &mut repo,
        &TrustedTime::Known(now),
        &Request {
            component: "firmware",
            hardware_id: "bf3-dpu-rev1",
            target: Some("nope.img"),
            floor: 0,
        },
    )
    .unwrap_err();
    assert_eq!(e.reason(), "no-target");
}
