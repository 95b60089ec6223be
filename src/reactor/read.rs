//! Input: reading a connection's socket into the one shared buffer (decrypting TLS), feeding
//! the bytes to its protocol connection, and handing what comes out — messages, requests,
//! events — to the application, within the connection's share of work per turn.
//!
//! A large frame's payload is read straight into its message buffer instead (plaintext
//! decrypted into it, with TLS): whenever the connection lends a read target
//! (`Connection::read_target`), the next read lands there and goes to `handle_direct`. A large
//! message the application sends back while it holds it leaves by move: see
//! [`Core::deliver`] and `super::large`.

use std::io::{self, Read};

use log::debug;
use wsloop_proto::conn::{self, Closed, Event, Initiator};
use wsloop_proto::CloseCode;

use crate::app::{Context, Handler, Message};
use crate::out::Door;
use crate::stats::RejectReason;

use super::{
    Core, Reactor, Visit, LARGE_ECHOES_PER_VISIT, NARROW_READ, PLAIN_LEN, READS_PER_EVENT,
    READ_BUF, WORK_PER_TURN,
};

impl<H: Handler> Reactor<H> {
    /// Visits one connection: what it held back or left unanswered first, then reads until
    /// `WouldBlock`, a short read, or its fair share — at most [`READS_PER_EVENT`] reads and
    /// [`WORK_PER_TURN`] units of work. Out of work, the undecoded rest waits in its
    /// connection and it goes on the ready list, to be fed first when that brings it back.
    ///
    /// A visit that lent a large message out by move (an echo) writes it at once, and when
    /// the socket took all of it, reads on: up to [`LARGE_ECHOES_PER_VISIT`] such messages.
    pub(super) fn on_readable(&mut self, key: usize, mut visit: Visit) {
        let Some(entry) = self.core.conns.get(key) else {
            return;
        };
        if visit != Visit::Ready && entry.conn.has_backlog() {
            return; // On the ready list: its backlog goes first, in its turn.
        }
        self.core.work_left = WORK_PER_TURN;
        for echoes in 1.. {
            self.core.reclaim_buffers();
            self.read_from(key, visit);
            self.core.settle(key);
            if self.scratch.capacity() > READ_BUF {
                // A large message was assembled or inflated there: back to the pool with it.
                let buffer = std::mem::take(&mut self.scratch);
                self.core.shared.pool.give(buffer);
            }
            self.core.account_pool();
            if self.core.outbox.lent_bytes() == 0 {
                return;
            }
            // A large message goes out by move (an echo): write it now, while its bytes are
            // still in the caches, rather than at the end of the turn, after the other
            // connections' reads have passed megabytes more through them. The kernel's copy
            // into the socket is most of an echo's cost and runs at the speed of the memory
            // it reads from: 2 connections x 4 MiB, the send copy took 0.9 ms per message
            // at the turn's end, 0.7 ms here (benches/README.md, "Large messages").
            #[cfg(test)]
            {
                self.core.lent_writes += 1;
            }
            self.core.flush_outbox(&mut self.app);
            // Written whole, the echo paused reading no more: read the next message now
            // (into the buffer just written, back in the pool at the top of the loop) instead
            // of in the next turn. 2 x 4 MiB: 1.07x the messages per second at the same memory
            // (benches/README.md, "Reading on after a large echo").
            if echoes >= LARGE_ECHOES_PER_VISIT || !self.core.resume_now(key) {
                return;
            }
            visit = Visit::Ready;
        }
    }

