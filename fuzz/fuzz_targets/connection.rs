//! The whole server-side connection, without sockets: the request head is collected and
//! scanned, parsed and validated; plain HTTP requests on a keep-alive connection are answered
//! in turn; after the upgrade, the bytes behind the head and every later read go to the
//! decoder; pings are answered with pongs, a close with a close, an error with a close
//! carrying its code, and then the connection ignores input (as the reactor does). When the
//! configuration allows it and the client offers it, permessage-deflate is negotiated and
//! compressed messages are inflated within the message limit.
//!
//! Checks: no panic; memory bounded (head buffer by `max_head`, decoder by the limits);
//! output bounded by input; server frames well formed; and the transcript (bytes written plus
//! the final state) is the same whether the input arrives in one read or cut per the plan.
//!
//! Input: `[max_frame, max_message, head_sel, plan.., data..]`: `head_sel & 0x80` gives the
//! default 8 KiB `max_head` (else `(head_sel & 0x1f) * 16`), `head_sel & 0x40` enables
//! permessage-deflate, `head_sel & 0x20` with context takeover.
#![no_main]

mod common;

use common::{take_limits, take_plan};
use libfuzzer_sys::fuzz_target;
use wsloop_proto::close::truncate_reason;
use wsloop_proto::deflate::{negotiate, DeflateConfig, DeflateParams, Inflater};
use wsloop_proto::frame::{server_header, MAX_HEADER_LEN};
use wsloop_proto::handshake::{
    validate_upgrade, write_accept_response, HandshakeError, HeadScanner, RequestHead, EMPTY_HEADER,
};
use wsloop_proto::{CloseCode, Decoder, Event, Limits, MessageKind, OpCode, Outcome};

/// The reactor's header array size.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still reading (a head, or frames).
    Open,
    /// Refused or answered with `Connection: close` (an HTTP status).
    Http(u16),
    /// Closed after a close frame from the client, or failed with a code.
    Closed(u16),
}

struct Conn {
    limits: Limits,
    max_head: usize,
    deflate_config: Option<DeflateConfig>,
    /// What was negotiated, and the inflater (shared or per connection, as the reactor has).
    deflate: Option<(DeflateParams, Inflater)>,
    /// `Some` while collecting request heads.
    head: Option<(Vec<u8>, HeadScanner)>,
    decoder: Decoder,
    out: Vec<u8>,
    end: End,
    messages: usize,
}

impl Conn {
    fn new(limits: Limits, max_head: usize, deflate_config: Option<DeflateConfig>) -> Conn {
        Conn {
            limits,
            max_head,
            deflate_config,
            deflate: None,
            head: Some((Vec::new(), HeadScanner::default())),
            decoder: Decoder::new(),
            out: Vec::new(),
            end: End::Open,
            messages: 0,
        }
    }

    fn on_read(&mut self, input: &mut [u8]) {
        if self.end != End::Open {
            return; // Lingering: input is discarded.
        }
        match &mut self.head {
            Some((buf, _)) => {
                buf.extend_from_slice(input);
                self.on_head_bytes();
            }
            None => self.on_frames(input),
        }
    }

    fn refuse(&mut self, status: u16) {
        self.out
            .extend_from_slice(format!("HTTP/1.1 {status} x\r\n\r\n").as_bytes());
        self.end = End::Http(status);
        self.head = None;
    }

    fn on_head_bytes(&mut self) {
        loop {
            let Some((buf, scanner)) = &mut self.head else {
                return;
            };
            let end = match scanner.scan(buf, self.max_head) {
                Ok(Some(end)) => end,
                Ok(None) => {
                    assert!(buf.len() <= self.max_head, "head buffer past max_head");
                    return;
                }
                Err(e) => {
                    assert_eq!(e, HandshakeError::HeadTooLarge);
                    return self.refuse(e.status());
                }
            };
            let Some((mut buf, _)) = self.head.take() else {
                return;
            };
            assert!(end <= buf.len() && end <= self.max_head);
            let mut rest = buf.split_off(end);
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let req = match RequestHead::parse(&buf, &mut headers) {
                Ok(req) => req,
                Err(e) => return self.refuse(e.status()),
            };
            if req.wants_websocket() {
                match validate_upgrade(&req) {
                    Ok(upgrade) => {
                        let offers = req
                            .headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                            .map(|h| h.value);
                        let params = self
                            .deflate_config
                            .as_ref()
                            .and_then(|c| negotiate(offers, c));
                        let extensions = params.map(|p| p.response_value());
                        write_accept_response(
                            &mut self.out,
                            upgrade.key,
                            None,
                            extensions.as_deref(),
                        );
                        if let Some(params) = params {
                            self.decoder.enable_compression();
                            self.deflate = Some((params, Inflater::new()));
                        }
                        // Bytes after the head are the first frames.
                        self.on_frames(&mut rest);
                    }
                    Err(e) => self.refuse(e.status()),
                }
                return;
            }
            let keep_alive = req.keep_alive();
            self.out
                .extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            if !keep_alive {
                self.end = End::Http(404);
                return;
            }
            // Keep-alive: the next request may already be in `rest`.
            self.head = Some((rest, HeadScanner::default()));
        }
    }

