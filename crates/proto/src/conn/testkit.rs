//! The connection's unit tests' client and reactor: masked client frames built with the crate's
//! own encoder, a tiny reader of the server's (unmasked) frames, and a [`Harness`] that drives
//! one [`Connection`] the way a reactor does, on a virtual clock, recording what the
//! application saw and everything written.

use std::time::Duration;

use crate::frame::FrameHeader;
use crate::handshake::{validate_upgrade, RequestHead, EMPTY_HEADER};
use crate::mask::apply_mask;
use crate::time::Tick;
use crate::OpCode;

use super::{ActionError, Connection, Event, Message, ProxyPolicy, Request, Settings, Shared};

/// The RFC's sample key.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request for `/`, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(extra: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked client frame with RSV bits `rsv` (0b100 is RSV1).
pub fn client_frame_rsv(fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, (payload.len() as u8) ^ opcode.bits()];
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; crate::frame::MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut bytes = head[..n].to_vec();
    bytes.extend_from_slice(payload);
    apply_mask(&mut bytes[n..], key, 0);
    bytes
}

/// A masked, unfragmented client frame.
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    client_frame_rsv(true, 0, opcode, payload)
}

/// A masked client close frame with `code` and `reason`.
pub fn client_close(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(OpCode::Close, &payload)
}

/// A server frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code and reason.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, 0x8, "not a close frame: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (code, String::from_utf8(self.payload[2..].to_vec()).unwrap())
    }
}

/// Reads server frames (unmasked, RFC 6455 §5.2) until `bytes` is used up; panics on anything
/// else, a partial frame included (the connection writes whole frames).
pub fn server_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (b0, b1) = (bytes[0], bytes[1]);
        assert_eq!(b1 & 0x80, 0, "a masked server frame");
        let (len, at) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        frames.push(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0f,
            payload: bytes[at..at + len].to_vec(),
        });
        bytes = &bytes[at + len..];
    }
    frames
}

/// What the application saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A text message, and whether it was borrowed from the input (zero copy).
    Text(String, bool),
    /// A binary message, and whether it was borrowed from the input.
    Binary(Vec<u8>, bool),
    Event(Event),
}

/// One connection driven like a reactor drives it, on a virtual clock.
pub struct Harness {
    pub conn: Connection,
    pub shared: Shared,
    pub now: Tick,
    /// Everything the connection wrote.
    pub out: Vec<u8>,
    /// How much of `out` the test has looked at.
    looked: usize,
    pub seen: Vec<Seen>,
    /// The application echoes every message as it arrives.
    pub echo: bool,
    /// The reactor's scratch buffer for messages that cannot be borrowed from the input.
    scratch: Vec<u8>,
}

impl Harness {
    /// A connection just accepted (request phase) at t = 1 s.
    pub fn new(settings: Settings) -> Harness {
        Harness::with_proxy(settings, None)
    }

    /// Like [`Harness::new`], expecting a PROXY header per `proxy`.
    pub fn with_proxy(settings: Settings, proxy: Option<ProxyPolicy>) -> Harness {
        let shared = Shared::new(settings);
        let now = Tick::from_micros(1_000_000);
        Harness {
            conn: Connection::new(now, proxy, &shared),
            shared,
            now,
            out: Vec::new(),
            looked: 0,
            seen: Vec::new(),
            echo: false,
            scratch: Vec::new(),
        }
    }

    /// An open connection (upgraded with `extra` request headers), its 101 already read.
    pub fn open_with(settings: Settings, extra: &str) -> Harness {
        let mut h = Harness::new(settings);
        h.feed(&upgrade_request(extra));
        h.accept().unwrap();
        assert!(h.http().starts_with("HTTP/1.1 101 "));
        h
    }

    /// An open connection with the default settings.
    pub fn open(settings: Settings) -> Harness {
        Harness::open_with(settings, "")
    }

