//! wardend: the Warden appliance daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warden::config::Config;

/// The Warden appliance daemon: attests itself through the TPM and serves the tenant API.
#[derive(Parser, Debug)]
#[command(name = "wardend", version, about)]
struct Args {
    /// Configuration file (TOML; see docs/config.example.toml).
    #[arg(
        short,
        long,
        env = "WARDEN_CONFIG",
        default_value = "/etc/warden/wardend.toml"
    )]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wardend: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = warden::logging::init(config.log.format, &config.log.level) {
        eprintln!("wardend: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warden::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "wardend failed");
            eprintln!("wardend: {e:#}");
            ExitCode::FAILURE
        }
    }
}
