//! Output: one door for every byte a connection is sent, which keeps the byte counts and the
//! memory budget itself.
//!
//! Bytes reach a connection in two steps. During a loop turn everything produced for it —
//! frames the protocol connection writes through its [`Output`] trait (messages, pongs, close
//! frames, the 101, HTTP answers), shared publication frames, static-file bodies — goes
//! through a [`Door`] into the reactor-wide [`Outbox`], and is counted as `corked` on the
//! connection's [`ConnOut`]. At the end of the turn [`ConnOut::write`] gives the socket the
//! connection's queue and its outbox entries, in one vectored write unless they span more
//! slices than one `writev` takes or the socket takes part and then more; what the socket
//! refuses stays in the connection's [`OutQueue`].
//!
//! Large payloads go in by move, not copied ([`lent`]): a message the application sends back
//! while it is being handed that message, and a payload the protocol connection gives away
//! ([`Output::push_owned`]).
//!
//! The memory budget (`--max-buffered`, [`Budget`]) counts what each connection holds: its
//! queue and its protocol and TLS state; and what the reactor itself holds: its idle pooled
//! message buffers ([`Budget::account_pool`]). Every change to a queue happens in a method of
//! this module, which brings the count up to date as it goes; the state is counted by
//! [`ConnOut::account_state`], which the reactor calls once after each piece of work on a
//! connection (see `reactor::life`). Nothing else touches either.
//!
//! The slow-consumer policies of rooms ([`policy`]) live here too: they change these queues.

use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;

use wsloop_proto::conn::Output;

use crate::admission::counts::ProcessCounts;
use crate::tls::TlsSession;

mod lent;
mod policy;
mod queue;

pub(crate) use lent::{Lent, Returns};
pub(crate) use policy::Verdict;
#[cfg(test)]
pub(crate) use queue::EntryData;
pub use queue::Outbox;
pub(crate) use queue::{OutEntry, OutQueue};

/// One connection's output in its slab entry (16 bytes): its queue, what this turn's outbox
/// holds for it, and what its state counts in the budget.
#[derive(Debug, Default)]
pub(crate) struct ConnOut {
    /// Bytes the socket did not take yet.
    queue: OutQueue,
    /// Bytes for it in this turn's outbox (saturating: the outbox is bounded by one turn).
    corked: u32,
    /// Bytes of its protocol and TLS state counted in the budget.
    state: u32,
}

impl ConnOut {
    /// Bytes waiting to be sent: queued plus produced this turn (the application's
    /// `buffered_amount`).
    pub(crate) fn buffered_amount(&self) -> usize {
        self.queue.len() + self.corked as usize
    }

    /// Whether nothing waits: nothing queued, nothing produced this turn.
    pub(crate) fn is_empty(&self) -> bool {
        self.corked == 0 && self.queue.is_empty()
    }

    /// Whether the queue holds bytes for the socket.
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Unsent bytes in the queue.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What reading is paused and resumed on: the memory the queue holds, not the bytes it
    /// has left to send — a large message sent back by move keeps its whole buffer alive
    /// until its last byte is written — plus this turn's output. Pausing on bytes let a
    /// connection start reading its next 4 MiB message, and reserve a buffer for it, while
    /// the last half megabyte of the previous echo still held one: two message buffers per
    /// connection instead of one.
    pub(crate) fn pressure(&self) -> usize {
        self.queue.footprint() + self.corked as usize
    }

    /// Memory counted in the budget for this connection.
    pub(crate) fn held(&self) -> u64 {
        (self.queue.footprint() + self.state as usize) as u64
    }

