//! Who is calling: the identity a client certificate carries.
//!
//! A client certificate that chains to the configured client CA names its holder in exactly
//! one URI SubjectAltName:
//!
//! ```text
//! warden:operator:<name>   an operator (admin endpoints)
//! warden:tenant:<id>       a tenant (its own keys, policies, audit records)
//! ```
//!
//! `<name>` and `<id>` are 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter or digit.
//! The subject (CN, O, ...) is ignored: it is free text that CAs fill in many ways.
//!
//! Fail closed: a certificate with no `warden:` URI, with two or more (even if equal), or with
//! a malformed one has no identity. So does a certificate whose SubjectAltName extension is
//! missing, malformed or repeated, or that has bytes after its DER encoding. The `warden:`
//! scheme is matched without regard to case when counting (RFC 3986 §3.1: "schemes are
//! case-insensitive"), so `WARDEN:operator:x` next to `warden:tenant:y` makes the certificate
//! ambiguous rather than letting either win; the identity itself must be written in lowercase.
//!
//! Everything here is pure: bytes in, an identity or nothing out. Chain verification happens
//! before, in the TLS handshake (`crate::tls::server_config`); this module must only be given
//! certificates that have been verified.

use std::fmt;

use x509_parser::extensions::GeneralName;

/// URI scheme of Warden identities.
pub const SCHEME: &str = "warden";
/// Longest operator name or tenant id.
pub const MAX_NAME_LEN: usize = 63;

/// The holder of a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// An operator: may use the admin endpoints.
    Operator(String),
    /// A tenant, by id.
    Tenant(String),
}

/// The identity of the peer of one TLS connection, if it presented a verified client
/// certificate with one. [`crate::tls::serve`] puts it into every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<Identity>);

impl Identity {
    /// `"operator"` or `"tenant"`.
    pub fn role(&self) -> &'static str {
        match self {
            Identity::Operator(_) => "operator",
            Identity::Tenant(_) => "tenant",
        }
    }

    /// The operator name or the tenant id.
    pub fn name(&self) -> &str {
        match self {
            Identity::Operator(name) | Identity::Tenant(name) => name,
        }
    }

    /// The URI SubjectAltName that carries this identity, e.g. `warden:tenant:acme`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}:{}:{}", self.role(), self.name())
    }

    /// Whether the name or id follows the rules, i.e. `parse_uri(&self.uri())` gives `self`
    /// back. Values built directly (not parsed) should be checked with it before use in a
    /// certificate or a file name.
    pub fn is_valid(&self) -> bool {
        valid_name(self.name())
    }

    /// The identity of a client certificate (DER), or `None` if it has none or is ambiguous;
    /// see the module documentation for the rules.
    pub fn from_cert_der(der: &[u8]) -> Option<Identity> {
        from_cert_der(der)
    }

    /// Parses `warden:operator:<name>` or `warden:tenant:<id>`; anything else is `None`.
    pub fn parse_uri(uri: &str) -> Option<Identity> {
        parse_uri(uri)
    }
}

impl fmt::Display for Identity {
    /// `operator:alice`, `tenant:acme`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role(), self.name())
    }
}

/// The identity of a client certificate (DER), or `None` if it has none or is ambiguous.
pub fn from_cert_der(der: &[u8]) -> Option<Identity> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    // Err: the extension is malformed or present twice.
    let san = cert.subject_alternative_name().ok()??;
    let mut warden_uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if has_warden_scheme(uri) => Some(*uri),
            _ => None,
        });
    let uri = warden_uris.next()?;
    if warden_uris.next().is_some() {
        return None;
    }
    parse_uri(uri)
}

