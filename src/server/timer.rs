//! One timer structure for every connection deadline: a min-heap of `(deadline, key, serial)`.
//!
//! A connection keeps the one deadline that matters in its current phase (handshake, idle or
//! close-wait); re-arming pushes a new entry and leaves the old one in the heap. A popped entry
//! whose connection is gone, or whose deadline no longer matches, is stale and ignored
//! (spurious timeouts are no-ops), so nothing ever has to be removed from the middle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A point in time as milliseconds since the reactor started (plus one, so that
/// [`Tick::NONE`] can mean "no deadline"). 8 bytes where an `Instant` takes 16: it is stored
/// twice per connection and once per timer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(u64);

impl Tick {
    /// No deadline.
    pub const NONE: Tick = Tick(0);

    /// This tick plus `d` (millisecond resolution, rounded up so a timer never fires early).
    pub fn after(self, d: Duration) -> Tick {
        let ms = d.as_micros().div_ceil(1000);
        Tick(self.0.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// Time from `earlier` to this tick (zero if `earlier` is later).
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Converts between `Instant` and [`Tick`].
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock whose tick 1 is `start`.
    pub fn new(start: Instant) -> Clock {
        Clock { start }
    }

    /// The tick of `at` (rounded down).
    pub fn tick(&self, at: Instant) -> Tick {
        let ms = at.saturating_duration_since(self.start).as_millis();
        Tick(u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1)
    }

    /// The instant of `tick`.
    pub fn instant(&self, tick: Tick) -> Instant {
        self.start + Duration::from_millis(tick.0.saturating_sub(1))
    }
}

/// Pending deadlines for all connections.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u32, u32)>>,
}

impl Timers {
    /// Schedules a check of connection `key` (with `serial`, to tell a reused slab slot apart)
    /// at `deadline`.
    pub fn schedule(&mut self, deadline: Tick, key: usize, serial: u32) {
        self.heap.push(Reverse((deadline, key as u32, serial)));
    }

    /// The earliest deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns the next entry due at `now`: (deadline, key, serial).
    pub fn pop_due(&mut self, now: Tick) -> Option<(Tick, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self
                .heap
                .pop()
                .map(|Reverse((at, key, serial))| (at, key as usize, serial)),
            _ => None,
        }
    }

    /// Entries in the heap (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let t0 = clock.tick(start);
        let secs = |n| t0.after(Duration::from_secs(n));
        let mut timers = Timers::default();
        timers.schedule(secs(3), 3, 0);
        timers.schedule(secs(1), 1, 0);
        timers.schedule(secs(2), 2, 0);
        assert_eq!(timers.next_deadline(), Some(secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(secs(2)))
            .map(|(_, key, _)| key)
            .collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn ticks_round_trip_and_never_fire_early() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let t = clock.tick(start + Duration::from_millis(1500));
        assert_eq!(clock.instant(t), start + Duration::from_millis(1500));
        assert_ne!(clock.tick(start), Tick::NONE);
        assert_eq!(
            t.after(Duration::from_micros(1)).since(t),
            Duration::from_millis(1)
        );
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO);
    }
}
