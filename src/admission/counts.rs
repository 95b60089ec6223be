//! The counts behind the per-process limits (`--max-conns`, `--max-conns-per-ip`,
//! `--max-buffered`), shared by every worker of a process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The counts behind the process-wide limits, shared by every worker: each admission
/// decision reads and changes them in one atomic step, so workers together never admit more
/// than the limit.
#[derive(Debug)]
pub(crate) struct ProcessCounts {
    /// Connections in the slabs of all workers (any phase), as `--max-conns` counts them.
    open: AtomicUsize,
    /// Bytes all workers' connections hold, as `--max-buffered` counts them.
    buffered: AtomicU64,
    /// Upgraded connections per client address (`--max-conns-per-ip` only).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// How many workers share these counts.
    pub(crate) workers: usize,
}

impl ProcessCounts {
    /// Counts for `workers` workers, all zero.
    pub(crate) fn new(workers: usize) -> ProcessCounts {
        ProcessCounts {
            open: AtomicUsize::new(0),
            buffered: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            workers,
        }
    }

    /// Counts one more connection; returns how many there were before it.
    pub(crate) fn open_one(&self) -> usize {
        self.open.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one connection less.
    pub(crate) fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// One connection's bytes went from `before` to `after`.
    pub(crate) fn rebuffer(&self, before: u64, after: u64) {
        if after > before {
            self.buffered.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.buffered.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Bytes all workers' connections hold now.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Counts one more connection from `ip` unless it already has `cap`; false when it has.
    pub(crate) fn take_ip(&self, ip: IpAddr, cap: usize) -> bool {
        take_ip_slot(&mut self.lock_per_ip(), ip, cap)
    }

    /// Counts one connection from `ip` less.
    pub(crate) fn release_ip(&self, ip: IpAddr) {
        release_ip_slot(&mut self.lock_per_ip(), ip);
    }

    fn lock_per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic while holding this lock cannot leave a count half-updated.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts one more connection from `ip` in `per_ip` unless it already has `cap`; false when
/// it has. (The one rule, for a lone reactor's own map and for the process's shared one.)
pub(crate) fn take_ip_slot(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr, cap: usize) -> bool {
    let count = per_ip.get(&ip).copied().unwrap_or(0);
    if count >= cap {
        return false;
    }
    per_ip.insert(ip, count + 1);
    true
}

/// Counts one connection from `ip` less in `per_ip`, forgetting addresses left with none.
pub(crate) fn release_ip_slot(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = per_ip.get_mut(&ip) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            per_ip.remove(&ip);
        }
    }
}
