//! The insecure SA key log: one line per SA in the format of Wireshark's `esp_sa` table
//! (Preferences → Protocols → ESP → ESP SAs), so tshark and Wireshark decrypt a capture of
//! the wire. For debugging only: whoever reads the file reads the traffic.
//!
//! ```text
//! "IPv4","198.51.100.1","198.51.100.2","0x00000104","AES-GCM with 16 octet ICV [RFC4106]","0x<key ‖ salt>","NULL",""
//! ```
//! The eight columns of Wireshark 4.0 (Debian 12), checked against tshark by
//! `enforcer/tests/keylog_tshark.rs`: protocol, source, destination, SPI, encryption
//! algorithm, encryption key (the 32-byte AES key followed by the 4-byte salt, RFC 4106 §8.1),
//! authentication algorithm (`NULL`: GCM authenticates) and authentication key (empty).
//! Save the lines as `esp_sa` in a Wireshark configuration directory (docs/dataplane.md,
//! "Decrypting a capture").
//!
//! Wireshark 4.0 has no column for extended sequence numbers: it decrypts every packet (the
//! nonce is the salt and the IV, which carries the full 64-bit sequence number), but with
//! `esp.enable_authentication_check` it reports every ICV as wrong, since it authenticates
//! SPI ‖ low 32 bits instead of SPI ‖ high 32 ‖ low 32. It warns about, and drops, columns it
//! does not know, so the line carries none.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::esp::SaKeys;

/// One `esp_sa` line (with its newline) for the SA `spi` from `src` to `dst`.
pub fn line(src: IpAddr, dst: IpAddr, spi: u32, keys: &SaKeys) -> String {
    let proto = if src.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut key = String::with_capacity(2 + 72);
    key.push_str("0x");
    for b in keys.key.iter().chain(keys.salt.iter()) {
        let _ = write!(key, "{b:02x}");
    }
    format!(
        "\"{proto}\",\"{src}\",\"{dst}\",\"{spi:#010x}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"{key}\",\"NULL\",\"\"\n"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys() -> SaKeys {
        SaKeys {
            key: zeroize::Zeroizing::new([0xab; 32]),
            salt: [1, 2, 3, 4],
        }
    }

    #[test]
    fn line_is_an_esp_sa_record() {
        let l = line(
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
            0x104,
            &keys(),
        );
        assert_eq!(
            l,
            format!(
                "\"IPv4\",\"198.51.100.1\",\"198.51.100.2\",\"0x00000104\",\
                 \"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}01020304\",\"NULL\",\"\"\n",
                "ab".repeat(32)
            )
        );
        // Eight quoted columns, none of them holding a comma or a quote.
        assert_eq!(l.trim_end().split(',').count(), 8);
        assert_eq!(l.matches('"').count(), 16);
    }

    #[test]
    fn ipv6_sas_say_so() {
        let l = line(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            0xffff_ff01,
            &keys(),
        );
        assert!(l.starts_with("\"IPv6\",\"2001:db8::1\",\"2001:db8::2\",\"0xffffff01\","));
    }
}
