//! A throw-away PKI for the demo and the tests: one CA, a server certificate for the HTTPS
//! API and an operator client certificate for mTLS; [`issue_client_cert`] adds client
//! certificates for further operators and tenants. Not for production: the CA key sits on
//! disk next to the certificates it signs.
//!
//! Client certificates carry their identity as a `warden:` URI SubjectAltName
//! ([`crate::identity`]).
//!
//! All keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600; certificates are PEM and
//! valid for one year (backdated by [`CLOCK_SKEW`] so a slightly slow clock accepts them).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::identity::Identity;

/// Certificates are valid for this long from now.
pub const VALIDITY: Duration = Duration::days(365);
/// ... and from this long before now.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Common name of the operator client certificate, and the operator name in its identity
/// (`warden:operator:operator`).
pub const OPERATOR_CN: &str = "operator";
/// Names every demo server certificate carries besides the requested ones.
pub const LOOPBACK_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Where [`generate_demo_pki`] wrote each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
}

impl DemoPki {
    /// The file names inside `dir`.
    pub fn paths(dir: &Path) -> DemoPki {
        DemoPki {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            operator_cert: dir.join("operator.crt"),
            operator_key: dir.join("operator.key"),
        }
    }
}

/// Creates `dir` if needed and writes a fresh CA, a server certificate for `server_names`
/// (DNS names or IP addresses; 127.0.0.1 and localhost are always added) and an operator
/// client certificate into it, replacing files of the same names.
pub fn generate_demo_pki(dir: &Path, server_names: &[String]) -> anyhow::Result<DemoPki> {
    let paths = DemoPki::paths(dir);
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let now = OffsetDateTime::now_utc();

    // CA: may sign end-entity certificates only (path length 0).
    let ca_key = new_key()?;
    let mut ca = params(Vec::new(), "Warden demo CA", now)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("cannot self-sign the CA certificate")?;
    let issuer = Issuer::new(ca, &ca_key);

    // Server: TLS server authentication for the requested names and loopback.
    let mut names: Vec<String> = Vec::new();
    for name in server_names {
        // rcgen takes any IA5 string; refuse what no TLS client would match.
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            anyhow::bail!("server name {name:?} is neither a DNS name nor an IP address");
        }
    }
    for name in server_names
        .iter()
        .map(String::as_str)
        .chain(LOOPBACK_NAMES)
    {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let common_name = server_names.first().map_or("localhost", String::as_str);
    let server_key = new_key()?;
    let mut server = params(names, common_name, now)?;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("cannot sign the server certificate")?;

    // Operator: TLS client authentication, for the admin API's mTLS.
    let operator_key = new_key()?;
    let operator_cert = client_params(&demo_operator(), OPERATOR_CN, now)?
        .signed_by(&operator_key, &issuer)
        .context("cannot sign the operator certificate")?;

    write_public(&paths.ca_cert, &ca_cert.pem())?;
    write_secret(&paths.ca_key, &ca_key.serialize_pem())?;
    write_public(&paths.server_cert, &server_cert.pem())?;
    write_secret(&paths.server_key, &server_key.serialize_pem())?;
    write_public(&paths.operator_cert, &operator_cert.pem())?;
    write_secret(&paths.operator_key, &operator_key.serialize_pem())?;
    Ok(paths)
}

/// The identity in the demo operator certificate.
pub fn demo_operator() -> Identity {
    Identity::Operator(OPERATOR_CN.to_owned())
}

