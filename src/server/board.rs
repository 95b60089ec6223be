//! Per-worker counters shared between the reactors of one process, so `/stats` on any worker
//! can answer with the sum.
//!
//! Each reactor owns its [`Stats`] as plain integers (nothing shared on the hot path) and
//! copies them into its own slot at the end of every loop turn: a handful of relaxed stores
//! into a cache line no other worker writes. Readers sum the slots; a slot may be one turn
//! old, which is fine for counters.

use std::sync::atomic::{AtomicU64, Ordering};

use super::stats::{Stats, STATS_FIELDS};

/// One worker's counters, alone on its cache lines so workers never write-share a line.
#[derive(Debug)]
#[repr(align(128))]
struct Slot([AtomicU64; STATS_FIELDS]);

impl Default for Slot {
    fn default() -> Slot {
        Slot(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// The slots of every worker in the process.
#[derive(Debug)]
pub struct StatsBoard {
    slots: Box<[Slot]>,
}

impl StatsBoard {
    /// A board for `workers` workers, all counters zero.
    pub fn new(workers: usize) -> StatsBoard {
        StatsBoard {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Copies worker `index`'s counters into its slot.
    pub fn store(&self, index: usize, stats: &Stats) {
        if let Some(slot) = self.slots.get(index) {
            for (cell, value) in slot.0.iter().zip(stats.to_fields()) {
                cell.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Every worker's last stored counters, in worker order.
    pub fn workers(&self) -> Vec<Stats> {
        self.slots
            .iter()
            .map(|slot| Stats::from_fields(std::array::from_fn(|i| load(&slot.0, i))))
            .collect()
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
}
