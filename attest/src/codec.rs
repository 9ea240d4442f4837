//! A bounds-checked reader for untrusted bytes. Every read names the field it is reading, so a
//! decode error says what was wrong and at which byte offset; nothing here can panic.

use thiserror::Error;

/// Why a structure could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{field}: truncated at byte {offset} (needed {needed} more bytes, {available} left)")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{field}: length {len} at byte {offset} exceeds the limit of {max}")]
    TooLong {
        field: &'static str,
        offset: usize,
        len: usize,
        max: usize,
    },
    #[error("{structure}: {count} trailing bytes after byte {offset}")]
    TrailingBytes {
        structure: &'static str,
        offset: usize,
        count: usize,
    },
    #[error("{field}: unsupported value {value:#x} at byte {offset}")]
    Unsupported {
        field: &'static str,
        offset: usize,
        value: u64,
    },
    #[error("{field}: invalid at byte {offset}: {reason}")]
    Invalid {
        field: &'static str,
        offset: usize,
        reason: &'static str,
    },
}

/// Cursor over a byte slice. Reads advance only on success.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Current byte offset from the start of the buffer.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Take exactly `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end))) {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16_be(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }
    pub fn u32_be(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }
    pub fn u64_be(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }
    pub fn u16_le(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }
    pub fn u32_le(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    /// A TPM2B: big-endian u16 size, then that many bytes, at most `max`.
    pub fn tpm2b(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let len = usize::from(self.u16_be(field)?);
        if len > max {
            return Err(DecodeError::TooLong {
                field,
                offset,
                len,
                max,
            });
        }
        self.take(len, field)
    }

    /// Succeed only if every byte was consumed.
    pub fn finish(self, structure: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                structure,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_advance_and_truncation_names_field_and_offset() {
        let mut r = Reader::new(&[0x00, 0x02, 0xAA, 0xBB, 0x01]);
        assert_eq!(r.tpm2b(4, "x").unwrap(), &[0xAA, 0xBB]);
        assert_eq!(r.offset(), 4);
        let err = r.u32_be("count").unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                field: "count",
                offset: 4,
                needed: 4,
                available: 1
            }
        );
        // A failed read does not advance.
        assert_eq!(r.u8("last").unwrap(), 1);
        r.finish("t").unwrap();
    }

    #[test]
    fn oversized_tpm2b_and_trailing_bytes_are_refused() {
        let mut r = Reader::new(&[0x00, 0x05, 1, 2, 3, 4, 5]);
        assert!(matches!(
            r.tpm2b(4, "data"),
            Err(DecodeError::TooLong { len: 5, max: 4, .. })
        ));
        let mut r = Reader::new(&[1, 2]);
        r.u8("a").unwrap();
        assert!(matches!(
            r.finish("s"),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(r.take(usize::MAX, "x").is_err());
        r.u8("y").unwrap();
        assert!(r.take(usize::MAX, "x").is_err());
    }
}
