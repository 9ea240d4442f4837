//! TLS for the HTTPS APIs and for clients of them (`wardctl`, peers, tests).
//!
//! - TLS 1.3 only, with the aws-lc-rs provider passed explicitly and the post-quantum hybrid
//!   X25519MLKEM768 first in the key-exchange preference (the classical groups stay as
//!   fallback for clients without it);
//! - ALPN `http/1.1` (the APIs speak HTTP/1.1);
//! - [`serve`] runs the accept loop: a bounded number of connections, a handshake deadline,
//!   a header-read deadline, failed handshakes logged at debug and never fatal, graceful
//!   shutdown with a drain deadline.
//!
//! - client certificates (mTLS), when [`server_config`] is given a client CA: verified against
//!   it in the handshake but optional, so the unauthenticated endpoints stay open to clients
//!   without one. The identity of a verified certificate ([`crate::identity`]) reaches the
//!   handlers as [`PeerIdentity`]; endpoints that need one take the [`Caller`] extractor.
//!
//! Handlers can take `axum::extract::ConnectInfo<SocketAddr>` to learn the peer address.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

pub use crate::identity::PeerIdentity;
use crate::identity::{self, Identity};

/// ALPN protocol both sides offer.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Connections served at once; further clients wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client must finish the TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a complete request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown is signalled, in-flight requests get this long before they are cut off.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Client: time allowed to establish a connection, TLS included.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Client: time allowed for a whole request, body included.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why TLS material could not be loaded or a TLS endpoint not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{origin}: not a usable X.509 certificate: {reason}")]
    Certificate { origin: String, reason: String },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the HTTPS client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{}: cannot verify client certificates against it: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The crypto provider for every TLS endpoint of the appliance: aws-lc-rs, post-quantum hybrid
/// key exchange preferred when the provider offers it.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Stable sort: X25519MLKEM768 moves to the front, the rest keep their order.
    provider
        .kx_groups
        .sort_by_key(|group| group.name() != NamedGroup::X25519MLKEM768);
    Arc::new(provider)
}

/// Server configuration from a PEM certificate chain (leaf first) and a PEM private key.
///
/// With `client_ca` (PEM, one or more CA certificates), clients may present a certificate;
/// one that does not chain to those CAs, is outside its validity or is not for client
/// authentication ends the handshake. Clients without a certificate are let in: endpoints
/// that need an identity refuse them with [`Caller`]. Without `client_ca`, no certificate is
/// requested and no request has an identity.
pub fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert_pem)?;
    let key = read_key(key_pem)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 with the aws-lc-rs provider".to_owned(),
            source,
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca_pem)?),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|source| TlsError::ClientCa {
                path: ca_pem.to_path_buf(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: format!("{} with {}", cert_pem.display(), key_pem.display()),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// HTTPS client that trusts only the CA certificate(s) in `ca_pem`, speaks only TLS 1.3 and
/// HTTPS, ignores proxy settings, and records the peer certificate: read it with
/// `resp.extensions().get::<reqwest::tls::TlsInfo>()`.
pub fn client(ca_pem: &Path) -> Result<reqwest::Client, TlsError> {
    https_client(client_config(ca_pem)?.with_no_client_auth())
}

/// Like [`client`], and presents the client certificate chain in `cert_pem` (leaf first) with
/// the private key in `key_pem` to servers that ask for one (mTLS).
pub fn client_with_identity(
    ca_pem: &Path,
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<reqwest::Client, TlsError> {
    let chain = read_certs(cert_pem)?;
    let key = read_key(key_pem)?;
    let config = client_config(ca_pem)?
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: format!("{} with {}", cert_pem.display(), key_pem.display()),
            source,
        })?;
    https_client(config)
}

/// TLS client configuration for a plain TLS stream (the syslog exporter): TLS 1.3, trusting
/// only the CA certificate(s) in `ca_pem`, presenting `identity` (certificate chain PEM, key
/// PEM) to servers that ask for one.
pub fn stream_client_config(
    ca_pem: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = client_config(ca_pem)?;
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(read_certs(cert_pem)?, read_key(key_pem)?)
            .map_err(|source| TlsError::Rustls {
                what: format!("{} with {}", cert_pem.display(), key_pem.display()),
                source,
            })?,
    };
    Ok(Arc::new(config))
}

