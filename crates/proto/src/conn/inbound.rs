//! Frames in: decoding (in place, zero copy where the input allows), delivery (text validated
//! once, compressed messages inflated within the message limit, the rate budgets charged),
//! control frames (ping → pong, pong → round trip, close → the close handshake), and the
//! protocol errors that fail the connection.
//!
//! A message that cannot be borrowed from the input — assembled across reads or fragments,
//! inflated, or decoded from held-back input — is handed out from the caller's scratch buffer,
//! which the message borrows like the input: no allocation per message, and text is validated
//! once more by the same fast validator either way (the decoder's streaming check is what fails
//! fast; safe Rust cannot turn its verdict into a `&str`). A large message's buffer is moved
//! into the scratch buffer (what that held goes back to the pool), so it is never copied.
//!
//! Large frames can also be read straight into their message buffer: [`Connection::read_target`]
//! lends the unfilled part of the payload, [`Connection::handle_direct`] takes the count read.

use std::ops::Range;

use crate::decoder::{Event as Frame, Outcome, Payload};
use crate::time::Tick;
use crate::utf8;
use crate::{MessageKind, OpCode, ProtocolError};

use super::event::{Input, Message};
use super::output::{write_frame, Output};
use super::shared::Shared;
use super::{Connection, Phase};

/// Where a decoded message's bytes are.
enum Body {
    /// A range of the input slice.
    Input(Range<usize>),
    /// The scratch buffer.
    Scratch,
}

/// What one decoded frame asks of the decoding loop.
enum Step {
    /// Go on decoding.
    Continue,
    /// Stop: an event was queued (it is polled before anything after it is decoded), a pong
    /// was written, or nothing more is decoded.
    Stop,
    /// Stop and hand out this message.
    Deliver(MessageKind, Body),
}

