//! The client side of the wire, sans-IO: the upgrade request and its answer, masked client
//! frames out, unmasked server frames in.
//!
//! The server-side [`Decoder`](wsloop_proto::Decoder) insists on masks, so the load
//! generator has its own small decoder for server frames. It is incremental and never copies
//! payload: [`ClientDecoder::decode`] hands out [`Piece`]s that borrow the caller's read
//! buffer, each tagged with its offset in the frame's payload, so a frame split across reads
//! is verified chunk by chunk. Only a partial *header* (at most 14 bytes) is ever carried.
//!
//! permessage-deflate (RFC 7692) on the client side: the offer ([`CLIENT_OFFER`]) goes in the
//! upgrade request, the answer is checked by [`parse_upgrade_response`], RSV1 is accepted on
//! the first frame of a data message only once negotiated, and [`ClientDeflate`] compresses
//! and inflates with the server's own [`Deflater`] and [`Inflater`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use wsloop_proto::deflate::{
    accept_response, DeflateParams, Deflater, Inflater, ResponseError, CLIENT_OFFER,
};
use wsloop_proto::error::ProtocolError;
use wsloop_proto::frame::{FrameHeader, OpCode, Role, MAX_HEADER_LEN};
use wsloop_proto::handshake::accept_key;
use wsloop_proto::mask::apply_mask;

/// The header of a frame sent by a server (unmasked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHeader {
    /// Final fragment of its message.
    pub fin: bool,
    /// RSV1: the message is compressed (first frame of a data message, with deflate only).
    pub rsv1: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Parses a server frame header from the start of `buf` with the protocol crate's one
/// header parser, in the client role: `Ok(None)` while incomplete, else the header and its
/// length in bytes (2, 4 or 10). `deflate`: permessage-deflate was negotiated, so RSV1 may
/// mark a compressed message (on its first frame only, RFC 7692 §6.1).
///
/// # Errors
/// A header no server may send.
pub fn parse_server_header(
    buf: &[u8],
    deflate: bool,
) -> Result<Option<(ServerHeader, usize)>, ProtocolError> {
    let allowed_rsv = if deflate { 0x4 } else { 0 };
    Ok(
        FrameHeader::parse(buf, Role::Client, allowed_rsv)?.map(|(h, len)| {
            let header = ServerHeader {
                fin: h.fin,
                rsv1: h.rsv & 0x4 != 0,
                opcode: h.opcode,
                payload_len: h.payload_len,
            };
            (header, len)
        }),
    )
}

/// A contiguous part of one server frame's payload, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The frame this piece belongs to.
    pub header: ServerHeader,
    /// Where `data` starts within the frame's payload.
    pub offset: u64,
    /// The bytes (empty only for an empty frame).
    pub data: &'a [u8],
}

impl Piece<'_> {
    /// Whether this piece completes its frame.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.header.payload_len
    }

    /// Whether this piece starts its frame.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Incremental decoder of server frames. Carries at most a partial header between calls.
#[derive(Debug, Clone, Default)]
pub struct ClientDecoder {
    partial: [u8; MAX_HEADER_LEN],
    partial_len: usize,
    /// The frame whose payload is being received, and how much of it has arrived.
    current: Option<(ServerHeader, u64)>,
    /// permessage-deflate was negotiated: RSV1 is allowed on data frames.
    deflate: bool,
}

