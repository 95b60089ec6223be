//! Every way a connection ends, in one place: the close handshake either way (and who started
//! it), protocol failure, shutdown, shedding under the memory budget, the peer's FIN, transport
//! errors, and our FIN once everything is said. [`Event::Closed`] is reported from here, once.

use crate::time::Tick;
use crate::{CloseCode, Decoder, OpCode, ProtocolError};

use super::event::{Closed, Event, Initiator};
use super::output::{write_close, write_frame, Output};
use super::shared::Shared;
use super::{ActionError, Connection, Phase};

impl Connection {
    /// Starts the close handshake (§7.1.2): our close frame with `code` and `reason` (cut to
    /// 123 bytes), then the peer's answer is awaited until the close timeout. Frames after it
    /// are still read (data is ignored) to find the peer's close.
    ///
    /// # Errors
    /// [`ActionError::NotOpen`] unless open (at most one close frame ever leaves);
    /// [`ActionError::CodeNotSendable`] for a code that may not appear on the wire.
    pub fn close<O: Output>(
        &mut self,
        now: Tick,
        code: CloseCode,
        reason: &str,
        out: &mut O,
        shared: &Shared,
    ) -> Result<(), ActionError> {
        if !code.is_sendable() {
            return Err(ActionError::CodeNotSendable);
        }
        if !self.is_open() {
            return Err(ActionError::NotOpen);
        }
        write_close(out, code, reason);
        self.phase = Phase::CloseSent {
            code,
            deadline: now.after(shared.settings.close_timeout),
        };
        Ok(())
    }

    /// A graceful shutdown: an open connection is closed with 1001 "server shutdown"; one
    /// still in its request phase is finished at once; a closing one goes on closing.
    pub fn shutdown<O: Output>(&mut self, now: Tick, out: &mut O, shared: &Shared) {
        match self.phase {
            Phase::Open { .. } => {
                let _ = self.close(now, CloseCode::GOING_AWAY, "server shutdown", out, shared);
            }
            Phase::Head(_) => self.phase = Phase::Finished,
            _ => {}
        }
    }

    /// Over the process's memory budget (the caller picked this connection and dropped its
    /// output queue): frees the partial message, the deflate contexts and held-back input,
    /// then closes with 1013 "try again later" when open (and lingers), or finishes.
    pub fn shed<O: Output>(&mut self, now: Tick, out: &mut O, shared: &Shared) {
        self.decoder = Decoder::new();
        self.deflate = None;
        self.flow = None;
        let code = CloseCode::TRY_AGAIN_LATER;
        if self.is_open() {
            write_close(out, code, "try again later");
            self.report_closed(Closed::ours(code, Initiator::Local));
            self.linger(now, shared.settings.close_timeout);
            return;
        }
        let sent = match self.phase {
            Phase::CloseSent { code: ours, .. } => Some(ours),
            _ => None,
        };
        self.report_closed(Closed {
            sent,
            ..Closed::ours(code, Initiator::Local)
        });
        self.phase = Phase::Finished;
    }

    /// The peer's FIN: a read returned 0 bytes (which comes after any input held back, since
    /// the caller does not read while [`wants_read`](Connection::wants_read) is false).
    /// Half-closing right after its last message or request is legal: with output still
    /// queued (`out_empty` false) the connection lingers until it is written and our FIN
    /// sent; otherwise it is finished. An open connection ends with 1006.
    pub fn handle_eof(&mut self, now: Tick, out_empty: bool, shared: &Shared) {
        if self.is_finished() {
            return;
        }
        self.report_vanished();
        if out_empty || self.fin_sent {
            self.phase = Phase::Finished;
            return;
        }
        self.eof = true;
        if !matches!(self.phase, Phase::Lingering { .. }) {
            self.linger(now, shared.settings.close_timeout);
        }
    }

    /// A socket or TLS error: the connection is finished (an open one ends with 1006).
    pub fn handle_transport_error(&mut self) {
        if self.is_finished() {
            return;
        }
        self.report_vanished();
        self.phase = Phase::Finished;
    }