impl Connection {
    /// Bytes for an open (or closing) connection: decoded straight from `input`, unless
    /// input is held back, which goes first.
    pub(super) fn frames_input<'a, O: Output>(
        &mut self,
        now: Tick,
        input: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> Input<'a> {
        if !self.holds_input() && !input.is_empty() {
            let (consumed, found) = self.decode(now, input, scratch, out, shared);
            let message = found.and_then(|(kind, body)| {
                let bytes = match body {
                    Body::Input(range) => input.get(range).unwrap_or_default(),
                    Body::Scratch => scratch.as_slice(),
                };
                self.deliver(now, kind, bytes, out, shared)
            });
            return Input { consumed, message };
        }
        self.defer(input);
        if self.is_paused() {
            return Input::all(input.len());
        }
        let message = self.decode_backlog(now, scratch, out, shared);
        Input {
            consumed: input.len(),
            message,
        }
    }

    /// Where the caller may read next instead of into its own buffer: the unfilled part of
    /// a large frame's payload in its message buffer (a frame of at least
    /// [`Settings::large_payload`](super::Settings::large_payload) bytes), however little of
    /// it is still to come. After reading `n` bytes into it, call
    /// [`handle_direct`](Connection::handle_direct) (and nothing else first). `None` while
    /// the connection does not want to read, holds input back (that goes first), or is not
    /// decoding frames: read into the caller's buffer and call
    /// [`handle_input`](Connection::handle_input).
    ///
    /// Why even a short rest: read into the caller's buffer, the end of a large message comes
    /// with the start of the next one, whose header reserves the next message buffer while
    /// the application may still hold this one (an echo not written yet), and the caller must
    /// keep those bytes until it can decode them. Read into place, the rest costs at most
    /// one more read per large frame, and is not copied.
    pub fn read_target(&mut self) -> Option<&mut [u8]> {
        let decoding = matches!(self.phase, Phase::Open { .. } | Phase::CloseSent { .. });
        if !decoding || !self.wants_read() || self.holds_input() {
            return None;
        }
        self.decoder.read_target(1)
    }

    /// Takes the `n` bytes just read into the slice [`read_target`](Connection::read_target)
    /// lent (unmasked in place, text validated as it arrives), as
    /// [`handle_input`](Connection::handle_input) takes bytes read into the caller's buffer:
    /// when they complete the message it is returned, borrowed from `scratch` (its buffer is
    /// moved there, not copied); events go to the event queue. `consumed` is `n`.
    pub fn handle_direct<'a, O: Output>(
        &mut self,
        now: Tick,
        n: usize,
        scratch: &'a mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> Input<'a> {
        if n == 0 || !matches!(self.phase, Phase::Open { .. } | Phase::CloseSent { .. }) {
            return Input::all(n);
        }
        self.handle_traffic(now);
        let kind = match self.decoder.decode_target(n) {
            Outcome::NeedMore => None,
            Outcome::Error(error) => {
                self.fail(now, error, out, shared);
                None
            }
            // Only a data frame's payload is ever read into place, so what completes is a
            // message, assembled (or inflated) in the scratch buffer.
            Outcome::Event(frame) => match self.on_frame(now, frame, &[], scratch, out, shared) {
                Step::Deliver(kind, Body::Scratch) => Some(kind),
                Step::Deliver(_, Body::Input(_)) | Step::Continue | Step::Stop => None,
            },
        };
        let scratch: &'a [u8] = scratch;
        let message = kind.and_then(|kind| self.deliver(now, kind, scratch, out, shared));
        Input {
            consumed: n,
            message,
        }
    }

    /// Decodes held-back input up to its first message or event; a message is copied into
    /// `scratch` (it was in the connection's own buffer).
    fn decode_backlog<'a, O: Output>(
        &mut self,
        now: Tick,
        scratch: &'a mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> Option<Message<'a>> {
        let (mut buf, start) = self.take_backlog()?;
        let held = buf.get_mut(start..).unwrap_or_default();
        let (consumed, found) = self.decode(now, held, scratch, out, shared);
        if let Some((_, Body::Input(range))) = &found {
            scratch.clear();
            scratch.extend_from_slice(held.get(range.clone()).unwrap_or_default());
        }
        self.hold(buf, start + consumed);
        let (kind, _) = found?;
        let scratch: &'a [u8] = scratch;
        self.deliver(now, kind, scratch, out, shared)
    }

    /// Decodes `input` until a message to hand out, an event, a rate pause (the rest is held
    /// back), the end of the input, or the end of decoding (failure, close handshake). Returns
    /// the bytes consumed and the message found.
    fn decode<O: Output>(
        &mut self,
        now: Tick,
        input: &mut [u8],
        scratch: &mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> (usize, Option<(MessageKind, Body)>) {
        let mut pos = 0;
        while pos < input.len() {
            if !matches!(self.phase, Phase::Open { .. } | Phase::CloseSent { .. }) {
                return (input.len(), None); // Lingering: the rest is discarded.
            }
            if self.is_open() && !self.rate_admits(now, out, shared) {
                self.defer(input.get(pos..).unwrap_or_default());
                return (input.len(), None);
            }
            let rest = input.get_mut(pos..).unwrap_or_default();
            let decoded = self
                .decoder
                .decode(&shared.settings.limits, &mut shared.pool, rest);
            let at = pos;
            pos += decoded.consumed;
            match decoded.outcome {
                Outcome::NeedMore => break,
                Outcome::Error(error) => {
                    self.fail(now, error, out, shared);
                    return (input.len(), None);
                }
                Outcome::Event(frame) => {
                    match self.on_frame(now, frame, rest, scratch, out, shared) {
                        Step::Continue => {}
                        Step::Stop => break,
                        Step::Deliver(kind, Body::Input(range)) => {
                            let range = range.start + at..range.end + at;
                            return (pos, Some((kind, Body::Input(range))));
                        }
                        Step::Deliver(kind, body) => return (pos, Some((kind, body))),
                    }
                }
            }
        }
        (pos, None)
    }

    /// What a decoded frame does. `input` is the slice it was decoded from.
    fn on_frame<O: Output>(
        &mut self,
        now: Tick,
        frame: Frame,
        input: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut O,
        shared: &mut Shared,
    ) -> Step {
        match frame {
            Frame::Message(kind, Payload::Input(range)) => Step::Deliver(kind, Body::Input(range)),
            Frame::Message(kind, Payload::Owned(bytes)) => {
                // Moved in, not copied: what the scratch buffer held goes back to the pool.
                shared.pool.give(std::mem::replace(scratch, bytes));
                Step::Deliver(kind, Body::Scratch)
            }
            // After our close frame, data is not delivered: no need to inflate it.
            Frame::Compressed(..) if !self.is_open() => Step::Continue,
            Frame::Compressed(kind, payload) => {
                let inflated = self.inflate(payload.bytes(input), scratch, shared);
                if let Payload::Owned(buffer) = payload {
                    shared.pool.give(buffer);
                }
                match inflated {
                    Ok(()) => Step::Deliver(kind, Body::Scratch),
                    Err(error) => {
                        self.fail(now, error, out, shared);
                        Step::Stop
                    }
                }
            }
            Frame::Ping(payload) => {
                // §5.5.2: answer with a pong carrying the same payload (not once closing).
                // Then stop, as after a message: each call writes at most one frame of its
                // own, so a caller bounding its work per call bounds a ping flood too.
                if self.is_open() {
                    write_frame(out, OpCode::Pong, false, &[payload.bytes(input)]);
                    return Step::Stop;
                }
                Step::Continue
            }
            Frame::Pong(payload) => match self.record_rtt(now, payload.bytes(input)) {
                true => Step::Stop,
                false => Step::Continue,
            },
            Frame::Close { code, payload } => {
                self.on_close_frame(now, code, payload.bytes(input), out, shared);
                Step::Stop
            }
        }
    }

    /// Inflates a compressed message (RFC 7692 §7.2.2) into `scratch`, bounded by the message
    /// limit: a deflate bomb fails with 1009 after at most that many bytes.
    fn inflate(
        &mut self,
        payload: &[u8],
        scratch: &mut Vec<u8>,
        shared: &mut Shared,
    ) -> Result<(), ProtocolError> {
        match self.deflate.as_deref_mut() {
            Some(deflate) => shared.inflate(deflate, payload, scratch),
            // The decoder accepts RSV1 only once permessage-deflate was negotiated.
            None => Err(ProtocolError::ReservedBits),
        }
    }

    /// Hands a message out while open (after our close frame it is validated, then ignored).
    /// Text is validated here, once, by making the `&str` that is handed out (§8.1: invalid
    /// text fails the connection with 1007).
    fn deliver<'a, O: Output>(
        &mut self,
        now: Tick,
        kind: MessageKind,
        bytes: &'a [u8],
        out: &mut O,
        shared: &Shared,
    ) -> Option<Message<'a>> {
        let message = match kind {
            MessageKind::Binary => Ok(Message::Binary(bytes)),
            MessageKind::Text => utf8::validate(bytes)
                .map(Message::Text)
                .map_err(|_| ProtocolError::InvalidUtf8),
        };
        match message {
            Ok(message) if self.is_open() => {
                self.rate_charge(now, bytes.len());
                Some(message)
            }
            Ok(_) => None,
            Err(error) => {
                self.fail(now, error, out, shared);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{
        client_close, client_frame, client_frame_rsv, text, upgrade_request, Harness, Seen,
    };
    use super::super::{Closed, Event, Initiator, Settings};
    use crate::deflate::{DeflateConfig, Deflater};
    use crate::frame::FrameHeader;
    use crate::{CloseCode, Limits, OpCode, ProtocolError};

    /// Sends `bytes` to an open connection (after a good message) and checks that it fails
    /// with exactly one close frame carrying `error`'s code and reason, reports it, and
    /// ignores what follows: twice, once with `bytes` ending the read (the failure must come
    /// from them alone, e.g. from a header whose payload never arrives) and once with more
    /// frames behind them in the same read.
    fn expect_failure(
        settings: Settings,
        extra: &str,
        bytes: &[u8],
        error: ProtocolError,
        code: u16,
    ) {
        let after = [
            client_frame(OpCode::Text, b"after"),
            client_frame(OpCode::Ping, b"p"),
        ]
        .concat();
        for same_read in [false, true] {
            let mut h = Harness::open_with(settings.clone(), extra);
            h.echo = true;
            let mut input = client_frame(OpCode::Text, b"before");
            input.extend_from_slice(bytes);
            if same_read {
                input.extend_from_slice(&after);
            }
            h.feed(&input);
            let frames = h.frames();
            assert_eq!(frames.len(), 2, "{error:?}: {frames:?}");
            assert_eq!(frames[0].payload, b"before");
            assert_eq!(
                frames[1].close(),
                (code, error.as_str().to_owned()),
                "{error:?}"
            );
            assert_eq!(
                h.take_seen(),
                vec![
                    text("before"),
                    Seen::Event(Event::Closed(Closed {
                        code: CloseCode(code),
                        reason: String::new(),
                        initiator: Initiator::Error(error),
                        sent: Some(CloseCode(code)),
                        received: None,
                    }))
                ],
                "{error:?}"
            );
            assert!(
                h.conn.poll_fin(true),
                "{error:?}: TCP closes after the close frame"
            );
            // Sticky: nothing more is decoded or answered.
            h.feed(&after);
            assert_eq!(h.frames(), vec![]);
            assert_eq!(h.take_seen(), vec![]);
        }
    }

    /// Each call answers at most one ping, so a caller that bounds its calls per turn bounds
    /// the pongs a flood of pings in one read makes it write.
    #[test]
    fn one_pong_per_call() {
        let mut h = Harness::open(Settings::default());
        let ping = client_frame(OpCode::Ping, b"p");
        let mut input: Vec<u8> = std::iter::repeat_n(ping.clone(), 100).flatten().collect();
        let mut scratch = Vec::new();
        let got = h
            .conn
            .handle_input(h.now, &mut input, &mut scratch, &mut h.out, &mut h.shared);
        assert_eq!(got.consumed, ping.len(), "stopped after the first pong");
        assert_eq!(h.frames().len(), 1);
    }

    /// Every protocol error, from every kind of input that causes it: one close frame with
    /// its code (§7.4.1) and reason, then TCP closes (see `expect_failure`).
    #[test]
    fn each_protocol_failure_closes_with_its_code_and_reason() {
        use OpCode::{Binary, Close, Continuation, Ping, Pong, Text};
        let fragment = |op| client_frame_rsv(false, 0, op, b"ab");
        let with_first_byte = |first: u8| {
            let mut frame = client_frame(Binary, b"x");
            frame[0] = first;
            frame
        };
        let table: Vec<(ProtocolError, u16, Vec<Vec<u8>>)> = vec![
            (
                ProtocolError::UnmaskedFrame,
                1002,
                vec![vec![0x81, 0x01, b'x']],
            ),
            // RSV2, RSV3, and RSV1 without permessage-deflate.
            (
                ProtocolError::ReservedBits,
                1002,
                [(0b010, Text), (0b001, Text), (0b100, Binary), (0b100, Text)]
                    .map(|(rsv, op)| client_frame_rsv(true, rsv, op, b"x"))
                    .to_vec(),
            ),
            (
                ProtocolError::ReservedOpcode,
                1002,
                [0x83, 0x87, 0x8b, 0x8f].map(with_first_byte).to_vec(),
            ),
            (
                ProtocolError::ControlFrameTooLong,
                1002,
                vec![client_frame(Ping, &[0; 126])],
            ),
            (
                ProtocolError::FragmentedControlFrame,
                1002,
                [Ping, Pong, Close]
                    .map(|op| client_frame_rsv(false, 0, op, b""))
                    .to_vec(),
            ),
            (
                ProtocolError::LengthOverflow,
                1002,
                vec![vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]],
            ),
            (
                ProtocolError::UnexpectedContinuation,
                1002,
                vec![client_frame(Continuation, b"x"), fragment(Continuation)],
            ),
            (
                ProtocolError::ExpectedContinuation,
                1002,
                vec![
                    [fragment(Text), client_frame(Text, b"c")].concat(),
                    [fragment(Binary), fragment(Text)].concat(),
                ],
            ),
            // One byte; codes that are not to be received, or outside every range.
            (
                ProtocolError::InvalidClosePayload,
                1002,
                std::iter::once(client_frame(Close, &[3]))
                    .chain(
                        [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
                            .map(|code| client_close(code, b"")),
                    )
                    .collect(),
            ),
            (
                ProtocolError::InvalidUtf8,
                1007,
                vec![
                    client_close(1000, &[0xff]),
                    client_close(1000, b"bad \xc3\x28"),
                    // Whole text frames: validated once, when the connection makes its
                    // `&str`; overlong encodings and UTF-16 surrogates are invalid too.
                    client_frame(Text, b"a\xc3\x28"),
                    client_frame(Text, b"abc\xff"),
                    client_frame(Text, b"\xc0\xaf"),
                    client_frame(Text, b"\xed\xa0\x80"),
                    // Streamed text: fails at the fragment that carries the bad byte.
                    [
                        fragment(Text),
                        client_frame_rsv(false, 0, Continuation, &[0xff]),
                    ]
                    .concat(),
                    // A message that ends inside a code point.
                    [fragment(Text), client_frame(Continuation, &[0xe2, 0x82])].concat(),
                ],
            ),
        ];
        for (error, code, inputs) in table {
            for bytes in inputs {
                expect_failure(Settings::default(), "", &bytes, error, code);
            }
        }
    }

    #[test]
    fn size_limits_fail_with_1009() {
        let settings = Settings {
            limits: Limits {
                max_frame: 100,
                max_message: 150,
            },
            ..Settings::default()
        };
        expect_failure(
            settings.clone(),
            "",
            &client_frame(OpCode::Binary, &[0; 101]),
            ProtocolError::FrameTooBig,
            1009,
        );
        let fragments = [
            client_frame_rsv(false, 0, OpCode::Binary, &[0; 100]),
            client_frame(OpCode::Continuation, &[0; 51]),
        ]
        .concat();
        expect_failure(settings, "", &fragments, ProtocolError::MessageTooBig, 1009);
    }

    /// A masked frame header announcing `len` payload bytes, without the payload.
    fn header_only(fin: bool, opcode: OpCode, len: u64) -> Vec<u8> {
        let header = FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: Some([9, 8, 7, 6]),
            payload_len: len,
        };
        let mut head = [0u8; crate::frame::MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        head[..n].to_vec()
    }

    /// §10.4: a frame or message over the limits is refused from the header that announces
    /// it, before its payload arrives (none is sent here: the close must come anyway); at the
    /// limits, frames and messages pass.
    #[test]
    fn size_limits_are_judged_from_the_header_alone() {
        let settings = Settings {
            limits: Limits {
                max_frame: 1000,
                max_message: 1500,
            },
            ..Settings::default()
        };
        let mut h = Harness::open(settings.clone());
        let mut at_limits = client_frame(OpCode::Binary, &[5; 1000]);
        at_limits.extend(client_frame_rsv(false, 0, OpCode::Binary, &[1; 1000]));
        at_limits.extend(client_frame(OpCode::Continuation, &[2; 500]));
        h.feed(&at_limits);
        let sizes: Vec<usize> = h
            .take_seen()
            .iter()
            .map(|seen| match seen {
                Seen::Binary(bytes, _) => bytes.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [1000, 1500]);
        let oversized: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                header_only(true, OpCode::Binary, 1001),
                ProtocolError::FrameTooBig,
            ),
            (
                header_only(true, OpCode::Text, 1 << 40),
                ProtocolError::FrameTooBig,
            ),
            // The second fragment's header alone takes the message over.
            (
                [
                    client_frame_rsv(false, 0, OpCode::Text, &[b'a'; 1000]),
                    header_only(true, OpCode::Continuation, 501),
                ]
                .concat(),
                ProtocolError::MessageTooBig,
            ),
            // Many small fragments.
            (
                (0..16)
                    .flat_map(|i| {
                        let op = if i == 0 {
                            OpCode::Binary
                        } else {
                            OpCode::Continuation
                        };
                        client_frame_rsv(false, 0, op, &[0; 100])
                    })
                    .collect(),
                ProtocolError::MessageTooBig,
            ),
        ];
        for (bytes, error) in oversized {
            expect_failure(settings.clone(), "", &bytes, error, 1009);
        }
    }

    #[test]
    fn fragments_and_control_frames_between_them() {
        let mut h = Harness::open(Settings::default());
        let mut bytes = client_frame_rsv(false, 0, OpCode::Text, "h€".as_bytes());
        bytes.extend(client_frame(OpCode::Ping, b"in between"));
        bytes.extend(client_frame_rsv(false, 0, OpCode::Continuation, b"ll"));
        bytes.extend(client_frame(OpCode::Continuation, b"o"));
        h.feed(&bytes);
        // Assembled across fragments: owned, not borrowed.
        assert_eq!(h.take_seen(), vec![Seen::Text("h€llo".to_owned(), false)]);
        let frames = h.frames();
        assert_eq!(
            (frames[0].opcode, &frames[0].payload[..]),
            (0xA, &b"in between"[..])
        );
        assert_eq!(h.conn.memory(), 0, "nothing kept once the message is out");
        // Binary fragments, one of them empty.
        let mut bytes = client_frame_rsv(false, 0, OpCode::Binary, &[1, 2]);
        bytes.extend(client_frame_rsv(false, 0, OpCode::Continuation, &[]));
        bytes.extend(client_frame(OpCode::Continuation, &[3]));
        h.feed(&bytes);
        assert_eq!(h.take_seen(), vec![Seen::Binary(vec![1, 2, 3], false)]);
    }

    /// §5.6: text is UTF-8 as a whole message, so a code point may be split between
    /// fragments: "a€b" with € cut 2/1, then 🦀 over three fragments.
    #[test]
    fn a_code_point_may_span_fragments() {
        let mut h = Harness::open(Settings::default());
        let mut bytes = client_frame_rsv(false, 0, OpCode::Text, b"a\xe2\x82");
        bytes.extend(client_frame(OpCode::Continuation, b"\xacb"));
        bytes.extend(client_frame_rsv(false, 0, OpCode::Text, b"\xf0"));
        bytes.extend(client_frame_rsv(
            false,
            0,
            OpCode::Continuation,
            b"\x9f\xa6",
        ));
        bytes.extend(client_frame(OpCode::Continuation, b"\x80"));
        h.feed(&bytes);
        assert_eq!(
            h.take_seen(),
            vec![
                Seen::Text("a€b".to_owned(), false),
                Seen::Text("🦀".to_owned(), false)
            ]
        );
    }

    /// Whatever the reads (header, mask, code points and a control frame cut anywhere),
    /// the same messages and pongs come out as from one read.
    #[test]
    fn frames_split_across_reads_decode_as_one_read() {
        let text: String = "aé€🦀".chars().cycle().take(150).collect();
        let mut bytes = client_frame(OpCode::Text, text.as_bytes());
        bytes.extend(client_frame(OpCode::Ping, b"split ping"));
        bytes.extend(client_frame(OpCode::Binary, &[7; 300]));
        let run = |cuts: &mut dyn Iterator<Item = usize>| {
            let mut h = Harness::open(Settings::default());
            let mut at = 0;
            for cut in cuts.chain([bytes.len()]) {
                h.feed(&bytes[at..cut]);
                at = cut;
            }
            let seen: Vec<Seen> = h
                .take_seen()
                .into_iter()
                .map(|seen| match seen {
                    Seen::Text(t, _) => Seen::Text(t, false),
                    Seen::Binary(b, _) => Seen::Binary(b, false),
                    other => other,
                })
                .collect();
            (seen, h.frames())
        };
        let whole = run(&mut std::iter::empty());
        assert_eq!(whole.0.len(), 2);
        assert_eq!(whole.1.len(), 1, "the pong");
        for cut in 1..bytes.len() {
            assert_eq!(run(&mut std::iter::once(cut)), whole, "cut at {cut}");
        }
        assert_eq!(run(&mut (1..bytes.len())), whole, "one byte at a time");
        assert_eq!(run(&mut (1..bytes.len()).step_by(7)), whole, "7 at a time");
    }

    #[test]
    fn a_whole_frame_in_one_read_is_handed_out_borrowed() {
        let mut h = Harness::open(Settings::default());
        let frame = client_frame(OpCode::Binary, b"zero copy");
        h.feed(&frame);
        assert_eq!(
            h.take_seen(),
            vec![Seen::Binary(b"zero copy".to_vec(), true)]
        );
        // Split across reads, it has to be assembled: owned.
        h.feed(&frame[..8]);
        assert_eq!(h.take_seen(), vec![]);
        assert!(h.conn.memory() > 0, "the partial payload is held");
        h.feed(&frame[8..]);
        assert_eq!(
            h.take_seen(),
            vec![Seen::Binary(b"zero copy".to_vec(), false)]
        );
        assert_eq!(h.conn.memory(), 0);
    }

    #[test]
    fn pings_are_answered_with_the_same_payload() {
        let mut h = Harness::open(Settings::default());
        h.feed(
            &[
                client_frame(OpCode::Ping, b"abc"),
                client_frame(OpCode::Ping, b""),
            ]
            .concat(),
        );
        let frames = h.frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[0].opcode, &frames[0].payload[..]),
            (0xA, &b"abc"[..])
        );
        assert!(frames[1].payload.is_empty());
        // The largest control payload (§5.5) is answered in full.
        h.feed(&client_frame(OpCode::Ping, &[7; 125]));
        assert_eq!(h.frames()[0].payload, [7; 125]);
        // Unsolicited pongs are ignored (§5.5.3).
        h.feed(&client_frame(OpCode::Pong, b"hello"));
        assert_eq!(h.take_seen(), vec![]);
        assert_eq!(h.frames(), vec![]);
    }

    #[test]
    fn frames_that_follow_the_request_are_decoded_after_the_upgrade() {
        let mut h = Harness::new(Settings::default());
        let mut bytes = upgrade_request("");
        bytes.extend(client_frame(OpCode::Text, b"early"));
        bytes.extend(client_frame_rsv(false, 0, OpCode::Text, b"par"));
        h.feed(&bytes);
        assert!(!h.conn.wants_read(), "one request at a time");
        h.accept().unwrap();
        assert!(h.http().starts_with("HTTP/1.1 101 "));
        assert_eq!(h.take_seen(), vec![Seen::Text("early".to_owned(), false)]);
        assert!(h.conn.wants_read());
        h.feed(&client_frame(OpCode::Continuation, b"tial"));
        assert_eq!(h.take_seen(), vec![Seen::Text("partial".to_owned(), false)]);
    }

    /// A compressed client message (RFC 7692 §7.2.1: the sync tail removed).
    fn compressed(payload: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        Deflater::new(15, 6).compress(payload, &mut packed, true);
        client_frame_rsv(true, 0b100, OpCode::Text, &packed)
    }

    fn deflate_settings(max_message: u64) -> Settings {
        Settings {
            deflate: Some(DeflateConfig::default()),
            limits: Limits {
                max_frame: 1 << 20,
                max_message,
            },
            ..Settings::default()
        }
    }

    const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate\r\n";

    #[test]
    fn compressed_messages_are_inflated_and_validated() {
        let mut h = Harness::open_with(deflate_settings(1 << 20), OFFER);
        assert!(h.conn.deflate_params().is_some());
        h.feed(&compressed("squeezed ".repeat(20).as_bytes()));
        assert_eq!(
            h.take_seen(),
            vec![Seen::Text("squeezed ".repeat(20), false)]
        );
        expect_failure(
            deflate_settings(1 << 20),
            OFFER,
            &compressed(&[0xff, 0xfe]),
            ProtocolError::InvalidUtf8,
            1007,
        );
        expect_failure(
            deflate_settings(1 << 20),
            OFFER,
            &client_frame_rsv(true, 0b100, OpCode::Binary, &[0xff; 8]),
            ProtocolError::BadCompressedData,
            1007,
        );
    }

    #[test]
    fn a_deflate_bomb_fails_with_1009_within_the_message_limit() {
        let bomb = compressed(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 2048);
        expect_failure(
            deflate_settings(64 * 1024),
            OFFER,
            &bomb,
            ProtocolError::MessageTooBig,
            1009,
        );
    }

    /// Large messages (at least the pool's large size) are read straight into place.
    fn large_settings() -> Settings {
        Settings {
            large_payload: 4096,
            ..Settings::default()
        }
    }

    #[test]
    fn large_messages_are_read_into_place_and_echoed() {
        let mut h = Harness::open(large_settings());
        h.echo = true;
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let wire = [
            client_frame(OpCode::Binary, &payload),
            client_frame(OpCode::Ping, b"after"),
        ]
        .concat();
        h.feed(&wire[..1000]);
        assert!(h.conn.memory() >= payload.len(), "reserved from the header");
        let direct = h.feed_reads(&wire[1000..]);
        assert_eq!(direct, 1, "the rest of the payload in one read");
        assert_eq!(h.take_seen(), vec![Seen::Binary(payload.clone(), false)]);
        let frames = h.frames();
        assert_eq!(frames[0].payload, payload, "the echo");
        assert_eq!(
            (frames[1].opcode, &frames[1].payload[..]),
            (0xA, &b"after"[..])
        );
        assert_eq!(h.conn.memory(), 0);
        assert!(
            h.shared.pool.idle_bytes() == 0,
            "the message went to the scratch buffer"
        );
    }

    #[test]
    fn fragmented_and_text_large_messages_take_the_same_path() {
        let mut h = Harness::open(large_settings());
        let text = "héllo wörld ".repeat(3000);
        let bytes = text.as_bytes();
        let (a, b) = bytes.split_at(20_001); // inside a two-byte character
        let wire = [
            client_frame_rsv(false, 0, OpCode::Text, a),
            client_frame(OpCode::Ping, b"p"),
            client_frame(OpCode::Continuation, b),
        ]
        .concat();
        // The header first, then the rest of the first fragment with the ping and the next
        // header, then the rest of the message.
        let second = wire.len() - b.len() + 20;
        let direct = h.feed_reads(&wire[..100])
            + h.feed_reads(&wire[100..second])
            + h.feed_reads(&wire[second..]);
        assert_eq!(direct, 2, "each fragment's payload read into place");
        assert_eq!(h.take_seen(), vec![Seen::Text(text, false)]);
        // Invalid text read into place fails the connection with 1007 at once.
        let mut bad = vec![b'a'; 50_000];
        bad[10_000] = 0xc3;
        let wire = client_frame(OpCode::Text, &bad);
        h.feed_reads(&wire[..20]);
        h.feed_reads(&wire[20..20_000]);
        assert_eq!(h.close_frame().0, 1007);
        assert_eq!(h.conn.read_target(), None);
    }

    #[test]
    fn no_read_target_while_input_is_held_back_or_after_the_end() {
        let mut h = Harness::open(large_settings());
        let wire = client_frame(OpCode::Binary, &[5; 50_000]);
        h.feed(&wire[..100]);
        assert!(h.conn.read_target().is_some());
        h.conn.defer(&wire[100..200]);
        assert_eq!(h.conn.read_target(), None, "held-back input goes first");
        h.resume();
        // 8 header bytes and 192 payload bytes are in.
        assert_eq!(h.conn.read_target().map(|t| t.len()), Some(50_000 - 192));
        h.conn.handle_transport_error();
        assert_eq!(h.conn.read_target(), None);
    }

    #[test]
    fn a_large_compressed_message_is_read_into_place_then_inflated() {
        let settings = Settings {
            large_payload: 4096,
            ..deflate_settings(1 << 20)
        };
        let mut h = Harness::open_with(settings, OFFER);
        let mut seed = 7u32;
        let text: String = (0..40_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                char::from(b'a' + (seed >> 16) as u8 % 26)
            })
            .collect();
        let wire = compressed(text.as_bytes());
        assert!(wire.len() > 8192, "compressed to {} bytes", wire.len());
        let direct = h.feed_reads(&wire[..50]) + h.feed_reads(&wire[50..]);
        assert_eq!(direct, 1);
        assert_eq!(h.take_seen(), vec![Seen::Text(text, false)]);
    }
}