impl ClientDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> ClientDecoder {
        ClientDecoder::default()
    }

    /// A decoder for a connection that negotiated permessage-deflate when `deflate`.
    pub fn with_deflate(deflate: bool) -> ClientDecoder {
        ClientDecoder {
            deflate,
            ..ClientDecoder::default()
        }
    }

    /// Whether the decoder stands between two frames.
    pub fn at_boundary(&self) -> bool {
        self.partial_len == 0 && self.current.is_none()
    }

    /// Decodes from `input`; returns how many bytes were consumed and, possibly, a piece.
    ///
    /// Call again with the rest of the input until it is empty. Each call either consumes at
    /// least one byte or returns the piece of an empty frame, so the loop always progresses.
    /// A piece is returned for every frame at least once (its first bytes, or the whole empty
    /// payload); a header whose payload has not arrived yet returns no piece.
    ///
    /// # Errors
    /// A header no server may send; the decoder is then unusable.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Piece<'a>>), ProtocolError> {
        if let Some((header, offset)) = self.current {
            let remaining = header.payload_len - offset;
            let take = remaining.min(input.len() as u64) as usize;
            let data = input.get(..take).unwrap_or_default();
            let end = offset + take as u64;
            self.current = (end < header.payload_len).then_some((header, end));
            let piece = (take > 0).then_some(Piece {
                header,
                offset,
                data,
            });
            return Ok((take, piece));
        }
        if self.partial_len == 0 {
            return match parse_server_header(input, self.deflate)? {
                Some((header, used)) => Ok(self.start(header, used, input)),
                None => {
                    // Shorter than a header, so it fits in `partial`.
                    let take = input.len().min(MAX_HEADER_LEN);
                    self.stash(input.get(..take).unwrap_or_default());
                    Ok((take, None))
                }
            };
        }
        let before = self.partial_len;
        let take = (MAX_HEADER_LEN - before).min(input.len());
        self.stash(input.get(..take).unwrap_or_default());
        let partial = self.partial.get(..self.partial_len).unwrap_or_default();
        let parsed = parse_server_header(partial, self.deflate)?;
        match parsed {
            Some((header, header_len)) => {
                self.partial_len = 0;
                // Only the header's bytes are consumed from `input`; the payload follows.
                let used = header_len - before;
                Ok(self.start(header, used, input))
            }
            None => Ok((take, None)),
        }
    }

    fn stash(&mut self, bytes: &[u8]) {
        for b in bytes {
            if let Some(slot) = self.partial.get_mut(self.partial_len) {
                *slot = *b;
                self.partial_len += 1;
            }
        }
    }

    /// A header ended at `input[used]`: hand out the payload bytes that follow it.
    fn start<'a>(
        &mut self,
        header: ServerHeader,
        used: usize,
        input: &'a [u8],
    ) -> (usize, Option<Piece<'a>>) {
        let rest = input.get(used..).unwrap_or_default();
        let take = header.payload_len.min(rest.len() as u64) as usize;
        let data = rest.get(..take).unwrap_or_default();
        self.current = ((take as u64) < header.payload_len).then_some((header, take as u64));
        let piece = (take > 0 || header.payload_len == 0).then_some(Piece {
            header,
            offset: 0,
            data,
        });
        (used + take, piece)
    }
}

/// Appends one masked, unfragmented client frame: header, then `payload` masked with `key`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    encode_frame_rsv(out, opcode, false, payload, key);
}

/// [`encode_frame`] with RSV1 set when `compressed` (a permessage-deflate message).
pub fn encode_frame_rsv(
    out: &mut Vec<u8>,
    opcode: OpCode,
    compressed: bool,
    payload: &[u8],
    key: [u8; 4],
) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin: true,
        rsv: if compressed { 0b100 } else { 0 },
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    }
    .encode(&mut head);
    out.extend_from_slice(head.get(..n).unwrap_or_default());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(tail) = out.get_mut(start..) {
        apply_mask(tail, key, 0);
    }
}

/// Appends a masked close frame with `code` and no reason.
pub fn encode_close(out: &mut Vec<u8>, code: u16, key: [u8; 4]) {
    encode_frame(out, OpCode::Close, &code.to_be_bytes(), key);
}

/// A small fast PRNG (xorshift64*) for mask keys, handshake keys and binary payloads.
/// Not cryptographic: the load generator only talks to loopback.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded from `seed` (zero is replaced by a constant).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        XorShift::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh 4-byte mask key.
    pub fn mask_key(&mut self) -> [u8; 4] {
        let b = self.next_u64().to_le_bytes();
        [b[0], b[1], b[2], b[3]]
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            for (dst, src) in chunk.iter_mut().zip(bytes) {
                *dst = src;
            }
        }
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64.
    pub fn handshake_key(&mut self) -> String {
        let mut raw = [0u8; 16];
        self.fill(&mut raw);
        BASE64.encode(raw)
    }
}

