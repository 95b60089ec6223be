//! The real server connection, `wsloop_proto::conn::Connection`, driven as a reactor drives
//! it: arbitrary bytes in arbitrary reads, arbitrary clock steps, and the application's and
//! the reactor's actions (answers to requests, sends, closes, shutdown, shedding, deferred
//! input, the peer's FIN, transport errors, flushes).
//!
//! Checks after every step: no panic; `memory()` within what the settings and the reads
//! allow; events that make sense (messages only on an accepted connection and never after
//! `Closed`; `Closed` once, only after accept, and always before an accepted connection
//! finishes; nothing written once finished or after our FIN). At the end, everything written is
//! read back as a client reads it (`common::ref_server_frames`): our canned HTTP answers, at
//! most one 101, then only valid server frames — unmasked, FIN, minimal lengths, RSV1 only on
//! data frames and only when permessage-deflate was negotiated, control frames ≤ 125 bytes,
//! text that is UTF-8 (once inflated), close payloads a sendable code and a UTF-8 reason — at
//! most one close frame and nothing after it; nothing after an answer that closes.
//!
//! Input: `[max_frame, max_message, head_sel, ..]` (limits: `common::take_limits`).
//! `head_sel & 0x80`: the default 8 KiB `max_head` (else `(head_sel & 0x0f) * 32`);
//! `& 0x40`: permessage-deflate enabled; `& 0x20`: with context takeover; `& 0x10`: scripted.
//! - Differential (bit 0x10 clear): `[plan.., data..]` (`common::take_plan`). An echo
//!   application; the data arrives in one read, again cut per the plan, and a third time cut
//!   per the plan by a reader with direct reads (payloads from [`DIRECT_LARGE`] bytes on are
//!   reserved from their header and each read lands in the connection's read target when it
//!   lends one): all runs must write the same bytes and see the same messages and events.
//! - Scripted: `[opts, ops..]`, read with direct reads as above. `opts`: 0x01 ping after 1 s
//!   of silence, 0x02 idle limit 3 s,
//!   0x04 5 messages/s, 0x08 1000 bytes/s, 0x10 rate policy close, 0x20 a PROXY header is
//!   expected, 0x40 required, 0x80 from a trusted peer. `ops`: see [`Script::step`].
#![no_main]

mod common;

use std::time::Duration;

use common::{ref_client_frame, ref_close, ref_server_frames, take_limits, take_plan};
use libfuzzer_sys::fuzz_target;
use wsloop_proto::conn::{
    Connection, Event, Initiator, Message, Output, ProxyPolicy, RatePolicy, Settings, Shared,
};
use wsloop_proto::contexts::{DEFLATER_BYTES, INFLATER_BYTES};
use wsloop_proto::deflate::{DeflateConfig, Inflater};
use wsloop_proto::handshake::{validate_upgrade, RequestHead, EMPTY_HEADER};
use wsloop_proto::time::Tick;
use wsloop_proto::{CloseCode, Limits, MessageKind};

/// The answers the fuzzing application gives (no bodies: `Content-Length: 0`).
const KEEP_ALIVE: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
const NOT_FOUND_CLOSE: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n";
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n";

/// The large size of the runs with direct reads: small enough for fuzz inputs to reach.
const DIRECT_LARGE: usize = 64;

/// The caller's output queue: whole pushes, flushed to the wire whole.
#[derive(Debug, Default)]
struct Out {
    pending: Vec<Vec<u8>>,
    wire: Vec<u8>,
    /// Pushes ever made.
    pushes: usize,
}

impl Output for Out {
    fn push(&mut self, parts: &[&[u8]]) {
        self.pending.push(parts.concat());
        self.pushes += 1;
    }
}

impl Out {
    fn flush(&mut self) {
        for push in self.pending.drain(..) {
            self.wire.extend_from_slice(&push);
        }
    }
}

/// Everything seen, for the differential comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(MessageKind, Vec<u8>),
    Event(Event),
}

