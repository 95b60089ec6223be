//! Who gets in: the rules an accepted connection and an upgrade must pass before they cost
//! anything — the client's address (PROXY header, `Forwarded`/`X-Forwarded-For` from trusted
//! proxies), the `Origin` check, the connection, per-address and handshake-rate limits, and
//! the jittered `Retry-After` of a refusal.

pub mod client_addr;
pub mod counts;
pub mod origin;

/// A small xorshift generator for jitter: not for anything secret.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the process id, so restarted servers jitter differently.
    pub fn new() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A `Retry-After` value in whole seconds, uniform in `base..=2*base` (at least 1), so
    /// clients told to come back do not all come back in the same second.
    pub fn retry_after(&mut self, base_secs: u64) -> u64 {
        let base = base_secs.max(1);
        base + self.next() % (base + 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_spread() {
        let mut j = Jitter::new();
        let values: std::collections::HashSet<u64> = (0..200).map(|_| j.retry_after(5)).collect();
        assert!(values.iter().all(|v| (5..=10).contains(v)));
        assert!(values.len() >= 4, "{values:?}");
    }
}