    /// Counts `bytes` (its protocol and TLS state now) in the budget instead of what was.
    pub(crate) fn account_state(&mut self, budget: &mut Budget, bytes: usize) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        budget.change(self.state as usize, bytes as usize);
        self.state = bytes;
    }

    /// Writes the queue, then `entries` (this turn's output for it, ranges of `bytes`),
    /// through TLS when the connection has it, to a socket that accepts writes; what the
    /// socket refuses stays queued. Takes what `entries` held off `corked`. Returns the
    /// plaintext bytes written.
    ///
    /// # Errors
    /// A socket error other than `WouldBlock`.
    pub(crate) fn write(
        &mut self,
        budget: &mut Budget,
        socket: &mut impl Write,
        tls: Option<&mut TlsSession>,
        bytes: &[u8],
        entries: &[OutEntry],
    ) -> io::Result<usize> {
        self.uncork(bytes, entries);
        let before = self.queue.footprint();
        let written = match tls {
            None => self
                .queue
                .write_with(socket, bytes, entries)
                .map(|(n, _)| n),
            Some(tls) => tls.write_with(socket, &mut self.queue, bytes, entries),
        };
        budget.change(before, self.queue.footprint());
        written
    }

    /// Queues `entries` behind what waits, without a write: the socket is known to refuse.
    pub(crate) fn queue_blocked(
        &mut self,
        budget: &mut Budget,
        bytes: &[u8],
        entries: &[OutEntry],
    ) {
        self.uncork(bytes, entries);
        let before = self.queue.footprint();
        let _ = self.queue.write_with(&mut Blocked, bytes, entries);
        budget.change(before, self.queue.footprint());
    }

    /// Drops the queue (the connection is gone).
    pub(crate) fn clear(&mut self, budget: &mut Budget) {
        budget.change(self.queue.footprint(), 0);
        self.queue.clear();
    }

    /// Memory shedding this connection would free: its queue but for the frame being
    /// written (see [`ConnOut::drop_unsent`]), and its protocol and TLS state.
    pub(crate) fn sheddable(&self) -> u64 {
        self.held()
            .saturating_sub(self.queue.kept_when_dropped() as u64)
    }

    /// The memory budget sheds this connection (connection `key`): everything unsent is
    /// dropped, in the queue and in this turn's `outbox`, but the rest of a frame already
    /// partly written, which must go out whole before the close frame.
    pub(crate) fn drop_unsent(&mut self, budget: &mut Budget, outbox: &mut Outbox, key: usize) {
        let before = self.queue.footprint();
        self.queue.drop_unsent();
        budget.change(before, self.queue.footprint());
        let dropped = outbox.drop_entries(key);
        self.corked = self
            .corked
            .saturating_sub(u32::try_from(dropped).unwrap_or(u32::MAX));
    }

    /// Takes everything the socket has not taken yet out of the queue, in order (the rest
    /// of a frame being written first): the connection moves to another process, which
    /// sends it. Call it only when this turn's outbox holds nothing for it.
    pub(crate) fn take_unsent(&mut self, budget: &mut Budget) -> Vec<u8> {
        let before = self.queue.footprint();
        let mut unsent = Vec::with_capacity(self.queue.len());
        while !self.queue.is_empty() {
            match self.queue.write_to(&mut unsent) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        budget.change(before, self.queue.footprint());
        unsent
    }

    /// Queues `unsent`: bytes another process (or a handoff that failed) had not sent yet,
    /// ahead of anything produced from now on.
    pub(crate) fn restore(&mut self, budget: &mut Budget, unsent: &[u8]) {
        let before = self.queue.footprint();
        self.queue.push_bytes(unsent);
        budget.change(before, self.queue.footprint());
    }

    /// The connection leaves: nothing it held counts any more.
    pub(crate) fn release(&mut self, budget: &mut Budget) {
        self.clear(budget);
        self.account_state(budget, 0);
    }

    /// Takes what `entries` hold off `corked`: they leave the outbox now.
    fn uncork(&mut self, bytes: &[u8], entries: &[OutEntry]) {
        let taken: usize = entries.iter().map(|e| e.byte_count(bytes)).sum();
        self.corked = self
            .corked
            .saturating_sub(u32::try_from(taken).unwrap_or(u32::MAX));
    }

    fn cork(&mut self, len: usize) {
        self.corked = self
            .corked
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// The door into one connection's output for this turn: the protocol connection writes
/// through it (it is an [`Output`]), and so does the server (HTTP bodies, publications).
pub(crate) struct Door<'a> {
    key: usize,
    out: &'a mut ConnOut,
    outbox: &'a mut Outbox,
}

impl<'a> Door<'a> {
    /// The door to connection `key`'s output.
    pub(crate) fn new(key: usize, out: &'a mut ConnOut, outbox: &'a mut Outbox) -> Door<'a> {
        Door { key, out, outbox }
    }

    /// Appends a frame or body shared with other connections, tagged with the room whose
    /// slow-consumer policy may drop it later (0: none).
    pub(crate) fn push_shared(&mut self, frame: &Rc<[u8]>, room: u32) {
        self.out.cork(frame.len());
        self.outbox.push_shared(self.key, frame, room);
    }

    /// Appends a publication of `room` for a receiver its policy found slow, where the
    /// policy can find it again this turn ([`Outbox::drop_policed`]).
    pub(crate) fn push_policed(&mut self, frame: &Rc<[u8]>, room: u32) {
        self.out.cork(frame.len());
        self.outbox.push_policed(self.key, frame, room);
    }
}