/// Appends an upgrade request for `path` on `host` with `key`, offering permessage-deflate
/// ([`CLIENT_OFFER`]) when `deflate`.
pub fn write_upgrade_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, deflate: bool) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
        key,
        "\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(CLIENT_OFFER.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Largest response head accepted from the server.
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// Why an upgrade answer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeError {
    /// No blank line within [`MAX_RESPONSE_HEAD`] bytes.
    HeadTooLong,
    /// The status line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A status other than 101.
    Status(u16),
    /// `Upgrade: websocket` or `Connection: Upgrade` missing.
    NotUpgraded,
    /// `Sec-WebSocket-Accept` missing or wrong.
    BadAccept,
    /// A `Sec-WebSocket-Extensions` answer the client must refuse.
    Extension(ResponseError),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::HeadTooLong => f.write_str("response head too long"),
            UpgradeError::BadStatusLine => f.write_str("malformed status line"),
            UpgradeError::Status(code) => write!(f, "status {code} instead of 101"),
            UpgradeError::NotUpgraded => f.write_str("Upgrade/Connection headers missing"),
            UpgradeError::BadAccept => f.write_str("wrong or missing Sec-WebSocket-Accept"),
            UpgradeError::Extension(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// A valid `101` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    /// Length of the response head: bytes after it already belong to the WebSocket stream.
    pub head_len: usize,
    /// The permessage-deflate parameters, when the server accepted the offer.
    pub deflate: Option<DeflateParams>,
}

/// Checks the server's answer to an upgrade request sent with `key` (and with
/// [`CLIENT_OFFER`] when `deflate_offered`).
///
/// Returns `Ok(None)` until the head is complete.
///
/// # Errors
/// Anything but a valid `101 Switching Protocols` for this key, including an extension the
/// request did not offer.
pub fn parse_upgrade_response(
    buf: &[u8],
    key: &str,
    deflate_offered: bool,
) -> Result<Option<Upgraded>, UpgradeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err(UpgradeError::HeadTooLong)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(buf.get(..end).unwrap_or_default())
        .map_err(|_| UpgradeError::BadStatusLine)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(UpgradeError::BadStatusLine);
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(UpgradeError::BadStatusLine)?;
    if code != 101 {
        return Err(UpgradeError::Status(code));
    }
    let (mut upgrade, mut connection, mut accept_ok) = (false, false, false);
    let mut extensions: Vec<&str> = Vec::new();
    let expected = accept_key(key);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value == expected;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.push(value);
        }
    }
    if !(upgrade && connection) {
        return Err(UpgradeError::NotUpgraded);
    }
    if !accept_ok {
        return Err(UpgradeError::BadAccept);
    }
    let deflate = accept_response(extensions, deflate_offered).map_err(UpgradeError::Extension)?;
    Ok(Some(Upgraded {
        head_len: end + 4,
        deflate,
    }))
}

/// zlib level of the client's compressor: the fastest, so the load generator spends its CPU
/// on load, not on squeezing bytes (the server's own level is what a run measures).
pub const CLIENT_DEFLATE_LEVEL: u32 = 1;

/// One connection's client-side permessage-deflate state: what was agreed and, only where
/// context takeover needs them, the connection's own contexts. Without context takeover a
/// run shares one pair ([`SharedDeflate`]), as the server does, so thousands of connections
/// do not cost the load generator ~380 KiB each.
#[derive(Debug)]
pub struct ClientDeflate {
    /// What the server agreed to.
    pub params: DeflateParams,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

/// The contexts shared by every connection of a run that resets them after each message.
#[derive(Debug, Default)]
pub struct SharedDeflate {
    /// With the window bits it was made for (one per run in practice).
    deflater: Option<(u8, Deflater)>,
    inflater: Option<Inflater>,
}

impl SharedDeflate {
    /// Whether the shared compressor was made (some connection resets its context).
    pub fn deflater_in_use(&self) -> bool {
        self.deflater.is_some()
    }
}

impl ClientDeflate {
    /// State for a connection that agreed `params`; contexts are made on first use.
    pub fn new(params: DeflateParams) -> ClientDeflate {
        ClientDeflate {
            params,
            deflater: None,
            inflater: None,
        }
    }