/// A reactor and an application around one connection.
struct Driver {
    conn: Connection,
    shared: Shared,
    now: Tick,
    start: Tick,
    out: Out,
    seen: Vec<Seen>,
    echo: bool,
    accepted: bool,
    closed: usize,
    /// The largest read, and the bytes sent while an upgrade was decided (memory bound).
    max_read: usize,
    sent_deciding: usize,
    /// Pushes made when the connection finished, or when our FIN went out.
    done_at: Option<usize>,
    /// The reactor's scratch buffer for messages not borrowed from the input.
    scratch: Vec<u8>,
    /// Reads land in the connection's read target when it lends one.
    direct: bool,
}

impl Driver {
    fn new(settings: Settings, proxy: Option<ProxyPolicy>) -> Driver {
        let shared = Shared::new(settings);
        let now = Tick::from_micros(1_000_000);
        Driver {
            conn: Connection::new(now, proxy, &shared),
            shared,
            now,
            start: now,
            out: Out::default(),
            seen: Vec::new(),
            echo: true,
            accepted: false,
            closed: 0,
            max_read: 0,
            sent_deciding: 0,
            done_at: None,
            scratch: Vec::new(),
            direct: false,
        }
    }

    /// A driver that reads with direct reads (see the module docs).
    fn direct(mut settings: Settings, proxy: Option<ProxyPolicy>) -> Driver {
        settings.large_payload = DIRECT_LARGE;
        Driver {
            direct: true,
            ..Driver::new(settings, proxy)
        }
    }

    /// One read of `data` (only when the connection wants to read, as a reactor obeys),
    /// each message and event taken before the next call; with `defer`, the reader stops
    /// after the first call and hands the rest back (its work bound).
    fn feed(&mut self, mut data: &[u8], defer: bool, script: &mut Script) {
        self.resume(script);
        if data.is_empty() || !self.conn.wants_read() {
            return;
        }
        self.max_read = self.max_read.max(data.len());
        while self.direct && !data.is_empty() {
            let Some(n) = self.read_into_place(data, script) else {
                break;
            };
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        // The rest of the arrival (held back if the connection stopped wanting it).
        let mut buf = data.to_vec();
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &mut buf[pos..];
            let len = rest.len();
            let got = self.conn.handle_input(
                self.now,
                rest,
                &mut scratch,
                &mut self.out,
                &mut self.shared,
            );
            assert!(got.consumed <= len, "consumed past the input");
            assert!(got.consumed > 0 || got.message.is_some(), "no progress");
            pos += got.consumed;
            if let Some(message) = got.message {
                self.on_message(message);
            }
            self.poll_events(script);
            if defer && pos < buf.len() {
                self.conn.defer(&buf[pos..]);
                break;
            }
        }
        self.scratch = scratch;
        self.give_back_scratch();
        self.resume(script);
    }

    /// One read of the start of `data` into the connection's read target, if it lends one:
    /// returns how many bytes it took.
    fn read_into_place(&mut self, data: &[u8], script: &mut Script) -> Option<usize> {
        let target = self.conn.read_target()?;
        assert!(!target.is_empty(), "an empty read target");
        let n = target.len().min(data.len());
        target[..n].copy_from_slice(&data[..n]);
        let mut scratch = std::mem::take(&mut self.scratch);
        let got =
            self.conn
                .handle_direct(self.now, n, &mut scratch, &mut self.out, &mut self.shared);
        assert_eq!(got.consumed, n, "a direct read not taken whole");
        if let Some(message) = got.message {
            self.on_message(message);
        }
        self.scratch = scratch;
        self.give_back_scratch();
        self.poll_events(script);
        Some(n)
    }

    /// A large message's buffer back to the pool after the read, as the reactor does: later
    /// messages reuse it, this one's bytes still in it.
    fn give_back_scratch(&mut self) {
        if self.scratch.capacity() >= self.shared.settings.large_payload {
            let buffer = std::mem::take(&mut self.scratch);
            self.shared.pool.give(buffer);
        }
    }

