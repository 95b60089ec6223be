//! The server side of one WebSocket connection, sans-IO: bytes and time in; messages, events,
//! output bytes and one deadline out.
//!
//! A [`Connection`] owns everything about one connection except its socket, its TLS session
//! and the application: the phase (request head → open → closing → finished), the frame
//! decoder, the close handshake and who started it, the error → close-code mapping, keepalive
//! pings and their round trip, the handshake, idle and close-wait deadlines, the rate buckets
//! and the input they hold back, permessage-deflate, and the memory all of that takes. It
//! reads no clock (time is an argument, a [`Tick`]), opens no socket and keeps no `Rc`, trait
//! object or `Instant`: it is plain data that can be inspected, counted and moved.
//!
//! What every connection of a reactor shares — the [`Settings`], the deflate contexts of
//! connections without context takeover and a compression scratch buffer — is one [`Shared`]
//! passed by reference, so a connection stays small (see [`Connection`]).
//!
//! # Call order
//! The caller (a reactor) drives a connection with four kinds of methods, in this order each
//! time something happens:
//!
//! 1. **Input.** Bytes just read (plaintext, after TLS) go to [`Connection::handle_input`],
//!    which decodes them in place and stops after the first thing to report or answer (a
//!    message, an event, the pong to a ping — so a caller counting calls bounds its work): a message is
//!    returned in [`Input::message`], borrowing the bytes (zero copy for a whole frame that
//!    arrived in one read) or the caller's scratch buffer; anything else is queued as an
//!    event. Call it again with the rest (`input[consumed..]`) until all is consumed, doing
//!    steps 2 and 3 after every call, so the application answers each message before the
//!    next one is decoded. A peer's FIN is
//!    [`Connection::handle_eof`], a socket or TLS error [`Connection::handle_transport_error`].
//!
//!    *Large frames* are read straight into place: before each read, ask
//!    [`Connection::read_target`]; when it lends the unfilled part of a large frame's payload
//!    (in a buffer from the [`Shared`] pool), read into that slice instead of the caller's own
//!    buffer and pass the count to [`Connection::handle_direct`], which then stands for
//!    `handle_input` (steps 2 and 3 follow as after it). A message that is not in `input` is
//!    in the scratch buffer, all of it; a caller done with it gives the scratch buffer back
//!    to [`Shared::pool`] (or keeps it, or moves it on: it is the caller's).
//! 2. **Events.** [`Connection::poll_event`] until it returns `None`: requests to answer,
//!    round-trip times, rate limiting, and [`Event::Closed`] once for every connection that
//!    was accepted.
//! 3. **Application.** The answers — [`accept`](Connection::accept),
//!    [`respond`](Connection::respond), [`reject`](Connection::reject) for a request;
//!    [`send`](Connection::send), [`close`](Connection::close),
//!    [`shutdown`](Connection::shutdown), [`shed`](Connection::shed) on an open connection —
//!    write frames into the caller's [`Output`] at once, in order with what the connection
//!    writes itself (pongs, close replies), so a close frame never overtakes the echo of a
//!    message that came before the peer's close.
//! 4. **Time and transport.** [`Connection::poll_timeout`] gives the one next deadline (the
//!    caller keeps it in its timer structure); when it passes, call
//!    [`Connection::handle_timeout`] (early or repeated calls are no-ops), then poll events
//!    again. Before reading, ask [`Connection::wants_read`]; when it holds input back
//!    ([`Connection::has_backlog`]) call `handle_input` with an empty slice instead of reading.
//!    After each write, [`Connection::poll_fin`] says when to send our FIN, and once
//!    [`Connection::is_finished`] the caller drops the socket and the connection.
//!
//! A caller that wants to bound its work per turn may stop after any `handle_input` call and
//! hand the unread rest back with [`Connection::defer`]; it is decoded, in order, before
//! anything read later.
//!
//! # Why messages come back from `handle_input`
//! A message borrows the bytes it was decoded from (or the scratch buffer it was assembled or
//! inflated in), so it is returned by the call that borrowed them, not queued: the borrow
//! checker ties its lifetime to those buffers (no range into a slice that must be passed
//! again), and text is validated once on delivery, by making the very `&str` that is handed
//! out — with simdutf8, whatever path the message took. (A whole frame that arrived in one
//! read is validated only then; text that streamed in was also checked chunk by chunk, to fail
//! fast, and safe Rust cannot turn that verdict into a `&str`: `unsafe` is forbidden here.)
//! Both buffers are the caller's, apart from the connection and [`Shared`], so the
//! application can send through the connection while it holds the message. Everything else
//! owns its data and waits in the event queue.

