//! A connection's whole state as bytes, so that a live connection can move to another process
//! (a new server binary) and carry on there exactly as it would have here.
//!
//! [`Connection::export`] writes, after a version byte ([`STATE_VERSION`]): the phase with
//! what it holds (the unread request-head bytes and PROXY policy; the close code we sent),
//! every deadline as the time *remaining* and the last traffic as the time *elapsed* (the two
//! processes' clocks have different epochs, so absolute ticks mean nothing across them), the
//! close-handshake flags, the decoder's partial frame and message, the negotiated
//! permessage-deflate parameters, the rate buckets' levels with any rate pause, and the input
//! held back. [`Connection::import`] rebuilds the connection against the importing process's
//! clock and [`Shared`] state.
//!
//! Some connections cannot move ([`NotMovable`]): a finished one; one whose request was handed
//! to the application and not answered yet (the answer belongs to this process); one with
//! events not polled yet; one with permessage-deflate contexts of its own (context takeover:
//! zlib's history cannot be exported). The caller keeps serving those, or drains them.

use crate::codec::{CodecError, Reader, Writer};
use crate::contexts::ConnDeflate;
use crate::deflate::DeflateParams;
use crate::ratelimit::TokenBucket;
use crate::time::Tick;
use crate::{CloseCode, Decoder};

use super::event::Events;
use super::flow::{Flow, Rate};
use super::head::Head;
use super::shared::ProxyPolicy;
use super::{Connection, Phase};

/// The version of the format [`Connection::export`] writes; [`Connection::import`] refuses
/// any other.
pub const STATE_VERSION: u8 = 1;

/// Why a connection cannot be exported (now, or ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotMovable {
    /// It is finished: nothing to move.
    Finished,
    /// A request was handed to the application and is not answered yet.
    RequestOut,
    /// Events wait to be polled.
    EventsPending,
    /// Its permessage-deflate contexts are its own (context takeover): never movable.
    OwnDeflateContexts,
}

impl NotMovable {
    /// Whether it can never move (else it may once what it waits for is done).
    pub fn is_permanent(self) -> bool {
        matches!(self, NotMovable::Finished | NotMovable::OwnDeflateContexts)
    }
}

impl std::fmt::Display for NotMovable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotMovable::Finished => "finished",
            NotMovable::RequestOut => "a request is waiting for its answer",
            NotMovable::EventsPending => "events are waiting to be polled",
            NotMovable::OwnDeflateContexts => "it has deflate contexts of its own",
        })
    }
}

/// Phase tags on the wire.
const HEAD: u8 = 0;
const OPEN: u8 = 1;
const CLOSE_SENT: u8 = 2;
const LINGERING: u8 = 3;

/// The largest window bits permessage-deflate negotiates (RFC 7692 §7.1.2).
const WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;

impl Connection {
    /// Whether it could be exported now (see [`NotMovable`]).
    ///
    /// # Errors
    /// Why not.
    pub fn check_movable(&self) -> Result<(), NotMovable> {
        match &self.phase {
            Phase::Finished => return Err(NotMovable::Finished),
            Phase::Head(head) if head.is_waiting() || !head.sent.is_empty() => {
                return Err(NotMovable::RequestOut)
            }
            _ => {}
        }
        if self
            .deflate
            .as_deref()
            .is_some_and(ConnDeflate::has_own_contexts)
        {
            return Err(NotMovable::OwnDeflateContexts);
        }
        if !self.events.is_empty() {
            return Err(NotMovable::EventsPending);
        }
        Ok(())
    }

    /// Appends the connection's state at `now` to `out`.
    ///
    /// # Errors
    /// When it cannot move ([`Connection::check_movable`]); nothing is written then.
    pub fn export(&self, now: Tick, out: &mut Vec<u8>) -> Result<(), NotMovable> {
        self.check_movable()?;
        let mut w = Writer::new(out);
        w.u8(STATE_VERSION);
        match &self.phase {
            Phase::Head(head) => {
                w.u8(HEAD);
                w.bytes(head.buf.get(head.start..).unwrap_or_default());
                w.u8(head.proxy.map_or(0, |p| {
                    1 | u8::from(p.required) << 1 | u8::from(p.trusted) << 2
                }));
                w.opt_addr(head.client);
                w.duration(head.deadline.since(now));
            }
            Phase::Open { last_seen } => {
                w.u8(OPEN);
                w.duration(now.since(*last_seen));
            }
            Phase::CloseSent { code, deadline } => {
                w.u8(CLOSE_SENT);
                w.u16(code.0);
                w.duration(deadline.since(now));
            }
            Phase::Lingering { deadline } => {
                w.u8(LINGERING);
                w.duration(deadline.since(now));
            }
            Phase::Finished => {}
        }
        for flag in [
            self.ping_sent,
            self.eof,
            self.fin_sent,
            self.opened,
            self.closed_reported,
        ] {
            w.bool(flag);
        }
        self.decoder.export(&mut w);
        export_deflate(&mut w, self.deflate.as_deref().map(|d| &d.params));
        export_flow(&mut w, self.flow.as_deref(), now);
        Ok(())
    }

