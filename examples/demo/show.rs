//! Printing the story: step headers, narration, commands with their output, the summary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::cluster::{output_text, Site};

/// The demo directory, shown as `$DEMO` in printed paths.
static ROOT: OnceLock<PathBuf> = OnceLock::new();
/// The wardctl binary.
static WARDCTL: OnceLock<PathBuf> = OnceLock::new();

pub fn init(root: &Path, wardctl: &Path) {
    let _ = ROOT.set(root.to_owned());
    let _ = WARDCTL.set(wardctl.to_owned());
}

/// `text` with the demo directory written as `$DEMO`.
pub fn short(text: &str) -> String {
    match ROOT.get().and_then(|r| r.to_str()) {
        Some(root) => text.replace(root, "$DEMO"),
        None => text.to_owned(),
    }
}

/// `s` in the ANSI style `code` when stdout is a terminal.
fn styled(code: &str, s: &str) -> String {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

pub fn bold(s: &str) -> String {
    styled("1", s)
}

pub fn green(s: &str) -> String {
    styled("32", s)
}

pub fn red(s: &str) -> String {
    styled("31", s)
}

pub fn header(n: &str, title: &str) {
    println!("\n{}", bold(&format!("[{n}] {title}")));
}

/// A line of narration.
pub fn say(text: &str) {
    for line in text.lines() {
        println!("    {}", short(line));
    }
}

/// Output, indented, at most `max` lines (then how many were left out; nothing for 0).
pub fn output(text: &str, max: usize) {
    if max == 0 {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().take(max) {
        println!("      {}", short(line));
    }
    if lines.len() > max {
        println!("      … ({} more lines)", lines.len() - max);
    }
}

/// Who runs a wardctl command against a node.
#[derive(Clone, Copy, Debug)]
pub enum As<'a> {
    /// No client certificate (attestation is open to anyone who trusts the CA).
    Anyone,
    Operator,
    Tenant(&'a str),
}

/// `wardctl <args>` inside `site`'s namespace as `who` (the connection arguments are added,
/// and left out of what is printed); prints the command and at most `max` lines of output.
/// Returns (success, stdout + stderr).
pub fn wardctl(site: &Site, who: As, args: &[&str], max: usize) -> (bool, String) {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let conn = match who {
        As::Anyone => site.connection(None)[..4].to_vec(),
        As::Operator => site.connection(None),
        As::Tenant(t) => site.connection(Some(&format!("warden:tenant:{t}"))),
    };
    all.extend(conn);
    let caller = match who {
        As::Anyone => String::new(),
        As::Operator => ", as the operator".to_owned(),
        As::Tenant(t) => format!(", as tenant {t}"),
    };
    println!(
        "    $ wardctl {}    [{}{caller}]",
        short(&args.join(" ")),
        site.node.name
    );
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    finish(&site.wardctl(&all), max)
}

/// `wardctl <args>` on this machine (the vendor's release tool).
pub fn host_wardctl(args: &[&str], max: usize) -> (bool, String) {
    println!("    $ wardctl {}    [vendor]", short(&args.join(" ")));
    let Some(bin) = WARDCTL.get() else {
        return (false, "wardctl not set".into());
    };
    match Command::new(bin).args(args).output() {
        Ok(o) => finish(&o, max),
        Err(e) => (false, format!("running wardctl: {e}")),
    }
}

/// The lines of wardctl's output that say how a verification ended (failures, verdict).
pub fn verdict_lines(text: &str) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAIL") || l.trim_start().starts_with("verdict"))
        .collect();
    output(&lines.join("\n"), 6);
}

fn finish(o: &Output, max: usize) -> (bool, String) {
    let text = output_text(o);
    output(&text, max);
    (o.status.success(), text)
}

/// One row of the summary.
pub struct Row {
    pub step: String,
    pub expected: String,
    pub result: Result<String, String>,
    pub secs: f64,
}

/// The summary table; long cells wrap inside their column.
pub fn summary(rows: &[Row]) {
    println!("\n{}", bold("Summary"));
    let (w_step, w_exp, w_res) = (26, 38, 46);
    let line = format!(
        "    +-{}-+-{}-+-{}-+--------+",
        "-".repeat(w_step),
        "-".repeat(w_exp),
        "-".repeat(w_res)
    );
    println!("{line}");
    println!(
        "    | {:<w_step$} | {:<w_exp$} | {:<w_res$} |   time |",
        "step", "expected", "result"
    );
    println!("{line}");
    for row in rows {
        let (ok, text) = match &row.result {
            Ok(t) => (true, format!("ok: {t}")),
            Err(e) => (false, format!("FAILED: {e}")),
        };
        let step = wrap(&row.step, w_step);
        let expected = wrap(&row.expected, w_exp);
        let result = wrap(&text, w_res);
        let n = step.len().max(expected.len()).max(result.len());
        for i in 0..n {
            let cell = |v: &[String]| v.get(i).cloned().unwrap_or_default();
            let r = format!("{:<w_res$}", cell(&result));
            let r = match (i, ok) {
                (0, true) => r.replacen("ok", &green("ok"), 1),
                (0, false) => r.replacen("FAILED", &red("FAILED"), 1),
                _ => r,
            };
            let time = if i == 0 {
                format!("{:5.1}s", row.secs)
            } else {
                String::new()
            };
            println!(
                "    | {:<w_step$} | {:<w_exp$} | {r} | {time:>6} |",
                cell(&step),
                cell(&expected)
            );
        }
        println!("{line}");
    }
}

/// Words of `text` in lines of at most `width` characters (longer words are cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_owned();
        while word.chars().count() > width {
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            lines.push(head);
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}
