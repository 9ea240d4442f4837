//! ESP security associations, sans-I/O: AES-256-GCM per RFC 4106 with 64-bit extended
//! sequence numbers (RFC 4304), tunnel mode (the payload is a whole inner IP packet).
//!
//! ```text
//!  ESP packet (RFC 4303 §2, RFC 4106 §3):
//!   SPI (4) ‖ seq low 32 (4) ‖ IV (8) = the full 64-bit sequence number ‖
//!   AES-GCM( inner packet ‖ padding 1,2,3… ‖ pad length (1) ‖ next header (1) ) ‖ ICV (16)
//!  nonce = salt (4) ‖ IV (8)          AAD (ESN, RFC 4106 §5) = SPI ‖ seq high 32 ‖ seq low 32
//! ```
//! Outbound seals into the caller's buffer and counts usage; inbound checks the ICV first and
//! only then the anti-replay window (RFC 6479), so forged packets never move the window.

use std::time::Duration;

use zeroize::Zeroizing;

use super::engine::{Aead, Engine};
use super::replay::{ReplayError, ReplayWindow};

pub const HEADER_LEN: usize = 16;
pub const ICV_LEN: usize = 16;
/// Inner packets larger than this are refused (jumbo frames fit).
pub const MAX_INNER: usize = 9216;
/// IP protocol numbers for the next-header field (tunnel mode).
pub const NEXT_IPV4: u8 = 4;
pub const NEXT_IPV6: u8 = 41;

/// When an SA must be replaced. The soft limits start a rekey; the hard ones stop the SA.
/// Defaults stay far below AES-GCM's limits (2^32 invocations with random IVs does not apply
/// to counter IVs; NIST SP 800-38D and RFC 8446 §5.5 bound a key's data at about 2^38 bytes
/// for a small forgery advantage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub soft_packets: u64,
    pub hard_packets: u64,
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    pub soft_age: Duration,
    pub hard_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            soft_packets: 1 << 30,
            hard_packets: 1 << 31,
            soft_bytes: 1 << 36,
            hard_bytes: 1 << 37,
            soft_age: Duration::from_secs(3600),
            hard_age: Duration::from_secs(3900),
        }
    }
}

/// Why a packet was not sealed or opened: the data plane counts drops by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspError {
    #[error("the packet is malformed (too short or bad padding)")]
    Malformed,
    #[error("the packet is for another SA")]
    WrongSpi,
    #[error("the ICV does not verify")]
    Auth,
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("the SA reached its hard limit and must be replaced")]
    Expired,
    #[error("the output buffer is too small")]
    Buffer,
    #[error("the inner packet is larger than {MAX_INNER} bytes")]
    TooLarge,
}

/// Key material of one direction: a 32-byte AES key and a 4-byte salt (RFC 4106 §8.1).
pub struct SaKeys {
    pub key: Zeroizing<[u8; 32]>,
    pub salt: [u8; 4],
}

/// `first` (4 bytes) ‖ `seq` (8 bytes, big-endian).
fn four_eight(first: [u8; 4], seq: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (d, s) in out
        .iter_mut()
        .zip(first.iter().chain(seq.to_be_bytes().iter()))
    {
        *d = *s;
    }
    out
}

fn nonce(salt: &[u8; 4], seq: u64) -> [u8; 12] {
    four_eight(*salt, seq)
}

fn aad(spi: u32, seq: u64) -> [u8; 12] {
    four_eight(spi.to_be_bytes(), seq)
}

/// The sending side of an SA.
pub struct Outbound {
    spi: u32,
    salt: [u8; 4],
    key: Box<dyn Aead>,
    seq: u64,
    packets: u64,
    bytes: u64,
    age: Duration,
    limits: Limits,
}

impl Outbound {
    pub fn new(spi: u32, keys: &SaKeys, limits: Limits) -> Outbound {
        Self::with_engine(Engine::default(), spi, keys, limits)
    }

    pub fn with_engine(engine: Engine, spi: u32, keys: &SaKeys, limits: Limits) -> Outbound {
        Outbound {
            spi,
            salt: keys.salt,
            key: engine.key(&keys.key),
            seq: 0,
            packets: 0,
            bytes: 0,
            age: Duration::ZERO,
            limits,
        }
    }