    /// The connection [`export`](Connection::export) described, at `now` on this process's
    /// clock.
    ///
    /// # Errors
    /// Another version, truncated or inconsistent bytes: the connection is not taken.
    pub fn import(state: &[u8], now: Tick) -> Result<Connection, CodecError> {
        let mut r = Reader::new(state);
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(CodecError::Version(version));
        }
        let phase = match r.u8()? {
            HEAD => import_head(&mut r, now)?,
            OPEN => Phase::Open {
                last_seen: now.before(r.duration()?),
            },
            CLOSE_SENT => {
                let code = CloseCode(r.u16()?);
                if !code.is_sendable() {
                    return Err(CodecError::Invalid("close code"));
                }
                Phase::CloseSent {
                    code,
                    deadline: now.after(r.duration()?),
                }
            }
            LINGERING => Phase::Lingering {
                deadline: now.after(r.duration()?),
            },
            _ => return Err(CodecError::Invalid("phase")),
        };
        let [ping_sent, eof, fin_sent, opened, closed_reported] =
            [r.bool()?, r.bool()?, r.bool()?, r.bool()?, r.bool()?];
        let decoder = Decoder::import(&mut r)?;
        let deflate = import_deflate(&mut r)?;
        let flow = import_flow(&mut r, now)?;
        r.finish()?;
        if decoder.accepts_compressed() != deflate.is_some() {
            return Err(CodecError::Invalid(
                "compression without permessage-deflate",
            ));
        }
        Ok(Connection {
            phase,
            decoder,
            deflate: deflate.map(|params| Box::new(ConnDeflate::new(params))),
            flow,
            events: Events::default(),
            ping_sent,
            eof,
            fin_sent,
            opened,
            closed_reported,
        })
    }
}

/// A request-phase connection with no request out: its unread bytes, PROXY policy, the
/// client a PROXY header gave, the time left until its handshake deadline.
fn import_head(r: &mut Reader<'_>, now: Tick) -> Result<Phase, CodecError> {
    let unread = r.bytes()?.to_vec();
    let proxy = match r.u8()? {
        0 => None,
        bits if bits & !0b111 == 0 && bits & 1 == 1 => Some(ProxyPolicy {
            required: bits & 0b10 != 0,
            trusted: bits & 0b100 != 0,
        }),
        _ => return Err(CodecError::Invalid("PROXY policy")),
    };
    let client = r.opt_addr()?;
    let mut head = Head::new(now.after(r.duration()?), proxy);
    head.buf = unread;
    head.client = client;
    Ok(Phase::Head(Box::new(head)))
}

fn export_deflate(w: &mut Writer<'_>, params: Option<&DeflateParams>) {
    w.bool(params.is_some());
    if let Some(p) = params {
        w.bool(p.server_no_context_takeover);
        w.bool(p.client_no_context_takeover);
        w.u8(p.server_max_window_bits);
        w.u8(p.client_max_window_bits.unwrap_or(0));
    }
}

fn import_deflate(r: &mut Reader<'_>) -> Result<Option<DeflateParams>, CodecError> {
    if !r.bool()? {
        return Ok(None);
    }
    let (server_nct, client_nct) = (r.bool()?, r.bool()?);
    let server_bits = r.u8()?;
    let client_bits = match r.u8()? {
        0 => None,
        bits => Some(bits),
    };
    let in_range = |bits: u8| WINDOW_BITS.contains(&bits);
    if !in_range(server_bits) || !client_bits.is_none_or(in_range) {
        return Err(CodecError::Invalid("window bits"));
    }
    Ok(Some(DeflateParams::from_parts(
        server_nct,
        client_nct,
        server_bits,
        client_bits,
    )))
}

fn export_flow(w: &mut Writer<'_>, flow: Option<&Flow>, now: Tick) {
    let rate = flow.and_then(|f| f.rate.as_ref());
    w.bool(rate.is_some());
    if let Some(rate) = rate {
        for bucket in [&rate.messages, &rate.bytes] {
            w.bool(bucket.is_some());
            if let Some(bucket) = bucket {
                let (level, per_sec, burst) = bucket.snapshot(now);
                w.i64(level);
                w.u64(per_sec);
                w.u64(burst);
            }
        }
        w.opt_duration(rate.resume.map(|at| at.since(now)));
    }
    w.bytes(flow.map(Flow::held).unwrap_or_default());
}

