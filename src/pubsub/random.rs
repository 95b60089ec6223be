//! Randomness without a dependency: process ids for the wire format and jitter for
//! reconnect backoff. Not cryptographic; only needs to differ between processes.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random 64-bit value (std's per-process SipHash keys, the PID and the clock).
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// xorshift64*: a cheap stream of jitter values.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// Seeded from [`random_u64`].
    pub(crate) fn new() -> XorShift {
        XorShift(random_u64() | 1)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Default for XorShift {
    fn default() -> Self {
        XorShift::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_between_calls() {
        assert_ne!(random_u64(), random_u64());
        let mut rng = XorShift::new();
        assert_ne!(rng.next_u64(), rng.next_u64());
    }
}