use std::time::Duration;

use crate::contexts::ConnDeflate;
use crate::decoder::Decoder;
use crate::time::Tick;
use crate::CloseCode;

mod close;
mod event;
mod export;
mod flow;
mod head;
mod inbound;
mod keepalive;
mod outbound;
mod output;
mod shared;
#[cfg(test)]
pub(crate) mod testkit;

pub use event::{Closed, Event, Initiator, Input, Message, Request};
pub use export::{NotMovable, STATE_VERSION};
pub use outbound::Encoding;
pub use output::Output;
pub use shared::{ProxyPolicy, RatePolicy, Settings, Shared};

use event::Events;
use flow::Flow;
use head::Head;

/// One server-side WebSocket connection (see the [module docs](self) for the call order).
///
/// 80 bytes: it sits in the caller's table for every idle connection, so everything that
/// exists only for a while — the request head, a partial message, permessage-deflate
/// contexts, rate buckets and held-back input, unpolled events — is behind a box that is
/// freed when it is no longer needed.
#[derive(Debug)]
pub struct Connection {
    /// Where it is in its life, with what that phase needs.
    phase: Phase,
    /// Client frames → messages (holds a partial frame or message only).
    decoder: Decoder,
    /// permessage-deflate, when negotiated.
    deflate: Option<Box<ConnDeflate>>,
    /// Rate buckets and input held back (by a rate pause or the caller's [`defer`]).
    ///
    /// [`defer`]: Connection::defer
    flow: Option<Box<Flow>>,
    /// Events not polled yet.
    events: Events,
    /// A keepalive ping is outstanding (cleared by any traffic).
    ping_sent: bool,
    /// The peer's FIN arrived.
    eof: bool,
    /// Our FIN was sent (the caller did what [`Connection::poll_fin`] said).
    fin_sent: bool,
    /// The connection was accepted: [`Event::Closed`] is owed.
    opened: bool,
    /// [`Event::Closed`] was queued.
    closed_reported: bool,
}

/// Where a connection is in its life. Each phase holds the one deadline that matters in it.
#[derive(Debug)]
enum Phase {
    /// Reading a request head (PROXY header first when configured), or waiting for the answer
    /// to one.
    Head(Box<Head>),
    /// Open: messages flow both ways. `last_seen` (the last bytes received) drives keepalive
    /// pings and the idle limit.
    Open { last_seen: Tick },
    /// We sent a close frame with `code` and wait for the peer's until `deadline`; frames are
    /// still decoded, data is ignored.
    CloseSent { code: CloseCode, deadline: Tick },
    /// Nothing more to say: the caller flushes, sends FIN, and input is discarded until EOF
    /// or `deadline`.
    Lingering { deadline: Tick },
    /// Done: the caller drops the socket (what is still queued for it is dropped too).
    Finished,
}

/// Why the connection refused an action of the application or the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionError {
    /// Sending or closing needs an open connection (sending also works while an upgrade
    /// request is being decided).
    NotOpen,
    /// `accept` needs an upgrade request handed out by [`Event::Request`] and not answered;
    /// `respond` needs the request phase.
    NoRequest,
    /// Close codes 1005, 1006, 1015 and those outside the registered ranges may not appear on
    /// the wire (RFC 6455 §7.4.1).
    CodeNotSendable,
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActionError::NotOpen => "the connection is not open",
            ActionError::NoRequest => "no request is waiting for an answer",
            ActionError::CodeNotSendable => "this close code may not be sent",
        })
    }
}

impl std::error::Error for ActionError {}