impl Output for Door<'_> {
    /// Copies `parts` into the outbox, except the message being delivered when it is one of
    /// them: that goes by move ([`Outbox::begin_lending`]).
    fn push(&mut self, parts: &[&[u8]]) {
        self.out.cork(parts.iter().map(|p| p.len()).sum());
        self.outbox.push_parts(self.key, parts);
    }

    /// Keeps `payload` by move behind a copy of `header`.
    fn push_owned(&mut self, header: &[u8], payload: Vec<u8>) {
        self.out.cork(header.len() + payload.len());
        self.outbox.push_bytes(self.key, &[header]);
        let range = 0..payload.len();
        self.outbox
            .push_lent(self.key, &Lent::new(payload, None), range);
    }
}

/// The process-wide memory budget's count: what this reactor's connections hold, with its
/// idle pooled message buffers, and, with several workers, what the whole process holds.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Bytes this reactor's connections and pool hold (its `buffered_bytes`).
    held: u64,
    /// Bytes of idle pooled message buffers counted in `held`.
    pool: usize,
    /// The process's counts, shared by every worker (`None`: a lone reactor).
    process: Option<Arc<ProcessCounts>>,
    /// Lent message buffers written and on their way back to the pool.
    returns: Returns,
}

impl Budget {
    /// Counts the reactor's idle pooled message buffers as `bytes` instead of what was.
    pub(crate) fn account_pool(&mut self, bytes: usize) {
        self.change(self.pool, bytes);
        self.pool = bytes;
    }

    /// Where lent message buffers go once written, on their way back to the pool.
    pub(crate) fn returns(&self) -> &Returns {
        &self.returns
    }

    /// Counts into the process's shared figure too, from now on (a worker).
    pub(crate) fn share(&mut self, process: Arc<ProcessCounts>) {
        process.rebuffer(0, self.held);
        self.process = Some(process);
    }

    /// Bytes this reactor's connections hold.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    /// Bytes every connection of the process holds (all workers).
    pub(crate) fn process_held(&self) -> u64 {
        self.process.as_ref().map_or(self.held, |p| p.buffered())
    }

    /// Whether the process holds more than `max` bytes.
    pub(crate) fn over(&self, max: usize) -> bool {
        self.over_with(0, max)
    }

    /// Whether the process holds more than `max` bytes, with `extra` bytes this reactor holds
    /// that are not counted yet.
    pub(crate) fn over_with(&self, extra: usize, max: usize) -> bool {
        self.process_held().saturating_add(extra as u64) > max as u64
    }

    /// Whether shedding here helps bring the process under `target`: it holds more, and this
    /// reactor at least its share of it, so the worker holding the most sheds and the others
    /// keep their smaller holders.
    pub(crate) fn shedding_here_helps(&self, target: u64) -> bool {
        let total = self.process_held();
        let workers = self.process.as_ref().map_or(1, |p| p.workers) as u64;
        total > target && self.held.saturating_mul(workers) >= total
    }

    /// One connection's bytes went from `before` to `after`.
    fn change(&mut self, before: usize, after: usize) {
        if before == after {
            return;
        }
        let (before, after) = (before as u64, after as u64);
        self.held = self.held.saturating_sub(before).saturating_add(after);
        if let Some(process) = &self.process {
            process.rebuffer(before, after);
        }
    }
}

