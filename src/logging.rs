//! Process-wide logging: `tracing` events to stderr, as human-readable lines or JSON lines.
//!
//! The level comes from the configuration (`[log] level`, an `EnvFilter` directive such as
//! `info` or `warden=debug,hyper=warn`); a non-empty `RUST_LOG` replaces it. Both go to stderr
//! so that stdout stays free for command output (`wardctl`) and a supervisor (systemd, a
//! container runtime) collects the log from one stream.

use anyhow::Context;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The environment variable that overrides the configured level when set and not empty.
pub const OVERRIDE_VAR: &str = "RUST_LOG";

/// Parses a filter directive; used by config validation so a bad level fails at load time.
pub fn parse_filter(directive: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder().parse(directive)
}

/// Installs the global subscriber. Fails if the level (or `RUST_LOG`) is not a valid filter
/// directive, or if a global subscriber is already installed.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var(OVERRIDE_VAR) {
        Ok(directive) if !directive.trim().is_empty() => parse_filter(&directive)
            .with_context(|| format!("{OVERRIDE_VAR}={directive:?} is not a valid log filter"))?,
        _ => parse_filter(level)
            .with_context(|| format!("log level {level:?} is not a valid log filter"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_directives_are_checked() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warden=debug,hyper=warn").is_ok());
        assert!(parse_filter("warden=loud").is_err());
    }

    #[test]
    fn init_rejects_a_bad_level_and_installs_once() {
        // Only this test installs a global subscriber in this test binary.
        if std::env::var(OVERRIDE_VAR).is_ok_and(|v| !v.trim().is_empty()) {
            eprintln!("skipping: {OVERRIDE_VAR} is set and would override the level under test");
            return;
        }
        let err = init(LogFormat::Json, "warden=loud").unwrap_err();
        assert!(format!("{err:#}").contains("warden=loud"), "{err:#}");
        init(LogFormat::Json, "warn").unwrap();
        tracing::warn!(check = 1, "logging works");
        assert!(
            init(LogFormat::Human, "info").is_err(),
            "a second init must fail"
        );
    }
}