    /// One read of `bytes`: handed to the connection until consumed, each message and event
    /// taken before the next call; then held-back input is resumed, as a reactor does.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut buf = bytes.to_vec();
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut pos = 0;
        while pos < buf.len() {
            let input = &mut buf[pos..];
            let range = input.as_ptr_range();
            let got = self.conn.handle_input(
                self.now,
                input,
                &mut scratch,
                &mut self.out,
                &mut self.shared,
            );
            assert!(got.consumed > 0 || got.message.is_some(), "no progress");
            pos += got.consumed;
            if let Some(message) = got.message {
                let zero_copy = range.contains(&message.as_bytes().as_ptr());
                self.on_message(message, zero_copy);
            }
            self.drain_events();
        }
        self.scratch = scratch;
        self.resume();
    }

    /// One arrival of `bytes`, read as a reactor with direct reads reads it: each read lands
    /// in the connection's read target when it lends one (at most its length; the rest is
    /// left for the next read), else the rest of the arrival is fed as one read. Returns how
    /// many reads went into place.
    pub fn feed_reads(&mut self, bytes: &[u8]) -> usize {
        let mut direct = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(target) = self.conn.read_target() else {
                self.feed(&bytes[pos..]);
                return direct;
            };
            let n = target.len().min(bytes.len() - pos);
            target[..n].copy_from_slice(&bytes[pos..pos + n]);
            pos += n;
            direct += 1;
            let mut scratch = std::mem::take(&mut self.scratch);
            let got =
                self.conn
                    .handle_direct(self.now, n, &mut scratch, &mut self.out, &mut self.shared);
            assert_eq!(got.consumed, n);
            if let Some(message) = got.message {
                self.on_message(message, false);
            }
            self.drain_events();
            self.scratch = scratch;
        }
        direct
    }

    /// Decodes held-back input while the connection says there is some to decode.
    pub fn resume(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..10_000 {
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
                self.on_message(message, false);
            }
            self.drain_events();
        }
        panic!("held-back input never drained");
    }

    /// Moves the clock by `d` and handles the timeout (whether or not one is due: spurious
    /// calls must be harmless), then resumes held-back input.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
        self.conn
            .handle_timeout(self.now, &mut self.out, &self.shared);
        self.drain_events();
        self.resume();
    }

    /// Moves the clock to the connection's next deadline and handles it.
    pub fn run_to_deadline(&mut self) {
        let at = self.conn.poll_timeout(&self.shared).expect("a deadline");
        self.advance(at.since(self.now));
    }

    fn on_message(&mut self, message: Message<'_>, zero_copy: bool) {
        if self.echo {
            let sent = self.conn.send(
                message.kind(),
                message.as_bytes(),
                &mut self.out,
                &mut self.shared,
            );
            assert_eq!(sent, Ok(()));
        }
        self.seen.push(match message {
            Message::Text(text) => Seen::Text(text.to_owned(), zero_copy),
            Message::Binary(bytes) => Seen::Binary(bytes.to_vec(), zero_copy),
        });
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            self.seen.push(Seen::Event(event));
        }
    }

    /// What the application saw since the last call.
    pub fn take_seen(&mut self) -> Vec<Seen> {
        self.drain_events();
        std::mem::take(&mut self.seen)
    }

    /// The events seen since the last call (messages dropped).
    pub fn events(&mut self) -> Vec<Event> {
        self.take_seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    /// The bytes written since the last look, as text (HTTP answers).
    pub fn http(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.out[self.looked..]).into_owned();
        self.looked = self.out.len();
        text
    }

    /// The server frames written since the last look.
    pub fn frames(&mut self) -> Vec<Frame> {
        let frames = server_frames(&self.out[self.looked..]);
        self.looked = self.out.len();
        frames
    }

    /// Takes the first unanswered request the application saw.
    pub fn take_request(&mut self) -> Request {
        let at = self
            .seen
            .iter()
            .position(|s| matches!(s, Seen::Event(Event::Request(_))))
            .expect("a request");
        match self.seen.remove(at) {
            Seen::Event(Event::Request(request)) => request,
            _ => unreachable!(),
        }
    }

    /// Accepts the pending upgrade request (validated first), then resumes the bytes that
    /// followed it.
    pub fn accept(&mut self) -> Result<(), ActionError> {
        let request = self.take_request();
        let mut headers = [EMPTY_HEADER; 64];
        let head = RequestHead::parse(&request.head, &mut headers).unwrap();
        validate_upgrade(&head).unwrap();
        self.conn
            .accept(self.now, &head, None, &mut self.out, &self.shared)?;
        self.resume();
        Ok(())
    }

    /// Answers the pending request with `response`.
    pub fn respond(&mut self, response: &str, keep_alive: bool) -> Result<(), ActionError> {
        self.conn.respond(
            self.now,
            &[response.as_bytes()],
            keep_alive,
            &mut self.out,
            &self.shared,
        )?;
        self.drain_events();
        Ok(())
    }

    /// The application closes with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<(), ActionError> {
        self.conn.close(
            self.now,
            crate::CloseCode(code),
            reason,
            &mut self.out,
            &self.shared,
        )
    }

    /// The application sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), ActionError> {
        self.conn.send(
            crate::MessageKind::Text,
            text.as_bytes(),
            &mut self.out,
            &mut self.shared,
        )
    }

    /// The one close frame written since the last look, checked to be the last frame:
    /// (code, reason).
    pub fn close_frame(&mut self) -> (u16, String) {
        let frames = self.frames();
        let closes: Vec<&Frame> = frames.iter().filter(|f| f.opcode == 0x8).collect();
        assert_eq!(closes.len(), 1, "one close frame expected in {frames:?}");
        assert_eq!(frames.last().map(|f| f.opcode), Some(0x8), "{frames:?}");
        closes[0].close()
    }
}

/// A text message the application saw, borrowed from the input.
pub fn text(s: &str) -> Seen {
    Seen::Text(s.to_owned(), true)
}

/// Settings with the given keepalive.
pub fn keepalive(ping: Option<u64>, idle: Option<u64>) -> Settings {
    Settings {
        ping_interval: ping.map(Duration::from_secs),
        idle_timeout: idle.map(Duration::from_secs),
        ..Settings::default()
    }
}
