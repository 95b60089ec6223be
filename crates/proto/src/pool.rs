//! Large message buffers, kept for reuse by the connections of one reactor.
//!
//! A message whose payload reaches the pool's *large* size is assembled in a buffer reserved
//! from its frame header (the decoder's `Assembly`), and a caller can read the payload straight
//! into it ([`Connection::read_target`](crate::Connection::read_target)). Allocating such a
//! buffer for every message is what made large messages slow: each fresh page is a page fault
//! and is zeroed by the kernel, the buffer is freed after the message (the heap is trimmed, or
//! the mapping unmapped), and the next message faults it in again. A buffer taken from this
//! pool has been faulted in already.
//!
//! # Bounds
//! - The pool keeps at most `cap` bytes of idle buffers (a hard cap: a buffer given back past
//!   it makes room by dropping smaller idle ones, or is dropped itself). Buffers in use are
//!   their holder's memory (a connection's partial message, an output queue), not the pool's.
//! - Once no buffer was taken for [`IDLE_RELEASE`], every idle buffer is freed
//!   ([`BufferPool::release_if_idle`]), so a burst of large messages leaves no memory behind.
//!   The caller checks that now and then (each loop turn, and at
//!   [`BufferPool::next_release`]).
//!
//! # Initialized room
//! Safe Rust reads only into initialized bytes, so a pooled buffer is a `Vec<u8>` whose whole
//! length is initialized room: a new one is zeroed by the allocator (fresh pages from the
//! kernel are zero already, at no cost until touched), a reused one keeps what its last message
//! left there. A buffer given back keeps its length, so taking it again zeroes only what it
//! must add.

use std::time::Duration;

use crate::time::Tick;

/// How long the pool may go without a buffer taken before it frees its idle buffers: a burst
/// of large messages takes one every few milliseconds; a second without one means it is over.
pub const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// The default large size: a reactor's read buffer (256 KiB). A payload that size or larger
/// can never be decoded in place from one read, so it is assembled anyway; smaller ones
/// often arrive whole in one read and are handed out from it without a copy.
pub const LARGE: usize = 256 * 1024;

/// The default cap on idle bytes: four 16 MiB messages (the default message limit).
pub const CAP: usize = 64 << 20;

/// Idle large buffers (see the [module docs](self)).
#[derive(Debug)]
pub struct BufferPool {
    /// Idle buffers, in the order they came back.
    free: Vec<Vec<u8>>,
    /// The capacity of the buffers in `free`.
    idle: usize,
    /// The most `idle` may be.
    cap: usize,
    /// Buffers smaller than this are not kept (and the decoder uses no pooled buffer below it).
    large: usize,
    /// A buffer was taken since the last [`BufferPool::release_if_idle`].
    taken: bool,
    /// The last check that found the pool in use.
    last_used: Tick,
}

impl Default for BufferPool {
    /// A pool of the default [`LARGE`] size and [`CAP`].
    fn default() -> Self {
        BufferPool::new(LARGE, CAP)
    }
}