    /// Appends `message` compressed to `out` (no sync tail), within the window the server
    /// allowed and resetting after it when told `client_no_context_takeover`.
    pub fn compress(&mut self, shared: &mut SharedDeflate, message: &[u8], out: &mut Vec<u8>) {
        let bits = self.params.client_max_window_bits.unwrap_or(15);
        let reset = self.params.client_no_context_takeover;
        let fresh = || Deflater::new(bits, CLIENT_DEFLATE_LEVEL);
        let deflater = if reset {
            if shared.deflater.as_ref().is_some_and(|(b, _)| *b != bits) {
                shared.deflater = None;
            }
            &mut shared.deflater.get_or_insert_with(|| (bits, fresh())).1
        } else {
            self.deflater.get_or_insert_with(fresh)
        };
        deflater.compress(message, out, reset);
    }

    /// Inflates one compressed message from the server (its frames' payloads joined) into
    /// `out`, at most `max` bytes; the context is kept unless `server_no_context_takeover`.
    ///
    /// # Errors
    /// See [`Inflater::inflate`].
    pub fn inflate(
        &mut self,
        shared: &mut SharedDeflate,
        payload: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let reset = self.params.server_no_context_takeover;
        let inflater = if reset {
            shared.inflater.get_or_insert_with(Inflater::new)
        } else {
            self.inflater.get_or_insert_with(Inflater::new)
        };
        inflater.inflate(payload, out, max, reset)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wsloop_proto::decoder::{Decoder, Event, Limits, Outcome};
    use wsloop_proto::frame::server_header;

    /// One unmasked server frame (the test side of the wire).
    pub(crate) fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, payload.len(), &mut head);
        let mut out = head[..n].to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns (header, reassembled payload) per frame.
    fn decode_all(input: &[u8], chunk: usize) -> Vec<(ServerHeader, Vec<u8>)> {
        let mut dec = ClientDecoder::new();
        let mut frames: Vec<(ServerHeader, Vec<u8>)> = Vec::new();
        for part in input.chunks(chunk) {
            let mut rest = part;
            while !rest.is_empty() {
                let (used, piece) = dec.decode(rest).unwrap();
                if let Some(p) = piece {
                    if p.is_first() {
                        frames.push((p.header, Vec::new()));
                    }
                    let last = frames.last_mut().unwrap();
                    assert_eq!(last.1.len() as u64, p.offset);
                    last.1.extend_from_slice(p.data);
                }
                rest = &rest[used..];
            }
        }
        assert!(dec.at_boundary());
        frames
    }