    /// Decodes held-back input, as a reactor does before reading again.
    fn resume(&mut self, script: &mut Script) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..100_000 {
            if !self.conn.has_backlog() {
                self.scratch = scratch;
                return;
            }
            let got = self.conn.handle_input(
                self.now,
                &mut [],
                &mut scratch,
                &mut self.out,
                &mut self.shared,
            );
            if let Some(message) = got.message {
                self.on_message(message);
            }
            self.poll_events(script);
        }
        panic!("held-back input is never used up");
    }

    fn on_message(&mut self, message: Message<'_>) {
        assert!(self.accepted, "a message before the upgrade");
        assert_eq!(self.closed, 0, "a message after Closed");
        if self.echo {
            let sent = self.conn.send(
                message.kind(),
                message.as_bytes(),
                &mut self.out,
                &mut self.shared,
            );
            assert_eq!(sent, Ok(()), "an open connection refused a send");
        }
        self.seen
            .push(Seen::Message(message.kind(), message.as_bytes().to_vec()));
    }

    fn poll_events(&mut self, script: &mut Script) {
        while let Some(event) = self.conn.poll_event() {
            self.seen.push(Seen::Event(event.clone()));
            match event {
                Event::Request(request) => self.answer(&request.head, script.byte()),
                Event::BadRequest(e) => {
                    assert_eq!(e.status(), 431, "{e:?}");
                    let refused =
                        self.conn
                            .reject(self.now, &[TOO_LARGE], &mut self.out, &self.shared);
                    assert_eq!(refused, Ok(()));
                }
                Event::ProxyRefused(_) | Event::HandshakeTimeout => {
                    assert!(self.conn.is_finished() && !self.accepted);
                }
                Event::RateLimited { .. } => assert!(self.accepted),
                Event::Rtt(rtt) => assert!(rtt <= self.now.since(self.start), "{rtt:?}"),
                Event::Closed(closed) => {
                    assert!(self.accepted, "Closed for a connection never accepted");
                    self.closed += 1;
                    assert_eq!(self.closed, 1, "Closed twice");
                    check_closed(&closed);
                }
            }
        }
    }

    /// The application's answer to a request: `decision` bit 0 sends while deciding, bit 1
    /// refuses an upgrade, bit 2 ends a plain request's keep-alive.
    fn answer(&mut self, head: &[u8], decision: u8) {
        let mut headers = [EMPTY_HEADER; 64];
        let response = match RequestHead::parse(head, &mut headers) {
            Err(_) => BAD_REQUEST,
            Ok(req) if req.wants_websocket() => match validate_upgrade(&req) {
                Err(_) => BAD_REQUEST,
                Ok(_) => {
                    if decision & 1 != 0 {
                        let sent = self.conn.send(
                            MessageKind::Text,
                            "welcome ✓".as_bytes(),
                            &mut self.out,
                            &mut self.shared,
                        );
                        assert_eq!(sent, Ok(()), "a send while deciding was refused");
                        self.sent_deciding += 32;
                    }
                    if decision & 2 != 0 {
                        FORBIDDEN
                    } else {
                        let accepted =
                            self.conn
                                .accept(self.now, &req, None, &mut self.out, &self.shared);
                        assert_eq!(accepted, Ok(()));
                        self.accepted = true;
                        return;
                    }
                }
            },
            Ok(req) => {
                let keep_alive = req.keep_alive() && decision & 4 == 0;
                let response = if keep_alive {
                    KEEP_ALIVE
                } else {
                    NOT_FOUND_CLOSE
                };
                let answered = self.conn.respond(
                    self.now,
                    &[response],
                    keep_alive,
                    &mut self.out,
                    &self.shared,
                );
                assert_eq!(answered, Ok(()));
                return;
            }
        };
        let refused = self
            .conn
            .reject(self.now, &[response], &mut self.out, &self.shared);
        assert_eq!(refused, Ok(()));
    }

    /// Moves the clock by `d` and handles the timeout (due or not).
    fn advance(&mut self, d: Duration, script: &mut Script) {
        self.now = self.now.after(d);
        self.conn
            .handle_timeout(self.now, &mut self.out, &self.shared);
        self.poll_events(script);
        self.resume(script);
    }

    /// The checks that hold after every step.
    fn check(&mut self) {
        let settings = &self.shared.settings;
        let max_message = usize::try_from(settings.limits.max_message).unwrap_or(usize::MAX);
        // The decoder holds one partial message and one partial control frame. A small
        // message holds what arrived (capacity at most the limit, or what the bytes needed); a
        // large one is reserved from its header, within the limit.
        let small = max_message.min(4 * self.max_read + (64 << 10));
        let large = if settings.large_payload <= max_message {
            max_message
        } else {
            0
        };
        let decoder = small.max(large) + 256;
        let deflate = DEFLATER_BYTES + INFLATER_BYTES;
        // The head buffer and the input held back: each at most the head limit and a read,
        // twice over for vector growth; events hold at most one request head.
        let held = 2 * (2 * settings.max_head + 2 * self.max_read + self.sent_deciding);
        let bound = decoder + deflate + held + 4096;
        let memory = self.conn.memory();
        assert!(memory <= bound, "memory {memory} over {bound}");
        if self.conn.is_finished() {
            if self.accepted {
                assert_eq!(
                    self.closed, 1,
                    "an accepted connection finished without Closed"
                );
            }
            // The reactor drops what was still queued.
            self.out.pending.clear();
        }
        if self.conn.is_finished() || self.done_at.is_some() {
            let done_at = *self.done_at.get_or_insert(self.out.pushes);
            assert_eq!(self.out.pushes, done_at, "written after the end");
        }
    }
}