/// Issues a client certificate for `identity` from the demo CA in `pki_dir` (`ca.crt` and
/// `ca.key`, as [`generate_demo_pki`] writes them) and writes it as `<role>-<name>.crt` with
/// its key `<role>-<name>.key` (mode 0600) into the same directory, replacing files of the same
/// names. Returns the paths of the certificate and the key.
pub fn issue_client_cert(
    pki_dir: &Path,
    identity: &Identity,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    // The name becomes part of a file name and a URI: only what parse_uri accepts.
    if !identity.is_valid() {
        anyhow::bail!(
            "{:?} is not a valid {} name: use 1 to 63 of a-z, 0-9 and '-', starting with a \
             letter or digit",
            identity.name(),
            identity.role()
        );
    }
    let issuer = demo_issuer(pki_dir)?;
    let key = new_key()?;
    let cert = client_params(identity, &identity.to_string(), OffsetDateTime::now_utc())?
        .signed_by(&key, &issuer)
        .with_context(|| format!("cannot sign the certificate for {identity}"))?;
    let stem = format!("{}-{}", identity.role(), identity.name());
    let cert_path = pki_dir.join(format!("{stem}.crt"));
    let key_path = pki_dir.join(format!("{stem}.key"));
    write_public(&cert_path, &cert.pem())?;
    write_secret(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// The demo CA in `pki_dir` (`ca.crt` and `ca.key`), checked to belong together.
fn demo_issuer(pki_dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let paths = DemoPki::paths(pki_dir);
    let read = |path: &Path| {
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read(&paths.ca_key)?)
        .with_context(|| format!("{}: not a PEM private key", paths.ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&paths.ca_cert)?, ca_key)
        .with_context(|| format!("{}: not a PEM CA certificate", paths.ca_cert.display()))?;
    // Certificates signed with a key that is not the CA's would not chain: refuse up front.
    let ca_spki = crate::tls::spki_of_cert_pem(&paths.ca_cert)?;
    if issuer.key().subject_public_key_info() != ca_spki {
        anyhow::bail!(
            "{} does not belong to {}",
            paths.ca_key.display(),
            paths.ca_cert.display()
        );
    }
    Ok(issuer)
}

/// Issues an appliance peer certificate for the control channel (docs/peering.md) from the
/// demo CA in `pki_dir`: the node id as its DNS SubjectAltName and common name, usable for
/// both TLS server and client authentication. Writes `peer-<node>.crt` and `peer-<node>.key`
/// (mode 0600) into `pki_dir` and returns their paths.
pub fn issue_peer_cert(pki_dir: &Path, node: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !crate::peering::frame::valid_name(node) {
        anyhow::bail!(
            "{node:?} is not a node id: use 1 to 63 of a-z, 0-9 and '-', not starting with '-'"
        );
    }
    let issuer = demo_issuer(pki_dir)?;
    let key = new_key()?;
    let mut params = params(vec![node.to_owned()], node, OffsetDateTime::now_utc())?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, &issuer)
        .with_context(|| format!("cannot sign the peer certificate for {node}"))?;
    let cert_path = pki_dir.join(format!("peer-{node}.crt"));
    let key_path = pki_dir.join(format!("peer-{node}.key"));
    write_public(&cert_path, &cert.pem())?;
    write_secret(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// A TLS client certificate carrying `identity` as its one `warden:` URI SubjectAltName.
fn client_params(
    identity: &Identity,
    common_name: &str,
    now: OffsetDateTime,
) -> anyhow::Result<CertificateParams> {
    let uri = identity.uri();
    let mut params = params(Vec::new(), common_name, now)?;
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(uri.as_str()).with_context(|| format!("{uri:?} is not IA5"))?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate a P-256 key")
}

fn params(
    subject_alt_names: Vec<String>,
    common_name: &str,
    now: OffsetDateTime,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(subject_alt_names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warden demo");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + VALIDITY;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    fs::write(path, pem).with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes a private key readable by its owner only, also when the file already existed.
fn write_secret(path: &Path, pem: &str) -> anyhow::Result<()> {
    let context = || format!("{}: cannot write", path.display());
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).with_context(context)?;
        // `mode` applies only when the file is created.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(context)?;
        write_all(file, pem).with_context(context)
    }
    #[cfg(not(unix))]
    {
        write_all(options.open(path).with_context(context)?, pem).with_context(context)
    }
}

fn write_all(mut file: fs::File, pem: &str) -> std::io::Result<()> {
    file.write_all(pem.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::*;

    fn der(path: &Path) -> Vec<u8> {
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }

    #[test]
    fn writes_all_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let pki = generate_demo_pki(&out, &["node-a".to_owned()]).unwrap();
        assert_eq!(pki, DemoPki::paths(&out));
        for path in [&pki.ca_cert, &pki.server_cert, &pki.operator_cert] {
            assert!(fs::read_to_string(path)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        for path in [&pki.ca_key, &pki.server_key, &pki.operator_key] {
            assert!(fs::read_to_string(path)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn regenerating_tightens_existing_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::paths(dir.path());
        fs::write(&pki.server_key, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&pki.server_key, fs::Permissions::from_mode(0o644)).unwrap();
            generate_demo_pki(dir.path(), &[]).unwrap();
            let mode = fs::metadata(&pki.server_key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn server_certificate_is_for_tls_servers_with_names_and_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "node-a".to_owned(),
            "node-a.example".to_owned(),
            "localhost".to_owned(),
        ];
        let pki = generate_demo_pki(dir.path(), &names).unwrap();
        let ca_der = der(&pki.ca_cert);
        let server_der = der(&pki.server_cert);
        let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
        let (_, server) = parse_x509_certificate(&server_der).unwrap();

        assert_eq!(server.issuer(), ca.subject());
        assert!(ca.is_ca());
        assert!(!server.is_ca());
        let cn = server.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "node-a");

        let san = server.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, ["node-a", "node-a.example", "localhost"]);
        assert_eq!(ips, [vec![127, 0, 0, 1]]);

        let eku = server.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);

        let validity = server.validity();
        let days = (validity.not_after - validity.not_before)
            .unwrap()
            .whole_days();
        assert_eq!(days, 365);
        assert!(validity.is_valid());
    }

    #[test]
    fn operator_certificate_is_accepted_for_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_demo_pki(dir.path(), &["node-a".to_owned()]).unwrap();
        let operator_der = der(&pki.operator_cert);
        let (_, operator) = parse_x509_certificate(&operator_der).unwrap();
        let cn = operator.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), OPERATOR_CN);
        assert_eq!(
            crate::identity::from_cert_der(&operator_der),
            Some(Identity::Operator("operator".to_owned()))
        );
        assert_eq!(demo_operator().uri(), "warden:operator:operator");
        let eku = operator.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        // The chain verifies for mTLS against the demo CA ...
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der(&pki.ca_cert))).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let now = UnixTime::now();
        let operator = CertificateDer::from(operator_der.clone());
        verifier.verify_client_cert(&operator, &[], now).unwrap();
        // ... and a server certificate is not a client certificate.
        let server = CertificateDer::from(der(&pki.server_cert));
        assert!(verifier.verify_client_cert(&server, &[], now).is_err());
    }

    fn client_verifier(pki: &DemoPki) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der(&pki.ca_cert))).unwrap();
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn issued_client_certificates_carry_the_identity_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_demo_pki(dir.path(), &[]).unwrap();
        let verifier = client_verifier(&pki);
        for (identity, stem) in [
            (Identity::Tenant("acme".to_owned()), "tenant-acme"),
            (Identity::Operator("alice".to_owned()), "operator-alice"),
            (
                Identity::Operator("operator".to_owned()),
                "operator-operator",
            ),
        ] {
            let (cert, key) = issue_client_cert(dir.path(), &identity).unwrap();
            assert_eq!(cert, dir.path().join(format!("{stem}.crt")));
            assert_eq!(key, dir.path().join(format!("{stem}.key")));
            let cert_der = der(&cert);
            assert_eq!(
                crate::identity::from_cert_der(&cert_der),
                Some(identity.clone())
            );
            let (_, parsed) = parse_x509_certificate(&cert_der).unwrap();
            let cn = parsed.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), identity.to_string());
            let eku = parsed.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
            verifier
                .verify_client_cert(&CertificateDer::from(cert_der), &[], UnixTime::now())
                .unwrap();
            // The key belongs to the certificate.
            assert_eq!(
                crate::tls::spki_of_cert_pem(&cert).unwrap(),
                KeyPair::from_pem(&fs::read_to_string(&key).unwrap())
                    .unwrap()
                    .subject_public_key_info()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
    }

    #[test]
    fn invalid_identities_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        generate_demo_pki(dir.path(), &[]).unwrap();
        let before = fs::read_dir(dir.path()).unwrap().count();
        for bad in ["", "Acme", "-acme", "../acme", "a/b", &"a".repeat(64)] {
            let err = issue_client_cert(dir.path(), &Identity::Tenant(bad.to_owned())).unwrap_err();
            assert!(
                format!("{err:#}").contains("not a valid tenant name"),
                "{err:#}"
            );
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), before);
    }

    #[test]
    fn issuing_needs_the_matching_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let acme = Identity::Tenant("acme".to_owned());
        let err = issue_client_cert(&dir.path().join("none"), &acme).unwrap_err();
        assert!(
            format!("{err:#}").contains("ca.key: cannot read"),
            "{err:#}"
        );

        let a = generate_demo_pki(&dir.path().join("a"), &[]).unwrap();
        let b = generate_demo_pki(&dir.path().join("b"), &[]).unwrap();
        fs::copy(&b.ca_key, &a.ca_key).unwrap();
        let err = issue_client_cert(&a.dir, &acme).unwrap_err();
        assert!(format!("{err:#}").contains("does not belong to"), "{err:#}");
        fs::copy(&a.server_key, &a.ca_key).unwrap();
        fs::write(&a.ca_cert, "not a certificate").unwrap();
        assert!(issue_client_cert(&a.dir, &acme).is_err());
    }

    #[test]
    fn peer_certificates_carry_the_node_id_and_both_ekus() {
        let dir = tempfile::tempdir().unwrap();
        generate_demo_pki(dir.path(), &[]).unwrap();
        let (cert, key) = issue_peer_cert(dir.path(), "node-b").unwrap();
        assert_eq!(cert, dir.path().join("peer-node-b.crt"));
        let der = der(&cert);
        let (_, parsed) = parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(names, ["node-b"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        for bad in ["", "Node-B", "-b", "a.b", "../b"] {
            assert!(issue_peer_cert(dir.path(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_server_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate_demo_pki(dir.path(), &["not a name".to_owned()]).unwrap_err();
        assert!(format!("{err:#}").contains("not a name"), "{err:#}");
    }
}