impl Connection {
    /// A connection just accepted at `now`, reading its request head (after a PROXY header
    /// when `proxy` says one is expected), with the handshake timeout running.
    pub fn new(now: Tick, proxy: Option<ProxyPolicy>, shared: &Shared) -> Connection {
        let mut decoder = Decoder::new();
        decoder.defer_whole_text_validation();
        Connection {
            phase: Phase::Head(Box::new(Head::new(
                now.after(shared.settings.handshake_timeout),
                proxy,
            ))),
            decoder,
            deflate: None,
            flow: None,
            events: Events::default(),
            ping_sent: false,
            eof: false,
            fin_sent: false,
            opened: false,
            closed_reported: false,
        }
    }

    /// Decodes bytes just received, up to the first message or event (see the module docs).
    ///
    /// Returns how much of `input` was consumed (all of it unless it stopped after something
    /// to report) and the message, if that is what it stopped for: borrowed from `input`, or
    /// else it is the whole of `scratch` (assembled, inflated, or held back). `scratch` is
    /// the caller's, shared by every connection (overwritten here: a large message's buffer is
    /// moved in and what `scratch` held goes to the pool; the caller may shrink it, give it
    /// back to [`Shared::pool`], or move it on).
    /// While input is held back ([`has_backlog`](Connection::has_backlog)), new bytes are
    /// appended behind it and decoding continues from the held bytes; call with an empty
    /// slice to resume them.
    pub fn handle_input<'a, O: Output>(
        &mut self,
        now: Tick,
        input: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> Input<'a> {
        if !input.is_empty() {
            self.handle_traffic(now);
        }
        match self.phase {
            Phase::Head(_) => {
                self.head_input(input, shared);
                Input::all(input.len())
            }
            Phase::Open { .. } | Phase::CloseSent { .. } => {
                self.frames_input(now, input, scratch, out, shared)
            }
            // Lingering: everything was said; input is read only to see the peer's FIN.
            Phase::Lingering { .. } | Phase::Finished => Input::all(input.len()),
        }
    }

    /// The next event, if any (see [`Event`]).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The one next deadline: handshake, keepalive ping, idle limit, close wait or the end of
    /// a rate pause. `None` once finished, or when nothing is timed.
    #[must_use]
    pub fn poll_timeout(&self, shared: &Shared) -> Option<Tick> {
        let phase = match &self.phase {
            Phase::Head(head) => Some(head.deadline),
            Phase::Open { last_seen } => self.keepalive_deadline(*last_seen, &shared.settings),
            Phase::CloseSent { deadline, .. } | Phase::Lingering { deadline } => Some(*deadline),
            Phase::Finished => return None,
        };
        [phase, self.resume_at()].into_iter().flatten().min()
    }

    /// Handles whatever deadline has passed at `now`; nothing when none has.
    pub fn handle_timeout<O: Output>(&mut self, now: Tick, out: &mut O, shared: &Shared) {
        self.resume_if_due(now);
        match self.phase {
            Phase::Head(ref head) if now >= head.deadline => {
                self.events.push(Event::HandshakeTimeout);
                self.phase = Phase::Finished;
            }
            Phase::Open { last_seen } => self.keepalive(now, last_seen, out, &shared.settings),
            Phase::CloseSent { code, deadline } if now >= deadline => {
                // The peer never answered our close frame.
                self.report_closed(Closed::ours(code, Initiator::Local));
                self.phase = Phase::Finished;
            }
            Phase::Lingering { deadline } if now >= deadline => self.phase = Phase::Finished,
            _ => {}
        }
    }

    /// Whether the caller should read from the socket: not while a request waits for its
    /// answer, while a rate pause lasts or input is held back, after the peer's FIN, or once
    /// finished. (The caller adds its own rule: not while its output queue is too full.)
    pub fn wants_read(&self) -> bool {
        if self.eof {
            return false;
        }
        match &self.phase {
            Phase::Head(head) => !head.is_waiting() && !self.has_backlog(),
            Phase::Open { .. } | Phase::CloseSent { .. } => {
                !self.is_paused() && !self.has_backlog()
            }
            Phase::Lingering { .. } => true,
            Phase::Finished => false,
        }
    }

    /// Whether the application may send (after [`accept`](Connection::accept), until a close
    /// frame went either way).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Whether it is still in its request phase (a request head being read, or one handed
    /// out and not answered): a caller that holds back requests while its output queue is
    /// full asks this before polling events.
    pub fn in_request_phase(&self) -> bool {
        matches!(self.phase, Phase::Head(_))
    }

    /// Whether nothing more will be said: the caller flushes what is queued, then (with TLS)
    /// queues `close_notify` before asking [`poll_fin`](Connection::poll_fin).
    pub fn is_lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    /// Whether the connection is done: the caller drops its socket and output.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// The permessage-deflate parameters, when negotiated.
    pub fn deflate_params(&self) -> Option<&crate::deflate::DeflateParams> {
        self.deflate.as_deref().map(|d| &d.params)
    }

    /// Heap bytes this connection owns: request head bytes, frames sent while the upgrade was
    /// decided, a partial frame or message, held-back input, its own deflate contexts and
    /// unpolled events. What a process-wide memory budget counts (plus the caller's output
    /// queue).
    pub fn memory(&self) -> usize {
        let head = match &self.phase {
            Phase::Head(head) => head.memory(),
            _ => 0,
        };
        head + self.decoder.buffered()
            + self.deflate.as_deref().map_or(0, ConnDeflate::memory)
            + self.flow.as_deref().map_or(0, Flow::memory)
            + self.events.memory()
    }

    /// Enters the lingering phase: nothing more will be said; the caller flushes, sends FIN
    /// (see [`poll_fin`](Connection::poll_fin)), and waits for the peer's FIN until the close
    /// timeout. Held-back input is dropped: nothing more is decoded.
    fn linger(&mut self, now: Tick, close_timeout: Duration) {
        self.flow = None;
        self.phase = Phase::Lingering {
            deadline: now.after(close_timeout),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection pays for this struct: keep it small on purpose.
    #[test]
    fn connection_stays_small() {
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 80, "Connection grew to {size} bytes");
        assert_eq!(std::mem::size_of::<Phase>(), 16);
    }
}