/// What a `Closed` event may say.
fn check_closed(closed: &wsloop_proto::conn::Closed) {
    let code = closed.code;
    assert!(
        code.is_sendable() || code == CloseCode::NO_STATUS || code == CloseCode::ABNORMAL,
        "{closed:?}"
    );
    if let Some(sent) = closed.sent {
        assert!(sent.is_sendable(), "{closed:?}");
    }
    match closed.initiator {
        Initiator::Peer => assert_eq!(Some(code), closed.received, "{closed:?}"),
        Initiator::Idle | Initiator::Transport => {
            assert_eq!(code, CloseCode::ABNORMAL, "{closed:?}");
        }
        Initiator::Error(e) => {
            assert_eq!(closed.sent.unwrap_or(CloseCode::from(&e)), code);
        }
        Initiator::Local => assert!(closed.sent.is_some(), "{closed:?}"),
    }
}

/// Reads everything written as a client does (see the module docs).
fn check_wire(wire: &[u8]) {
    let mut rest = wire;
    let mut deflate = None;
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| at + 4)
            .unwrap_or_else(|| panic!("bytes that are no HTTP answer: {rest:02x?}"));
        let (head, after) = rest.split_at(end);
        rest = after;
        if head.starts_with(SWITCHING) {
            let head = String::from_utf8_lossy(head).to_ascii_lowercase();
            deflate = Some(
                head.contains("permessage-deflate")
                    .then(|| !head.contains("server_no_context_takeover")),
            );
            break;
        }
        assert!(
            [
                KEEP_ALIVE,
                NOT_FOUND_CLOSE,
                BAD_REQUEST,
                FORBIDDEN,
                TOO_LARGE
            ]
            .contains(&head),
            "not an answer the application gave: {:?}",
            String::from_utf8_lossy(head)
        );
        if head != KEEP_ALIVE {
            assert!(rest.is_empty(), "bytes after an answer that closes");
        }
    }
    let Some(deflate) = deflate else {
        return;
    };
    let frames = ref_server_frames(rest).unwrap_or_else(|e| panic!("{e}"));
    let mut inflater = Inflater::new();
    let mut closes = 0;
    for frame in frames {
        assert_eq!(closes, 0, "a frame after the close frame");
        // The server never fragments.
        assert!(frame.fin && frame.opcode != 0, "{frame:?}");
        let control = frame.opcode >= 8;
        assert!(!control || frame.payload.len() <= 125, "{frame:?}");
        assert!(frame.rsv == 0 || (frame.rsv == 4 && !control && deflate.is_some()));
        match frame.opcode {
            1 | 2 => {
                let data = if frame.rsv == 4 {
                    let takeover = deflate == Some(true);
                    let mut data = Vec::new();
                    inflater
                        .inflate(&frame.payload, &mut data, 1 << 26, !takeover)
                        .unwrap_or_else(|e| {
                            panic!("a compressed frame that does not inflate: {e}")
                        });
                    data
                } else {
                    frame.payload
                };
                assert!(
                    frame.opcode == 2 || std::str::from_utf8(&data).is_ok(),
                    "invalid text"
                );
            }
            8 => {
                assert!(
                    ref_close(&frame.payload).is_ok(),
                    "close {:02x?}",
                    frame.payload
                );
                closes += 1;
            }
            // Our keepalive pings carry their 8-byte send time.
            9 => assert_eq!(frame.payload.len(), 8),
            _ => {}
        }
    }
}

