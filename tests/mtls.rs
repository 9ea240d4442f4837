//! Client certificates over real TLS: a verified certificate's single `warden:` URI becomes the
//! `Caller` of a request; anything else gets no identity (401) or no connection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::routing::get;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use warden::identity::Identity;
use warden::pki::{generate_demo_pki, issue_client_cert, DemoPki};
use warden::tls::{self, ApiRejection, Caller};

const NO_IDENTITY: &str =
    "this endpoint needs a client certificate with a warden:operator:… or warden:tenant:… identity";

/// A server on the demo PKI's certificate, trusting its CA for client certificates unless
/// told otherwise, with three routes: `/open` (no identity needed), `/whoami` (any caller)
/// and `/admin` (operators only).
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(pki: &DemoPki, client_ca: Option<&Path>) -> Server {
        let config = tls::server_config(&pki.server_cert, &pki.server_key, client_ca).unwrap();
        let app = axum::Router::new()
            .route("/open", get(|| async { "open" }))
            .route(
                "/whoami",
                get(|Caller(identity): Caller| async move { identity.to_string() }),
            )
            .route(
                "/admin",
                get(|caller: Caller| async move {
                    caller.operator().map(|name| format!("hello {name}"))
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tls::serve(listener, config, app, async {
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

    async fn get(&self, client: &reqwest::Client, path: &str) -> (u16, String) {
        let resp = client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

fn demo_pki(dir: &tempfile::TempDir, sub: &str) -> DemoPki {
    generate_demo_pki(&dir.path().join(sub), &[]).unwrap()
}

fn client_as(pki: &DemoPki, (cert, key): &(PathBuf, PathBuf)) -> reqwest::Client {
    tls::client_with_identity(&pki.ca_cert, cert, key).unwrap()
}

fn error_json(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

/// A client certificate signed by the demo CA with arbitrary URI SubjectAltNames and
/// validity, for the cases `issue_client_cert` rightly refuses to make.
fn sign_custom(
    pki: &DemoPki,
    stem: &str,
    uris: &[&str],
    not_after: OffsetDateTime,
) -> (PathBuf, PathBuf) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&pki.ca_key).unwrap()).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(&pki.ca_cert).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        pki.dir.join(format!("{stem}.crt")),
        pki.dir.join(format!("{stem}.key")),
    );
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    paths
}

fn in_a_year() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(365)
}

/// The request fails without an HTTP response: the server ended the handshake with an alert
/// (in TLS 1.3 the client sends its certificate last, so it learns of the refusal on its first
/// read, not while connecting).
async fn assert_refused(server: &Server, client: &reqwest::Client) {
    let err = client.get(server.url("/open")).send().await.unwrap_err();
    assert!(err.status().is_none(), "{err:?}");
    assert!(format!("{err:?}").contains("AlertReceived"), "{err:?}");
}

#[tokio::test]
async fn tenant_certificate_makes_the_tenant_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let acme = issue_client_cert(&pki.dir, &Identity::Tenant("acme".to_owned())).unwrap();
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let client = client_as(&pki, &acme);
    assert_eq!(
        server.get(&client, "/whoami").await,
        (200, "tenant:acme".to_owned())
    );
    assert_eq!(server.get(&client, "/open").await, (200, "open".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn demo_operator_certificate_makes_the_operator_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let client = client_as(&pki, &(pki.operator_cert.clone(), pki.operator_key.clone()));
    assert_eq!(
        server.get(&client, "/whoami").await,
        (200, "operator:operator".to_owned())
    );
    assert_eq!(
        server.get(&client, "/admin").await,
        (200, "hello operator".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn no_certificate_gets_401_where_an_identity_is_needed_and_200_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let client = tls::client(&pki.ca_cert).unwrap();
    let resp = client.get(server.url("/whoami")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(error_json(&resp.text().await.unwrap()), NO_IDENTITY);
    assert_eq!(ApiRejection::NoIdentity.message(), NO_IDENTITY);
    let (status, body) = server.get(&client, "/admin").await;
    assert_eq!((status, error_json(&body).as_str()), (401, NO_IDENTITY));
    assert_eq!(server.get(&client, "/open").await, (200, "open".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let other = demo_pki(&dir, "b");
    // Same identity, wrong issuer (a CA of the same name, so only the signature tells).
    let foreign =
        issue_client_cert(&other.dir, &Identity::Operator("operator".to_owned())).unwrap();
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    assert_refused(&server, &client_as(&pki, &foreign)).await;
    // The server keeps serving others.
    let client = client_as(&pki, &(pki.operator_cert.clone(), pki.operator_key.clone()));
    assert_eq!(
        server.get(&client, "/whoami").await,
        (200, "operator:operator".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn expired_or_server_only_certificates_are_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let expired = sign_custom(
        &pki,
        "expired",
        &["warden:tenant:acme"],
        OffsetDateTime::now_utc() - time::Duration::days(1),
    );
    assert_refused(&server, &client_as(&pki, &expired)).await;
    // The server certificate chains to the same CA but is not for client authentication.
    let server_cert = (pki.server_cert.clone(), pki.server_key.clone());
    assert_refused(&server, &client_as(&pki, &server_cert)).await;
    server.stop().await;
}

#[tokio::test]
async fn certificate_with_two_warden_uris_has_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let two = sign_custom(
        &pki,
        "two",
        &["warden:tenant:acme", "warden:operator:operator"],
        in_a_year(),
    );
    let client = client_as(&pki, &two);
    let (status, body) = server.get(&client, "/whoami").await;
    assert_eq!((status, error_json(&body).as_str()), (401, NO_IDENTITY));
    let (status, _) = server.get(&client, "/admin").await;
    assert_eq!(status, 401);
    // The certificate itself is fine: the connection is up for endpoints that need no identity.
    assert_eq!(server.get(&client, "/open").await, (200, "open".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn certificate_without_or_with_a_malformed_warden_uri_has_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    for (stem, uris) in [
        ("none", &[][..]),
        ("other", &["spiffe://example.org/tenant/acme"][..]),
        ("malformed", &["warden:tenant:ACME"][..]),
        ("role", &["warden:admin:root"][..]),
    ] {
        let cert = sign_custom(&pki, stem, uris, in_a_year());
        let (status, _) = server.get(&client_as(&pki, &cert), "/whoami").await;
        assert_eq!(status, 401, "{stem}");
    }
    server.stop().await;
}

#[tokio::test]
async fn tenant_is_refused_operator_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let acme = issue_client_cert(&pki.dir, &Identity::Tenant("acme".to_owned())).unwrap();
    let server = Server::start(&pki, Some(&pki.ca_cert)).await;

    let resp = client_as(&pki, &acme)
        .get(server.url("/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        error_json(&resp.text().await.unwrap()),
        "operator role required"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_client_ca_no_request_has_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo_pki(&dir, "a");
    let server = Server::start(&pki, None).await;

    // The client has a valid operator certificate, but the server never asks for it.
    let client = client_as(&pki, &(pki.operator_cert.clone(), pki.operator_key.clone()));
    let (status, body) = server.get(&client, "/whoami").await;
    assert_eq!((status, error_json(&body).as_str()), (401, NO_IDENTITY));
    assert_eq!(server.get(&client, "/open").await, (200, "open".to_owned()));
    server.stop().await;
}