    fn read_from(&mut self, key: usize, visit: Visit) {
        // Keep reading after a short read when no new edge will come: the event already
        // reported the peer's FIN (or an error), or the connection is revisited from the
        // ready list.
        let read_to_end = visit != Visit::Event { hangup: false };
        if !self
            .core
            .feed(&mut self.app, key, &mut [], &mut self.scratch)
        {
            return self.core.come_back_if_held(key);
        }
        for _ in 0..READS_PER_EVENT {
            let Some(entry) = self.core.conns.get_mut(key) else {
                return;
            };
            if entry.doomed || !entry.conn.wants_read() {
                return; // Paused, waiting for an answer, after EOF, or finished.
            }
            if entry.out.pressure() > self.core.config.max_backpressure {
                // Stop reading: TCP pushes back on a peer that sends but does not read.
                entry.read_paused = true;
                return;
            }
            if self.core.over_budget() {
                // Nothing more comes in until the end of the turn sheds (large messages
                // reserve their size from the header: it adds up fast).
                return self.core.ready.push(key);
            }
            let Some(entry) = self.core.conns.get_mut(key) else {
                return;
            };

            // A large frame's payload straight into its message buffer; otherwise the shared
            // buffer (TLS: ciphertext into the upper half, plaintext drained into the lower
            // half, or into the payload).
            let tls = entry.tls.is_some();
            let target = match tls {
                false => entry.conn.read_target(),
                true => None,
            };
            let direct = target.is_some();
            let narrow = !direct && !tls && entry.narrow_read;
            let buf = match target {
                Some(target) => target,
                None if tls => self.read_buf.get_mut(PLAIN_LEN..).unwrap_or_default(),
                None if narrow => self.read_buf.get_mut(..NARROW_READ).unwrap_or_default(),
                None => self.read_buf.as_mut_slice(),
            };
            let full = buf.len();
            let n = match entry.socket.read(buf) {
                Ok(0) => return self.core.on_eof(&mut self.app, key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.core.on_transport_error(&mut self.app, key, &e),
            };
            self.core.stats.bytes_in += n as u64;
            if direct || (narrow && n == full) {
                entry.narrow_read = direct;
            }
            let fed = if direct {
                self.core
                    .feed_direct(&mut self.app, key, n, &mut self.scratch)
            } else if tls {
                self.on_ciphertext(key, n)
            } else {
                let input = self.read_buf.get_mut(..n).unwrap_or_default();
                self.core.feed(&mut self.app, key, input, &mut self.scratch)
            };
            if !fed {
                return self.core.come_back_if_held(key);
            }
            if n < full && !read_to_end {
                // A short read drained the socket (as tokio also assumes on Linux): the next
                // arrival raises a new edge.
                return;
            }
        }
        self.core.ready.push(key);
    }

    /// Decrypts the `n` bytes of ciphertext just read and feeds the plaintext as a plain
    /// connection's bytes; then writes what rustls itself has to say (handshake records,
    /// alerts), even when the application said nothing. False when reading stops here.
    fn on_ciphertext(&mut self, key: usize, n: usize) -> bool {
        let (plain, cipher) = self.read_buf.split_at_mut(PLAIN_LEN);
        let mut cipher: &[u8] = cipher.get(..n).unwrap_or_default();
        if let Some(entry) = self.core.conns.get_mut(key) {
            // Ciphertext is traffic too, even when it yields no plaintext.
            entry.conn.handle_traffic(self.core.tick);
        }
        loop {
            let Some(entry) = self.core.conns.get_mut(key).filter(|e| !e.doomed) else {
                return false;
            };
            let Some(tls) = entry.tls.as_deref_mut() else {
                return false;
            };
            // Plaintext of a large frame's payload goes straight into its message buffer.
            let target = entry.conn.read_target();
            let direct = target.is_some();
            let dest = match target {
                Some(target) => target,
                None => &mut *plain,
            };
            let room = dest.len();
            let step = match tls.decrypt(&mut cipher, dest) {
                Ok(step) => step,
                Err(e) => {
                    let during = if tls.is_handshaking() {
                        " handshake"
                    } else {
                        ""
                    };
                    let _ = tls.send_pending(&mut entry.socket); // the alert, best effort
                    let error = io::Error::other(format!("TLS{during} error: {e}"));
                    self.core.on_transport_error(&mut self.app, key, &error);
                    return false;
                }
            };
            if step.len > 0 && direct {
                let _ = self
                    .core
                    .feed_direct(&mut self.app, key, step.len, &mut self.scratch);
            } else if step.len > 0 {
                let input = plain.get_mut(..step.len).unwrap_or_default();
                // Out of work, the rest of the plaintext joins the deferred input.
                let _ = self.core.feed(&mut self.app, key, input, &mut self.scratch);
            }
            if step.closed {
                self.core.on_eof(&mut self.app, key);
                return false;
            }
            if cipher.is_empty() && step.len < room {
                break;
            }
        }
        self.core.write_pending(&mut self.app, key);
        !self
            .core
            .conns
            .get(key)
            .is_some_and(|e| e.doomed || e.conn.has_backlog())
    }
}

impl Core {
    /// Feeds `input` (bytes just read; empty: only what the connection holds back) to
    /// connection `key`, handing each message and event to the application as it comes, until
    /// all is consumed, the connection's work share for this turn is spent, or its output goes
    /// over `--max-backpressure`: then the rest is deferred (and, paused, it comes back when
    /// its output drains). False when reading stops here (out of work, paused, or finished).
    ///
    /// Why stop decoding, not only reading, over the limit: what one read brought can hold
    /// the header of a large message behind the one just answered (small frames before it,
    /// or a TLS record); decoding it reserves that message's buffer while the echo of the
    /// last one still holds its own. Deferred, the header is decoded once the echo is
    /// written, and takes that very buffer from the pool.
    pub(super) fn feed<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        input: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> bool {
        let mut pos = 0;
        loop {
            self.dispatch_events(app, key);
            let Some(entry) = self.conns.get_mut(key).filter(|e| !e.doomed) else {
                return false;
            };
            let rest = input.get_mut(pos..).unwrap_or_default();
            if rest.is_empty() && !entry.conn.has_backlog() {
                return true;
            }
            if entry.out.pressure() > self.config.max_backpressure {
                entry.read_paused = true;
                entry.conn.defer(rest);
                return false;
            }
            if self.work_left == 0 {
                entry.conn.defer(rest);
                return false;
            }
            self.work_left -= 1;
            let input = rest.as_ptr_range();
            let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
            let got =
                entry
                    .conn
                    .handle_input(self.tick, rest, scratch, &mut door, &mut self.shared);
            pos += got.consumed;
            if let Some(message) = got.message {
                let in_scratch = !input.contains(&message.as_bytes().as_ptr());
                if self.deliver(app, key, message, in_scratch) {
                    self.end_lending(scratch);
                }
            }
        }
    }