    /// Whether to send our FIN now: once lingering and the caller's output for this
    /// connection is empty (`out_empty`; with TLS, after `close_notify` went out). True once;
    /// the caller then shuts down writing. After the peer's FIN as well, that finishes it.
    #[must_use]
    pub fn poll_fin(&mut self, out_empty: bool) -> bool {
        if !matches!(self.phase, Phase::Lingering { .. }) || self.fin_sent || !out_empty {
            return false;
        }
        self.fin_sent = true;
        if self.eof {
            self.phase = Phase::Finished;
        }
        true
    }

    /// Whether nothing is left to do but wait for the peer's FIN: the connection lingers
    /// (its close handshake is over, or it failed) and our FIN went out after everything it
    /// had to say, or it is finished. A server shutting down need not wait for that FIN: the
    /// server closes TCP first (§7.1.1), and a peer that keeps its socket open after the
    /// handshake gets nothing more by waiting.
    pub fn is_done(&self) -> bool {
        match self.phase {
            Phase::Lingering { .. } => self.fin_sent,
            Phase::Finished => true,
            _ => false,
        }
    }

    /// A close frame from the peer, already validated by the decoder (`payload`: code and
    /// reason). Open: §5.5.1, answer with a close frame echoing its code; after our own close
    /// it is the answer. Either way the handshake is complete and the server closes TCP first
    /// (§7.1.1): the connection lingers.
    pub(super) fn on_close_frame<O: Output>(
        &mut self,
        now: Tick,
        code: Option<CloseCode>,
        payload: &[u8],
        out: &mut O,
        shared: &Shared,
    ) {
        let received = code.unwrap_or(CloseCode::NO_STATUS);
        let reason = payload.get(2..).unwrap_or_default();
        let (initiator, sent) = match self.phase {
            Phase::Open { .. } => {
                let echo = code.map(|c| c.0.to_be_bytes());
                let echo = echo.as_ref().map_or(&[][..], |b| &b[..]);
                write_frame(out, OpCode::Close, false, &[echo]);
                (Initiator::Peer, code)
            }
            Phase::CloseSent { code: ours, .. } => (Initiator::Local, Some(ours)),
            _ => return,
        };
        self.report_closed(Closed {
            code: received,
            // The decoder validated the reason as UTF-8 (§5.5.1): nothing is replaced.
            reason: String::from_utf8_lossy(reason).into_owned(),
            initiator,
            sent,
            received: Some(received),
        });
        self.linger(now, shared.settings.close_timeout);
    }

    /// Fails the connection (§7.1.7): one close frame with the error's code and a short reason
    /// (when open; after our own close frame, none more), then TCP closes. Sticky: nothing is
    /// decoded after it.
    pub(super) fn fail<O: Output>(
        &mut self,
        now: Tick,
        error: ProtocolError,
        out: &mut O,
        shared: &Shared,
    ) {
        let code = CloseCode::from(&error);
        let closed = match self.phase {
            Phase::Open { .. } => {
                write_close(out, code, error.as_str());
                Closed::ours(code, Initiator::Error(error))
            }
            Phase::CloseSent { code: ours, .. } => Closed::ours(ours, Initiator::Error(error)),
            _ => Closed::abnormal(Initiator::Error(error)),
        };
        self.report_closed(closed);
        self.linger(now, shared.settings.close_timeout);
    }

    /// Reports the end of a connection that vanished without completing a close handshake:
    /// 1006 when it was open; the code we closed with when it was closing.
    fn report_vanished(&mut self) {
        match self.phase {
            Phase::Open { .. } => self.report_closed(Closed::abnormal(Initiator::Transport)),
            Phase::CloseSent { code, .. } => {
                self.report_closed(Closed::ours(code, Initiator::Local));
            }
            _ => {}
        }
    }