fn settings(limits: Limits, head_sel: u8) -> Settings {
    Settings {
        limits,
        max_head: if head_sel & 0x80 != 0 {
            8 * 1024
        } else {
            usize::from(head_sel & 0x0f) * 32
        },
        deflate: (head_sel & 0x40 != 0).then(|| DeflateConfig {
            context_takeover: head_sel & 0x20 != 0,
            ..DeflateConfig::default()
        }),
        ping_interval: None,
        idle_timeout: None,
        ..Settings::default()
    }
}

/// Differential mode: one read vs the plan's reads.
fn differential(settings: Settings, rest: &[u8]) {
    let (plan, data) = take_plan(rest);
    let run = |ranges: &[std::ops::Range<usize>], mut driver: Driver| {
        for range in ranges {
            driver.feed(&data[range.clone()], false, &mut Script { bytes: &[] });
            driver.check();
        }
        driver.out.flush();
        check_wire(&driver.out.wire);
        (driver.out.wire, driver.seen)
    };
    let one_read = 0..data.len();
    let whole = run(
        std::slice::from_ref(&one_read),
        Driver::new(settings.clone(), None),
    );
    let split = run(
        &plan.ranges(data.len()),
        Driver::new(settings.clone(), None),
    );
    assert_eq!(
        whole, split,
        "the split {plan:?} changed what was written or seen"
    );
    let direct = run(&plan.ranges(data.len()), Driver::direct(settings, None));
    assert_eq!(
        whole, direct,
        "direct reads, split {plan:?}, changed what was written or seen"
    );
}