/// Parses `warden:operator:<name>` or `warden:tenant:<id>`; anything else is `None`.
pub fn parse_uri(uri: &str) -> Option<Identity> {
    let rest = uri.strip_prefix(SCHEME)?.strip_prefix(':')?;
    let (role, name) = rest.split_once(':')?;
    if !valid_name(name) {
        return None;
    }
    match role {
        "operator" => Some(Identity::Operator(name.to_owned())),
        "tenant" => Some(Identity::Tenant(name.to_owned())),
        _ => None,
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {
            bytes.len() <= MAX_NAME_LEN
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// Whether `uri` is in the `warden:` scheme, in any case.
fn has_warden_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(SCHEME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn tenant(id: &str) -> Identity {
        Identity::Tenant(id.to_owned())
    }

    fn operator(name: &str) -> Identity {
        Identity::Operator(name.to_owned())
    }

    /// A self-signed certificate with these SubjectAltNames (chain checks are not this
    /// module's business).
    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(Ia5String::try_from(s).unwrap())
    }

    #[test]
    fn display_and_uri() {
        assert_eq!(operator("alice").to_string(), "operator:alice");
        assert_eq!(tenant("acme").to_string(), "tenant:acme");
        assert_eq!(operator("alice").uri(), "warden:operator:alice");
        assert_eq!(tenant("acme").uri(), "warden:tenant:acme");
        assert_eq!(tenant("acme").role(), "tenant");
        assert_eq!(tenant("acme").name(), "acme");
    }

    #[test]
    fn parse_uri_accepts_both_roles_and_round_trips() {
        let longest = "a".repeat(MAX_NAME_LEN);
        for id in [
            operator("alice"),
            operator("0"),
            tenant("acme"),
            tenant("acme-2"),
            tenant("9-lives-"),
            tenant(&longest),
        ] {
            assert!(id.is_valid(), "{id}");
            assert_eq!(parse_uri(&id.uri()), Some(id.clone()), "{id}");
            assert_eq!(Identity::parse_uri(&id.uri()), Some(id.clone()), "{id}");
        }
    }

    #[test]
    fn parse_uri_refuses_malformed_uris() {
        let too_long = format!("warden:tenant:{}", "a".repeat(MAX_NAME_LEN + 1));
        for bad in [
            "",
            "warden",
            "warden:",
            "warden:tenant",
            "warden:tenant:",
            "warden::acme",
            "warden:admin:acme",
            "warden:Tenant:acme",
            "WARDEN:tenant:acme",
            "Warden:tenant:acme",
            "warden:tenant:Acme",
            "warden:tenant:-acme",
            "warden:tenant:ac_me",
            "warden:tenant:ac.me",
            "warden:tenant:ac me",
            "warden:tenant:acme ",
            " warden:tenant:acme",
            "warden:tenant:acme:x",
            "warden:tenant:acme/x",
            "warden:tenant:acmé",
            "warden:tenant:acme\0",
            "warden://tenant/acme",
            "spiffe://warden/tenant/acme",
            "urn:warden:tenant:acme",
            "tenant:acme",
            too_long.as_str(),
        ] {
            assert_eq!(parse_uri(bad), None, "{bad:?}");
        }
        assert!(!tenant("Acme").is_valid());
        assert!(!operator("").is_valid());
    }

    #[test]
    fn one_warden_uri_is_the_identity() {
        let der = cert_with(vec![uri("warden:tenant:acme")]);
        assert_eq!(from_cert_der(&der), Some(tenant("acme")));
        assert_eq!(Identity::from_cert_der(&der), Some(tenant("acme")));
        let der = cert_with(vec![uri("warden:operator:alice")]);
        assert_eq!(from_cert_der(&der), Some(operator("alice")));
    }

    #[test]
    fn other_names_beside_the_warden_uri_are_ignored() {
        let der = cert_with(vec![
            dns("client.example"),
            uri("https://example.com/x"),
            uri("spiffe://example.org/ns/a/sa/b"),
            uri("warden:tenant:acme"),
            SanType::Rfc822Name(Ia5String::try_from("a@example.com").unwrap()),
        ]);
        assert_eq!(from_cert_der(&der), Some(tenant("acme")));
    }

    #[test]
    fn no_warden_uri_is_no_identity() {
        assert_eq!(from_cert_der(&cert_with(Vec::new())), None);
        let der = cert_with(vec![
            dns("warden"),
            uri("https://warden.example/tenant/acme"),
        ]);
        assert_eq!(from_cert_der(&der), None);
        // Only URI names count, not an e-mail name that looks like an identity.
        let der = cert_with(vec![SanType::Rfc822Name(
            Ia5String::try_from("warden:tenant:acme").unwrap(),
        )]);
        assert_eq!(from_cert_der(&der), None);
    }

    #[test]
    fn two_warden_uris_are_ambiguous() {
        for pair in [
            ["warden:tenant:acme", "warden:operator:alice"],
            ["warden:tenant:acme", "warden:tenant:other"],
            ["warden:tenant:acme", "warden:tenant:acme"],
            ["warden:tenant:acme", "WARDEN:operator:alice"],
            ["warden:tenant:acme", "warden:bogus"],
            ["warden:oops", "warden:tenant:acme"],
        ] {
            let der = cert_with(pair.iter().map(|u| uri(u)).collect());
            assert_eq!(from_cert_der(&der), None, "{pair:?}");
        }
    }

    #[test]
    fn a_malformed_warden_uri_is_no_identity() {
        for bad in [
            "warden:tenant:Acme",
            "warden:admin:root",
            "Warden:operator:alice",
        ] {
            assert_eq!(from_cert_der(&cert_with(vec![uri(bad)])), None, "{bad}");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_no_identity() {
        let der = cert_with(vec![uri("warden:tenant:acme")]);
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(from_cert_der(&trailing), None);
        assert_eq!(from_cert_der(&der[..der.len() - 1]), None);
        assert_eq!(from_cert_der(b""), None);
        assert_eq!(from_cert_der(b"warden:tenant:acme"), None);
    }

    #[test]
    fn a_repeated_san_extension_is_no_identity() {
        let der = cert_with(vec![uri("warden:tenant:acme")]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap();
        // Same extension twice, via rcgen's custom extensions.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.subject_alt_names = vec![uri("warden:tenant:acme")];
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                san.value.to_vec(),
            ));
        let twice = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(from_cert_der(&twice), None);
    }
}
