//! wardctl: the operator and tenant command line for Warden appliances.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use warden::client::{self, Client};
use warden_attest::binding::Nonce;
use warden_attest::tpm2::Public;
use warden_attest::verify::Check;

#[derive(Parser, Debug)]
#[command(
    name = "wardctl",
    version,
    about = "Talk to Warden appliances: verify them, inspect them"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Conn {
    /// Appliance API, e.g. https://192.0.2.10:8443
    #[arg(long, env = "WARDEN_URL")]
    url: String,
    /// CA certificate (PEM) the appliance's TLS certificate must chain to.
    #[arg(long, env = "WARDEN_CA")]
    ca: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify an appliance: send a fresh nonce, check its TPM evidence against reference values.
    Attest {
        #[command(flatten)]
        conn: Conn,
        /// Reference values (TOML; see docs/attestation.md).
        #[arg(long)]
        reference: PathBuf,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// Remember the TPM clock of each accepted appliance in FILE and refuse evidence older
        /// than the last accepted (replayed or rolled-back evidence).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Show an appliance's identity (AK, EK certificate, TLS key, result key).
    Identity {
        #[command(flatten)]
        conn: Conn,
    },
    /// Reference values.
    Reference {
        #[command(subcommand)]
        command: ReferenceCommand,
    },
    /// Certificates for demos and tests.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ReferenceCommand {
    /// Record a known-good appliance's current state as reference values (trust on first use).
    Capture {
        #[command(flatten)]
        conn: Conn,
        /// Where to write the reference values.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Write a demo CA, a server certificate and an operator client certificate into DIR.
    Demo {
        #[arg(long)]
        out: PathBuf,
        /// Server names (DNS or IP) besides 127.0.0.1 and localhost.
        #[arg(long)]
        name: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wardctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Attest {
            conn,
            reference,
            json,
            state,
        } => attest(conn, reference, json, state).await,
        Command::Identity { conn } => {
            let id = Client::new(&conn.url, &conn.ca)?.identity().await?;
            println!("{}", serde_json::to_string_pretty(&id)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reference {
            command: ReferenceCommand::Capture { conn, out },
        } => {
            let client = Client::new(&conn.url, &conn.ca)?;
            let reference = client::capture_reference(&client, None).await?;
            std::fs::write(&out, reference.to_toml())
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote reference values for {} PCRs and {} appliance events to {}",
                reference.pcrs.len() + 1,
                reference.appliance_events.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki {
            command: PkiCommand::Demo { out, name },
        } => {
            let pki = warden::pki::generate_demo_pki(&out, &name)?;
            println!(
                "wrote CA, server and operator certificates to {}",
                pki.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

const ALL_CHECKS: [Check; 16] = [
    Check::Decode,
    Check::AkAttributes,
    Check::AkPin,
    Check::SignatureScheme,
    Check::Signature,
    Check::Magic,
    Check::AttestType,
    Check::Binding,
    Check::PcrBank,
    Check::PcrSelection,
    Check::PcrValues,
    Check::PcrDigest,
    Check::Clock,
    Check::ApplianceLog,
    Check::EventLog,
    Check::ReferenceValues,
];

async fn attest(
    conn: Conn,
    reference: PathBuf,
    json: bool,
    state_path: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let reference = client::load_reference(&reference)?;
    let client = Client::new(&conn.url, &conn.ca)?;
    let mut state = match &state_path {
        Some(p) => Some(client::VerifierState::load(p)?),
        None => None,
    };
    let nonce = Nonce::random()?;
    let fetched = client.evidence(&nonce, Some(reference.selection())).await?;
    let ak_name = Public::decode(&fetched.evidence.ak_public)
        .ok()
        .and_then(|p| p.name())
        .map(hex::encode)
        .unwrap_or_default();
    let previous = state.as_ref().and_then(|s| s.clocks.get(&ak_name).copied());
    let outcome = client::verify_fetched_after(&fetched, nonce, &reference, previous);
    if let (Some(state), Some(path), Ok(v)) = (state.as_mut(), &state_path, &outcome) {
        state.clocks.insert(ak_name.clone(), v.clock);
        state.save(path)?;
    }
    // Checks that had nothing to check are shown as such, not as passed.
    let not_applicable = |c: Check| -> Option<&'static str> {
        match c {
            Check::AkPin if reference.ak_name.is_none() => {
                Some("no ak_name in the reference values")
            }
            Check::Clock if previous.is_none() => {
                Some("no earlier result for this AK (see --state)")
            }
            Check::EventLog
                if fetched.evidence.tcg_event_log.is_none() && reference.tcg_events.is_empty() =>
            {
                Some("the platform has no event log")
            }
            _ => None,
        }
    };
    if json {
        let v = match &outcome {
            Ok(v) => serde_json::json!({
                "verdict": "pass",
                "ak_name": hex::encode(&v.ak_name),
                "pcr_digest": hex::encode(&v.pcr_digest),
                "reset_count": v.clock.reset_count,
                "appliance_events": v.appliance_log,
            }),
            Err(r) => serde_json::json!({
                "verdict": "fail",
                "failures": r.failures.iter().map(|f| serde_json::json!({
                    "check": f.check().name(), "message": f.to_string()
                })).collect::<Vec<_>>(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("appliance  {}", conn.url);
        match &outcome {
            Ok(v) => {
                println!("ak         {}", hex::encode(&v.ak_name));
                println!(
                    "pcrs       {} ({} quoted, digest {})",
                    v.bank,
                    v.pcrs.len(),
                    hex::encode(&v.pcr_digest)
                );
                for e in &v.appliance_log {
                    println!("measured   {} {}", e.kind, e.detail);
                }
                for c in ALL_CHECKS {
                    match not_applicable(c) {
                        Some(why) => println!("  n/a {} ({why})", c.name()),
                        None => println!("  ok  {}", c.name()),
                    }
                }
                println!("verdict    PASS: the appliance is in a state the reference values allow");
            }
            Err(r) => {
                for f in &r.failures {
                    println!("  FAIL [{}] {f}", f.check().name());
                }
                println!(
                    "verdict    FAIL: {} check(s) failed; do not trust this appliance",
                    r.failures.len()
                );
            }
        }
    }
    Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
