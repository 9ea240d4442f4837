//! The stored-record codec (pure): `u32 BE length ‖ u32 BE CRC-32C(payload) ‖ payload`.
//!
//! Bytes read back from disk are untrusted: the length is checked against
//! [`MAX_ENTRY_BYTES`] before anything is sized from it, and the checksum before the payload
//! is handed out.

use super::MAX_ENTRY_BYTES;

/// Bytes in a record header: length then checksum, both big-endian `u32`.
pub const HEADER_BYTES: usize = 8;

/// Why bytes do not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The buffer ends before the record does (a torn write, or a short read).
    #[error("record truncated: {have} bytes present, {need} needed")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header says the record occupies (or the header size).
        need: usize,
    },
    /// The length field exceeds [`MAX_ENTRY_BYTES`].
    #[error("record length {len} exceeds the maximum of {MAX_ENTRY_BYTES} bytes")]
    TooLarge {
        /// The stored length field.
        len: u32,
    },
    /// The payload does not match its stored CRC-32C.
    #[error("record checksum mismatch: stored {stored:#010x}, payload has {computed:#010x}")]
    Checksum {
        /// CRC-32C from the header.
        stored: u32,
        /// CRC-32C of the payload as read.
        computed: u32,
    },
}

/// A validated record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length, at most [`MAX_ENTRY_BYTES`].
    pub len: usize,
    /// CRC-32C of the payload.
    pub crc: u32,
}

impl Header {
    /// Bytes the whole record occupies.
    pub fn record_bytes(&self) -> usize {
        HEADER_BYTES + self.len
    }
}

/// Parses a header, bounding the length before anyone allocates from it.
pub fn decode_header(bytes: [u8; HEADER_BYTES]) -> Result<Header, RecordError> {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = bytes;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    let crc = u32::from_be_bytes([c0, c1, c2, c3]);
    match usize::try_from(len) {
        Ok(n) if n <= MAX_ENTRY_BYTES => Ok(Header { len: n, crc }),
        _ => Err(RecordError::TooLarge { len }),
    }
}

/// Decodes the record at the start of `buf`: returns its payload and the bytes it occupies.
///
/// Bytes after the record are left alone (the caller continues from `consumed`); nothing in
/// `buf` can make this panic or allocate.
pub fn decode_record(buf: &[u8]) -> Result<(&[u8], usize), RecordError> {
    let have = buf.len();
    let header: [u8; HEADER_BYTES] = buf
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(RecordError::Truncated {
            have,
            need: HEADER_BYTES,
        })?;
    let header = decode_header(header)?;
    let need = header.record_bytes();
    let payload = buf
        .get(HEADER_BYTES..need)
        .ok_or(RecordError::Truncated { have, need })?;
    check_payload(&header, payload)?;
    Ok((payload, need))
}

/// Checks a payload against its header's checksum.
pub fn check_payload(header: &Header, payload: &[u8]) -> Result<(), RecordError> {
    let computed = crc32c(payload);
    if computed == header.crc {
        Ok(())
    } else {
        Err(RecordError::Checksum {
            stored: header.crc,
            computed,
        })
    }
}

/// Appends the record for `payload` to `out`.
///
/// The caller has checked `payload.len() <= MAX_ENTRY_BYTES`; a longer payload is refused
/// here too rather than written with a wrapped length.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if payload.len() > MAX_ENTRY_BYTES {
        return Err(RecordError::TooLarge { len });
    }
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// CRC-32C (Castagnoli) lookup table, reflected polynomial `0x82F63B78`, built at compile time.
// Indexing here runs in const evaluation: an out-of-bounds index fails the build, it cannot panic.
#[allow(clippy::indexing_slicing)]
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C (RFC 3720 §B.4) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let crc = data.iter().fold(!0u32, |crc, &byte| {
        let slot = usize::from((crc as u8) ^ byte);
        // `slot` < 256 by construction; the fallback is unreachable.
        CRC32C_TABLE.get(slot).copied().unwrap_or(0) ^ (crc >> 8)
    });
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 3720 §B.4 "CRC Examples".
    #[test]
    fn crc32c_rfc3720_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn round_trip_and_trailing_bytes_left_alone() {
        let mut buf = Vec::new();
        encode_record(b"hello", &mut buf).unwrap();
        encode_record(b"", &mut buf).unwrap();
        let (p, used) = decode_record(&buf).unwrap();
        assert_eq!((p, used), (&b"hello"[..], 13));
        let (p, used2) = decode_record(&buf[used..]).unwrap();
        assert_eq!((p, used2), (&b""[..], 8));
    }

    #[test]
    fn rejects_short_header_short_payload_bad_crc_and_huge_length() {
        let mut buf = Vec::new();
        encode_record(b"payload", &mut buf).unwrap();
        assert_eq!(
            decode_record(&buf[..5]),
            Err(RecordError::Truncated { have: 5, need: 8 })
        );
        assert_eq!(
            decode_record(&buf[..10]),
            Err(RecordError::Truncated { have: 10, need: 15 })
        );
        let mut flipped = buf.clone();
        flipped[9] ^= 1;
        assert!(matches!(
            decode_record(&flipped),
            Err(RecordError::Checksum { .. })
        ));
        let mut huge = buf;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_record(&huge),
            Err(RecordError::TooLarge { len: u32::MAX })
        );
        let too_long = vec![0u8; MAX_ENTRY_BYTES + 1];
        assert!(encode_record(&too_long, &mut Vec::new()).is_err());
        let max = vec![7u8; MAX_ENTRY_BYTES];
        let mut out = Vec::new();
        encode_record(&max, &mut out).unwrap();
        assert_eq!(decode_record(&out).unwrap().0, &max[..]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((payload, used)) = decode_record(&bytes) {
                prop_assert_eq!(used, HEADER_BYTES + payload.len());
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn encode_decode_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = Vec::new();
            encode_record(&payload, &mut buf).unwrap();
            let (p, used) = decode_record(&buf).unwrap();
            prop_assert_eq!(p, &payload[..]);
            prop_assert_eq!(used, buf.len());
        }
    }
}
