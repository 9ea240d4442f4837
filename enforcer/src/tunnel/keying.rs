//! SA key derivation (docs/dataplane.md, "Keying").
//!
//! ```text
//!  PRK  = HKDF-Extract(salt = tenant east-west key, IKM = control-channel secret)
//!  OKM  = HKDF-Expand(PRK, info, 36) = AES-256 key (32) ‖ salt (4)          (RFC 5869, RFC 4106 §8.1)
//!  info = "warden esp v1" ‖ lp(tenant) ‖ lp(sender node) ‖ lp(receiver node) ‖ epoch (8) ‖ worker (2)
//!  lp(x) = length (1) ‖ x
//! ```
//! The channel secret comes from the TLS 1.3 exporter of the attested control channel, so a
//! later compromise of the tenant key alone reveals no SA key (forward secrecy from the
//! channel's ephemeral key exchange). The tenant key binds the SA to the tenant: an appliance
//! that does not hold the tenant's key cannot derive its SAs. Every (tenant, direction, epoch,
//! sender worker) gets its own key, so no two sequence counters ever share one.

use ring::hkdf;
use zeroize::Zeroizing;

use crate::esp::SaKeys;

const LABEL: &[u8] = b"warden esp v1";

struct Len36;

impl hkdf::KeyType for Len36 {
    fn len(&self) -> usize {
        36
    }
}

/// Why keys could not be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyingError {
    #[error("a name in the key derivation is empty or longer than 255 bytes")]
    Name,
    #[error("the tenant key is empty")]
    TenantKey,
    #[error("HKDF failed")]
    Hkdf,
}

fn lp(name: &str) -> Result<[u8; 1], KeyingError> {
    match u8::try_from(name.len()) {
        Ok(n) if n > 0 => Ok([n]),
        _ => Err(KeyingError::Name),
    }
}

/// The keys of the SA that carries `tenant`'s traffic from node `from` to node `to` in
/// `epoch`, sealed by `from`'s worker `worker`.
pub fn derive_sa_keys(
    channel_secret: &[u8; 32],
    tenant_key: &[u8],
    tenant: &str,
    from: &str,
    to: &str,
    epoch: u64,
    worker: u16,
) -> Result<SaKeys, KeyingError> {
    if tenant_key.is_empty() {
        return Err(KeyingError::TenantKey);
    }
    let (lt, lf, lto) = (lp(tenant)?, lp(from)?, lp(to)?);
    let epoch = epoch.to_be_bytes();
    let worker = worker.to_be_bytes();
    let info: [&[u8]; 9] = [
        LABEL,
        &lt,
        tenant.as_bytes(),
        &lf,
        from.as_bytes(),
        &lto,
        to.as_bytes(),
        &epoch,
        &worker,
    ];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, tenant_key).extract(channel_secret);
    let okm = prk.expand(&info, Len36).map_err(|_| KeyingError::Hkdf)?;
    let mut out = Zeroizing::new([0u8; 36]);
    okm.fill(out.as_mut()).map_err(|_| KeyingError::Hkdf)?;
    let mut key = Zeroizing::new([0u8; 32]);
    let mut salt = [0u8; 4];
    let (k, s) = out.split_at(32);
    key.copy_from_slice(k);
    salt.copy_from_slice(s);
    Ok(SaKeys { key, salt })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(secret: u8, tk: &[u8], t: &str, f: &str, to: &str, e: u64, w: u16) -> [u8; 36] {
        let k = derive_sa_keys(&[secret; 32], tk, t, f, to, e, w).unwrap();
        let mut out = [0u8; 36];
        out[..32].copy_from_slice(k.key.as_ref());
        out[32..].copy_from_slice(&k.salt);
        out
    }

    #[test]
    fn every_input_changes_the_keys() {
        let base = d(1, b"tenant-key", "acme", "node-a", "node-b", 1, 0);
        assert_eq!(base, d(1, b"tenant-key", "acme", "node-a", "node-b", 1, 0));
        for other in [
            d(2, b"tenant-key", "acme", "node-a", "node-b", 1, 0),
            d(1, b"tenant-kez", "acme", "node-a", "node-b", 1, 0),
            d(1, b"tenant-key", "acmf", "node-a", "node-b", 1, 0),
            d(1, b"tenant-key", "acme", "node-b", "node-a", 1, 0),
            d(1, b"tenant-key", "acme", "node-a", "node-b", 2, 0),
            d(1, b"tenant-key", "acme", "node-a", "node-b", 1, 1),
            // Length prefixes keep the names apart.
            d(1, b"tenant-key", "acmen", "ode-a", "node-b", 1, 0),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn known_answer() {
        // Computed independently with Python's hmac/hashlib (RFC 5869 steps) over the same
        // inputs: salt = b"k", IKM = 32 × 0x00, info as documented above.
        let got = d(0, b"k", "t", "a", "b", 0, 0);
        assert_eq!(hex::encode(got), KAT);
    }

    const KAT: &str = "951a9f63e2d9b76c4a7144bedf4c73b1c040f285bc07d95a3024ca366fc7416315dcc39c";

    #[test]
    fn bad_names_are_refused() {
        let long = "x".repeat(256);
        for (t, f, to) in [("", "a", "b"), ("t", "", "b"), ("t", "a", long.as_str())] {
            assert_eq!(
                derive_sa_keys(&[0; 32], b"k", t, f, to, 0, 0).err(),
                Some(KeyingError::Name)
            );
        }
        assert_eq!(
            derive_sa_keys(&[0; 32], b"", "t", "a", "b", 0, 0).err(),
            Some(KeyingError::TenantKey)
        );
    }
}