    /// Start at `seq` + 1 (tests of the 32-bit boundary).
    pub fn with_sequence(mut self, seq: u64) -> Outbound {
        self.seq = seq;
        self
    }

    /// The SA's age, as the caller's clock says (sans-I/O: time comes in).
    pub fn set_age(&mut self, age: Duration) {
        self.age = age;
    }

    /// Packets and inner bytes sealed so far.
    pub fn usage(&self) -> (u64, u64) {
        (self.packets, self.bytes)
    }

    /// A rekey should start (any soft limit reached).
    pub fn wants_rekey(&self) -> bool {
        self.packets >= self.limits.soft_packets
            || self.bytes >= self.limits.soft_bytes
            || self.age >= self.limits.soft_age
    }

    fn expired(&self) -> bool {
        self.packets >= self.limits.hard_packets
            || self.bytes >= self.limits.hard_bytes
            || self.age >= self.limits.hard_age
    }

    /// Length of the ESP packet for an inner packet of `inner` bytes.
    pub fn sealed_len(inner: usize) -> usize {
        let body = inner + 2;
        HEADER_LEN + body + (4 - body % 4) % 4 + ICV_LEN
    }

    /// Seal `inner` (a whole IP packet; `next` is its protocol) into `out`; returns the length.
    pub fn seal(&mut self, inner: &[u8], next: u8, out: &mut [u8]) -> Result<usize, EspError> {
        if inner.len() > MAX_INNER {
            return Err(EspError::TooLarge);
        }
        if self.expired() {
            return Err(EspError::Expired);
        }
        let len = Self::sealed_len(inner.len());
        let out = out.get_mut(..len).ok_or(EspError::Buffer)?;
        let seq = self.seq + 1;
        let pad = len - HEADER_LEN - ICV_LEN - inner.len() - 2;
        let (header, rest) = out.split_at_mut(HEADER_LEN);
        let wire = self.spi.to_be_bytes();
        let low = (seq as u32).to_be_bytes();
        let iv = seq.to_be_bytes();
        for (d, s) in header
            .iter_mut()
            .zip(wire.iter().chain(low.iter()).chain(iv.iter()))
        {
            *d = *s;
        }
        let (body, icv) = rest.split_at_mut(rest.len() - ICV_LEN);
        let (data, tail) = body.split_at_mut(inner.len());
        data.copy_from_slice(inner);
        let (padding, trailer) = tail.split_at_mut(pad);
        for (i, b) in padding.iter_mut().enumerate() {
            // RFC 4303 §2.4: padding bytes are 1, 2, 3, …
            *b = (i + 1) as u8;
        }
        match trailer {
            [pad_len, next_header] => {
                *pad_len = pad as u8;
                *next_header = next;
            }
            _ => return Err(EspError::Buffer),
        }
        let tag = self
            .key
            .seal(nonce(&self.salt, seq), &aad(self.spi, seq), body)
            .map_err(|_| EspError::Buffer)?;
        icv.copy_from_slice(&tag);
        self.seq = seq;
        self.packets += 1;
        self.bytes += inner.len() as u64;
        Ok(len)
    }
}

/// The receiving side of an SA.
pub struct Inbound {
    spi: u32,
    salt: [u8; 4],
    key: Box<dyn Aead>,
    window: ReplayWindow,
}

/// An opened packet: where the inner packet is in the buffer, and its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub start: usize,
    pub len: usize,
    pub next: u8,
    pub seq: u64,
}

impl Inbound {
    pub fn new(spi: u32, keys: &SaKeys) -> Inbound {
        Self::with_engine(Engine::default(), spi, keys)
    }

    pub fn with_engine(engine: Engine, spi: u32, keys: &SaKeys) -> Inbound {
        Inbound {
            spi,
            salt: keys.salt,
            key: engine.key(&keys.key),
            window: ReplayWindow::default(),
        }
    }