/// Every CA certificate of a PEM file, as trust anchors.
fn root_store(ca_pem: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_pem)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("{}: CA certificate", ca_pem.display()),
            source,
        })?;
    }
    Ok(roots)
}

fn client_config(
    ca_pem: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 with the aws-lc-rs provider".to_owned(),
            source,
        })?
        .with_root_certificates(root_store(ca_pem)?))
}

fn https_client(mut config: ClientConfig) -> Result<reqwest::Client, TlsError> {
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .tls_info(true)
        .https_only(true)
        .no_proxy()
        .connect_timeout(CLIENT_CONNECT_TIMEOUT)
        .timeout(CLIENT_TIMEOUT)
        .build()
        .map_err(TlsError::Client)
}

/// DER SubjectPublicKeyInfo of the first (leaf) certificate in a PEM file.
pub fn spki_of_cert_pem(cert_pem: &Path) -> Result<Vec<u8>, TlsError> {
    let chain = read_certs(cert_pem)?;
    let leaf = chain.first().ok_or_else(|| TlsError::Pem {
        path: cert_pem.to_path_buf(),
        reason: "no CERTIFICATE block found".to_owned(),
    })?;
    spki(leaf, &cert_pem.display().to_string())
}

/// DER SubjectPublicKeyInfo of a DER certificate (trailing bytes are refused).
pub fn spki_of_cert_der(der: &[u8]) -> Result<Vec<u8>, TlsError> {
    spki(der, "certificate")
}

fn spki(der: &[u8], origin: &str) -> Result<Vec<u8>, TlsError> {
    let bad = |reason: String| TlsError::Certificate {
        origin: origin.to_owned(),
        reason,
    };
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every CERTIFICATE block of a PEM file, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, or SEC1/PKCS#1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".to_owned(),
            e => format!("invalid PEM: {e}"),
        },
    })
}

/// Serves `app` over HTTPS on `listener` until `shutdown` completes, then stops accepting,
/// lets in-flight requests finish (at most [`DRAIN_TIMEOUT`]) and returns.
///
/// Per connection: TLS handshake within [`HANDSHAKE_TIMEOUT`], request heads within
/// [`HEADER_READ_TIMEOUT`]; at most [`MAX_CONNECTIONS`] at once. Errors of one connection
/// (handshake, protocol, I/O) are logged at debug and end only that connection; errors of
/// `accept` (for example out of file descriptors) are logged and retried after a pause.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}

        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            serve_connection(acceptor, tcp, peer, app, stop).await;
            drop(slot);
        });
    }

    drop(listener);
    let open = connections.len();
    if open > 0 {
        info!(connections = open, "shutting down: draining connections");
    }
    // Receivers see `true`; an error only means every connection has already ended.
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "drain deadline passed: closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