    #[test]
    fn decodes_every_length_class_in_every_split() {
        let payloads: Vec<Vec<u8>> = [0usize, 1, 125, 126, 127, 300, 65535, 65536, 70000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 + 7) as u8).collect())
            .collect();
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend(server_frame(OpCode::Binary, p));
        }
        stream.extend(server_frame(OpCode::Ping, b"hi"));
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let frames = decode_all(&stream, chunk);
            assert_eq!(frames.len(), payloads.len() + 1, "chunk {chunk}");
            for (f, p) in frames.iter().zip(&payloads) {
                assert_eq!(f.0.opcode, OpCode::Binary);
                assert_eq!(f.0.payload_len, p.len() as u64);
                assert_eq!(&f.1, p, "chunk {chunk}");
            }
            assert_eq!(frames.last().unwrap().0.opcode, OpCode::Ping);
            assert_eq!(frames.last().unwrap().1, b"hi");
        }
    }

    #[test]
    fn empty_frame_yields_one_piece() {
        let stream = server_frame(OpCode::Text, b"");
        let mut dec = ClientDecoder::new();
        let (used, piece) = dec.decode(&stream).unwrap();
        assert_eq!(used, 2);
        let p = piece.unwrap();
        assert!(p.is_first() && p.is_last() && p.data.is_empty());
    }

    #[test]
    fn header_then_payload_later_gives_no_empty_piece() {
        let stream = server_frame(OpCode::Text, b"abc");
        let mut dec = ClientDecoder::new();
        assert_eq!(dec.decode(&stream[..2]).unwrap(), (2, None));
        let (used, piece) = dec.decode(&stream[2..]).unwrap();
        assert_eq!(used, 3);
        assert_eq!(piece.unwrap().data, b"abc");
    }

    #[test]
    fn refuses_what_no_server_sends() {
        let e = |bytes: &[u8]| ClientDecoder::new().decode(bytes).unwrap_err();
        assert_eq!(e(&[0x81, 0x80, 1, 2, 3, 4]), ProtocolError::MaskedFrame);
        assert_eq!(e(&[0xC1, 0x00]), ProtocolError::ReservedBits);
        assert_eq!(e(&[0x83, 0x00]), ProtocolError::ReservedOpcode);
        assert_eq!(e(&[0x89, 126, 0, 200]), ProtocolError::ControlFrameTooLong);
        assert_eq!(e(&[0x09, 0x00]), ProtocolError::FragmentedControlFrame);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(e(&long), ProtocolError::LengthOverflow);
    }

    #[test]
    fn encoded_frames_pass_the_servers_decoder() {
        let mut rng = XorShift::new(42);
        let mut wire = Vec::new();
        let text = "hello 你好 😀".repeat(40);
        encode_frame(&mut wire, OpCode::Text, text.as_bytes(), rng.mask_key());
        encode_close(&mut wire, 1000, rng.mask_key());
        let mut dec = Decoder::new();
        let limits = Limits::default();
        let mut events = Vec::new();
        let mut input = wire.clone();
        let mut rest: &mut [u8] = &mut input;
        while !rest.is_empty() {
            let decoded = dec.decode(&limits, rest);
            match decoded.outcome {
                Outcome::Event(Event::Message(_, payload)) => {
                    events.push(format!("msg {}", payload.bytes(rest).len()))
                }
                Outcome::Event(Event::Close { code, .. }) => events.push(format!("close {code:?}")),
                Outcome::Event(other) => events.push(format!("{other:?}")),
                Outcome::NeedMore => {}
                Outcome::Error(e) => panic!("{e:?}"),
            }
            rest = &mut rest[decoded.consumed..];
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], format!("msg {}", text.len()));
        assert!(events[1].starts_with("close"), "{events:?}");
    }

    #[test]
    fn upgrade_round_trip() {
        let mut rng = XorShift::new(7);
        let key = rng.handshake_key();
        let mut req = Vec::new();
        write_upgrade_request(&mut req, "127.0.0.1:9001", "/chat", &key, false);
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /chat HTTP/1.1\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        assert!(!req.contains("Extensions"));
        let mut resp = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut resp, &key, None, None);
        let head_len = resp.len();
        resp.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade_response(&resp[..10], &key, false), Ok(None));
        let plain = Upgraded {
            head_len,
            deflate: None,
        };
        assert_eq!(parse_upgrade_response(&resp, &key, false), Ok(Some(plain)));
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Ok(Some(plain)),
            "a server may decline the offer"
        );
        assert_eq!(
            parse_upgrade_response(&resp, "dGhlIHNhbXBsZSBub25jZQ==", false),
            Err(UpgradeError::BadAccept)
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 503 Busy\r\n\r\n", &key, false),
            Err(UpgradeError::Status(503))
        );
        assert_eq!(
            parse_upgrade_response(&vec![b'a'; MAX_RESPONSE_HEAD + 1], &key, false),
            Err(UpgradeError::HeadTooLong)
        );
    }

    /// The server's real answer, with `extensions` as its `Sec-WebSocket-Extensions` value.
    fn answer_with(key: &str, extensions: &str) -> Vec<u8> {
        let mut resp = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut resp, key, None, Some(extensions));
        resp
    }

    #[test]
    fn deflate_offer_and_answer() {
        let key = XorShift::new(9).handshake_key();
        let mut req = Vec::new();
        write_upgrade_request(&mut req, "h", "/", &key, true);
        let req = String::from_utf8(req).unwrap();
        assert!(req.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ));
        let resp = answer_with(&key, "permessage-deflate; server_no_context_takeover");
        let up = parse_upgrade_response(&resp, &key, true).unwrap().unwrap();
        let params = up.deflate.unwrap();
        assert!(params.server_no_context_takeover);
        assert!(!params.client_no_context_takeover);
    }

    #[test]
    fn refuses_an_answer_it_did_not_offer() {
        let key = XorShift::new(10).handshake_key();
        // No offer at all, yet the server turned deflate on: its RSV1 frames would be
        // unreadable, so the client fails the connection (RFC 7692 §5).
        let resp = answer_with(&key, "permessage-deflate");
        assert_eq!(
            parse_upgrade_response(&resp, &key, false),
            Err(UpgradeError::Extension(ResponseError::NotOffered))
        );
        // An extension other than the one offered.
        let resp = answer_with(&key, "x-webkit-deflate-frame");
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Err(UpgradeError::Extension(ResponseError::NotOffered))
        );
        // A parameter that cannot be in an answer.
        let resp = answer_with(&key, "permessage-deflate; client_max_window_bits");
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Err(UpgradeError::Extension(ResponseError::BadParameter))
        );
    }

    #[test]
    fn rsv1_only_on_first_data_frames_with_deflate() {
        let mut dec = ClientDecoder::with_deflate(true);
        let (_, piece) = dec.decode(&[0xC1, 0x01, 0x00]).unwrap();
        assert!(piece.unwrap().header.rsv1);
        let e = |bytes: &[u8]| ClientDecoder::with_deflate(true).decode(bytes).unwrap_err();
        assert_eq!(
            e(&[0xC0, 0x00]),
            ProtocolError::ReservedBits,
            "continuation"
        );
        assert_eq!(e(&[0xC9, 0x00]), ProtocolError::ReservedBits, "ping");
        assert_eq!(e(&[0xA1, 0x00]), ProtocolError::ReservedBits, "RSV2");
    }

    #[test]
    fn client_deflate_round_trips_with_the_server_contexts() {
        let server = wsloop_proto::deflate::negotiate(
            [CLIENT_OFFER],
            &wsloop_proto::deflate::DeflateConfig {
                context_takeover: true,
                ..Default::default()
            },
        )
        .unwrap();
        let key = XorShift::new(11).handshake_key();
        let resp = answer_with(&key, &server.response_value());
        let params = parse_upgrade_response(&resp, &key, true)
            .unwrap()
            .unwrap()
            .deflate
            .unwrap();
        let mut client = ClientDeflate::new(params);
        let mut shared = SharedDeflate::default();
        let mut server_inflater = Inflater::new();
        let message = br#"{"user":"ann","text":"hello hello hello"}"#.repeat(20);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut packed = Vec::new();
            client.compress(&mut shared, &message, &mut packed);
            sizes.push(packed.len());
            let mut out = Vec::new();
            server_inflater
                .inflate(&packed, &mut out, 1 << 20, false)
                .unwrap();
            assert_eq!(out, message);
        }
        assert!(shared.deflater.is_none(), "context takeover: own context");
        assert!(
            sizes[1] < sizes[0],
            "the second message refers to the first"
        );
    }

    #[test]
    fn rng_masks_vary() {
        let mut rng = XorShift::new(1);
        assert_ne!(rng.mask_key(), rng.mask_key());
        let key = rng.handshake_key();
        assert_eq!(key.len(), 24);
    }
}
