//! Frames in: decoding a connection's bytes, handing messages to the application (inflating
//! compressed ones), control frames, protocol errors, and what gates decoding: the
//! per-connection rate limits and each connection's share of work per loop turn.

use std::time::Duration;

use log::debug;

use crate::protocol::close::parse_close_payload;
use crate::protocol::frame::OpCode;
use crate::protocol::{CloseCode, Event, MessageKind, Outcome, ProtocolError};
use crate::server::app::{ConnId, Context, Handler, Message};
use crate::server::config::RatePolicy;
use crate::server::connection::{Connection, Phase, RateState};

use super::{Core, READ_BUF};

impl Core {
    pub(super) fn on_input<H: Handler>(&mut self, app: &mut H, key: usize, input: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.phase {
            Phase::Head(head) => {
                head.buf.extend_from_slice(input);
                self.on_head_bytes(app, key);
            }
            Phase::Open | Phase::CloseSent => self.on_frames(app, key, input),
            Phase::Linger | Phase::Dead => {}
        }
    }

    pub(super) fn on_frames<H: Handler>(&mut self, app: &mut H, key: usize, input: &mut [u8]) {
        let mut pos = 0;
        while pos < input.len() {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !matches!(conn.phase, Phase::Open | Phase::CloseSent) {
                return;
            }
            if self.work_left == 0 || !self.rate_admits(key) {
                // Out of work for this turn, or over its rate: the rest waits for its next
                // turn (the ready list), or until the buckets refill (the resume timer).
                let rest = input.get(pos..).unwrap_or_default();
                if let Some(rate) = self.pacing(key) {
                    rate.backlog.extend_from_slice(rest);
                }
                return;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let rest = input.get_mut(pos..).unwrap_or_default();
            let decoded = conn.decoder.decode(&self.config.limits, rest);
            pos += decoded.consumed;
            match decoded.outcome {
                Outcome::NeedMore => return,
                Outcome::Event(event) => {
                    self.spend(1);
                    self.on_event(app, key, event, rest);
                }
                Outcome::Error(e) => {
                    self.fail(key, e);
                    return;
                }
            }
        }
    }

    pub(super) fn on_event<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        event: Event,
        input: &[u8],
    ) {
        let open = self.conns.get(key).is_some_and(Connection::is_open);
        match event {
            Event::Message(kind, payload) => {
                if open {
                    self.deliver(app, key, kind, payload.bytes(input));
                }
            }
            Event::Compressed(kind, payload) => {
                if open {
                    self.inflate_and_deliver(app, key, kind, payload.bytes(input));
                }
            }
            Event::Ping(payload) => {
                if open {
                    self.queue_frame(key, OpCode::Pong, &[payload.bytes(input)]);
                }
            }
            Event::Pong(payload) => self.record_rtt(payload.bytes(input)),
            Event::Close { code, payload } => {
                let close = parse_close_payload(payload.bytes(input))
                    .unwrap_or(crate::protocol::close::ClosePayload { code, reason: "" });
                debug!("#{key}: close received: {:?} {:?}", code, close.reason);
                self.stats
                    .close_received
                    .add(code.unwrap_or(CloseCode::NO_STATUS));
                if open {
                    // §5.5.1: answer with a close frame echoing the status code.
                    if let Some(code) = code {
                        self.stats.close_sent.add(code);
                    }
                    let echo = code.map(|c| c.0.to_be_bytes());
                    self.queue_frame(key, OpCode::Close, &[echo.as_ref().map_or(&[][..], |b| b)]);
                }
                self.notify_close(app, key, code.unwrap_or(CloseCode::NO_STATUS), close.reason);
                // The close handshake is complete: the server closes TCP first (§7.1.1).
                self.linger(key);
            }
        }
    }

