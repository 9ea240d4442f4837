//! wardend start-up: open the TPM (fail closed without one), measure what runs, load keys,
//! and serve the API until SIGINT/SIGTERM.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use warden_attest::binding::Challenges;
use warden_attest::ear::ResultSigner;
use warden_attest::eventlog::MAX_LOG_BYTES;
use warden_attest::tpm::AkAlgorithm;
use warden_attest::tpm2::Public;

use crate::api::{self, ApiState, CHALLENGE_TTL_SECS, MAX_CHALLENGES};
use crate::appliance::{file_sha256, TpmActor, TpmSettings};
use crate::audit::{now_ms, AuditLog};
use crate::config::{AkAlg, Config};
use crate::export::Exporter;
use crate::tls;
use crate::wire::Identity;
use warden_audit::event::{Event, Kind, Outcome};

/// Event kinds the daemon measures into the appliance PCR.
pub const EVENT_BINARY: &str = "wardend-binary";
pub const EVENT_RESULT_KEY: &str = "result-key";
pub const EVENT_AUDIT_KEY: &str = "audit-key";

fn ak_algorithm(a: AkAlg) -> AkAlgorithm {
    match a {
        AkAlg::EccP256 => AkAlgorithm::EccP256,
        AkAlg::Rsa2048 => AkAlgorithm::Rsa2048,
    }
}

/// Load the result-signing key, or create it (mode 0600) on first start.
fn load_result_key(state_dir: &Path) -> anyhow::Result<ResultSigner> {
    crate::keyfile::load_or_create(
        &state_dir.join("result-key.p8"),
        "attestation-result signing key (P-256 PKCS#8)",
        |der| Ok(ResultSigner::from_pkcs8(der)?),
        || Ok(ResultSigner::generate()?),
    )
}

fn read_event_log(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no platform event log; evidence will carry none");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(_) => {
            use std::io::Read;
            let mut buf = Vec::new();
            std::fs::File::open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .take(MAX_LOG_BYTES as u64 + 1)
                .read_to_end(&mut buf)?;
            if buf.len() > MAX_LOG_BYTES {
                anyhow::bail!("{}: larger than {MAX_LOG_BYTES} bytes", path.display());
            }
            Ok(Some(buf))
        }
    }
}

