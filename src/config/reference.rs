//! docs/config.example.toml is the configuration reference; these tests hold it to the
//! configuration types in both directions:
//! - every key it documents (set, or commented out as `# key = value`) is accepted by the types
//!   (they refuse unknown keys);
//! - every key the types accept is documented in its section. The accepted keys come from the
//!   types themselves: a probe key makes serde list every field of that table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::Config;

const EXAMPLE: &str = include_str!("../../docs/config.example.toml");

/// The example with every commented-out `# key = value` line made live (and `production`
/// off, which the `insecure_*` test aids need).
fn uncommented() -> String {
    EXAMPLE
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            _ if l == "production = true" => "production = false".to_owned(),
            Some(rest) if is_assignment(rest) => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_assignment(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Documented keys per section ("" is the top level).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    out.insert(String::new(), BTreeSet::new());
    for line in uncommented().lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            // A dotted section documents its parent table's key too.
            let mut parent = String::new();
            for part in name.split('.') {
                out.entry(parent.clone())
                    .or_default()
                    .insert(part.to_owned());
                parent = if parent.is_empty() {
                    part.to_owned()
                } else {
                    format!("{parent}.{part}")
                };
            }
            out.entry(section.clone()).or_default();
        } else if is_assignment(line) {
            if let Some((k, _)) = line.split_once(" = ") {
                out.entry(section.clone()).or_default().insert(k.to_owned());
            }
        }
    }
    out
}

/// The keys the types accept in `section`, from serde's unknown-field message.
fn accepted(section: &str) -> BTreeSet<String> {
    let text = uncommented();
    let probe = "zz_probe = 1";
    let header = format!("[{section}]\n");
    let probed = if section.is_empty() {
        format!("{probe}\n{text}")
    } else if text.contains(&header) {
        text.replacen(&header, &format!("{header}{probe}\n"), 1)
    } else {
        // A table only implied by a dotted header ([audit] by [audit.syslog]): define it.
        format!("{text}\n{header}{probe}\n")
    };
    let e = match Config::from_str(&probed, Path::new("example.toml")) {
        Ok(_) => panic!("section [{section}] accepted a probe key"),
        Err(e) => e.to_string(),
    };
    let list = e
        .split_once("expected one of ")
        .or_else(|| e.split_once("expected "))
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("no field list in {e:?}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_documented_key_is_accepted() {
    Config::from_str(&uncommented(), Path::new("docs/config.example.toml"))
        .expect("the example with its commented keys made live must be valid");
}

#[test]
fn every_accepted_key_is_documented() {
    let doc = documented();
    let mut missing = Vec::new();
    for (section, keys) in &doc {
        for key in accepted(section) {
            if !keys.contains(&key) {
                missing.push(if section.is_empty() {
                    key
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config.example.toml does not document: {missing:?}"
    );
}

#[test]
fn the_probe_finds_fields() {
    // The field lists really come from the types (the test above can fail).
    let top = accepted("");
    assert!(
        top.contains("name") && top.contains("state_dir") && top.contains("updates"),
        "{top:?}"
    );
    let updates = accepted("updates");
    assert!(
        updates.contains("insecure_crash_at") && updates.contains("clock"),
        "{updates:?}"
    );
    assert!(!documented()["updates"].contains("zz_probe"));
}
