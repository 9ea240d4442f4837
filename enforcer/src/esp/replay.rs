//! The anti-replay window: a bitmap of the last [`WINDOW`] sequence numbers (RFC 6479), over
//! 64-bit extended sequence numbers (RFC 4304). The full number comes from the packet's IV
//! (see `sa`), so the high 32 bits are never guessed (RFC 4303 Appendix A2 is not needed).

/// Packets the window remembers behind the highest sequence number seen.
pub const WINDOW: u64 = 2048;
const WORDS: usize = (WINDOW as usize) / 64;

/// Why a sequence number is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("sequence number {0} was already received")]
    Replayed(u64),
    #[error("sequence number {0} is older than the window")]
    TooOld(u64),
    /// RFC 4303 §2.2: sequence number 0 is never sent.
    #[error("sequence number 0 is never sent")]
    Zero,
}

/// The receive window of one inbound SA.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest sequence number accepted (0: none yet).
    top: u64,
    /// Bit `s % WINDOW` is set when `s` (within the window) was accepted.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; WORDS],
        }
    }
}

fn slot(seq: u64) -> (usize, u64) {
    let bit = seq % WINDOW;
    ((bit / 64) as usize, 1u64 << (bit % 64))
}

impl ReplayWindow {
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Whether `seq` would be accepted (no change).
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= WINDOW {
            return Err(ReplayError::TooOld(seq));
        }
        let (w, m) = slot(seq);
        if self.bits.get(w).is_some_and(|b| b & m != 0) {
            return Err(ReplayError::Replayed(seq));
        }
        Ok(())
    }

    /// Accept `seq` (after its ICV verified): check, then record it.
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            // Clear the slots of the numbers the window slides over.
            let advance = seq - self.top;
            if advance >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for s in (self.top + 1)..=seq {
                    let (w, m) = slot(s);
                    if let Some(b) = self.bits.get_mut(w) {
                        *b &= !m;
                    }
                }
            }
            self.top = seq;
        }
        let (w, m) = slot(seq);
        if let Some(b) = self.bits.get_mut(w) {
            *b |= m;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_reordered_replayed_and_old() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(0), Err(ReplayError::Zero));
        for s in 1..=10 {
            w.accept(s).unwrap();
        }
        assert_eq!(w.accept(5), Err(ReplayError::Replayed(5)));
        w.accept(5000).unwrap();
        // Reordered but inside the window.
        w.accept(5000 - WINDOW + 1).unwrap();
        assert_eq!(
            w.accept(5000 - WINDOW),
            Err(ReplayError::TooOld(5000 - WINDOW))
        );
        assert_eq!(w.accept(10), Err(ReplayError::TooOld(10)));
        w.accept(4999).unwrap();
        assert_eq!(w.accept(4999), Err(ReplayError::Replayed(4999)));
    }

    #[test]
    fn the_window_slides_across_the_32_bit_boundary() {
        let mut w = ReplayWindow::default();
        let base = (1u64 << 32) - 5;
        for s in base..base + 10 {
            w.accept(s).unwrap();
        }
        assert_eq!(w.accept(base + 2), Err(ReplayError::Replayed(base + 2)));
        assert_eq!(w.top(), base + 9);
    }

    proptest! {
        /// The bitmap agrees with a set of every number accepted so far.
        #[test]
        fn agrees_with_a_reference_model(steps in proptest::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u64;
            for s in steps {
                let want = if s == 0 {
                    Err(ReplayError::Zero)
                } else if s > top {
                    Ok(())
                } else if top - s >= WINDOW {
                    Err(ReplayError::TooOld(s))
                } else if seen.contains(&s) {
                    Err(ReplayError::Replayed(s))
                } else {
                    Ok(())
                };
                prop_assert_eq!(w.accept(s), want);
                if want.is_ok() {
                    seen.insert(s);
                    top = top.max(s);
                }
            }
        }
    }
}
