//! Per-worker counters shared between the reactors of one process, so `/stats` and
//! `/metrics` on any worker can answer with the sum.
//!
//! Each reactor owns its [`Stats`] as plain integers (nothing shared on the hot path) and
//! copies them into its own slot at the end of every loop turn: a handful of relaxed stores
//! into a cache line no other worker writes. Readers sum the slots; a slot may be one turn
//! old, which is fine for counters. A worker's room figures (subscriptions every turn, drops
//! by room when they change) sit beside its counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::metrics::RoomFigures;
use super::{Stats, STATS_FIELDS};

/// One worker's counters, alone on its cache lines so workers never write-share a line.
#[derive(Debug)]
#[repr(align(128))]
struct Slot {
    stats: [AtomicU64; STATS_FIELDS],
    /// The worker's subscriptions across its rooms.
    subscriptions: AtomicU64,
    /// The worker's drops by room, as last copied (see `Member::end_turn`).
    drops: Mutex<BTreeMap<Box<str>, u64>>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            stats: std::array::from_fn(|_| AtomicU64::new(0)),
            subscriptions: AtomicU64::new(0),
            drops: Mutex::default(),
        }
    }
}

impl Slot {
    fn drops(&self) -> MutexGuard<'_, BTreeMap<Box<str>, u64>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.drops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The slots of every worker in the process.
#[derive(Debug)]
pub(crate) struct StatsBoard {
    slots: Box<[Slot]>,
}

impl StatsBoard {
    /// A board for `workers` workers, all counters zero.
    pub(crate) fn new(workers: usize) -> StatsBoard {
        StatsBoard {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Copies worker `index`'s counters into its slot.
    pub(crate) fn store(&self, index: usize, stats: &Stats) {
        if let Some(slot) = self.slots.get(index) {
            for (cell, value) in slot.stats.iter().zip(stats.to_fields()) {
                cell.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Every worker's last stored counters, in worker order.
    pub(crate) fn workers(&self) -> Vec<Stats> {
        self.slots
            .iter()
            .map(|slot| Stats::from_fields(std::array::from_fn(|i| load(&slot.stats, i))))
            .collect()
    }

    /// Sets worker `index`'s subscription count.
    pub(crate) fn store_subscriptions(&self, index: usize, subscriptions: u64) {
        if let Some(slot) = self.slots.get(index) {
            slot.subscriptions.store(subscriptions, Ordering::Relaxed);
        }
    }

    /// Replaces worker `index`'s drops by room.
    pub(crate) fn store_drops(&self, index: usize, drops: BTreeMap<Box<str>, u64>) {
        if let Some(slot) = self.slots.get(index) {
            *slot.drops() = drops;
        }
    }

    /// The process's room figures: every worker's subscriptions and drops by room summed,
    /// with `rooms` distinct rooms (which only the hub can count: a room may have
    /// subscribers on several workers).
    pub(crate) fn room_figures(&self, rooms: u64) -> RoomFigures {
        let mut sum = RoomFigures {
            rooms,
            ..RoomFigures::default()
        };
        for slot in self.slots.iter() {
            sum.subscriptions += slot.subscriptions.load(Ordering::Relaxed);
            for (name, &dropped) in slot.drops().iter() {
                *sum.dropped.entry(name.clone()).or_default() += dropped;
            }
        }
        sum
    }
}

fn load(cells: &[AtomicU64; STATS_FIELDS], i: usize) -> u64 {
    cells.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_sum() {
        let board = StatsBoard::new(2);
        let a = Stats {
            open: 3,
            messages_in: 7,
            protocol_errors: [1, 0, 2],
            broker_in: 5,
            ..Stats::default()
        };
        let b = Stats {
            open: 1,
            ..Stats::default()
        };
        board.store(0, &a);
        board.store(1, &b);
        board.store(9, &b); // out of range: ignored
        let workers = board.workers();
        assert_eq!(workers, vec![a.clone(), b.clone()]);
        let mut sum = Stats::default();
        workers.iter().for_each(|w| sum.add(w));
        assert_eq!(sum.open, 4);
        assert_eq!(sum.protocol_errors, [1, 0, 2]);
    }

    #[test]
    fn room_figures_sum_over_workers() {
        let board = StatsBoard::new(2);
        let drops = |list: &[(&str, u64)]| list.iter().map(|&(n, d)| (n.into(), d)).collect();
        board.store_subscriptions(0, 3);
        board.store_subscriptions(1, 4);
        board.store_drops(0, drops(&[("chat", 2), ("news", 1)]));
        board.store_drops(1, drops(&[("chat", 5)]));
        board.store_drops(7, drops(&[("chat", 5)])); // out of range: ignored
        let sum = board.room_figures(2);
        assert_eq!(sum.rooms, 2);
        assert_eq!(sum.subscriptions, 7);
        let dropped: Vec<_> = sum.dropped.iter().map(|(n, &d)| (&**n, d)).collect();
        assert_eq!(dropped, [("chat", 7), ("news", 1)]);
    }
}