    /// Queues [`Event::Closed`] for an accepted connection, the first time only.
    pub(super) fn report_closed(&mut self, closed: Closed) {
        if self.opened && !self.closed_reported {
            self.closed_reported = true;
            self.events.push(Event::Closed(closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{client_close, client_frame, text, Harness, Seen};
    use super::super::{ActionError, Closed, Event, Initiator, Settings};
    use crate::{CloseCode, OpCode};

    fn closed(
        code: u16,
        reason: &str,
        initiator: Initiator,
        sent: Option<u16>,
        received: Option<u16>,
    ) -> Event {
        Event::Closed(Closed {
            code: CloseCode(code),
            reason: reason.to_owned(),
            initiator,
            sent: sent.map(CloseCode),
            received: received.map(CloseCode),
        })
    }

    #[test]
    fn peer_close_is_echoed_then_we_fin_first() {
        let mut h = Harness::open(Settings::default());
        h.feed(&client_close(4000, b"bye"));
        // §5.5.1: the echo carries the code (not the reason).
        let frames = h.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, 4000u16.to_be_bytes());
        assert_eq!(
            h.events(),
            vec![closed(4000, "bye", Initiator::Peer, Some(4000), Some(4000))]
        );
        assert!(!h.conn.is_open());
        // §7.1.1: the server closes TCP first, once the echo is written.
        assert!(!h.conn.is_done(), "the echo is not written yet");
        assert!(!h.conn.poll_fin(false));
        assert!(h.conn.poll_fin(true));
        assert!(!h.conn.poll_fin(true), "FIN once");
        assert!(h.conn.is_done(), "only the peer's FIN is awaited");
        assert!(h.conn.wants_read(), "reads until the peer's FIN");
        h.conn.handle_eof(h.now, true, &h.shared);
        assert!(h.conn.is_finished());
        assert_eq!(h.events(), vec![]);
    }

    /// §5.5.1: whatever valid code the peer sends — registered, library or private — the
    /// answer carries it back.
    #[test]
    fn every_valid_peer_code_is_echoed() {
        for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let mut h = Harness::open(Settings::default());
            h.feed(&client_close(code, b""));
            assert_eq!(h.close_frame(), (code, String::new()), "{code}");
            assert_eq!(
                h.events(),
                vec![closed(code, "", Initiator::Peer, Some(code), Some(code))]
            );
        }
    }

    /// A close frame may come between the fragments of a message (§5.4: control frames may
    /// be injected): it is answered, and the unfinished message is never delivered.
    #[test]
    fn a_close_inside_a_fragmented_message_is_answered() {
        let mut h = Harness::open(Settings::default());
        let mut bytes =
            super::super::testkit::client_frame_rsv(false, 0, OpCode::Text, b"never finished");
        bytes.extend(client_close(1000, b""));
        h.feed(&bytes);
        assert_eq!(h.close_frame(), (1000, String::new()));
        assert_eq!(
            h.take_seen(),
            vec![Seen::Event(closed(
                1000,
                "",
                Initiator::Peer,
                Some(1000),
                Some(1000)
            ))]
        );
        assert!(h.conn.poll_fin(true));
    }

    #[test]
    fn empty_peer_close_gets_an_empty_close_and_1005() {
        let mut h = Harness::open(Settings::default());
        h.feed(&client_frame(OpCode::Close, b""));
        let frames = h.frames();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].payload.is_empty());
        assert_eq!(
            h.events(),
            vec![closed(1005, "", Initiator::Peer, None, Some(1005))]
        );
    }

    #[test]
    fn local_close_waits_for_the_peers_answer() {
        let mut h = Harness::open(Settings::default());
        h.close(4001, "done").unwrap();
        assert_eq!(h.close_frame(), (4001, "done".to_owned()));
        assert!(!h.conn.is_open());
        assert_eq!(
            h.events(),
            vec![],
            "closed only when the handshake completes"
        );
        h.feed(&client_close(4001, b"ok"));
        assert_eq!(h.frames(), vec![], "no second close frame");
        assert_eq!(
            h.events(),
            vec![closed(4001, "ok", Initiator::Local, Some(4001), Some(4001))]
        );
        assert!(h.conn.poll_fin(true));
    }

