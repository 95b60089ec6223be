//! One timer structure for every connection deadline: a min-heap of `(deadline, key, serial)`.
//!
//! A connection keeps the one deadline that matters in its current phase (handshake, idle or
//! close-wait); re-arming pushes a new entry and leaves the old one in the heap. A popped entry
//! whose connection is gone, or whose deadline no longer matches, is stale and ignored
//! (spurious timeouts are no-ops), so nothing ever has to be removed from the middle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Pending deadlines for all connections.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Timers {
    /// Schedules a check of connection `key` (with `serial`, to tell a reused slab slot apart)
    /// at `deadline`.
    pub fn schedule(&mut self, deadline: Instant, key: usize, serial: u32) {
        self.heap.push(Reverse((deadline, key, serial)));
    }

    /// The earliest deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns the next entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
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
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(t0 + Duration::from_secs(3), 3, 0);
        timers.schedule(t0 + Duration::from_secs(1), 1, 0);
        timers.schedule(t0 + Duration::from_secs(2), 2, 0);
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(t0 + Duration::from_secs(2)))
            .map(|(_, key, _)| key)
            .collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
    }
}
