//! A token bucket on the reactor's millisecond clock, for per-connection (or per-address)
//! rate limits.
//!
//! # Contract
//! The bucket holds at most `burst` tokens and gains `rate` tokens per second, counted in
//! milli-tokens so that refilling is exact integer arithmetic: one millisecond adds exactly
//! `rate` milli-tokens, whatever the rate. [`TokenBucket::try_take`] takes only tokens that
//! are there; [`TokenBucket::charge`], for work already done, takes them all the same and
//! leaves the bucket in debt, which the refill pays off before tokens are available again.
//! It never reads a clock: the caller passes the reactor's current [`Tick`] (ticks that go
//! backwards are treated as "no time passed"), so tests drive it with a virtual clock. It
//! takes 24 bytes, to sit in per-connection state.

use std::time::Duration;

use super::timer::Tick;

/// Milli-tokens per token.
const MILLI: u64 = 1000;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
///
/// Rate and burst are stored as `u32` (saturating from the `u64` arguments): over four billion
/// tokens per second is as good as no limit, and the narrower fields keep the bucket at 24
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Milli-tokens held at `last`, at most `burst * 1000`; negative: owed.
    level: i64,
    /// When `level` was last brought up to date.
    last: Tick,
    /// Tokens per second, which is also milli-tokens per millisecond.
    rate: u32,
    /// The most tokens the bucket holds.
    burst: u32,
}

impl TokenBucket {
    /// A full bucket at `now`: a new sender may spend its whole burst at once.
    pub fn new(rate_per_sec: u64, burst: u64, now: Tick) -> TokenBucket {
        let burst = u32::try_from(burst).unwrap_or(u32::MAX);
        TokenBucket {
            level: milli(u64::from(burst)),
            last: now,
            rate: u32::try_from(rate_per_sec).unwrap_or(u32::MAX),
            burst,
        }
    }

    /// Takes `n` tokens if available (refilling first); false (taking nothing) otherwise.
    /// More than `burst` tokens are never available; zero tokens always are.
    pub fn try_take(&mut self, now: Tick, n: u64) -> bool {
        self.level = self.level_at(now);
        self.last = self.last.max(now);
        let need = milli(n);
        if self.level < need {
            return false;
        }
        self.level -= need;
        true
    }

    /// Takes `n` tokens whether or not they are there (refilling first): for charging work
    /// already done, such as a message whose size was only known after it was read. What is
    /// missing is owed: [`TokenBucket::wait`] counts the debt, so a message larger than the
    /// burst costs its full size in time.
    pub fn charge(&mut self, now: Tick, n: u64) {
        self.level = self.level_at(now).saturating_sub(milli(n));
        self.last = self.last.max(now);
    }

    /// How long until `n` tokens will be available (zero if they are now; a debt is paid off
    /// first; `n` > burst → the time to fill the whole burst), for a timer or a `Retry-After`.
    /// With a rate of zero, tokens that are missing never come: [`Duration::MAX`].
    pub fn wait(&self, now: Tick, n: u64) -> Duration {
        let need = milli(n.min(u64::from(self.burst)));
        let missing = need.saturating_sub(self.level_at(now));
        let Ok(missing @ 1..) = u64::try_from(missing) else {
            return Duration::ZERO;
        };
        if self.rate == 0 {
            return Duration::MAX;
        }
        // Round up: the bucket is still short until the last partial millisecond has passed.
        Duration::from_millis(missing.div_ceil(u64::from(self.rate)))
    }

    /// The most tokens the bucket holds (after saturation to `u32`).
    pub fn burst(&self) -> u64 {
        u64::from(self.burst)
    }

    /// Milli-tokens held at `now`: the stored level plus the refill since `last`, capped.
    fn level_at(&self, now: Tick) -> i64 {
        let elapsed_ms = u64::try_from(now.since(self.last).as_millis()).unwrap_or(u64::MAX);
        let refill = milli_from(elapsed_ms.saturating_mul(u64::from(self.rate)));
        self.level
            .saturating_add(refill)
            .min(milli(u64::from(self.burst)))
    }
}

/// `n` tokens in milli-tokens (saturating).
fn milli(n: u64) -> i64 {
    milli_from(n.saturating_mul(MILLI))
}

