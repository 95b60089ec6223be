//! The connections' deadlines: each connection's one next deadline ([`Deadlines`]), which its
//! protocol connection gives (`poll_timeout`: handshake, keepalive ping, idle limit, close
//! wait, rate-limit resume), over a min-heap of `(deadline, slab key)` ([`Timers`]). (The
//! reactor's own few — the accept pause, the stats line, the shutdown deadline — are plain
//! fields it folds into the poll timeout.)
//!
//! Nothing is ever removed from the middle of the heap. A popped entry that no longer stands
//! for its key's deadline is stale and ignored. [`Deadlines`] keeps at most one live entry per
//! connection however often it is re-armed: a later deadline keeps the entry already queued,
//! which wakes early and is queued again at the deadline then current; only an earlier
//! deadline pushes another (and the one it overtakes is ignored when it pops).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use wsloop_proto::time::Tick;

/// Pending deadlines for all connections.
#[derive(Debug, Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u32)>>,
}

impl Timers {
    /// Schedules a check of slab key `key` at `deadline`.
    fn schedule(&mut self, deadline: Tick, key: usize) {
        self.heap.push(Reverse((deadline, key as u32)));
    }

    /// The earliest deadline, for the poll timeout.
    pub(crate) fn next_deadline(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the next entry due at `now`: (deadline, key).
    fn pop_due(&mut self, now: Tick) -> Option<(Tick, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((at, key))| (at, key as usize))
            }
            _ => None,
        }
    }

    /// Entries in the heap (stale ones included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is pending.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Each connection's one deadline, with at most one live heap entry per connection.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: Timers,
    /// Per slab key: the deadline and the heap entry that wakes for it.
    slots: Vec<Slot>,
}

/// One slab key's deadline and its heap entry: 16 bytes for every connection. No serial
/// tells connections in the same slot apart: the reactor disarms a connection before it
/// leaves the slab, so an armed deadline is always its key's current connection's, and an
/// earlier connection's heap entry still queued wakes the slot early at worst (and is
/// queued again at the deadline then current), like any entry a later deadline overtook.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// When the connection's phase times out ([`Tick::NONE`]: not armed).
    deadline: Tick,
    /// The tick of the live heap entry for it ([`Tick::NONE`]: none), never after `deadline`.
    queued: Tick,
}

impl Deadlines {
    /// Room for `conns` connections (see `table_capacity`).
    pub(super) fn with_capacity(conns: usize) -> Deadlines {
        Deadlines {
            heap: Timers {
                heap: BinaryHeap::with_capacity(conns),
            },
            slots: Vec::with_capacity(conns),
        }
    }

    /// Sets the deadline of the connection at slab key `key` to `at`. Pushes a heap entry
    /// only when none is queued at or before `at`, so a deadline pushed back on every
    /// keep-alive request costs no memory.
    pub(super) fn arm(&mut self, key: usize, at: Tick) {
        if self.slots.len() <= key {
            self.slots.resize(key + 1, Slot::default());
        }
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.deadline = at;
        if slot.queued == Tick::NONE || at < slot.queued {
            slot.queued = at;
            self.heap.schedule(at, key);
        }
    }

    /// Clears the deadline at slab key `key` (its entry, if any, is ignored when it pops).
    /// Called before a connection leaves the slab, so the next one in its slot starts unarmed.
    pub(super) fn disarm(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.deadline = Tick::NONE;
        }
    }

    /// The next time to wake up, for the poll timeout (possibly before any deadline is due).
    pub(super) fn next_deadline(&self) -> Option<Tick> {
        self.heap.next_deadline()
    }

    /// The slab key of the next connection whose deadline has passed at `now`; its deadline
    /// is cleared. Entries that woke early are queued again at their connection's deadline.
    pub(super) fn pop_due(&mut self, now: Tick) -> Option<usize> {
        while let Some((at, key)) = self.heap.pop_due(now) {
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.queued != at {
                continue; // Stale: overtaken by an earlier deadline.
            }
            slot.queued = Tick::NONE;
            if slot.deadline == Tick::NONE {
                continue;
            }
            if slot.deadline > now {
                // Re-armed to a later deadline since this entry was queued.
                slot.queued = slot.deadline;
                self.heap.schedule(slot.deadline, key);
                continue;
            }
            slot.deadline = Tick::NONE;
            return Some(key);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use wsloop_proto::time::Clock;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let t0 = clock.tick(start);
        let secs = |n| t0.after(Duration::from_secs(n));
        let mut timers = Timers::default();
        timers.schedule(secs(3), 3);
        timers.schedule(secs(1), 1);
        timers.schedule(secs(2), 2);
        assert_eq!(timers.next_deadline(), Some(secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(secs(2)))
            .map(|(_, key)| key)
            .collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
    }

    /// Issue 19 item 14: a deadline pushed back 100 000 times (one keep-alive request each)
    /// keeps one heap entry, which wakes early, is queued again, and fires at the last deadline.
    #[test]
    fn later_deadlines_keep_one_entry() {
        let t0 = Clock::new(Instant::now()).tick(Instant::now());
        let ms = |n| t0.after(Duration::from_millis(n));
        let mut deadlines = Deadlines::default();
        for n in 0..100_000 {
            deadlines.arm(3, ms(10_000 + n));
        }
        deadlines.arm(4, ms(200_000));
        assert_eq!(deadlines.heap.len(), 2, "one entry per connection");
        assert_eq!(
            deadlines.pop_due(ms(10_000)),
            None,
            "woke early: queued again"
        );
        assert_eq!(deadlines.heap.len(), 2);
        assert_eq!(deadlines.next_deadline(), Some(ms(10_000 + 99_999)));
        assert_eq!(deadlines.pop_due(ms(10_000 + 99_999)), Some(3));
        assert_eq!(deadlines.pop_due(ms(199_999)), None);
        assert_eq!(deadlines.pop_due(ms(200_000)), Some(4));
        assert!(deadlines.heap.is_empty());
    }

    /// An earlier deadline pushes an entry and fires on time; the entry it overtook is
    /// ignored; an earlier connection's entry in the same slot fires nothing of its own.
    #[test]
    fn earlier_deadlines_and_reused_slots() {
        let t0 = Clock::new(Instant::now()).tick(Instant::now());
        let ms = |n| t0.after(Duration::from_millis(n));
        let mut deadlines = Deadlines::default();
        deadlines.arm(0, ms(500));
        deadlines.arm(0, ms(100));
        assert_eq!(deadlines.heap.len(), 2);
        assert_eq!(deadlines.pop_due(ms(100)), Some(0));
        assert_eq!(
            deadlines.pop_due(ms(1000)),
            None,
            "the overtaken entry is stale"
        );
        // Slot 0's connection leaves (disarmed) while its entry is queued; the next one in
        // the slot arms a later deadline: the old entry wakes early and is queued again.
        deadlines.arm(0, ms(2000));
        deadlines.disarm(0);
        deadlines.arm(0, ms(3000));
        assert_eq!(deadlines.pop_due(ms(2000)), None, "woke early");
        assert_eq!(deadlines.pop_due(ms(3000)), Some(0));
        // Disarmed and not re-armed: the entry pops as nothing.
        deadlines.arm(0, ms(4000));
        deadlines.disarm(0);
        assert_eq!(deadlines.pop_due(ms(4000)), None);
        assert!(deadlines.heap.is_empty());
    }

    /// What every connection costs here, beside its heap entry.
    #[test]
    fn slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}
