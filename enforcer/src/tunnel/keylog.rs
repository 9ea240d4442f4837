//! The insecure SA key log: one line per SA in the format of Wireshark's `esp_sa` table
//! (Preferences → Protocols → ESP → ESP SAs), so tshark and Wireshark decrypt a capture of
//! the wire. For debugging only: whoever reads the file reads the traffic.
//!
//! ```text
//! "IPv4","198.51.100.1","198.51.100.2","0x00000104","AES-GCM with 16 octet ICV [RFC4106]","0x<key ‖ salt>","NULL","","64-bit","0"
//! ```
//! The last two fields tell Wireshark the SA uses 64-bit extended sequence numbers, with the
//! high 32 bits starting at 0.

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
        "\"{proto}\",\"{src}\",\"{dst}\",\"{spi:#010x}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"{key}\",\"NULL\",\"\",\"64-bit\",\"0\"\n"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn line_has_the_key_and_salt() {
        let keys = SaKeys {
            key: zeroize::Zeroizing::new([0xab; 32]),
            salt: [1, 2, 3, 4],
        };
        let l = line(
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
            0x104,
            &keys,
        );
        assert!(l.starts_with("\"IPv4\",\"198.51.100.1\",\"198.51.100.2\",\"0x00000104\","));
        assert!(l.contains(&format!("\"0x{}01020304\"", "ab".repeat(32))));
        assert!(l.ends_with("\"64-bit\",\"0\"\n"));
    }
}