/// Run wardend with a validated configuration until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;

    let tpm = TpmActor::spawn(TpmSettings {
        tcti: config.tpm.tcti.clone(),
        ak_handle: config.tpm.ak_handle,
        ak_algorithm: ak_algorithm(config.tpm.ak_algorithm),
        appliance_pcr: config.tpm.appliance_pcr,
        state_dir: config.state_dir.clone(),
    })?;

    let exe = std::env::current_exe().context("locating the wardend binary")?;
    let binary = format!("sha256:{}", file_sha256(&exe)?);
    let signer = load_result_key(&config.state_dir)?;
    let jwk = signer.public_jwk();
    let key_detail = format!("es256:{}.{}", jwk.x, jwk.y);
    let (audit, _recovery) = AuditLog::open(&config.state_dir, &config.name)?;
    // The audit key is measured, so a tenant that verified the appliance can trust its log.
    let audit_detail = audit.verifier_key().to_owned();
    let binary_detail = binary.clone();
    let (ak_public, ek_certificate) = tpm
        .run(move |a| -> anyhow::Result<_> {
            a.measure(EVENT_BINARY, &binary_detail)?;
            a.measure(EVENT_RESULT_KEY, &key_detail)?;
            a.measure(EVENT_AUDIT_KEY, &audit_detail)?;
            Ok((a.ak_public.clone(), a.ek_certificate.clone()))
        })
        .await??;

    let ak_name = Public::decode(&ak_public)
        .ok()
        .and_then(|p| p.name())
        .context("the TPM returned an attestation key that does not decode")?;
    let tls_config = tls::server_config(
        &config.api.cert,
        &config.api.key,
        config.api.client_ca.as_deref(),
    )?;
    let tls_spki = tls::spki_of_cert_pem(&config.api.cert)?;
    let identity = Identity {
        name: config.name.clone(),
        ak_public: B64.encode(&ak_public),
        ak_name: hex::encode(&ak_name),
        ak_algorithm: match config.tpm.ak_algorithm {
            AkAlg::EccP256 => "ecc-p256".into(),
            AkAlg::Rsa2048 => "rsa-2048".into(),
        },
        ek_certificate: ek_certificate.as_ref().map(|c| B64.encode(c)),
        tls_spki: B64.encode(&tls_spki),
        result_key: jwk,
        appliance_pcr: config.tpm.appliance_pcr,
        quote_pcrs: config.tpm.quoted_pcrs(),
        audit_key: audit.verifier_key().to_owned(),
    };
    let exporter = match config.audit.syslog.clone() {
        Some(syslog) => Some(Exporter::start(
            syslog,
            Arc::clone(&audit),
            &config.state_dir,
        )?),
        None => None,
    };
    let policy = crate::policy::PolicyService::start(
        &config.state_dir,
        &config.policy,
        // The appliance's own TCP services on the wire: the API and the peers' control channel.
        std::iter::once(config.api.listen.port())
            .chain(config.peering.iter().flat_map(|p| {
                [p.listen.port(), p.port]
                    .into_iter()
                    .chain(p.peers.values().map(|a| a.port()))
            }))
            .collect(),
        Arc::clone(&audit),
        tpm.clone(),
    )
    .await?;
    let sealer: Box<dyn crate::vault::Sealer> =
        match (&config.keys.authority, &config.keys.pcr_policy) {
            (Some(authority), Some(pcr_policy)) => Box::new(crate::vault::TpmSealer::load(
                tpm.clone(),
                authority,
                pcr_policy,
            )?),
            _ => Box::new(crate::vault::DisabledSealer),
        };
    let state_dir = config.state_dir.clone();
    let (vault, unsealed_not) =
        tokio::task::spawn_blocking(move || crate::vault::Vault::open(&state_dir, sealer))
            .await??;
    for f in unsealed_not {
        audit
            .record_async(
                Event::new(
                    now_ms(),
                    Kind::KeyUnsealFailed,
                    "wardend",
                    &f.key_id,
                    Outcome::Failure,
                )
                .tenant(&f.tenant)
                .detail("version", f.version.to_string())
                .detail("error", f.error.chars().take(1024).collect::<String>()),
            )
            .await?;
    }
    // The boot loader's part: choose and measure the firmware slot before anything runs on it.
    let updates = match &config.updates {
        Some(u) => {
            let (u, dir, t, a) = (
                u.clone(),
                config.state_dir.clone(),
                tpm.clone(),
                Arc::clone(&audit),
            );
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::updates::UpdateService::start(&u, &dir, t, a)
                })
                .await??,
            )
        }
        None => None,
    };
    let dataplane = match &config.dataplane {
        Some(d) => Some(crate::dataplane::Dataplane::start(
            d,
            &config.name,
            config.policy.esp_udp_port,
            &policy,
        )?),
        None => None,
    };
    let telemetry = match (&config.telemetry, &dataplane) {
        (Some(t), Some(d)) => Some(crate::telemetry::Telemetry::start(
            t,
            &config.name,
            Arc::clone(d.tunnel()),
        )?),
        _ => None,
    };
    let state = Arc::new(ApiState {
        telemetry: telemetry.clone(),
        dataplane: dataplane.clone(),
        policy,
        vault: Arc::new(vault),
        ak_name: ak_name.clone(),
        tpm,
        identity,
        tls_spki,
        default_pcrs: config.tpm.quoted_pcrs(),
        appliance_pcr: config.tpm.appliance_pcr,
        tcg_event_log: read_event_log(config.tpm.event_log.as_deref())?,
        signer,
        challenges: Mutex::new(Challenges::new(CHALLENGE_TTL_SECS, MAX_CHALLENGES)),
        reference: match &config.attestation.reference {
            Some(p) => Some(crate::client::load_reference(p)?),
            None => None,
        },
        reference_path: config.attestation.reference.clone(),
        audit: Arc::clone(&audit),
        export: exporter.as_ref().map(Exporter::status),
        name: config.name.clone(),
        peering: std::sync::OnceLock::new(),
        updates,
        operations: crate::progress::Operations::new(),
        ops: crate::status::Ops::new(&config.state_dir),
    });
    // The control channel keys the data plane's tunnel; without `[dataplane]`, a tunnel of
    // its own that carries no packets.
    let peering = match &config.peering {
        Some(p) => {
            let tunnel = match &dataplane {
                Some(d) => Arc::clone(d.tunnel()),
                None => crate::peering::standalone_tunnel(&config, &state.policy),
            };
            let service =
                crate::peering::PeerService::start(p, &config.name, tunnel, &state).await?;
            let _ = state.peering.set(Arc::clone(&service));
            Some(service)
        }
        None => None,
    };
    let app = api::router(state, config.api.max_body_bytes);
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("api.listen: cannot bind {}", config.api.listen))?;
    tracing::info!(
        name = %config.name,
        listen = %listener.local_addr()?,
        ak_name = %hex::encode(&ak_name),
        "wardend ready"
    );
    audit
        .record_async(
            Event::new(
                now_ms(),
                Kind::WardendStart,
                "wardend",
                &config.name,
                Outcome::Success,
            )
            .detail("version", env!("CARGO_PKG_VERSION"))
            .detail("binary", binary)
            .detail("ak_name", hex::encode(&ak_name))
            .detail("audit_key", audit.verifier_key()),
        )
        .await?;
    tls::serve(listener, tls_config, app, shutdown_signal()).await;
    let stopped = Event::new(
        now_ms(),
        Kind::WardendStop,
        "wardend",
        &config.name,
        Outcome::Success,
    );
    if let Err(e) = audit.record_async(stopped).await {
        tracing::error!(error = %e, "could not record the stop");
    }
    if let Some(p) = &peering {
        p.stop();
    }
    if let Some(d) = &dataplane {
        d.stop();
    }
    if let Some(t) = &telemetry {
        // Exports every record still held.
        t.stop();
    }
    if let Some(exporter) = exporter {
        // Delivers what is pending (the stop event too) for a few seconds at most.
        exporter.stop().await;
    }
    audit.shutdown();
    tracing::info!("wardend stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
