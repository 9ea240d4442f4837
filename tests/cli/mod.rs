//! Running wardctl from tests.
#![allow(dead_code, clippy::expect_used)]

use std::process::{Command, Output};

/// Run the wardctl built for this test run.
pub fn wardctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardctl"))
        .args(args)
        .output()
        .expect("running wardctl")
}

/// Exit status and both streams, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `wardctl reference capture` of the appliance at `url` into `out`; panics if it fails.
#[allow(clippy::panic)]
pub fn capture_reference(url: &str, ca: &std::path::Path, out: &std::path::Path) {
    let o = wardctl(&[
        "reference",
        "capture",
        "--url",
        url,
        "--ca",
        ca.to_str().expect("a UTF-8 path"),
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    if !o.status.success() {
        panic!("capturing reference values failed: {}", text(&o));
    }
}
