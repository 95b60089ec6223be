//! Reconnect delays: exponential, capped, with jitter so that many nodes that lost the same
//! Redis do not reconnect in lockstep.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// First delay after a failure.
const MIN: Duration = Duration::from_millis(50);
/// Largest delay between attempts.
const MAX: Duration = Duration::from_secs(2);

/// The delay before the next attempt, growing while attempts fail.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Starts at the smallest delay.
    pub(super) fn new() -> Backoff {
        Backoff {
            next: MIN,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// The delay to wait now (between half and one and a half times the current step), then
    /// doubles the step up to the cap.
    pub(super) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX);
        let permille: u32 = self.rng.random_range(500..=1500);
        step * permille / 1000
    }

    /// A success: the next failure starts from the smallest delay again.
    pub(super) fn reset(&mut self) {
        self.next = MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= MIN / 2 && first <= MIN * 3 / 2);
        for _ in 0..20 {
            assert!(b.next_delay() <= MAX * 3 / 2);
        }
        assert!(b.next_delay() >= MAX / 2);
        b.reset();
        assert!(b.next_delay() <= MIN * 3 / 2);
    }
}
