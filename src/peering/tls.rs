//! TLS of the control channel: TLS 1.3 only, mutual authentication against the appliance CA,
//! key exchange X25519MLKEM768 (post-quantum hybrid) first and X25519 as the only fallback, no
//! session resumption (every channel is a full handshake with fresh keys and certificates),
//! ALPN `warden-peer/1`.
//!
//! The dialer checks the acceptor's certificate for the node id as DNS name (rustls/webpki);
//! the acceptor checks the dialer's certificate against the node its Hello claims
//! ([`cert_names_node`]). Both certificates need the serverAuth and clientAuth EKUs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use crate::config::PeeringConfig;

/// The control channel's ALPN protocol.
pub const ALPN: &[u8] = b"warden-peer/1";

/// aws-lc-rs with exactly X25519MLKEM768 then X25519 for key exchange.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = [NamedGroup::X25519MLKEM768, NamedGroup::X25519]
        .iter()
        .filter_map(|want| {
            provider
                .kx_groups
                .iter()
                .find(|g| g.name() == *want)
                .copied()
        })
        .collect();
    Arc::new(provider)
}

/// Both ends of the control channel's TLS.
#[derive(Clone)]
pub struct PeerTls {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: invalid PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE block found", path.display());
    }
    Ok(certs)
}

/// The TLS configurations for node `local` from `[peering] cert, key, ca`. Refuses a
/// certificate that does not name `local`, lacks an EKU, or does not chain to `ca` now, so a
/// wrong file fails at start, not at the first peer.
pub fn load(config: &PeeringConfig, local: &str) -> anyhow::Result<PeerTls> {
    let chain = read_certs(&config.cert).context("peering.cert")?;
    let key = PrivateKeyDer::from_pem_file(&config.key).with_context(|| {
        format!(
            "peering.key: {}: no usable private key",
            config.key.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&config.ca).context("peering.ca")? {
        roots.add(ca).with_context(|| {
            format!("peering.ca: {}: not a CA certificate", config.ca.display())
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();

    let (leaf, intermediates) = chain
        .split_first()
        .context("peering.cert: no certificate")?;
    if !cert_names_node(leaf, local) {
        bail!(
            "peering.cert: {} does not carry the DNS name {local:?} (this appliance's `name`, \
             its node id in the policy)",
            config.cert.display()
        );
    }
    let name = ServerName::try_from(local.to_owned())
        .with_context(|| format!("{local:?} is not usable as a DNS name"))?;
    let server_check =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .context("peering.ca: cannot verify server certificates against it")?;
    server_check
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .with_context(|| {
            format!(
                "peering.cert: {} is not valid for TLS server authentication under {}",
                config.cert.display(),
                config.ca.display()
            )
        })?;
    let client_check =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .context("peering.ca: cannot verify client certificates against it")?;
    client_check
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .with_context(|| {
            format!(
                "peering.cert: {} is not valid for TLS client authentication under {} (it needs \
                 both the serverAuth and clientAuth EKUs)",
                config.cert.display(),
                config.ca.display()
            )
        })?;

    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_client_cert_verifier(client_check)
        .with_single_cert(chain.clone(), key.clone_key())
        .with_context(|| {
            format!(
                "peering: {} with {}",
                config.cert.display(),
                config.key.display()
            )
        })?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(NoServerSessionStorage {});

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .with_context(|| {
            format!(
                "peering: {} with {}",
                config.cert.display(),
                config.key.display()
            )
        })?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = Resumption::disabled();
    Ok(PeerTls {
        client: Arc::new(client),
        server: Arc::new(server),
    })
}

/// Whether the (verified) certificate carries `node` as a DNS SubjectAltName: exact, ASCII
/// case-insensitive, no wildcards.
pub fn cert_names_node(der: &[u8], node: &str) -> bool {
    let Ok((rest, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| match n {
        GeneralName::DNSName(d) => d.eq_ignore_ascii_case(node),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_exchange_is_hybrid_first_then_x25519_only() {
        let names: Vec<_> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names, [NamedGroup::X25519MLKEM768, NamedGroup::X25519]);
    }

    #[test]
    fn peer_certificates_name_their_node_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate_demo_pki(dir.path(), &[]).unwrap();
        let (cert, key) = crate::pki::issue_peer_cert(dir.path(), "node-a").unwrap();
        let der = CertificateDer::from_pem_file(&cert).unwrap();
        assert!(cert_names_node(&der, "node-a"));
        assert!(cert_names_node(&der, "NODE-A"));
        assert!(!cert_names_node(&der, "node-b"));
        assert!(!cert_names_node(b"garbage", "node-a"));
        let config = |cert: &Path, key: &Path| PeeringConfig {
            listen: "127.0.0.1:4501".parse().unwrap(),
            port: 4501,
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: pki.ca_cert.clone(),
            tenant_key: "east-west".into(),
            peers: Default::default(),
            rekey_interval: std::time::Duration::from_secs(3600),
            grace: std::time::Duration::from_secs(5),
            reattest_interval: std::time::Duration::from_secs(60),
            keepalive: std::time::Duration::from_secs(5),
            peer_timeout: std::time::Duration::from_secs(15),
        };
        let tls = load(&config(&cert, &key), "node-a").unwrap();
        assert_eq!(tls.server.alpn_protocols, [ALPN.to_vec()]);
        // Another node's name, a server-only certificate, another CA: refused at start.
        let err = load(&config(&cert, &key), "node-b").unwrap_err();
        assert!(
            format!("{err:#}").contains("does not carry the DNS name"),
            "{err:#}"
        );
        let err = load(&config(&pki.server_cert, &pki.server_key), "localhost").unwrap_err();
        assert!(
            format!("{err:#}").contains("client authentication"),
            "{err:#}"
        );
        let other = tempfile::tempdir().unwrap();
        crate::pki::generate_demo_pki(other.path(), &[]).unwrap();
        let (foreign, foreign_key) = crate::pki::issue_peer_cert(other.path(), "node-a").unwrap();
        let err = load(&config(&foreign, &foreign_key), "node-a").unwrap_err();
        assert!(
            format!("{err:#}").contains("server authentication"),
            "{err:#}"
        );
    }
}
