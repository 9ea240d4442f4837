//! A throw-away PKI for the demo and the tests: one CA, a server certificate for the HTTPS
//! API and an operator client certificate for mTLS. Not for production: the CA key sits on
//! disk next to the certificates it signs.
//!
//! All keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600; certificates are PEM and
//! valid for one year (backdated by [`CLOCK_SKEW`] so a slightly slow clock accepts them).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// Certificates are valid for this long from now.
pub const VALIDITY: Duration = Duration::days(365);
/// ... and from this long before now.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Common name of the operator client certificate.
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
    let mut operator = params(Vec::new(), OPERATOR_CN, now)?;
    operator.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    operator.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let operator_cert = operator
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

    #[test]
    fn bad_server_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate_demo_pki(dir.path(), &["not a name".to_owned()]).unwrap_err();
        assert!(format!("{err:#}").contains("not a name"), "{err:#}");
    }
}