    fn on_frames(&mut self, input: &mut [u8]) {
        let mut pos = 0;
        // Like the reactor: decode while input remains (an empty read makes no call).
        while pos < input.len() && self.end == End::Open {
            let remaining = input.len() - pos;
            let rest = &mut input[pos..];
            let d = self.decoder.decode(&self.limits, rest);
            assert!(d.consumed <= remaining);
            let bound = usize::try_from(self.limits.max_message)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
                .max(8)
                + 256;
            assert!(
                self.decoder.buffered() <= bound,
                "decoder holds {} bytes with {:?}",
                self.decoder.buffered(),
                self.limits
            );
            pos += d.consumed;
            match d.outcome {
                Outcome::NeedMore => {
                    assert_eq!(d.consumed, remaining);
                    return;
                }
                Outcome::Event(event) => {
                    assert!(d.consumed > 0);
                    self.on_event(event, rest);
                }
                Outcome::Error(e) => {
                    assert_eq!(d.consumed, remaining);
                    let code = CloseCode::from(&e);
                    assert!(code.is_sendable());
                    self.send_close(code, "");
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, input: &[u8]) {
        match event {
            Event::Message(kind, payload) => {
                let bytes = payload.bytes(input);
                assert!(bytes.len() as u64 <= self.limits.max_message);
                if kind == MessageKind::Text {
                    assert!(std::str::from_utf8(bytes).is_ok(), "invalid text delivered");
                }
                self.messages += 1;
            }
            Event::Compressed(kind, payload) => {
                let bytes = payload.bytes(input);
                assert!(bytes.len() as u64 <= self.limits.max_message);
                let max = usize::try_from(self.limits.max_message).unwrap_or(usize::MAX);
                let Some((params, inflater)) = &mut self.deflate else {
                    panic!("a compressed message without permessage-deflate");
                };
                let mut out = Vec::new();
                let result =
                    inflater.inflate(bytes, &mut out, max, params.client_no_context_takeover);
                // The bomb bound: never more than the limit (+1 to detect it) allocated.
                assert!(
                    out.capacity() <= max.saturating_add(1),
                    "inflated into {} bytes with max {max}",
                    out.capacity()
                );
                match result {
                    Ok(()) => {
                        assert!(out.len() <= max);
                        if kind == MessageKind::Text && std::str::from_utf8(&out).is_err() {
                            return self.send_close(CloseCode::INVALID_PAYLOAD, "");
                        }
                        self.messages += 1;
                    }
                    Err(e) => {
                        let code = CloseCode::from(&e);
                        assert!(code.is_sendable());
                        self.send_close(code, "");
                    }
                }
            }
            Event::Ping(payload) => {
                let bytes = payload.bytes(input);
                assert!(bytes.len() <= 125);
                self.send_frame(OpCode::Pong, &[bytes]);
            }
            Event::Pong(payload) => assert!(payload.bytes(input).len() <= 125),
            Event::Close { code, payload } => {
                let bytes = payload.bytes(input);
                assert!(bytes.len() <= 125);
                // §5.5.1: echo the status code.
                let echo = code.map(|c| c.0.to_be_bytes());
                self.send_frame(OpCode::Close, &[echo.as_ref().map_or(&[][..], |b| b)]);
                self.end = End::Closed(code.map_or(1005, |c| c.0));
            }
        }
    }

    fn send_close(&mut self, code: CloseCode, reason: &str) {
        let reason = truncate_reason(reason);
        self.send_frame(OpCode::Close, &[&code.0.to_be_bytes(), reason.as_bytes()]);
        self.end = End::Closed(code.0);
    }

    fn send_frame(&mut self, opcode: OpCode, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, len, &mut header);
        // A control frame's header is two bytes: FIN + opcode, unmasked length ≤ 125.
        assert!(opcode.is_control() && len <= 125);
        assert_eq!(&header[..n], &[0x80 | opcode.bits(), len as u8]);
        self.out.extend_from_slice(&header[..n]);
        for p in parts {
            self.out.extend_from_slice(p);
        }
    }
}

fn run(
    limits: Limits,
    head_sel: u8,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> (Vec<u8>, End, usize) {
    let max_head = if head_sel & 0x80 != 0 {
        8 * 1024
    } else {
        usize::from(head_sel & 0x1f) * 16
    };
    let deflate = (head_sel & 0x40 != 0).then(|| DeflateConfig {
        context_takeover: head_sel & 0x20 != 0,
        ..DeflateConfig::default()
    });
    let mut conn = Conn::new(limits, max_head, deflate);
    let mut buf = data.to_vec();
    for r in ranges {
        conn.on_read(&mut buf[r.clone()]);
    }
    // Pongs are shorter than the pings they answer (2 header bytes vs 6), so the output is
    // bounded by the input plus one handshake answer, one refusal and one close per request.
    let requests = data.windows(4).filter(|w| w == b"\r\n\r\n").count();
    assert!(
        conn.out.len() <= data.len() + 512 + 64 * requests,
        "{} bytes out for {} in",
        conn.out.len(),
        data.len()
    );
    (conn.out, conn.end, conn.messages)
}

fuzz_target!(|input: &[u8]| {
    let (limits, rest) = take_limits(input);
    let Some((&head_sel, rest)) = rest.split_first() else {
        return;
    };
    let (plan, data) = take_plan(rest);
    let whole = run(limits, head_sel, data, &[0..data.len()]);
    let split = run(limits, head_sel, data, &plan.ranges(data.len()));
    assert_eq!(whole, split, "split {plan:?} changed the transcript");
});
