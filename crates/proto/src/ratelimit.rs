//! A token bucket on the caller's [`Tick`] clock, for per-connection (or per-address) rate
//! limits.
//!
//! # Contract
//! The bucket holds at most `burst` tokens and gains `rate` tokens per second, counted in
//! micro-tokens so that refilling is exact integer arithmetic: one microsecond adds exactly
//! `rate` micro-tokens, whatever the rate. It never reads a clock: the caller passes the
//! current [`Tick`] (ticks that go backwards count as "no time passed"), so tests drive it on
//! a virtual clock. Work already done is [`charge`](TokenBucket::charge)d in full and may put
//! the bucket in debt: a 1 MiB message against a 10 000 B/s budget costs its whole size, and
//! [`wait`](TokenBucket::wait) then says how long until the debt is paid. It takes 24 bytes.

use std::time::Duration;

use super::time::Tick;

/// Micro-tokens per token.
const MICRO: i64 = 1_000_000;

/// The deepest debt the bucket records: far beyond any real charge, and far enough from
/// `i64::MIN` that refilling arithmetic cannot overflow.
const MAX_DEBT: i64 = i64::MAX / 4;

/// A token bucket: `rate` tokens per second, holding at most `burst`, possibly in debt.
///
/// Rate and burst are stored as `u32` (saturating from the `u64` arguments): over four billion
/// tokens per second is as good as no limit, and the narrower fields keep the bucket at 24
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Micro-tokens held at `last`: at most `burst` tokens' worth, below zero in debt.
    level: i64,
    /// When `level` was last brought up to date.
    last: Tick,
    /// Tokens per second, which is also micro-tokens per microsecond.
    rate: u32,
    /// The most tokens the bucket holds.
    burst: u32,
}

impl TokenBucket {
    /// A full bucket at `now`: a new sender may spend its whole burst at once.
    pub fn new(rate_per_sec: u64, burst: u64, now: Tick) -> TokenBucket {
        let burst = u32::try_from(burst).unwrap_or(u32::MAX);
        TokenBucket {
            level: i64::from(burst) * MICRO,
            last: now,
            rate: u32::try_from(rate_per_sec).unwrap_or(u32::MAX),
            burst,
        }
    }

    /// Takes `n` tokens if available (refilling first); false (taking nothing) otherwise.
    /// More than `burst` tokens are never available; zero tokens always are.
    pub fn try_take(&mut self, now: Tick, n: u64) -> bool {
        self.refill(now);
        if n == 0 {
            return true;
        }
        let need = micro(n);
        if self.level < need {
            return false;
        }
        self.level -= need;
        true
    }

    /// Takes `n` tokens whether or not they are there (refilling first), going into debt for
    /// the rest: for charging work already done, such as a message whose size was only known
    /// once it was read.
    pub fn charge(&mut self, now: Tick, n: u64) {
        self.refill(now);
        self.level = self.level.saturating_sub(micro(n)).max(-MAX_DEBT);
    }

    /// How long until `n` tokens will be available, any debt paid first (zero if they are
    /// now; `n` > burst → the time to fill the whole burst), for a timer or a `Retry-After`.
    /// With a rate of zero, tokens that are missing never come: [`Duration::MAX`].
    pub fn wait(&self, now: Tick, n: u64) -> Duration {
        let need = micro(n.min(u64::from(self.burst)));
        let missing = need.saturating_sub(self.level_at(now));
        if missing <= 0 {
            return Duration::ZERO;
        }
        if self.rate == 0 {
            return Duration::MAX;
        }
        // Round up: the bucket is still short until the last partial microsecond has passed.
        let micros = missing.unsigned_abs().div_ceil(u64::from(self.rate));
        Duration::from_micros(micros)
    }

    /// The bucket as plain numbers at `now`: (micro-tokens held, below zero in debt; rate;
    /// burst), to hand it to another process, which [`restore`](TokenBucket::restore)s it.
    pub fn snapshot(&self, now: Tick) -> (i64, u64, u64) {
        (
            self.level_at(now),
            u64::from(self.rate),
            u64::from(self.burst),
        )
    }

    /// A bucket holding `level` micro-tokens at `now` (kept within its range), as
    /// [`snapshot`](TokenBucket::snapshot) described it.
    pub fn restore(rate_per_sec: u64, burst: u64, level: i64, now: Tick) -> TokenBucket {
        let mut bucket = TokenBucket::new(rate_per_sec, burst, now);
        bucket.level = level.clamp(-MAX_DEBT, i64::from(bucket.burst) * MICRO);
        bucket
    }

    /// The most tokens the bucket holds (after saturation to `u32`).
    pub fn burst(&self) -> u64 {
        u64::from(self.burst)
    }

    /// Brings `level` up to `now` (never moving `last` back).
    fn refill(&mut self, now: Tick) {
        self.level = self.level_at(now);
        self.last = self.last.max(now);
    }

    /// Micro-tokens held at `now`: the stored level plus the refill since `last`, capped.
    fn level_at(&self, now: Tick) -> i64 {
        let elapsed = u64::try_from(now.since(self.last).as_micros()).unwrap_or(u64::MAX);
        let refill =
            i64::try_from(elapsed.saturating_mul(u64::from(self.rate))).unwrap_or(i64::MAX);
        self.level
            .saturating_add(refill)
            .min(i64::from(self.burst) * MICRO)
    }
}