/// A count of milli-tokens as the signed level (saturating).
fn milli_from(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::timer::Clock;
    use std::time::Instant;

    /// A virtual clock: `at(ms)` is the tick `ms` milliseconds after the start.
    fn clock() -> impl Fn(u64) -> Tick {
        let start = Instant::now();
        let clock = Clock::new(start);
        move |ms| clock.tick(start + Duration::from_millis(ms))
    }

    /// A tick `ms` milliseconds after the start, for gaps too large for an `Instant`.
    fn far(ms: u64) -> Tick {
        Tick::NONE.after(Duration::from_millis(ms))
    }

    #[test]
    fn fits_in_per_connection_state() {
        assert!(std::mem::size_of::<TokenBucket>() <= 24);
    }

    #[test]
    fn burst_then_refusal() {
        let at = clock();
        let mut bucket = TokenBucket::new(10, 5, at(0));
        for _ in 0..5 {
            assert!(bucket.try_take(at(0), 1));
        }
        assert!(!bucket.try_take(at(0), 1));
        assert_eq!(bucket.wait(at(0), 1), Duration::from_millis(100));
        // A refused take takes nothing.
        assert!(!bucket.try_take(at(99), 1));
        assert!(bucket.try_take(at(100), 1));
    }

    #[test]
    fn refills_over_time_up_to_the_burst() {
        let at = clock();
        let mut bucket = TokenBucket::new(1000, 100, at(0));
        assert!(bucket.try_take(at(0), 100));
        assert!(!bucket.try_take(at(0), 1));
        // 1000/s is one token per millisecond.
        assert!(bucket.try_take(at(7), 7));
        assert!(!bucket.try_take(at(7), 1));
        assert_eq!(bucket.wait(at(7), 30), Duration::from_millis(30));
        // A long pause refills only up to the burst.
        assert_eq!(bucket.wait(at(10_000), 100), Duration::ZERO);
        assert!(bucket.try_take(at(10_000), 100));
        assert!(!bucket.try_take(at(10_000), 1));
    }

    #[test]
    fn fractional_rates_are_exact() {
        let at = clock();
        // 3 tokens per second: one every 333.3 ms, with no drift over many periods.
        let mut bucket = TokenBucket::new(3, 2, at(0));
        assert!(bucket.try_take(at(0), 2));
        assert_eq!(bucket.wait(at(0), 1), Duration::from_millis(334));
        assert!(!bucket.try_take(at(333), 1));
        assert!(bucket.try_take(at(334), 1));
        let mut taken = 1;
        for ms in 335..=30_000 {
            taken += u64::from(bucket.try_take(at(ms), 1));
        }
        assert_eq!(taken, 90);
    }

    #[test]
    fn more_than_the_burst_is_never_available() {
        let at = clock();
        let mut bucket = TokenBucket::new(10, 5, at(0));
        assert!(!bucket.try_take(at(0), 6));
        assert!(bucket.try_take(at(0), 0));
        assert!(bucket.try_take(at(0), 2));
        // The wait for more than the burst is the time to fill the whole burst.
        assert_eq!(bucket.wait(at(0), 6), Duration::from_millis(200));
        assert_eq!(bucket.wait(at(0), u64::MAX), Duration::from_millis(200));
        assert!(!bucket.try_take(at(1_000_000), u64::MAX));
    }

    #[test]
    fn rate_zero_refuses_forever_after_the_burst() {
        let at = clock();
        let mut bucket = TokenBucket::new(0, 2, at(0));
        assert!(bucket.try_take(at(0), 2));
        assert!(!bucket.try_take(far(u64::MAX / 2), 1));
        assert_eq!(bucket.wait(far(u64::MAX / 2), 1), Duration::MAX);
        assert_eq!(bucket.wait(at(0), 0), Duration::ZERO);
        // A zero burst holds nothing at all.
        let mut empty = TokenBucket::new(100, 0, at(0));
        assert!(!empty.try_take(at(1000), 1));
        assert!(empty.try_take(at(1000), 0));
    }

    #[test]
    fn huge_values_and_gaps_do_not_overflow() {
        let at = clock();
        let mut bucket = TokenBucket::new(u64::MAX, u64::MAX, at(0));
        assert_eq!(bucket.burst(), u64::from(u32::MAX));
        assert!(bucket.try_take(at(0), u64::from(u32::MAX)));
        assert!(!bucket.try_take(at(0), 1));
        assert!(bucket.try_take(far(u64::MAX - 2), u64::from(u32::MAX)));
        let mut slow = TokenBucket::new(1, 1, at(0));
        assert!(slow.try_take(at(0), 1));
        assert_eq!(slow.wait(at(0), 1), Duration::from_secs(1));
        assert!(slow.try_take(Tick::NONE.after(Duration::MAX), 1));
    }

    #[test]
    fn a_charge_beyond_the_level_is_owed() {
        let at = clock();
        // One token per millisecond, a burst of one second.
        let mut bucket = TokenBucket::new(1000, 1000, at(0));
        bucket.charge(at(0), 5000);
        // 4000 owed, then one token to gather.
        assert_eq!(bucket.wait(at(0), 1), Duration::from_millis(4001));
        assert!(!bucket.try_take(at(4000), 1));
        assert_eq!(bucket.wait(at(4000), 1), Duration::from_millis(1));
        assert!(bucket.try_take(at(4001), 1));
        // A debt as large as the counters allow still waits, and never overflows.
        bucket.charge(at(4001), u64::MAX);
        assert!(bucket.wait(at(4001), 1) > Duration::from_secs(1_000_000));
        assert!(!bucket.try_take(far(u64::MAX / 4), 1));
    }

    #[test]
    fn an_earlier_tick_counts_as_no_time() {
        let at = clock();
        let mut bucket = TokenBucket::new(10, 1, at(1000));
        assert!(bucket.try_take(at(1000), 1));
        assert!(!bucket.try_take(at(0), 1));
        // `last` did not move back, so the refill is counted from 1000 ms, once.
        assert!(!bucket.try_take(at(1099), 1));
        assert!(bucket.try_take(at(1100), 1));
    }
}
