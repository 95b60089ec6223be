//! Time as an input: a [`Tick`] is a point in time that the caller hands in; nothing in this
//! crate reads a clock.
//!
//! A tick counts microseconds since an epoch the caller chooses (a reactor: when it started),
//! so it is 8 bytes where an `Instant` takes 16, is plain data (it can be stored, compared,
//! serialised), and a test drives it by hand. Microseconds, not milliseconds: a keepalive ping
//! carries its send time and the round trip on a local network is well under a millisecond.
//! [`Clock`] converts between `Instant` and `Tick` for a caller that reads the system clock.

use std::time::{Duration, Instant};

/// A point in time: microseconds since the caller's epoch, plus one, so that [`Tick::NONE`]
/// can mean "no deadline" in compact tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(u64);

impl Tick {
    /// No deadline (earlier than every tick a [`Clock`] makes).
    pub const NONE: Tick = Tick(0);

    /// The tick `micros` microseconds after tick zero (for tests and virtual clocks).
    pub const fn from_micros(micros: u64) -> Tick {
        Tick(micros)
    }

    /// Microseconds since tick zero.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// This tick plus `d`, rounded up to the microsecond so that a deadline never comes early.
    pub fn after(self, d: Duration) -> Tick {
        let micros = d.as_nanos().div_ceil(1000);
        Tick(
            self.0
                .saturating_add(u64::try_from(micros).unwrap_or(u64::MAX)),
        )
    }

    /// This tick minus `d`, never earlier than the first tick a [`Clock`] makes (for a past
    /// moment known as "this long ago", such as a connection's last traffic when it is handed
    /// over from another process).
    pub fn before(self, d: Duration) -> Tick {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_sub(micros).max(1))
    }

    /// Time from `earlier` to this tick (zero if `earlier` is later).
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Converts between `Instant` and [`Tick`] for one epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock whose tick 1 is `start`.
    pub fn new(start: Instant) -> Clock {
        Clock { start }
    }

    /// The tick of `at` (rounded down to the microsecond; never [`Tick::NONE`]).
    pub fn tick(&self, at: Instant) -> Tick {
        let micros = at.saturating_duration_since(self.start).as_micros();
        Tick(u64::try_from(micros).unwrap_or(u64::MAX - 1) + 1)
    }

    /// The instant of `tick`.
    pub fn instant(&self, tick: Tick) -> Instant {
        self.start + Duration::from_micros(tick.0.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_trip_and_never_fire_early() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let t = clock.tick(start + Duration::from_micros(1_500_250));
        assert_eq!(clock.instant(t), start + Duration::from_micros(1_500_250));
        assert_ne!(clock.tick(start), Tick::NONE);
        assert!(clock.tick(start) > Tick::NONE);
        // A nanosecond still moves a deadline by a whole microsecond: never early.
        assert_eq!(
            t.after(Duration::from_nanos(1)).since(t),
            Duration::from_micros(1)
        );
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO);
        assert_eq!(Tick::from_micros(7).as_micros(), 7);
        assert_eq!(t.before(Duration::from_secs(1)).since(t), Duration::ZERO);
        assert_eq!(
            t.since(t.before(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(t.before(Duration::MAX), Tick::from_micros(1), "never NONE");
    }

    #[test]
    fn huge_durations_saturate() {
        let t = Tick::from_micros(u64::MAX - 5);
        assert_eq!(t.after(Duration::MAX), Tick::from_micros(u64::MAX));
        assert_eq!(Tick::NONE.after(Duration::MAX).as_micros(), u64::MAX);
    }

    #[test]
    fn fits_in_eight_bytes() {
        assert_eq!(std::mem::size_of::<Tick>(), 8);
    }
}