    /// Feeds the `n` bytes just read into connection `key`'s read target (the rest of a large
    /// frame's payload), as [`Core::feed`] feeds bytes read into the shared buffer, then what
    /// the connection holds back. The bytes are already in place: they are decoded whatever
    /// work is left (one step, at most one message). False when reading stops here.
    pub(super) fn feed_direct<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        n: usize,
        scratch: &mut Vec<u8>,
    ) -> bool {
        let Some(entry) = self.conns.get_mut(key).filter(|e| !e.doomed) else {
            return false;
        };
        self.work_left = self.work_left.saturating_sub(1);
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        let got = entry
            .conn
            .handle_direct(self.tick, n, scratch, &mut door, &mut self.shared);
        if let Some(message) = got.message {
            if self.deliver(app, key, message, true) {
                self.end_lending(scratch);
            }
        }
        self.feed(app, key, &mut [], scratch)
    }

    /// Whether `key`, which a write just resumed (it went on the ready list for the next
    /// turn), is to read on in this visit instead: then it comes off the ready list.
    fn resume_now(&mut self, key: usize) -> bool {
        let resumed = self.ready.last() == Some(&key)
            && self
                .conns
                .get(key)
                .is_some_and(|e| !e.doomed && !e.read_paused && e.is_flushed());
        if resumed {
            self.ready.pop();
        }
        resumed
    }

    /// After its share of work: a connection holding input back that it can decode now comes
    /// back next turn (one paused by its rate comes back with its timer, one paused by its
    /// output when that drains).
    fn come_back_if_held(&mut self, key: usize) {
        let limit = self.config.max_backpressure;
        if self
            .conns
            .get(key)
            .is_some_and(|e| !e.doomed && e.conn.has_backlog() && e.out.pressure() <= limit)
        {
            self.ready.push(key);
        }
    }