    /// Hands a complete message to the application (text validated once more as `&str`).
    pub(super) fn deliver<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        kind: MessageKind,
        bytes: &[u8],
    ) {
        self.stats.messages_in += 1;
        let msg = match kind {
            MessageKind::Binary => Message::Binary(bytes),
            MessageKind::Text => match crate::protocol::utf8::validate(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => return self.fail(key, ProtocolError::InvalidUtf8),
            },
        };
        if let Some(id) = self.id_of(key) {
            app.on_message(&mut Context { core: self }, id, msg);
        }
        self.rate_charge(key, bytes.len());
    }

    /// Counts `units` of work (a message decoded, a frame queued for a receiver) against the
    /// share of the connection being read this turn.
    pub(super) fn spend(&mut self, units: usize) {
        self.work_left = self.work_left.saturating_sub(units);
    }

    /// The connection's pacing state, created when first needed (with full buckets for the
    /// rate limits that are set).
    pub(super) fn pacing(&mut self, key: usize) -> Option<&mut RateState> {
        let (tick, msg_rate, byte_rate) = (
            self.tick,
            self.config.max_msg_rate,
            self.config.max_bytes_rate,
        );
        let conn = self.conns.get_mut(key)?;
        Some(
            conn.rate
                .get_or_insert_with(|| Box::new(RateState::new(msg_rate, byte_rate, tick))),
        )
    }

    /// The connection's rate state under a rate limit (`None` without one), created on its
    /// first message.
    pub(super) fn rate_state(&mut self, key: usize) -> Option<&mut RateState> {
        if self.config.max_msg_rate.is_none() && self.config.max_bytes_rate.is_none() {
            return None;
        }
        self.pacing(key)
    }

    /// Before decoding more of an open connection's input: whether its budgets allow another
    /// message. Over them it is paused (or closed); `on_frames` keeps the undecoded rest. A
    /// connection we are closing decodes on (its data is ignored) until the peer's close.
    pub(super) fn rate_admits(&mut self, key: usize) -> bool {
        let tick = self.tick;
        if !self.conns.get(key).is_some_and(Connection::is_open) {
            return true;
        }
        let Some(rate) = self.rate_state(key) else {
            return true;
        };
        if rate.paused {
            return false;
        }
        // A message that cost more than the byte bucket held left it in debt: nothing more is
        // decoded until the debt is paid off.
        let wait = [
            rate.messages.as_ref().map(|b| b.wait(tick, 1)),
            rate.bytes.as_ref().map(|b| b.wait(tick, 1)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            return true;
        }
        self.over_rate(key, wait);
        false
    }

    /// After a message of `len` bytes: charges it to the connection's budgets — its whole
    /// size to the byte bucket, which may go into debt by up to one message.
    pub(super) fn rate_charge(&mut self, key: usize, len: usize) {
        let tick = self.tick;
        let Some(rate) = self.rate_state(key) else {
            return;
        };
        if let Some(bucket) = rate.messages.as_mut() {
            bucket.charge(tick, 1);
        }
        if let Some(bucket) = rate.bytes.as_mut() {
            bucket.charge(tick, len as u64);
        }
    }

    /// A connection over its rate: pause reading for `wait` (TCP pushes back on the sender),
    /// or close it with 1008 (`--rate-limit-policy close`).
    pub(super) fn over_rate(&mut self, key: usize, wait: Duration) {
        self.stats.rate_limited += 1;
        if self.config.rate_policy == RatePolicy::Close {
            debug!("#{key}: over its message or byte rate: closing with 1008");
            self.start_close(key, CloseCode::POLICY_VIOLATION, "rate limit");
            return;
        }
        let tick = self.tick;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let serial = conn.serial;
        if let Some(rate) = conn.rate.as_mut().filter(|r| !r.paused) {
            debug!("#{key}: over its message or byte rate: pausing reads for {wait:?}");
            rate.paused = true;
            let at = tick.after(wait.max(Duration::from_millis(1)));
            self.resume.schedule(at, key, serial);
        }
    }

    /// Inflates a compressed message (bounded by the message limit: a deflate bomb fails with
    /// 1009 after at most that many bytes) and delivers it.
    pub(super) fn inflate_and_deliver<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        kind: MessageKind,
        bytes: &[u8],
    ) {
        let mut out = std::mem::take(&mut self.inflate_buf);
        out.clear();
        let max = usize::try_from(self.config.limits.max_message).unwrap_or(usize::MAX);
        let result = match self.conns.get_mut(key).and_then(|c| c.deflate.as_mut()) {
            Some(deflate) => self.contexts.inflate(deflate, bytes, &mut out, max),
            None => Err(ProtocolError::ReservedBits),
        };
        match result {
            Ok(()) => self.deliver(app, key, kind, &out),
            Err(e) => self.fail(key, e),
        }
        if out.capacity() <= READ_BUF {
            self.inflate_buf = out;
        }
    }

    /// A keepalive ping carries its send time (µs since start); its pong gives the round trip.
    /// Pongs that are not answers to ours (other lengths, impossible times) are ignored.
    pub(super) fn record_rtt(&mut self, payload: &[u8]) {
        let Ok(sent) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) else {
            return;
        };
        let now = self
            .now
            .saturating_duration_since(self.clock_start())
            .as_micros() as u64;
        if let Some(rtt) = now.checked_sub(sent).filter(|&rtt| rtt < 3_600_000_000) {
            self.stats.ping_rtt.record(rtt);
        }
    }

    /// Fails the connection (§7.1.7): one close frame with the error's code, then TCP closes.
    pub(super) fn fail(&mut self, key: usize, e: ProtocolError) {
        let code = CloseCode::from(&e);
        debug!("#{key}: protocol error: {e}: closing with {code}");
        self.stats.count_protocol_error(code);
        let open = self.conns.get(key).is_some_and(Connection::is_open);
        if open {
            self.queue_close(key, code, "");
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.close_code.get_or_insert(code);
        }
        self.linger(key);
    }

    /// Tells the application once that a connection it saw open has ended.
    pub(super) fn notify_close<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        code: CloseCode,
        reason: &str,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !std::mem::take(&mut conn.app_open) {
            return;
        }
        let id = ConnId {
            key: key as u32,
            serial: conn.serial,
        };
        self.leave_rooms(key);
        app.on_close(&mut Context { core: self }, id, code, reason);
    }
}