/// Completes when shutdown is signalled (or the signal can no longer come).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not across an await.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = stopping(&mut stop) => return,
    };

    // The handshake verified the chain (when a client CA is configured; otherwise no
    // certificate was asked for and there is none).
    let identity = PeerIdentity(
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[CertificateDer]>::first)
            .and_then(|leaf| {
                let identity = identity::from_cert_der(leaf);
                if identity.is_none() {
                    debug!(%peer, "client certificate carries no usable warden identity");
                }
                identity
            }),
    );
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(identity.clone());
        app.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping(&mut stop) => {
            // Finish the request in flight, then close; idle connections close at once.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The verified identity of the caller: an extractor for endpoints that need a client
/// certificate. Requests without one (no certificate, a certificate without a single valid
/// `warden:` identity, or a server without a client CA) are refused with 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub Identity);

impl Caller {
    /// The operator's name, or 403 for a tenant.
    pub fn operator(&self) -> Result<&str, ApiRejection> {
        match &self.0 {
            Identity::Operator(name) => Ok(name),
            Identity::Tenant(_) => Err(ApiRejection::NotOperator),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<PeerIdentity>() {
            Some(PeerIdentity(Some(identity))) => Ok(Caller(identity.clone())),
            // Also when the extension is missing (a router served by something else than
            // `serve`): no proof of identity, no identity.
            _ => Err(ApiRejection::NoIdentity),
        }
    }
}

/// Why a request was refused for want of an identity or a role; answers with a JSON body
/// `{"error": "..."}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiRejection {
    /// 401: no verified client certificate with a warden identity.
    NoIdentity,
    /// 403: the caller is a tenant, the endpoint is for operators.
    NotOperator,
}

impl ApiRejection {
    pub fn status(self) -> StatusCode {
        match self {
            ApiRejection::NoIdentity => StatusCode::UNAUTHORIZED,
            ApiRejection::NotOperator => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ApiRejection::NoIdentity => {
                "this endpoint needs a client certificate with a warden:operator:… or \
                 warden:tenant:… identity"
            }
            ApiRejection::NotOperator => "operator role required",
        }
    }
}

impl IntoResponse for ApiRejection {
    fn into_response(self) -> Response {
        (
            self.status(),
            axum::Json(serde_json::json!({ "error": self.message() })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::generate_demo_pki;
    use axum::routing::get;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(pki: &crate::pki::DemoPki) -> Server {
            let tls = server_config(&pki.server_cert, &pki.server_key, None).unwrap();
            let app = axum::Router::new()
                .route("/", get(|| async { "hello" }))
                .route(
                    "/peer",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.ip().to_string()
                    }),
                );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, tls, app, async {
                let _ = rx.await;
            }));
            Server {
                addr,
                stop: Some(tx),
                task,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("https://127.0.0.1:{}{path}", self.addr.port())
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }

    fn pki(dir: &tempfile::TempDir, sub: &str) -> crate::pki::DemoPki {
        generate_demo_pki(&dir.path().join(sub), &["node-a".to_owned()]).unwrap()
    }

    fn raw_client(
        pki: &crate::pki::DemoPki,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&pki.ca_cert).unwrap() {
            roots.add(cert).unwrap();
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn client_with_the_right_ca_gets_200_and_sees_the_server_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir, "a");
        let server = Server::start(&pki).await;

        let client = client(&pki.ca_cert).unwrap();
        let resp = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
        let peer = spki_of_cert_der(info.peer_certificate().unwrap()).unwrap();
        assert_eq!(peer, spki_of_cert_pem(&pki.server_cert).unwrap());
        assert_eq!(resp.text().await.unwrap(), "hello");

        // Also by IP address (the demo certificate names 127.0.0.1), and ConnectInfo is set.
        let url = format!("https://127.0.0.1:{}/peer", server.addr.port());
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "127.0.0.1");
        server.stop().await;
    }

    #[tokio::test]
    async fn client_with_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&pki(&dir, "a")).await;
        let other = pki(&dir, "b");
        let err = client(&other.ca_cert)
            .unwrap()
            .get(server.url("/"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn tls12_client_is_refused_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir, "a");
        let server = Server::start(&pki).await;

        let connector = raw_client(&pki, &[&rustls::version::TLS12]);
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let err = connector.connect(name, tcp).await.unwrap_err();
        assert!(err.to_string().contains("ProtocolVersion"), "{err}");

        // Garbage instead of a ClientHello, and a client that disconnects mid-handshake.
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        drop(TcpStream::connect(server.addr).await.unwrap());

        let resp = client(&pki.ca_cert)
            .unwrap()
            .get(server.url("/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn post_quantum_hybrid_key_exchange_is_negotiated() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir, "a");
        let server = Server::start(&pki).await;

        let connector = raw_client(&pki, &[&rustls::version::TLS13]);
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            Some(NamedGroup::X25519MLKEM768)
        );
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tls.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_waits_for_idle_keepalive_connections_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir, "a");
        let server = Server::start(&pki).await;
        let client = client(&pki.ca_cert).unwrap();
        // Leaves a keep-alive connection open in the client's pool.
        assert_eq!(
            client.get(server.url("/")).send().await.unwrap().status(),
            200
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish_and_stops_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir, "a");
        let tls = server_config(&pki.server_cert, &pki.server_key, None).unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let app = axum::Router::new().route(
            "/slow",
            get(move || async move {
                if let Some(tx) = entered.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, tls, app, async {
            let _ = stop_rx.await;
        }));

        let client = client(&pki.ca_cert).unwrap();
        let url = format!("https://127.0.0.1:{}/slow", addr.port());
        let request = tokio::spawn(async move { client.get(url).send().await?.text().await });
        entered_rx.await.unwrap();
        stop_tx.send(()).unwrap();
        assert_eq!(request.await.unwrap().unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[test]
    fn server_config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = pki(&dir, "a");
        let b = pki(&dir, "b");

        let missing = dir.path().join("missing.crt");
        let err = server_config(&missing, &a.server_key, None).unwrap_err();
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );

        // A key file where a certificate is expected, and the other way round.
        let err = server_config(&a.server_key, &a.server_key, None).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        assert!(err.to_string().contains("server.key"), "{err}");
        let err = server_config(&a.server_cert, &a.server_cert, None).unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");

        // A key that does not belong to the certificate.
        let err = server_config(&a.server_cert, &b.server_key, None).unwrap_err();
        assert!(err.to_string().contains("server.crt"), "{err}");
        assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");

        let server = server_config(&a.server_cert, &a.server_key, None).unwrap();
        assert_eq!(server.alpn_protocols, [ALPN_HTTP1.to_vec()]);
    }

    #[test]
    fn client_ca_and_client_identity_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = pki(&dir, "a");
        let b = pki(&dir, "b");

        let missing = dir.path().join("missing-ca.crt");
        let err = server_config(&a.server_cert, &a.server_key, Some(&missing)).unwrap_err();
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        let err = server_config(&a.server_cert, &a.server_key, Some(&a.ca_key)).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let server = server_config(&a.server_cert, &a.server_key, Some(&a.ca_cert)).unwrap();
        assert_eq!(server.alpn_protocols, [ALPN_HTTP1.to_vec()]);

        let err = client_with_identity(&a.ca_cert, &missing, &a.operator_key).unwrap_err();
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        let err = client_with_identity(&a.ca_cert, &a.operator_cert, &a.operator_cert).unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
        // A key that does not belong to the certificate.
        let err = client_with_identity(&a.ca_cert, &a.operator_cert, &b.operator_key).unwrap_err();
        assert!(err.to_string().contains("operator.crt"), "{err}");
        assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");
        client_with_identity(&a.ca_cert, &a.operator_cert, &a.operator_key).unwrap();
    }

    #[test]
    fn rejections_are_401_and_403_with_json_messages() {
        assert_eq!(ApiRejection::NoIdentity.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiRejection::NoIdentity.message(),
            "this endpoint needs a client certificate with a warden:operator:… or \
             warden:tenant:… identity"
        );
        assert_eq!(ApiRejection::NotOperator.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            ApiRejection::NotOperator.message(),
            "operator role required"
        );
        let operator = Caller(Identity::Operator("alice".to_owned()));
        assert_eq!(operator.operator(), Ok("alice"));
        let tenant = Caller(Identity::Tenant("acme".to_owned()));
        assert_eq!(tenant.operator(), Err(ApiRejection::NotOperator));
    }

    #[tokio::test]
    async fn caller_needs_a_peer_identity_in_the_extensions() {
        async fn extract(identity: Option<PeerIdentity>) -> Result<Caller, ApiRejection> {
            let mut request = axum::http::Request::new(());
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            let (mut parts, ()) = request.into_parts();
            Caller::from_request_parts(&mut parts, &()).await
        }
        let acme = Identity::Tenant("acme".to_owned());
        assert_eq!(
            extract(Some(PeerIdentity(Some(acme.clone())))).await,
            Ok(Caller(acme))
        );
        assert_eq!(
            extract(Some(PeerIdentity(None))).await,
            Err(ApiRejection::NoIdentity)
        );
        assert_eq!(extract(None).await, Err(ApiRejection::NoIdentity));
    }

    #[test]
    fn spki_refuses_garbage_and_trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = pki(&dir, "a");
        let der = read_certs(&a.server_cert).unwrap().remove(0).to_vec();
        assert!(spki_of_cert_der(&der).is_ok());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(spki_of_cert_der(&trailing).is_err());
        assert!(spki_of_cert_der(&der[..der.len() - 1]).is_err());
        assert!(spki_of_cert_der(b"").is_err());
    }

    #[test]
    fn hybrid_group_comes_first() {
        let p = provider();
        assert_eq!(
            p.kx_groups.first().map(|g| g.name()),
            Some(NamedGroup::X25519MLKEM768)
        );
        assert!(p.kx_groups.iter().any(|g| g.name() == NamedGroup::X25519));
    }
}