/// `n` tokens in micro-tokens, saturating.
fn micro(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(MICRO)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A virtual clock: the tick `ms` milliseconds after tick one.
    fn at(ms: u64) -> Tick {
        Tick::from_micros(1).after(Duration::from_millis(ms))
    }

    #[test]
    fn fits_in_per_connection_state() {
        assert!(std::mem::size_of::<TokenBucket>() <= 24);
    }

    #[test]
    fn burst_then_refusal() {
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
    fn a_snapshot_restores_the_same_bucket() {
        let mut bucket = TokenBucket::new(1000, 100, at(0));
        bucket.charge(at(0), 150);
        let (level, rate, burst) = bucket.snapshot(at(20));
        let restored = TokenBucket::restore(rate, burst, level, at(20));
        for ms in [20, 40, 70, 500] {
            assert_eq!(restored.wait(at(ms), 1), bucket.wait(at(ms), 1), "{ms} ms");
        }
        let clamped = TokenBucket::restore(10, 10, i64::MAX, at(0));
        assert_eq!(clamped.snapshot(at(0)).0, 10 * MICRO);
    }

    #[test]
    fn refills_over_time_up_to_the_burst() {
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
        // 3 tokens per second: one every 333 333.3 µs, with no drift over many periods.
        let mut bucket = TokenBucket::new(3, 2, at(0));
        assert!(bucket.try_take(at(0), 2));
        assert_eq!(bucket.wait(at(0), 1), Duration::from_micros(333_334));
        assert!(!bucket.try_take(at(333), 1));
        assert!(bucket.try_take(at(334), 1));
        let mut taken = 1;
        for ms in 335..=30_000 {
            taken += u64::from(bucket.try_take(at(ms), 1));
        }
        assert_eq!(taken, 90);
    }

    #[test]
    fn a_charge_goes_into_debt_and_wait_says_until_it_is_paid() {
        // 10 000 B/s: a 1 MiB message is admitted on a full bucket and then costs its size.
        let mut bucket = TokenBucket::new(10_000, 10_000, at(0));
        assert_eq!(bucket.wait(at(0), 1), Duration::ZERO);
        bucket.charge(at(0), 1 << 20);
        // In debt by 1 048 576 − 10 000 tokens; one more needs (1 038 576 + 1) / 10 000 s.
        assert_eq!(bucket.wait(at(0), 1), Duration::from_micros(103_857_700));
        assert!(!bucket.try_take(at(103_857), 1));
        assert_eq!(bucket.wait(at(103_858), 1), Duration::ZERO);
        assert!(bucket.try_take(at(103_858), 1));
        // Taking never goes into debt: only charging does.
        let mut other = TokenBucket::new(10, 5, at(0));
        assert!(!other.try_take(at(0), 6));
        assert_eq!(other.wait(at(0), 5), Duration::ZERO);
    }

    #[test]
    fn charges_of_any_size_stay_finite() {
        let mut bucket = TokenBucket::new(1, 1, at(0));
        bucket.charge(at(0), u64::MAX);
        bucket.charge(at(0), u64::MAX);
        let wait = bucket.wait(at(0), 1);
        assert!(wait > Duration::from_secs(1 << 40) && wait < Duration::MAX);
        assert!(!bucket.try_take(at(1_000_000_000), 1));
    }

    #[test]
    fn more_than_the_burst_is_never_available() {
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
        let mut bucket = TokenBucket::new(0, 2, at(0));
        assert!(bucket.try_take(at(0), 2));
        assert!(!bucket.try_take(Tick::from_micros(u64::MAX / 2), 1));
        assert_eq!(
            bucket.wait(Tick::from_micros(u64::MAX / 2), 1),
            Duration::MAX
        );
        assert_eq!(bucket.wait(at(0), 0), Duration::ZERO);
        // A zero burst holds nothing at all.
        let mut empty = TokenBucket::new(100, 0, at(0));
        assert!(!empty.try_take(at(1000), 1));
        assert!(empty.try_take(at(1000), 0));
    }

    #[test]
    fn huge_values_and_gaps_do_not_overflow() {
        let mut bucket = TokenBucket::new(u64::MAX, u64::MAX, at(0));
        assert_eq!(bucket.burst(), u64::from(u32::MAX));
        assert!(bucket.try_take(at(0), u64::from(u32::MAX)));
        assert!(!bucket.try_take(at(0), 1));
        assert!(bucket.try_take(Tick::from_micros(u64::MAX - 2), u64::from(u32::MAX)));
        let mut slow = TokenBucket::new(1, 1, at(0));
        assert!(slow.try_take(at(0), 1));
        assert_eq!(slow.wait(at(0), 1), Duration::from_secs(1));
        assert!(slow.try_take(Tick::NONE.after(Duration::MAX), 1));
    }

    #[test]
    fn an_earlier_tick_counts_as_no_time() {
        let mut bucket = TokenBucket::new(10, 1, at(1000));
        assert!(bucket.try_take(at(1000), 1));
        assert!(!bucket.try_take(at(0), 1));
        // `last` did not move back, so the refill is counted from 1000 ms, once.
        assert!(!bucket.try_take(at(1099), 1));
        assert!(bucket.try_take(at(1100), 1));
    }
}