    #[test]
    fn close_wait_expires_without_an_answer() {
        let settings = Settings {
            close_timeout: Duration::from_secs(5),
            ..Settings::default()
        };
        let mut h = Harness::open(settings);
        h.close(1000, "").unwrap();
        let _ = h.frames();
        assert_eq!(
            h.conn.poll_timeout(&h.shared),
            Some(h.now.after(Duration::from_secs(5)))
        );
        h.advance(Duration::from_millis(4999));
        assert!(!h.conn.is_finished(), "not before the close timeout");
        h.run_to_deadline();
        assert!(h.conn.is_finished());
        assert_eq!(
            h.events(),
            vec![closed(1000, "", Initiator::Local, Some(1000), None)]
        );
        assert_eq!(h.conn.poll_timeout(&h.shared), None);
    }

    #[test]
    fn data_after_our_close_is_ignored_but_read() {
        let mut h = Harness::open(Settings::default());
        h.close(1001, "").unwrap();
        let _ = h.frames();
        let mut bytes = client_frame(OpCode::Text, b"late");
        bytes.extend(client_frame(OpCode::Ping, b"p"));
        bytes.extend(client_close(1001, b""));
        h.feed(&bytes);
        assert_eq!(h.frames(), vec![], "no pong, no echo, no second close");
        assert_eq!(
            h.take_seen(),
            vec![Seen::Event(closed(
                1001,
                "",
                Initiator::Local,
                Some(1001),
                Some(1001)
            ))]
        );
    }

    #[test]
    fn data_after_the_peers_close_is_discarded() {
        let mut h = Harness::open(Settings::default());
        let mut bytes = client_close(1000, b"");
        bytes.extend(client_frame(OpCode::Text, b"too late"));
        bytes.extend(client_frame(OpCode::Ping, b"p"));
        h.feed(&bytes);
        assert_eq!(h.close_frame(), (1000, String::new()));
        assert_eq!(h.events().len(), 1);
    }

    #[test]
    fn at_most_one_close_frame_ever() {
        let mut h = Harness::open(Settings::default());
        h.feed(&client_close(1000, b""));
        assert_eq!(h.close(1000, ""), Err(ActionError::NotOpen));
        h.conn.shutdown(h.now, &mut h.out, &h.shared);
        h.conn.shed(h.now, &mut h.out, &h.shared);
        h.feed(&client_close(1000, b""));
        assert_eq!(h.close_frame(), (1000, String::new()));
        assert_eq!(h.events().len(), 1, "Closed once");

        let mut h = Harness::open(Settings::default());
        h.close(4000, "").unwrap();
        assert_eq!(h.close(4001, ""), Err(ActionError::NotOpen));
        h.conn.shutdown(h.now, &mut h.out, &h.shared);
        h.feed(&client_frame(OpCode::Text, &[0xff])); // a failure after our close
        assert_eq!(h.close_frame(), (4000, String::new()));
    }

    #[test]
    fn codes_that_may_not_be_sent_are_refused() {
        let mut h = Harness::open(Settings::default());
        for code in [0, 999, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(
                h.close(code, ""),
                Err(ActionError::CodeNotSendable),
                "{code}"
            );
        }
        assert_eq!(h.frames(), vec![]);
        assert!(h.conn.is_open());
    }

    #[test]
    fn the_reason_is_cut_to_fit_a_control_frame() {
        let mut h = Harness::open(Settings::default());
        h.close(1000, &"é".repeat(100)).unwrap();
        let (_, reason) = h.close_frame();
        assert_eq!(reason.len(), 122);
    }

