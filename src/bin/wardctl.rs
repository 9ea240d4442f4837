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

impl Conn {
    /// A client, with the optional client certificate.
    fn client(&self, cert: &OptionalCert) -> anyhow::Result<Client> {
        match (&cert.cert, &cert.key) {
            (Some(c), Some(k)) => Client::with_identity(&self.url, &self.ca, c, k),
            (None, None) => Client::new(&self.url, &self.ca),
            _ => anyhow::bail!("--cert and --key go together"),
        }
    }
}

/// An optional client certificate: the appliance then records requests as its holder's.
#[derive(clap::Args, Debug)]
struct OptionalCert {
    /// Client certificate (PEM) with a warden:tenant:… or warden:operator:… identity.
    #[arg(long = "cert", id = "client_cert")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "key", id = "client_key")]
    key: Option<PathBuf>,
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
        #[command(flatten)]
        identity: OptionalCert,
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
    /// The audit log: checkpoints, entries, verification (needs a client certificate).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The tenant key vault (docs/keys.md): tenants provision, list, retire and delete their
    /// keys; operators list, rotate, disable and enable them (never seeing material).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The microsegmentation policy (docs/policy.md): validate a file, and diff, apply or
    /// show an appliance's policy (operator certificate).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Signed firmware updates on an appliance (docs/updates.md; operator certificate).
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// One screen about an appliance: readiness, attestation, policy, peers, keys, firmware,
    /// audit log, data plane (operator certificate; docs/operations.md).
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// A live per-tenant view of rates, drops and limit hits, and the busiest flows, redrawn
    /// like `top` (operator certificate; docs/telemetry.md).
    Top {
        /// Seconds between screens.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Screens to show, then exit (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Flows to list (at most 100).
        #[arg(long, default_value_t = 10)]
        flows: usize,
        /// Print one answer as JSON and exit.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// The release signing tool: keys, repository, releases (docs/updates.md).
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
}

#[derive(Subcommand, Debug)]
enum UpdateCommand {
    /// Upload a release repository (metadata and images) to the appliance's update inbox.
    Publish {
        /// The repository directory (`wardctl release init|add` write it).
        repo: PathBuf,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Verify the published release and write it to the free slot; it boots on trial at the
    /// next start.
    Stage {
        /// A target by name (default: the highest SVN for the appliance's component).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Slots, the TPM security floor, trusted metadata.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Mark the slot running on trial good and raise the TPM floor to its SVN.
    Commit {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
}

#[derive(Subcommand, Debug)]
enum ReleaseCommand {
    /// Generate signing keys for the four roles (k-of-n per role).
    Keygen {
        /// Directory for the keys (created; must not hold keys yet).
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value = "ed25519")]
        algorithm: String,
        /// Root keys and threshold, as N:K (e.g. 3:2).
        #[arg(long, default_value = "1:1")]
        root: String,
        #[arg(long, default_value = "1:1")]
        timestamp: String,
        #[arg(long, default_value = "1:1")]
        snapshot: String,
        #[arg(long, default_value = "1:1")]
        targets: String,
    },
    /// Start a repository: sign root version 1.
    Init {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        /// Days until the root expires.
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Sign a release: add the image as a target and publish new targets, snapshot and
    /// timestamp metadata.
    Add {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        /// The image file.
        #[arg(long)]
        image: PathBuf,
        /// Target name (letters, digits, `._-`, `/` between segments).
        #[arg(long)]
        name: String,
        #[arg(long)]
        hardware_id: String,
        #[arg(long, default_value = "firmware")]
        component: String,
        /// Security version number: the anti-rollback floor after commit.
        #[arg(long)]
        svn: u64,
        /// Release version, for people.
        #[arg(long)]
        release: String,
        #[arg(long, default_value_t = 90)]
        expires_days: i64,
        #[arg(long, default_value_t = 7)]
        timestamp_expires_days: i64,
    },
    /// Re-sign the timestamp only (keep a repository fresh).
    Timestamp {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, default_value_t = 7)]
        expires_days: i64,
    },
    /// Write the next root version for new keys, signed by the old and the new root keys.
    RotateRoot {
        #[arg(long)]
        old_keys: PathBuf,
        #[arg(long)]
        new_keys: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
}

fn threshold_arg(role: &str, v: &str) -> anyhow::Result<(usize, u32)> {
    let (n, k) = v
        .split_once(':')
        .with_context(|| format!("--{role} {v:?}: use N:K, e.g. 3:2"))?;
    Ok((
        n.parse()
            .with_context(|| format!("--{role} {v:?}: N is not a number"))?,
        k.parse()
            .with_context(|| format!("--{role} {v:?}: K is not a number"))?,
    ))
}

async fn update(command: UpdateCommand) -> anyhow::Result<ExitCode> {
    use warden::update_client as uc;
    let http = |conn: &Conn, cert: &ClientCert| {
        warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)
    };
    match command {
        UpdateCommand::Publish { repo, conn, cert } => {
            uc::publish(&http(&conn, &cert)?, conn.url.trim_end_matches('/'), &repo).await
        }
        UpdateCommand::Stage { target, conn, cert } => {
            uc::stage(&http(&conn, &cert)?, conn.url.trim_end_matches('/'), target).await
        }
        UpdateCommand::Status { json, conn, cert } => {
            uc::status(&http(&conn, &cert)?, conn.url.trim_end_matches('/'), json).await
        }
        UpdateCommand::Commit { conn, cert } => {
            uc::commit(&http(&conn, &cert)?, conn.url.trim_end_matches('/')).await
        }
    }
}

fn release(command: ReleaseCommand) -> anyhow::Result<ExitCode> {
    use warden::update_client as uc;
    match command {
        ReleaseCommand::Keygen {
            keys,
            algorithm,
            root,
            timestamp,
            snapshot,
            targets,
        } => uc::keygen(
            &keys,
            &algorithm,
            [
                threshold_arg("root", &root)?,
                threshold_arg("timestamp", &timestamp)?,
                threshold_arg("snapshot", &snapshot)?,
                threshold_arg("targets", &targets)?,
            ],
        ),
        ReleaseCommand::Init {
            keys,
            repo,
            expires_days,
        } => uc::init(&keys, &repo, expires_days),
        ReleaseCommand::Add {
            keys,
            repo,
            image,
            name,
            hardware_id,
            component,
            svn,
            release,
            expires_days,
            timestamp_expires_days,
        } => uc::add(
            &keys,
            &repo,
            &image,
            &name,
            &hardware_id,
            &component,
            svn,
            &release,
            expires_days,
            timestamp_expires_days,
        ),
        ReleaseCommand::Timestamp {
            keys,
            repo,
            expires_days,
        } => uc::refresh_timestamp(&keys, &repo, expires_days),
        ReleaseCommand::RotateRoot {
            old_keys,
            new_keys,
            repo,
            expires_days,
        } => uc::rotate_root(&old_keys, &new_keys, &repo, expires_days),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum KindArg {
    EastWest,
    Secret,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Provision a key: verify the appliance against reference values, then send the key
    /// wrapped to the appliance's attested one-use key (HPKE). Version 1 creates the key;
    /// `rotate` sends the next version.
    Put {
        key_id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
        /// Reference values the appliance must meet before it gets the key.
        #[arg(long)]
        reference: PathBuf,
        /// The key: a file with its raw bytes (1..=128); without it, 32 random bytes.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "secret")]
        kind: KindArg,
    },
    /// Send the next version of a key (the current one stays usable until retired). As an
    /// operator (--tenant), the appliance makes the new version itself.
    Rotate {
        key_id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
        /// Operators: whose key to rotate.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, required_unless_present = "tenant")]
        reference: Option<PathBuf>,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Keys, versions and states (never material).
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Retire an old version (tenants).
    Retire {
        key_id: String,
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Delete a key for good (tenants): sealed blobs and memory copies.
    Delete {
        key_id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Disable or enable a key (operators).
    Disable {
        key_id: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Check a policy file and print every problem with its line, column and a hint (exit 1
    /// if invalid). Locally by default, with the appliance's own code; with --url on the
    /// appliance.
    Validate {
        file: PathBuf,
        #[arg(long, env = "WARDEN_URL", requires_all = ["ca", "cert", "key"])]
        url: Option<String>,
        #[arg(long, env = "WARDEN_CA")]
        ca: Option<PathBuf>,
        #[arg(long, env = "WARDEN_CERT")]
        cert: Option<PathBuf>,
        #[arg(long, env = "WARDEN_KEY")]
        key: Option<PathBuf>,
    },
    /// What applying FILE would change: rules, segments, tenants and nodes added or removed.
    Diff {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Put FILE in force: validated, newer than the policy in force, installed atomically,
    /// measured and audited; on any failure the previous policy stays (exit 1).
    Apply {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// The policy in force: version, digest and rules (--document: the document itself).
    Show {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
        #[arg(long)]
        document: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ClientCert {
    /// Client certificate (PEM) carrying a warden:operator:… or warden:tenant:… identity.
    #[arg(long, env = "WARDEN_CERT")]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "WARDEN_KEY")]
    key: PathBuf,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Print the latest signed checkpoint (C2SP signed note).
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
    },
    /// Print entries START..END as JSON lines (a tenant sees only its own).
    Entries {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long)]
        end: Option<u64>,
    },
    /// Verify the log: the checkpoint's signature, consistency with a checkpoint saved
    /// earlier, and every entry (all of them with --all, else the caller's own with their
    /// inclusion proofs). Exit 1 if the log was rewritten, truncated or forked.
    Verify {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        cert: ClientCert,
        /// The audit log's verifier key (`name+keyid+key`).
        #[arg(long, conflicts_with = "reference")]
        vkey: Option<String>,
        /// Take the verifier key from reference values (the appliance measured it).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Checkpoint kept from the last run: the log must extend it; replaced on success.
        #[arg(long)]
        saved: Option<PathBuf>,
        /// Download every entry and recompute the root (operators).
        #[arg(long)]
        all: bool,
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
    /// Issue a client certificate (mTLS identity) from the demo CA in DIR, written to
    /// DIR/<role>-<name>.crt and .key.
    Client {
        /// Directory of the demo PKI (as written by `pki demo --out DIR`).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        holder: Holder,
    },
}

/// Whom a client certificate is for: exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct Holder {
    /// A tenant id (identity warden:tenant:ID).
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// An operator name (identity warden:operator:NAME).
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
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
        Command::Audit { command } => audit(command).await,
        Command::Policy { command } => policy(command).await,
        Command::Keys { command } => keys(command).await,
        Command::Update { command } => update(command).await,
        Command::Release { command } => release(command),
        Command::Status { json, conn, cert } => {
            let http = warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)?;
            warden::status_client::status(&http, conn.url.trim_end_matches('/'), json).await
        }
        Command::Top {
            interval,
            count,
            flows,
            json,
            conn,
            cert,
        } => {
            if !(interval.is_finite() && (0.1..=3600.0).contains(&interval)) {
                anyhow::bail!("--interval {interval}: use 0.1 to 3600 seconds");
            }
            let http = warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)?;
            warden::telemetry::top::run(
                &http,
                conn.url.trim_end_matches('/'),
                std::time::Duration::from_secs_f64(interval),
                count,
                flows,
                json,
            )
            .await
        }
        Command::Attest {
            conn,
            reference,
            json,
            state,
            identity,
        } => attest(conn, reference, json, state, identity).await,
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
        Command::Pki {
            command: PkiCommand::Client { dir, holder },
        } => {
            let identity = match (holder.tenant, holder.operator) {
                (Some(id), None) => warden::identity::Identity::Tenant(id),
                (None, Some(name)) => warden::identity::Identity::Operator(name),
                _ => anyhow::bail!("give exactly one of --tenant and --operator"),
            };
            let (cert, key) = warden::pki::issue_client_cert(&dir, &identity)?;
            println!(
                "wrote {} and {} for {}",
                cert.display(),
                key.display(),
                identity.uri()
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
    identity: OptionalCert,
) -> anyhow::Result<ExitCode> {
    let reference = client::load_reference(&reference)?;
    let client = conn.client(&identity)?;
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

fn read_key(file: Option<&std::path::Path>) -> anyhow::Result<warden_keys::KeyMaterial> {
    match file {
        None => warden_keys::KeyMaterial::random(32).map_err(|_| anyhow::anyhow!("no randomness")),
        Some(f) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            if bytes.is_empty() || bytes.len() > warden_keys::MAX_KEY_BYTES {
                anyhow::bail!(
                    "{}: a key is 1..={} bytes",
                    f.display(),
                    warden_keys::MAX_KEY_BYTES
                );
            }
            Ok(warden_keys::KeyMaterial::new(bytes))
        }
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use warden::keys_client as kc;
    let http = |conn: &Conn, cert: &ClientCert| {
        warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)
    };
    let base = |conn: &Conn| conn.url.trim_end_matches('/').to_owned();
    let kind_of = |k: KindArg| match k {
        KindArg::EastWest => warden_keys::KeyKind::EastWest,
        KindArg::Secret => warden_keys::KeyKind::Secret,
    };
    match command {
        KeysCommand::Put {
            key_id,
            conn,
            cert,
            reference,
            key_file,
            kind,
        } => {
            let tenant = kc::tenant_of_cert(&cert.cert)?;
            let reference = warden::client::load_reference(&reference)?;
            let key = read_key(key_file.as_deref())?;
            let p = kc::put(
                &http(&conn, &cert)?,
                &base(&conn),
                &tenant,
                &reference,
                &key_id,
                kind_of(kind),
                1,
                key.expose(),
            )
            .await?;
            println!(
                "provisioned {} version {} (tenant {tenant})",
                p.key_id, p.version
            );
        }
        KeysCommand::Rotate {
            key_id,
            conn,
            cert,
            tenant: Some(tenant),
            ..
        } => {
            let v = kc::call(
                &http(&conn, &cert)?,
                reqwest::Method::POST,
                format!("{}/v1/admin/keys/{tenant}/{key_id}/rotate", base(&conn)),
                None,
                "rotate",
            )
            .await?;
            let version = v
                .and_then(|v| v.get("version").cloned())
                .unwrap_or_default();
            println!("rotated {tenant}/{key_id}: version {version} made on the appliance");
        }
        KeysCommand::Rotate {
            key_id,
            conn,
            cert,
            tenant: None,
            reference,
            key_file,
        } => {
            let tenant = kc::tenant_of_cert(&cert.cert)?;
            let client = http(&conn, &cert)?;
            let current = kc::list(&client, &base(&conn))
                .await?
                .into_iter()
                .find(|k| k.key_id == key_id)
                .with_context(|| format!("no key {key_id:?}"))?;
            let next = current
                .versions
                .iter()
                .map(|v| v.version)
                .max()
                .unwrap_or(0)
                + 1;
            let reference = warden::client::load_reference(
                reference.as_deref().context("--reference is required")?,
            )?;
            let key = read_key(key_file.as_deref())?;
            let p = kc::put(
                &client,
                &base(&conn),
                &tenant,
                &reference,
                &key_id,
                current.kind,
                next,
                key.expose(),
            )
            .await?;
            println!("rotated {} to version {}", p.key_id, p.version);
        }
        KeysCommand::List { conn, cert } => {
            for k in kc::list(&http(&conn, &cert)?, &base(&conn)).await? {
                let versions: Vec<String> = k
                    .versions
                    .iter()
                    .map(|v| {
                        format!(
                            "v{} {:?}{}",
                            v.version,
                            v.state,
                            if v.available || v.state == warden::vault::VersionState::Retired {
                                ""
                            } else {
                                " (sealed, unavailable)"
                            }
                        )
                        .to_lowercase()
                    })
                    .collect();
                println!(
                    "{}/{} {}{}  {}",
                    k.tenant,
                    k.key_id,
                    k.kind.name(),
                    if k.disabled { " disabled" } else { "" },
                    versions.join(", ")
                );
            }
        }
        KeysCommand::Retire {
            key_id,
            version,
            conn,
            cert,
        } => {
            kc::call(
                &http(&conn, &cert)?,
                reqwest::Method::POST,
                format!("{}/v1/keys/{key_id}/retire", base(&conn)),
                Some(serde_json::json!({ "version": version })),
                "retire",
            )
            .await?;
            println!("retired {key_id} version {version}");
        }
        KeysCommand::Delete { key_id, conn, cert } => {
            kc::call(
                &http(&conn, &cert)?,
                reqwest::Method::DELETE,
                format!("{}/v1/keys/{key_id}", base(&conn)),
                None,
                "delete",
            )
            .await?;
            println!("deleted {key_id}");
        }
        KeysCommand::Disable {
            key_id,
            tenant,
            enable,
            conn,
            cert,
        } => {
            let verb = if enable { "enable" } else { "disable" };
            kc::call(
                &http(&conn, &cert)?,
                reqwest::Method::POST,
                format!("{}/v1/admin/keys/{tenant}/{key_id}/{verb}", base(&conn)),
                None,
                verb,
            )
            .await?;
            println!("{verb}d {tenant}/{key_id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    use warden::policy_client as pc;
    let http = |conn: &Conn, cert: &ClientCert| {
        warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)
    };
    match command {
        PolicyCommand::Validate {
            file, url: None, ..
        } => pc::validate_local(&file),
        PolicyCommand::Validate {
            file,
            url: Some(url),
            ca,
            cert,
            key,
        } => {
            let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
                anyhow::bail!("--url needs --ca, --cert and --key");
            };
            let client = warden::tls::client_with_identity(&ca, &cert, &key)?;
            pc::validate_remote(&client, url.trim_end_matches('/'), &file).await
        }
        PolicyCommand::Diff { file, conn, cert } => {
            pc::diff(&http(&conn, &cert)?, conn.url.trim_end_matches('/'), &file).await
        }
        PolicyCommand::Apply { file, conn, cert } => {
            pc::apply(&http(&conn, &cert)?, conn.url.trim_end_matches('/'), &file).await
        }
        PolicyCommand::Show {
            conn,
            cert,
            document,
        } => {
            pc::show(
                &http(&conn, &cert)?,
                conn.url.trim_end_matches('/'),
                document,
            )
            .await
        }
    }
}

async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let http = |conn: &Conn, cert: &ClientCert| {
        warden::tls::client_with_identity(&conn.ca, &cert.cert, &cert.key)
    };
    match command {
        AuditCommand::Checkpoint { conn, cert } => {
            let resp = http(&conn, &cert)?
                .get(format!(
                    "{}/v1/audit/checkpoint",
                    conn.url.trim_end_matches('/')
                ))
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                anyhow::bail!("checkpoint: {status}: {text}");
            }
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Entries {
            conn,
            cert,
            start,
            end,
        } => {
            let mut url = format!(
                "{}/v1/audit/entries?start={start}",
                conn.url.trim_end_matches('/')
            );
            if let Some(end) = end {
                url.push_str(&format!("&end={end}"));
            }
            let resp = http(&conn, &cert)?.get(url).send().await?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                anyhow::bail!("entries: {status}: {text}");
            }
            let page: warden::audit_api::EntriesResponse = serde_json::from_str(&text)?;
            for e in page.entries {
                println!(
                    "{}",
                    serde_json::json!({"seq": e.seq, "event": serde_json::from_str::<serde_json::Value>(&e.data).unwrap_or_default()})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            conn,
            cert,
            vkey,
            reference,
            saved,
            all,
        } => {
            let verifier = match (vkey, reference) {
                (Some(v), _) => warden_audit::checkpoint::NoteVerifier::from_vkey(&v)
                    .context("--vkey is not a signed-note verifier key")?,
                (None, Some(r)) => warden::audit_client::vkey_from_reference(&r)?,
                (None, None) => {
                    anyhow::bail!("give --vkey or --reference (which names the audit key)")
                }
            };
            let client = http(&conn, &cert)?;
            let base = conn.url.trim_end_matches('/');
            let result = warden::audit_client::verify(
                &client,
                base,
                &verifier,
                saved.as_deref(),
                all,
                |done, total| {
                    if total > 10_000 && done % 100_000 < 1_000 {
                        eprintln!("verified {done} of {total} entries");
                    }
                },
            )
            .await;
            match result {
                Ok(v) => {
                    println!(
                        "checkpoint  {} size {} root {}",
                        v.checkpoint.origin,
                        v.checkpoint.size,
                        hex::encode(v.checkpoint.root)
                    );
                    println!("  ok  signature ({})", verifier.name());
                    match v.extends {
                        Some(old) => println!("  ok  extends the saved checkpoint of size {old}"),
                        None => {
                            println!("  n/a consistency (no saved checkpoint; give --saved FILE)")
                        }
                    }
                    if all {
                        println!(
                            "  ok  all {} entries hash to the signed root",
                            v.entries_checked
                        );
                    } else {
                        println!(
                            "  ok  {} visible entries proven included",
                            v.entries_checked
                        );
                    }
                    println!("verdict     PASS: the log is intact");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) if e.to_string().contains("cannot reach") => Err(e),
                Err(e) => {
                    println!("  FAIL {e:#}");
                    println!("verdict     FAIL: do not trust this log");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