fn import_flow(r: &mut Reader<'_>, now: Tick) -> Result<Option<Box<Flow>>, CodecError> {
    let rate = match r.bool()? {
        true => {
            let mut buckets = [None, None];
            for bucket in &mut buckets {
                if r.bool()? {
                    let (level, per_sec, burst) = (r.i64()?, r.u64()?, r.u64()?);
                    *bucket = Some(TokenBucket::restore(per_sec, burst, level, now));
                }
            }
            let [messages, bytes] = buckets;
            Some(Rate {
                messages,
                bytes,
                resume: r.opt_duration()?.map(|left| now.after(left)),
            })
        }
        false => None,
    };
    let backlog = r.bytes()?.to_vec();
    if rate.is_none() && backlog.is_empty() {
        return Ok(None);
    }
    Ok(Some(Box::new(Flow {
        rate,
        backlog,
        start: 0,
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{
        client_close, client_frame, client_frame_rsv, keepalive, upgrade_request, Harness,
    };
    use super::super::{RatePolicy, Settings};
    use super::{Connection, NotMovable, STATE_VERSION};
    use crate::codec::CodecError;
    use crate::deflate::DeflateConfig;
    use crate::OpCode;

    /// The connection of `h` exported and imported into a fresh harness at the same time:
    /// what a new process would hold.
    fn moved(h: &Harness) -> Harness {
        let mut state = Vec::new();
        h.conn.export(h.now, &mut state).expect("movable");
        let mut twin = Harness::new(h.shared.settings.clone());
        twin.conn = Connection::import(&state, h.now).expect("importable");
        twin.now = h.now;
        twin.echo = h.echo;
        twin
    }

    /// Runs `then` on the original and on its moved twin, and checks that both write the
    /// same bytes and report the same things.
    fn same_future(mut h: Harness, then: impl Fn(&mut Harness)) {
        let _ = h.take_seen();
        let mut twin = moved(&h);
        let mark = h.out.len();
        then(&mut h);
        then(&mut twin);
        assert_eq!(h.out[mark..], twin.out[..], "bytes written");
        assert_eq!(h.take_seen(), twin.take_seen(), "what the application saw");
        assert_eq!(
            h.conn.poll_timeout(&h.shared),
            twin.conn.poll_timeout(&twin.shared)
        );
        assert_eq!(h.conn.is_finished(), twin.conn.is_finished());
        assert_eq!(h.conn.wants_read(), twin.conn.wants_read());
    }

    fn echoing(settings: Settings) -> Harness {
        let mut h = Harness::open(settings);
        h.echo = true;
        h
    }

    #[test]
    fn an_open_connection_echoes_pings_and_closes_like_the_original() {
        let mut h = echoing(keepalive(Some(30), Some(75)));
        h.feed(&client_frame(OpCode::Text, b"before"));
        h.advance(Duration::from_secs(20));
        same_future(h, |h| {
            h.feed(&client_frame(OpCode::Text, b"after"));
            h.run_to_deadline(); // the ping, 30 s after the last traffic
            h.feed(&client_frame(OpCode::Ping, b"p"));
            h.feed(&client_close(1000, b"bye"));
            assert!(h.conn.poll_fin(true));
            h.conn.handle_eof(h.now, true, &h.shared);
        });
    }

    #[test]
    fn a_silent_connection_keeps_its_keepalive_and_idle_deadlines() {
        let mut h = Harness::open(keepalive(Some(30), Some(75)));
        h.run_to_deadline(); // the ping at 30 s: a ping is outstanding
        h.advance(Duration::from_secs(10));
        same_future(h, |h| {
            h.run_to_deadline(); // idle at 75 s: dropped with 1006
        });
    }

    #[test]
    fn mid_close_it_waits_for_the_answer_then_lingers_like_the_original() {
        let mut h = echoing(Settings::default());
        h.close(4000, "done").unwrap();
        h.advance(Duration::from_secs(2));
        same_future(h, |h| {
            h.feed(&client_frame(OpCode::Text, b"ignored"));
            h.feed(&client_close(4000, b""));
            assert!(h.conn.poll_fin(true));
            h.run_to_deadline();
        });
        let mut h = echoing(Settings::default());
        h.close(4001, "").unwrap();
        same_future(h, |h| h.run_to_deadline()); // no answer within the close timeout
    }

    #[test]
    fn lingering_with_our_fin_sent_it_only_waits_for_the_peers() {
        let mut h = echoing(Settings::default());
        h.feed(&client_close(1000, b""));
        assert!(h.conn.poll_fin(true));
        let twin = moved(&h);
        assert!(twin.conn.is_done());
        same_future(h, |h| {
            assert!(!h.conn.poll_fin(true), "FIN only once");
            h.conn.handle_eof(h.now, true, &h.shared);
        });
    }

    #[test]
    fn a_request_head_moves_with_its_bytes() {
        let request = upgrade_request("");
        let mut h = Harness::new(Settings::default());
        h.feed(&request[..20]);
        h.advance(Duration::from_secs(3));
        same_future(h, |h| {
            h.feed(&request[20..]);
            h.accept().unwrap();
            h.feed(&client_frame(OpCode::Text, b"first"));
        });
        let mut h = Harness::new(Settings::default());
        h.feed(b"GET / HT");
        same_future(h, |h| h.run_to_deadline()); // the handshake timeout
    }

    #[test]
    fn a_rate_pause_and_the_input_it_holds_back_move() {
        let settings = Settings {
            max_msg_rate: Some(2),
            rate_policy: RatePolicy::Pause,
            ..Settings::default()
        };
        let mut h = echoing(settings);
        let five: Vec<u8> = (0..5)
            .flat_map(|i| client_frame(OpCode::Text, format!("m{i}").as_bytes()))
            .collect();
        h.feed(&five);
        assert!(!h.conn.wants_read(), "paused with input held back");
        same_future(h, |h| {
            h.run_to_deadline();
            h.advance(Duration::from_secs(2));
            h.feed(&client_frame(OpCode::Text, b"later"));
        });
    }

    #[test]
    fn permessage_deflate_without_context_takeover_moves() {
        let settings = Settings {
            deflate: Some(DeflateConfig {
                context_takeover: false,
                min_size: 8,
                ..DeflateConfig::default()
            }),
            ..Settings::default()
        };
        let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let mut h = Harness::open_with(settings.clone(), offer);
        h.echo = true;
        h.send_text(&"compressible ".repeat(10)).unwrap();
        same_future(h, |h| {
            h.send_text(&"again and again ".repeat(10)).unwrap();
            h.feed(&client_frame(OpCode::Text, b"plain"));
        });
        // With context takeover, once a context exists its history cannot move.
        let takeover = Settings {
            deflate: Some(DeflateConfig {
                context_takeover: true,
                min_size: 8,
                ..DeflateConfig::default()
            }),
            ..settings
        };
        let mut h = Harness::open_with(takeover, offer);
        assert_eq!(h.conn.check_movable(), Ok(()), "no context used yet");
        h.send_text(&"compressible ".repeat(10)).unwrap();
        assert_eq!(h.conn.check_movable(), Err(NotMovable::OwnDeflateContexts));
        assert!(NotMovable::OwnDeflateContexts.is_permanent());
    }

    #[test]
    fn a_fragmented_message_and_a_partial_frame_move() {
        let mut h = echoing(Settings::default());
        h.feed(&client_frame_rsv(false, 0, OpCode::Text, "hé".as_bytes()));
        let last = client_frame_rsv(true, 0, OpCode::Continuation, "llo €".as_bytes());
        h.feed(&last[..12]); // 6 header bytes, then "llo " and two of the three bytes of €
        same_future(h, |h| {
            h.feed(&last[12..]);
            h.feed(&client_frame(OpCode::Text, b"next"));
        });
    }

    #[test]
    fn what_cannot_move_is_refused_without_writing() {
        let mut h = Harness::new(Settings::default());
        h.feed(&upgrade_request(""));
        let mut state = Vec::new();
        assert_eq!(
            h.conn.export(h.now, &mut state),
            Err(NotMovable::RequestOut),
            "a request is out"
        );
        assert!(state.is_empty());
        let mut h = Harness::open(Settings::default());
        let mut close = client_close(1000, b"");
        let mut scratch = Vec::new();
        let got = h
            .conn
            .handle_input(h.now, &mut close, &mut scratch, &mut h.out, &mut h.shared);
        assert_eq!(got.consumed, close.len());
        assert_eq!(h.conn.check_movable(), Err(NotMovable::EventsPending));
        let _ = h.events();
        assert_eq!(h.conn.check_movable(), Ok(()));
        h.conn.handle_transport_error();
        assert_eq!(h.conn.check_movable(), Err(NotMovable::Finished));
    }

    #[test]
    fn bad_state_bytes_are_an_error_never_a_panic() {
        let mut h = echoing(keepalive(Some(30), Some(75)));
        h.close(1000, "").unwrap();
        let mut state = Vec::new();
        h.conn.export(h.now, &mut state).unwrap();
        for cut in 0..state.len() {
            assert!(
                Connection::import(&state[..cut], h.now).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = state.clone();
        longer.push(0);
        assert!(
            Connection::import(&longer, h.now).is_err(),
            "trailing bytes"
        );
        state[0] = STATE_VERSION + 1;
        assert_eq!(
            Connection::import(&state, h.now).err(),
            Some(CodecError::Version(STATE_VERSION + 1))
        );
        for byte in 0..=255u8 {
            let _ = Connection::import(&[STATE_VERSION, byte, 1, 2, 3], h.now);
        }
    }
}