#[cfg(test)]
mod timer_tests {
    use std::time::Duration;

    use super::testkit::{client_frame, keepalive, Harness};
    use super::{Event, RatePolicy, Settings};
    use crate::OpCode;

    #[test]
    fn poll_timeout_is_the_earliest_deadline_and_early_calls_do_nothing() {
        let settings = Settings {
            max_msg_rate: Some(1),
            rate_policy: RatePolicy::Pause,
            ..keepalive(Some(30), Some(75))
        };
        let mut h = Harness::open(settings);
        let ping = h.now.after(Duration::from_secs(30));
        assert_eq!(h.conn.poll_timeout(&h.shared), Some(ping));
        // A rate pause ending sooner comes first.
        h.feed(
            &[
                client_frame(OpCode::Text, b"a"),
                client_frame(OpCode::Text, b"b"),
            ]
            .concat(),
        );
        let resume = h.now.after(Duration::from_secs(1));
        assert_eq!(h.conn.poll_timeout(&h.shared), Some(resume));
        // Spurious timeouts change nothing.
        for _ in 0..3 {
            h.advance(Duration::from_millis(100));
        }
        assert_eq!(h.frames(), vec![]);
        assert!(!h.conn.wants_read());
        h.run_to_deadline();
        assert!(h.conn.wants_read());
    }

    #[test]
    fn nothing_happens_after_finished() {
        let mut h = Harness::open(Settings::default());
        h.conn.handle_transport_error();
        let _ = h.events();
        h.feed(&client_frame(OpCode::Ping, b"p"));
        h.advance(Duration::from_secs(3600));
        h.conn.handle_eof(h.now, true, &h.shared);
        assert_eq!(h.frames(), vec![]);
        assert_eq!(h.events(), Vec::<Event>::new());
        assert!(!h.conn.wants_read());
        assert_eq!(h.conn.poll_timeout(&h.shared), None);
    }
}