/// A writer that always would block: queues entries without touching a socket.
struct Blocked;

impl Write for Blocked {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_door_counts_what_it_corks_and_the_write_what_it_queues() {
        let mut budget = Budget::default();
        let mut outbox = Outbox::default();
        let mut out = ConnOut::default();
        let frame: Rc<[u8]> = Rc::from(vec![7u8; 1000]);
        {
            let mut door = Door::new(3, &mut out, &mut outbox);
            door.push(&[b"ab", b"cd"]);
            door.push_shared(&frame, 0);
        }
        assert_eq!(out.buffered_amount(), 1004);
        assert_eq!(budget.held(), 0, "corked output is not held memory");
        out.queue_blocked(&mut budget, &outbox.bytes, &outbox.entries);
        assert_eq!(out.buffered_amount(), 1004);
        assert_eq!(budget.held(), out.held());
        assert!(budget.held() >= 1004);
        out.account_state(&mut budget, 500);
        assert_eq!(budget.held(), out.held());
        out.release(&mut budget);
        assert_eq!(budget.held(), 0);
        assert!(out.is_empty());
    }

    /// A socket that takes at most `room` bytes, then would block.
    struct Socket {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[io::IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.room - n);
                self.got.extend_from_slice(&buf[..take]);
                n += take;
            }
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lent_message_sent_back_is_queued_by_move_and_goes_home_once_written() {
        let mut budget = Budget::default();
        let mut outbox = Outbox::default();
        let mut out = ConnOut::default();
        let mut scratch = vec![9u8; 100_000];
        let message_at = scratch.as_ptr();
        // The application echoes the message it is handed, and sends another copy of it.
        outbox.begin_lending(&scratch);
        {
            let mut door = Door::new(3, &mut out, &mut outbox);
            door.push(&[b"HDR", &scratch]);
            door.push(&[b"H2", &scratch[..10]]);
        }
        assert_eq!(out.buffered_amount(), 100_000 + 3 + 2 + 10);
        assert!(outbox.bytes.len() < 100, "the message was not copied");
        let sent = outbox.lent_and_sent().expect("sent");
        assert_eq!((sent.addr, sent.len), (message_at as usize, 100_000));
        let lent = Lent::new(std::mem::take(&mut scratch), Some(budget.returns()));
        outbox.end_lending(Some((&lent, 0..100_000)));
        drop(lent);
        // Half of it is written; the rest waits in the queue, the buffer itself, counted.
        let mut socket = Socket {
            got: Vec::new(),
            room: 50_000,
        };
        out.write(
            &mut budget,
            &mut socket,
            None,
            &outbox.bytes,
            &outbox.entries,
        )
        .unwrap();
        outbox.clear(usize::MAX);
        assert_eq!(out.queued(), 100_015 - 50_000);
        assert!(budget.held() >= 100_000, "the whole buffer is held");
        assert!(budget.returns().drain().is_empty(), "still queued");
        socket.room = usize::MAX;
        out.write(&mut budget, &mut socket, None, &[], &[]).unwrap();
        let mut expect = b"HDR".to_vec();
        expect.extend_from_slice(&[9; 100_000]);
        expect.extend_from_slice(b"H2");
        expect.extend_from_slice(&[9; 10]);
        assert!(socket.got == expect);
        let back = budget.returns().drain();
        assert_eq!(back.len(), 1, "back for the pool");
        assert_eq!(back[0].as_ptr(), message_at);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_payload_given_away_is_queued_without_a_copy() {
        let mut outbox = Outbox::default();
        let mut out = ConnOut::default();
        let payload = vec![4u8; 70_000];
        let at = payload.as_ptr();
        Door::new(1, &mut out, &mut outbox).push_owned(b"HEAD", payload);
        assert_eq!(out.buffered_amount(), 70_004);
        let EntryData::Lent(lent, range) = &outbox.entries[1].data else {
            panic!("not kept by move: {:?}", outbox.entries);
        };
        assert_eq!((lent.bytes().as_ptr(), range.clone()), (at, 0..70_000));
    }
}