    /// The SPI of a packet, to find its SA (None if too short).
    pub fn spi_of(packet: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(packet.get(..4)?.try_into().ok()?))
    }

    /// Open `packet` in place. The ICV is checked first; only an authentic packet is checked
    /// against, and recorded in, the replay window.
    pub fn open(&mut self, packet: &mut [u8]) -> Result<Opened, EspError> {
        if packet.len() < HEADER_LEN + 4 + ICV_LEN {
            return Err(EspError::Malformed);
        }
        let spi = Self::spi_of(packet).ok_or(EspError::Malformed)?;
        if spi != self.spi {
            return Err(EspError::WrongSpi);
        }
        let field = |r: std::ops::Range<usize>| packet.get(r).ok_or(EspError::Malformed);
        let low = u32::from_be_bytes(field(4..8)?.try_into().map_err(|_| EspError::Malformed)?);
        let iv = u64::from_be_bytes(field(8..16)?.try_into().map_err(|_| EspError::Malformed)?);
        // The IV is the full 64-bit sequence number (our format, RFC 4106 §3 leaves the IV to
        // the sender) and it is authenticated: it is in the nonce and, with the SPI, in the
        // AAD. So the high bits need no guessing (RFC 4303 Appendix A2); a packet from far
        // behind the window still verifies and is then refused as too old.
        if iv as u32 != low {
            return Err(EspError::Auth);
        }
        let seq = iv;
        let (_, rest) = packet.split_at_mut(HEADER_LEN);
        let n = self
            .key
            .open(nonce(&self.salt, seq), &aad(spi, seq), rest)
            .map_err(|_| EspError::Auth)?;
        let plain = rest.get(..n).ok_or(EspError::Malformed)?;
        self.window.accept(seq)?;
        let n = plain.len();
        let next = *plain.get(n.wrapping_sub(1)).ok_or(EspError::Malformed)?;
        let pad = usize::from(*plain.get(n.wrapping_sub(2)).ok_or(EspError::Malformed)?);
        let inner = n.checked_sub(2 + pad).ok_or(EspError::Malformed)?;
        // RFC 4303 §2.4: check the padding bytes.
        let padding = plain.get(inner..inner + pad).ok_or(EspError::Malformed)?;
        if padding
            .iter()
            .enumerate()
            .any(|(i, b)| usize::from(*b) != i + 1)
        {
            return Err(EspError::Malformed);
        }
        Ok(Opened {
            start: HEADER_LEN,
            len: inner,
            next,
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn keys(b: u8) -> SaKeys {
        SaKeys {
            key: Zeroizing::new([b; 32]),
            salt: [1, 2, 3, 4],
        }
    }

    fn pair() -> (Outbound, Inbound) {
        (
            Outbound::new(0x1234_5678, &keys(7), Limits::default()),
            Inbound::new(0x1234_5678, &keys(7)),
        )
    }

    fn seal(o: &mut Outbound, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; Outbound::sealed_len(inner.len())];
        let n = o.seal(inner, NEXT_IPV4, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn packets_round_trip_with_padding_and_sequence() {
        let (mut o, mut i) = pair();
        for len in [0usize, 1, 2, 3, 4, 5, 1420, 9000] {
            let inner: Vec<u8> = (0..len).map(|x| x as u8).collect();
            let mut p = seal(&mut o, &inner);
            assert_eq!(p.len() % 4, 0);
            assert!(!p
                .windows(8.min(len.max(1)))
                .any(|w| len >= 8 && w == &inner[..8]));
            let got = i.open(&mut p).unwrap();
            assert_eq!(&p[got.start..got.start + got.len], inner.as_slice());
            assert_eq!(got.next, NEXT_IPV4);
        }
    }

    #[test]
    fn every_engine_speaks_the_same_esp() {
        for a in Engine::ALL {
            for b in Engine::ALL {
                let mut o = Outbound::with_engine(a, 9, &keys(3), Limits::default());
                let mut i = Inbound::with_engine(b, 9, &keys(3));
                let mut p = seal(&mut o, b"interop");
                let got = i.open(&mut p).unwrap();
                assert_eq!(&p[got.start..got.start + got.len], b"interop", "{a} -> {b}");
            }
        }
    }

    #[test]
    fn every_check_refuses() {
        let (mut o, mut i) = pair();
        let p = seal(&mut o, b"inner packet");
        // Replayed.
        let mut a = p.clone();
        i.open(&mut a).unwrap();
        let mut b = p.clone();
        assert_eq!(
            i.open(&mut b),
            Err(EspError::Replay(ReplayError::Replayed(1)))
        );
        // Bit flips anywhere after the SPI fail the ICV (or the IV check).
        for pos in 4..p.len() {
            let mut f = seal(&mut o, b"inner packet");
            f[pos] ^= 0x01;
            assert!(matches!(i.open(&mut f), Err(EspError::Auth)), "byte {pos}");
        }
        // A forged packet does not move the window: the genuine one still opens.
        let mut genuine = seal(&mut o, b"x");
        let mut forged = genuine.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(i.open(&mut forged), Err(EspError::Auth));
        i.open(&mut genuine).unwrap();
        // Truncated, wrong SPI, wrong key.
        let mut t = seal(&mut o, b"y");
        t.truncate(20);
        assert_eq!(i.open(&mut t), Err(EspError::Malformed));
        let mut w = seal(&mut o, b"z");
        w[0] ^= 0xff;
        assert_eq!(i.open(&mut w), Err(EspError::WrongSpi));
        let mut other = Inbound::new(0x1234_5678, &keys(8));
        let mut k = seal(&mut o, b"k");
        assert_eq!(other.open(&mut k), Err(EspError::Auth));
    }

    #[test]
    fn reordering_inside_the_window_is_fine_and_older_is_refused() {
        let (mut o, mut i) = pair();
        let first = seal(&mut o, b"first");
        let mut later = Vec::new();
        for _ in 0..super::super::replay::WINDOW + 5 {
            later.push(seal(&mut o, b"p"));
        }
        for mut p in later.iter().rev().take(100).cloned() {
            i.open(&mut p).unwrap();
        }
        let mut old = first.clone();
        assert!(matches!(
            i.open(&mut old),
            Err(EspError::Replay(ReplayError::TooOld(1)))
        ));
    }

    #[test]
    fn sequence_numbers_cross_the_32_bit_boundary() {
        let (o, mut i) = pair();
        let mut o = o.with_sequence((1u64 << 32) - 3);
        // The receiver learns the top from the first packets.
        for _ in 0..6 {
            let mut p = seal(&mut o, b"esn");
            let got = i.open(&mut p).unwrap();
            assert_eq!(&p[got.start..got.start + got.len], b"esn");
        }
        assert!(i.window.top() > 1u64 << 32);
    }

    #[test]
    fn limits_start_a_rekey_then_stop_the_sa() {
        let limits = Limits {
            soft_packets: 2,
            hard_packets: 3,
            ..Limits::default()
        };
        let mut o = Outbound::new(1, &keys(1), limits);
        let mut buf = [0u8; 64];
        o.seal(b"a", NEXT_IPV4, &mut buf).unwrap();
        assert!(!o.wants_rekey());
        o.seal(b"b", NEXT_IPV4, &mut buf).unwrap();
        assert!(o.wants_rekey());
        o.seal(b"c", NEXT_IPV4, &mut buf).unwrap();
        assert_eq!(o.seal(b"d", NEXT_IPV4, &mut buf), Err(EspError::Expired));
        let mut aged = Outbound::new(1, &keys(1), Limits::default());
        aged.set_age(Duration::from_secs(3600));
        assert!(aged.wants_rekey());
        aged.set_age(Duration::from_secs(4000));
        assert_eq!(aged.seal(b"e", NEXT_IPV4, &mut buf), Err(EspError::Expired));
        assert_eq!(
            o.seal(&[0u8; MAX_INNER + 1], NEXT_IPV4, &mut buf),
            Err(EspError::TooLarge)
        );
        let mut small = [0u8; 10];
        let mut fresh = Outbound::new(1, &keys(1), Limits::default());
        assert_eq!(
            fresh.seal(b"f", NEXT_IPV4, &mut small),
            Err(EspError::Buffer)
        );
    }
}