impl BufferPool {
    /// A pool for buffers of at least `large` bytes, keeping at most `cap` bytes idle.
    pub fn new(large: usize, cap: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            idle: 0,
            cap,
            large: large.max(1),
            taken: false,
            last_used: Tick::NONE,
        }
    }

    /// The size from which payloads go into pooled buffers.
    pub fn large(&self) -> usize {
        self.large
    }

    /// Bytes held by idle buffers (what the pool itself costs).
    pub fn idle_bytes(&self) -> usize {
        self.idle
    }

    /// A buffer of at least `len` initialized bytes: the smallest idle one that can hold `len`
    /// (its length made at least `len`, zeroing only what that adds), else a new zeroed one of
    /// exactly `len`.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let best = self.pick(len, |buf| std::cmp::Reverse(buf.capacity()));
        match best {
            Some(mut buf) => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                buf
            }
            None => vec![0; len],
        }
    }

    /// An empty buffer with room for at least `capacity` bytes, for output of unknown size
    /// (an inflated message): the largest idle one if it is large enough, else a new one.
    pub fn take_empty(&mut self, capacity: usize) -> Vec<u8> {
        match self.pick(capacity, Vec::capacity) {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Takes out the idle buffer of at least `capacity` bytes that `rank` ranks highest.
    fn pick<K: Ord>(&mut self, capacity: usize, rank: impl Fn(&Vec<u8>) -> K) -> Option<Vec<u8>> {
        self.taken = true;
        let at = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, buf)| buf.capacity() >= capacity)
            .max_by_key(|(_, buf)| rank(buf))
            .map(|(at, _)| at)?;
        let buf = self.free.swap_remove(at);
        self.idle -= buf.capacity();
        Some(buf)
    }

    /// Takes `buf` back for reuse, unless it is smaller than the large size or cannot fit
    /// under the cap: it makes room by dropping idle buffers no larger than itself, smallest
    /// first, and is dropped itself when even that would not make room.
    pub fn give(&mut self, buf: Vec<u8>) {
        let size = buf.capacity();
        let smaller: usize = self
            .free
            .iter()
            .map(Vec::capacity)
            .filter(|&c| c <= size)
            .sum();
        if size < self.large || self.idle - smaller + size > self.cap {
            return;
        }
        self.free.sort_unstable_by_key(Vec::capacity);
        while self.idle + size > self.cap && !self.free.is_empty() {
            self.idle -= self.free.remove(0).capacity();
        }
        self.idle += size;
        self.free.push(buf);
    }

    /// Frees every idle buffer if none was taken for [`IDLE_RELEASE`] before `now`; returns
    /// whether it did. A check that finds a buffer taken since the last one notes `now` as the
    /// last use.
    pub fn release_if_idle(&mut self, now: Tick) -> bool {
        if std::mem::take(&mut self.taken) || self.last_used == Tick::NONE {
            self.last_used = now;
            return false;
        }
        if self.free.is_empty() || now < self.last_used.after(IDLE_RELEASE) {
            return false;
        }
        self.release();
        true
    }

    /// Frees every idle buffer now (the memory budget needs the room).
    pub fn release(&mut self) {
        self.free = Vec::new();
        self.idle = 0;
    }

    /// When idle buffers are due to be freed, if any are held (for the caller's timer).
    #[must_use]
    pub fn next_release(&self) -> Option<Tick> {
        let held = !self.free.is_empty() && self.last_used != Tick::NONE;
        held.then(|| self.last_used.after(IDLE_RELEASE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_buffer_given_back_is_taken_again_without_zeroing_what_it_had() {
        let mut pool = BufferPool::new(MIB, 64 * MIB);
        let mut buf = pool.take(4 * MIB);
        assert_eq!(buf.len(), 4 * MIB);
        buf[4 * MIB - 1] = 7;
        let ptr = buf.as_ptr();
        pool.give(buf);
        assert_eq!(pool.idle_bytes(), 4 * MIB);
        let again = pool.take(3 * MIB);
        assert_eq!(again.as_ptr(), ptr, "the same buffer");
        assert_eq!(again.len(), 4 * MIB, "its room kept");
        assert_eq!(again[4 * MIB - 1], 7, "not zeroed again");
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken() {
        let mut pool = BufferPool::new(MIB, 64 * MIB);
        for len in [8 * MIB, 2 * MIB, 4 * MIB] {
            pool.give(vec![0; len]);
        }
        assert_eq!(pool.take(3 * MIB).capacity(), 4 * MIB);
        assert_eq!(pool.take(MIB).capacity(), 2 * MIB);
        assert_eq!(pool.take(9 * MIB).capacity(), 9 * MIB, "a new one");
        assert_eq!(pool.idle_bytes(), 8 * MIB);
    }

    #[test]
    fn output_of_unknown_size_gets_the_largest_idle_buffer() {
        let mut pool = BufferPool::new(MIB, 64 * MIB);
        for len in [2 * MIB, 8 * MIB, 4 * MIB] {
            pool.give(vec![1; len]);
        }
        let buf = pool.take_empty(3 * MIB);
        assert_eq!((buf.len(), buf.capacity()), (0, 8 * MIB));
        assert_eq!(pool.take_empty(5 * MIB).capacity(), 5 * MIB, "a new one");
        assert_eq!(pool.idle_bytes(), 6 * MIB);
    }

    #[test]
    fn small_buffers_are_not_kept_and_the_cap_holds() {
        let mut pool = BufferPool::new(MIB, 10 * MIB);
        pool.give(vec![0; MIB - 1]);
        assert_eq!(pool.idle_bytes(), 0);
        pool.give(vec![0; 11 * MIB]);
        assert_eq!(pool.idle_bytes(), 0, "larger than the cap");
        for _ in 0..3 {
            pool.give(vec![0; 2 * MIB]);
        }
        pool.give(vec![0; 8 * MIB]);
        assert_eq!(pool.idle_bytes(), 10 * MIB, "two small ones made room");
        pool.give(vec![0; 3 * MIB]);
        assert_eq!(
            pool.idle_bytes(),
            10 * MIB,
            "only larger ones to drop: not kept"
        );
        pool.give(vec![0; 9 * MIB]);
        assert_eq!(pool.idle_bytes(), 9 * MIB, "the smaller ones made room");
        assert_eq!(pool.take(7 * MIB).capacity(), 9 * MIB);
    }

    #[test]
    fn idle_buffers_are_freed_a_while_after_the_last_take() {
        let mut pool = BufferPool::new(MIB, 64 * MIB);
        let t0 = Tick::from_micros(1_000_000);
        let buf = pool.take(MIB);
        assert!(!pool.release_if_idle(t0), "just used");
        pool.give(buf);
        assert_eq!(pool.next_release(), Some(t0.after(IDLE_RELEASE)));
        let almost = t0.after(IDLE_RELEASE - Duration::from_millis(1));
        assert!(!pool.release_if_idle(almost));
        assert_eq!(pool.idle_bytes(), MIB);
        assert!(pool.release_if_idle(t0.after(IDLE_RELEASE)));
        assert_eq!(pool.idle_bytes(), 0);
        assert_eq!(pool.next_release(), None);
    }
}