/// A script of reactor and application steps.
struct Script<'a> {
    bytes: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self
            .bytes
            .split_first()
            .map_or((0, &[][..]), |(b, r)| (*b, r));
        self.bytes = rest;
        first
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken.to_vec()
    }

    /// One step. The op byte's low nibble says what, the high nibble how much:
    /// 0–3 a read of `next × (1 + high)` bytes; 4 the same read, the reader deferring all
    /// after the first call; 5 the clock moves `next` units of 1 ms, 10 ms, 100 ms or 1 s
    /// (high & 3); 6 the clock moves to the next deadline; 7 the application sends `next`
    /// bytes (text when high & 1); 8 it closes with the code in the next two bytes and a
    /// reason of `high × 4` characters; 9 shutdown; 10 shed; 11 flush, then our FIN when the
    /// connection says so; 12 the peer's FIN; 13 a transport error; 14 the peer answers our
    /// last ping; 15 the echo is turned on or off. Requests are answered with the next
    /// script byte as the decision (see [`Driver::answer`]).
    fn step(&mut self, d: &mut Driver) {
        let op = self.byte();
        let high = usize::from(op >> 4);
        match op & 0x0f {
            0..=4 => {
                let len = usize::from(self.byte()) * (1 + high);
                let data = self.take(len);
                d.feed(&data, op & 0x0f == 4, self);
            }
            5 => {
                let unit = [1, 10, 100, 1000][high & 3];
                let ms = u64::from(self.byte()) * unit;
                d.advance(Duration::from_millis(ms), self);
            }
            6 => {
                if let Some(at) = d.conn.poll_timeout(&d.shared) {
                    let wait = at.since(d.now);
                    d.advance(wait, self);
                }
            }
            7 => {
                let len = usize::from(self.byte());
                let (kind, payload) = if high & 1 != 0 {
                    (MessageKind::Text, "é-".repeat(len / 3 + 1).into_bytes())
                } else {
                    (MessageKind::Binary, vec![0xa5; len])
                };
                let open = d.conn.is_open();
                let sent = d.conn.send(kind, &payload, &mut d.out, &mut d.shared);
                if open {
                    assert_eq!(sent, Ok(()));
                }
            }
            8 => {
                let code = CloseCode(u16::from_be_bytes([self.byte(), self.byte()]));
                let reason = "rè".repeat(high * 2);
                let open = d.conn.is_open();
                let closed = d.conn.close(d.now, code, &reason, &mut d.out, &d.shared);
                assert_eq!(closed.is_ok(), open && code.is_sendable(), "{code:?}");
            }
            9 => d.conn.shutdown(d.now, &mut d.out, &d.shared),
            10 => {
                d.out.flush();
                d.conn.shed(d.now, &mut d.out, &d.shared);
            }
            11 => {
                d.out.flush();
                if d.conn.poll_fin(true) {
                    d.done_at = Some(d.out.pushes);
                }
            }
            12 => {
                let out_empty = d.out.pending.is_empty();
                d.conn.handle_eof(d.now, out_empty, &d.shared);
            }
            13 => d.conn.handle_transport_error(),
            14 => {
                // The last ping we sent, echoed in a pong.
                d.out.flush();
                let ping = ref_server_frames(frames_after_101(&d.out.wire))
                    .ok()
                    .and_then(|frames| frames.into_iter().rev().find(|f| f.opcode == 9));
                if let Some(ping) = ping {
                    d.feed(&ref_client_frame(0xA, &ping.payload), false, self);
                }
            }
            _ => d.echo = !d.echo,
        }
        d.poll_events(self);
        d.check();
    }
}

/// The frames after the 101 in `wire` (empty before it).
fn frames_after_101(wire: &[u8]) -> &[u8] {
    let Some(at) = wire.windows(SWITCHING.len()).position(|w| w == SWITCHING) else {
        return &[];
    };
    let after = &wire[at..];
    after
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |end| &after[end + 4..])
}

/// Scripted mode.
fn scripted(mut settings: Settings, rest: &[u8]) {
    let Some((&opts, ops)) = rest.split_first() else {
        return;
    };
    settings.ping_interval = (opts & 0x01 != 0).then_some(Duration::from_secs(1));
    settings.idle_timeout = (opts & 0x02 != 0).then_some(Duration::from_secs(3));
    settings.max_msg_rate = (opts & 0x04 != 0).then_some(5);
    settings.max_bytes_rate = (opts & 0x08 != 0).then_some(1000);
    settings.rate_policy = if opts & 0x10 != 0 {
        RatePolicy::Close
    } else {
        RatePolicy::Pause
    };
    let proxy = (opts & 0x20 != 0).then_some(ProxyPolicy {
        required: opts & 0x40 != 0,
        trusted: opts & 0x80 != 0,
    });
    let mut driver = Driver::direct(settings, proxy);
    let mut script = Script { bytes: ops };
    let mut steps = 0;
    while !script.bytes.is_empty() && steps < 4096 {
        script.step(&mut driver);
        steps += 1;
    }
    driver.out.flush();
    check_wire(&driver.out.wire);
}

fuzz_target!(|input: &[u8]| {
    let (limits, rest) = take_limits(input);
    let Some((&head_sel, rest)) = rest.split_first() else {
        return;
    };
    let settings = settings(limits, head_sel);
    if head_sel & 0x10 == 0 {
        differential(settings, rest);
    } else {
        scripted(settings, rest);
    }
});