    /// Hands a complete message to the application. A large one in the scratch buffer
    /// (`in_scratch`; else it is in the read buffer) is lent: what the application sends of it
    /// is queued by reference, and the caller ends the lending with
    /// [`end_lending`](Core::end_lending) (see `super::large`) once the message is no longer
    /// borrowed. Returns whether it was lent.
    fn deliver<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        message: conn::Message<'_>,
        in_scratch: bool,
    ) -> bool {
        self.stats.messages_in += 1;
        let bytes = message.as_bytes();
        let lend = in_scratch && bytes.len() >= self.shared.settings.large_payload;
        if lend {
            self.outbox.begin_lending(bytes);
        }
        let msg = match message {
            conn::Message::Text(text) => Message::Text(text),
            conn::Message::Binary(bytes) => Message::Binary(bytes),
        };
        if let Some(id) = self.id_of(key) {
            app.on_message(&mut Context { core: self }, id, msg);
        }
        lend
    }

    /// The peer's FIN (a read of 0 bytes, or TLS `close_notify`).
    pub(super) fn on_eof<H: Handler>(&mut self, app: &mut H, key: usize) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        if entry.conn.is_open() {
            debug!("#{key}: peer closed TCP without a close frame");
        }
        let flushed = entry.is_flushed();
        entry.conn.handle_eof(self.tick, flushed, &self.shared);
        self.dispatch_events(app, key);
    }

    /// A socket or TLS error: the connection is finished.
    pub(super) fn on_transport_error<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        e: &io::Error,
    ) {
        debug!("#{key}: socket error: {e}");
        if let Some(entry) = self.conns.get_mut(key) {
            entry.conn.handle_transport_error();
        }
        self.dispatch_events(app, key);
    }

    /// Hands connection `key`'s events to the application. A request waits while the
    /// connection's output is over `--max-backpressure` (reading is paused too, and the
    /// drain brings it back): pipelined requests are answered no faster than the answers
    /// leave.
    pub(super) fn dispatch_events<H: Handler>(&mut self, app: &mut H, key: usize) {
        let limit = self.config.max_backpressure;
        loop {
            let Some(entry) = self.conns.get_mut(key) else {
                return;
            };
            if entry.conn.in_request_phase() && entry.out.buffered_amount() > limit {
                entry.read_paused = true;
                return;
            }
            let Some(event) = entry.conn.poll_event() else {
                return;
            };
            self.on_event(app, key, event);
        }
    }

    /// Hands every event left to the application (the connection is going away; a request
    /// left waiting is dropped).
    pub(super) fn dispatch_last_events<H: Handler>(&mut self, app: &mut H, key: usize) {
        while let Some(event) = self.conns.get_mut(key).and_then(|e| e.conn.poll_event()) {
            if !matches!(event, Event::Request(_)) {
                self.on_event(app, key, event);
            }
        }
    }

    fn on_event<H: Handler>(&mut self, app: &mut H, key: usize, event: Event) {
        match event {
            Event::Request(request) => self.answer(app, key, request),
            Event::BadRequest(e) => self.refuse(key, e),
            Event::ProxyRefused(outcome) => {
                debug!("#{key}: PROXY header refused: {outcome:?}");
                self.stats.reject(RejectReason::Proxy);
            }
            Event::HandshakeTimeout => debug!("#{key}: handshake timeout"),
            Event::RateLimited { resume } => {
                self.stats.rate_limited += 1;
                match resume {
                    Some(at) => debug!(
                        "#{key}: over its message or byte rate: pausing reads for {:?}",
                        at.since(self.tick)
                    ),
                    None => debug!("#{key}: over its message or byte rate: closing with 1008"),
                }
            }
            Event::Rtt(rtt) => self.stats.ping_rtt.record(rtt.as_micros() as u64),
            Event::Closed(closed) => self.on_closed(app, key, closed),
        }
    }

    /// An accepted connection ended: counted, out of its rooms, and the application told once.
    fn on_closed<H: Handler>(&mut self, app: &mut H, key: usize, closed: Closed) {
        debug!(
            "#{key}: closed ({:?}): {} {:?}",
            closed.initiator, closed.code, closed.reason
        );
        if let Some(code) = closed.sent {
            self.stats.close_sent.add(code);
        }
        if let Some(code) = closed.received {
            self.stats.close_received.add(code);
        }
        match &closed.initiator {
            Initiator::Error(e) => self.stats.count_protocol_error(CloseCode::from(e)),
            Initiator::Idle => self.stats.idle_timeouts += 1,
            _ => {}
        }
        let Some(id) = self.id_of(key) else {
            return;
        };
        self.leave_rooms(key);
        app.on_close(&mut Context { core: self }, id, closed.code, &closed.reason);
    }
}