    #[test]
    fn the_echo_of_a_message_goes_out_before_the_close_reply() {
        let mut h = Harness::open(Settings::default());
        h.echo = true;
        let mut bytes = client_frame(OpCode::Text, b"first");
        bytes.extend(client_close(1000, b""));
        h.feed(&bytes);
        let frames = h.frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[0].opcode, &frames[0].payload[..]),
            (0x1, &b"first"[..])
        );
        assert_eq!(frames[1].opcode, 0x8);
        assert_eq!(h.take_seen()[0], text("first"));
    }

    #[test]
    fn half_close_with_output_pending_finishes_writing_first() {
        let mut h = Harness::open(Settings::default());
        h.echo = true;
        h.feed(&client_frame(OpCode::Text, b"last words"));
        // The peer's FIN arrives while the echo is still queued.
        h.conn.handle_eof(h.now, false, &h.shared);
        assert!(!h.conn.is_finished());
        assert!(!h.conn.wants_read());
        assert_eq!(
            h.events(),
            vec![closed(1006, "", Initiator::Transport, None, None)]
        );
        assert!(!h.conn.poll_fin(false), "not before the queue drained");
        assert!(h.conn.poll_fin(true));
        assert!(h.conn.is_finished(), "both directions are done");
        assert_eq!(h.frames()[0].payload, b"last words");
    }

    #[test]
    fn eof_with_nothing_pending_finishes_at_once() {
        let mut h = Harness::open(Settings::default());
        h.conn.handle_eof(h.now, true, &h.shared);
        assert!(h.conn.is_finished());
        assert_eq!(
            h.events(),
            vec![closed(1006, "", Initiator::Transport, None, None)]
        );
        // After our close, a FIN instead of an answer: our code, not 1006.
        let mut h = Harness::open(Settings::default());
        h.close(4002, "").unwrap();
        h.conn.handle_eof(h.now, true, &h.shared);
        assert_eq!(
            h.events(),
            vec![closed(4002, "", Initiator::Local, Some(4002), None)]
        );
    }

    #[test]
    fn transport_errors_finish_with_1006() {
        let mut h = Harness::open(Settings::default());
        h.conn.handle_transport_error();
        assert!(h.conn.is_finished());
        assert_eq!(
            h.events(),
            vec![closed(1006, "", Initiator::Transport, None, None)]
        );
        h.conn.handle_transport_error();
        h.conn.handle_eof(h.now, true, &h.shared);
        assert_eq!(h.events(), vec![], "Closed once");
    }

    #[test]
    fn shutdown_closes_open_connections_with_1001_and_drops_unopened_ones() {
        let mut h = Harness::open(Settings::default());
        h.conn.shutdown(h.now, &mut h.out, &h.shared);
        assert_eq!(h.close_frame(), (1001, "server shutdown".to_owned()));
        h.feed(&client_close(1001, b""));
        assert_eq!(
            h.events(),
            vec![closed(1001, "", Initiator::Local, Some(1001), Some(1001))]
        );

        let mut h = Harness::new(Settings::default());
        h.feed(b"GET / HTTP/1.1\r\n");
        h.conn.shutdown(h.now, &mut h.out, &h.shared);
        assert!(h.conn.is_finished());
        assert!(h.out.is_empty());
        assert_eq!(h.events(), vec![], "never opened: no Closed");
    }

    #[test]
    fn shedding_frees_memory_and_closes_with_1013() {
        let mut h = Harness::open(Settings::default());
        h.feed(&client_frame_partial());
        assert!(h.conn.memory() > 0, "a partial message is held");
        h.conn.shed(h.now, &mut h.out, &h.shared);
        assert_eq!(h.close_frame(), (1013, "try again later".to_owned()));
        assert_eq!(
            h.events(),
            vec![closed(1013, "", Initiator::Local, Some(1013), None)]
        );
        assert_eq!(h.conn.memory(), 0);
        assert!(h.conn.poll_fin(true));
        // Not open (here: still reading its request): finished without a word.
        let mut h = Harness::new(Settings::default());
        h.feed(b"GET / HT");
        h.conn.shed(h.now, &mut h.out, &h.shared);
        assert!(h.conn.is_finished());
        assert!(h.out.is_empty());
    }

    /// The first fragment of a text message.
    fn client_frame_partial() -> Vec<u8> {
        super::super::testkit::client_frame_rsv(false, 0, OpCode::Text, &[b'x'; 1000])
    }
}
