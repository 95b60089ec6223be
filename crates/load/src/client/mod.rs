//! The client side of the protocol, sans-IO: one [`ClientConn`] per connection holds its
//! phase, its frame decoder, its output queue and its permessage-deflate state, and answers
//! the server's control frames itself. It never touches a socket or reads the clock; the
//! [driver](crate::driver) moves bytes in and out.
//!
//! The call order, for each connection:
//! 1. [`ClientConn::new`] queues the upgrade request in [`ClientConn::out`]; the caller writes
//!    the queue whenever the socket takes bytes, and [`OutQueue::advance`]s it by what was
//!    written.
//! 2. Every read goes to [`ClientConn::poll_event`] until the bytes are consumed: first
//!    [`Event::Opened`] once the `101` answer is complete, then [`Event::Data`] (borrowing the
//!    read buffer), [`Event::Pong`], [`Event::Close`]. A ping is answered with a pong here and
//!    produces no event; a close frame from the server is answered here too.
//! 3. Once open, the caller queues messages ([`ClientConn::send`], [`ClientConn::send_strip`]),
//!    pings and its own close, then writes the queue again.
//! 4. At end of stream, [`ClientConn::closed_cleanly`] tells whether the close handshake was
//!    complete.
//!
//! Masking keys come from the run's [`SmallRng`], seeded once from the operating system. RFC
//! 6455 §5.3 asks for keys a page's script cannot predict, so that it cannot choose the bytes
//! a proxy sees; a load generator runs no untrusted script and talks to loopback only, so a
//! fast non-cryptographic generator is enough (and pre-masked [`Strip`]s reuse one key).

mod decoder;
mod deflate;
mod out;
mod upgrade;

use std::fmt;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use wsloop_proto::close::{parse_close_payload, CloseCode};
use wsloop_proto::deflate::DeflateParams;
use wsloop_proto::error::ProtocolError;
use wsloop_proto::frame::OpCode;

pub use decoder::{ClientDecoder, Piece, RSV1};
pub use deflate::{ClientDeflate, SharedDeflate};
pub use out::{encode_frame, OutQueue, Strip, MAX_IOV};
pub use upgrade::{
    handshake_key, parse_upgrade_response, write_upgrade_request, UpgradeError, Upgraded,
    MAX_RESPONSE_HEAD,
};

/// What every connection of a run shares: the random generator, the deflate contexts of
/// connections that reset them after each message, and scratch space.
#[derive(Debug)]
pub struct Shared {
    /// Masking keys, handshake keys and random payloads.
    pub rng: SmallRng,
    /// Contexts of the connections that reset them after each message.
    pub deflate: SharedDeflate,
    /// A message being compressed.
    packed: Vec<u8>,
    /// The last compressed message inflated.
    inflated: Vec<u8>,
}

impl Shared {
    /// Shared state with a generator seeded from the operating system.
    pub fn new() -> Shared {
        Shared {
            rng: SmallRng::from_os_rng(),
            deflate: SharedDeflate::default(),
            packed: Vec::new(),
            inflated: Vec::new(),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// How a connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Offer permessage-deflate; once accepted, messages are compressed and compressed
    /// messages inflated.
    pub offer_deflate: bool,
    /// The connection sends and receives one message only (its deflate contexts need no
    /// history: see [`ClientDeflate::new`]).
    pub one_message: bool,
    /// Largest message the caller expects: a compressed message is gathered and inflated up
    /// to this size, and fails the connection beyond it.
    pub max_message: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            offer_deflate: false,
            one_message: false,
            // wsloop's default message limit.
            max_message: 16 << 20,
        }
    }
}

/// Part or all of a data message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    /// The message's opcode: text or binary.
    pub opcode: OpCode,
    /// Where `bytes` start within the message (after inflating, for a compressed one).
    pub offset: u64,
    /// The bytes: a piece of the read buffer, or a whole inflated message.
    pub bytes: &'a [u8],
    /// These bytes end the message.
    pub last: bool,
    /// Bytes on the wire (frame headers included) behind these bytes: summed over a
    /// message, its size on the wire.
    pub wire: u64,
}

/// What the server's bytes meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The server accepted the upgrade, with these permessage-deflate parameters if any.
    Opened {
        /// What the server agreed to, when it accepted the offer.
        deflate: Option<DeflateParams>,
    },
    /// Data, as it arrives.
    Data(Data<'a>),
    /// A pong, with its payload.
    Pong(&'a [u8]),
    /// The server's close frame: its code (1005 when it had none), and whether the client
    /// had sent its own first. When the server closed first, the reply is already queued.
    Close {
        /// The status code.
        code: u16,
        /// The client's close frame went first.
        client_first: bool,
    },
}

/// Why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The upgrade answer was refused.
    Upgrade(UpgradeError),
    /// The server's frames broke RFC 6455.
    Protocol(ProtocolError),
    /// A compressed message did not inflate within [`ConnConfig::max_message`].
    Inflate(ProtocolError),
    /// A frame after the server's close frame (§5.5.1: the close is its last frame).
    AfterClose,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Upgrade(e) => fmt::Display::fmt(e, f),
            ClientError::Protocol(e) => f.write_str(e.as_str()),
            ClientError::Inflate(e) => write!(f, "inflating a message: {e}"),
            ClientError::AfterClose => f.write_str("a frame after the close frame"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> ClientError {
        ClientError::Protocol(e)
    }
}

/// Where a connection stands.
#[derive(Debug)]
enum Phase {
    /// The request is queued or sent; the answer has not all come.
    Upgrading(Box<Upgrading>),
    /// Messages flow both ways.
    Open,
    /// The client's close frame is queued; the server's has not come.
    CloseSent,
    /// The server's close frame came (and was answered if it came first): only the end of
    /// the stream may follow.
    CloseReceived,
}

/// The upgrade in progress.
#[derive(Debug)]
struct Upgrading {
    /// The `Sec-WebSocket-Key` sent.
    key: String,
    /// The answer so far, when it did not come in one read.
    response: Vec<u8>,
    deflate_offered: bool,
}

impl Upgrading {
    /// Takes the answer's head from `input` (leaving the bytes after it): `Ok(None)` until
    /// the head is complete.
    fn take_answer(&mut self, input: &mut &[u8]) -> Result<Option<Upgraded>, UpgradeError> {
        let data = *input;
        if self.response.is_empty() {
            // Usually the whole answer comes in one read: parse it in place.
            if let Some(up) = parse_upgrade_response(data, &self.key, self.deflate_offered)? {
                *input = data.get(up.head_len..).unwrap_or_default();
                return Ok(Some(up));
            }
        }
        // A head is at most MAX_RESPONSE_HEAD bytes: keep no more than enough to tell.
        let before = self.response.len();
        let take = data
            .len()
            .min((MAX_RESPONSE_HEAD + 4).saturating_sub(before));
        self.response
            .extend_from_slice(data.get(..take).unwrap_or_default());
        match parse_upgrade_response(&self.response, &self.key, self.deflate_offered)? {
            Some(up) => {
                *input = data
                    .get(up.head_len.saturating_sub(before)..)
                    .unwrap_or_default();
                Ok(Some(up))
            }
            None => {
                *input = &[];
                Ok(None)
            }
        }
    }
}

/// The data message being received.
#[derive(Debug, Clone, Copy)]
struct Message {
    opcode: OpCode,
    /// RSV1 on its first frame: gathered whole, then inflated.
    compressed: bool,
    /// Bytes handed out so far (uncompressed) or gathered (compressed).
    offset: u64,
    /// Wire bytes of a compressed message so far.
    wire: u64,
}

/// One client connection, sans-IO. See the [module](self) for the call order.
#[derive(Debug)]
pub struct ClientConn {
    phase: Phase,
    decoder: ClientDecoder,
    /// Bytes to send, oldest first.
    pub out: OutQueue,
    message: Option<Message>,
    /// A control frame's payload when it came in parts.
    control: Vec<u8>,
    /// permessage-deflate, once accepted.
    deflate: Option<Box<ClientDeflate>>,
    /// The compressed message being gathered.
    packed: Vec<u8>,
    config: ConnConfig,
}

impl ClientConn {
    /// A connection to `path` on `host` (the `Host` header), its upgrade request queued.
    pub fn new(host: &str, path: &str, config: ConnConfig, rng: &mut impl Rng) -> ClientConn {
        let key = handshake_key(rng);
        let mut out = OutQueue::default();
        out.push_with(|buf| {
            buf.reserve(256 + host.len() + path.len());
            write_upgrade_request(buf, host, path, &key, config.offer_deflate);
        });
        ClientConn {
            phase: Phase::Upgrading(Box::new(Upgrading {
                key,
                response: Vec::new(),
                deflate_offered: config.offer_deflate,
            })),
            decoder: ClientDecoder::default(),
            out,
            message: None,
            control: Vec::new(),
            deflate: None,
            packed: Vec::new(),
            config,
        }
    }

    /// Whether the upgrade answer is still awaited.
    pub fn is_upgrading(&self) -> bool {
        matches!(self.phase, Phase::Upgrading(_))
    }

    /// Whether messages may be sent (open, and no close frame either way).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// Whether the client's close frame is sent and the server's still awaited.
    pub fn awaiting_close(&self) -> bool {
        matches!(self.phase, Phase::CloseSent)
    }

    /// Whether the close handshake is complete, so the end of the stream is the clean end
    /// (§7.1.1: the server closes TCP first).
    pub fn closed_cleanly(&self) -> bool {
        matches!(self.phase, Phase::CloseReceived)
    }

    /// Consumes the next part of `input` (the answer's head, or a frame's header and what
    /// follows of its payload), advancing it, and returns the event that part makes, if any.
    /// Call until `input` is empty. The event borrows `input` (or `shared`, for an inflated
    /// message).
    ///
    /// # Errors
    /// A refused upgrade, a frame no server may send, a compressed message that does not
    /// inflate. The connection is then unusable.
    pub fn poll_event<'a, 'b: 'a>(
        &'a mut self,
        input: &mut &'b [u8],
        shared: &'a mut Shared,
    ) -> Result<Option<Event<'a>>, ClientError> {
        if let Phase::Upgrading(upgrading) = &mut self.phase {
            let Some(up) = upgrading.take_answer(input).map_err(ClientError::Upgrade)? else {
                return Ok(None);
            };
            self.open(up.deflate);
            return Ok(Some(Event::Opened {
                deflate: up.deflate,
            }));
        }
        let data: &'b [u8] = input;
        let (used, piece) = self.decoder.decode(data)?;
        *input = data.get(used..).unwrap_or_default();
        match piece {
            Some(piece) => self.on_piece(piece, shared),
            None => Ok(None),
        }
    }

    /// The upgrade succeeded.
    fn open(&mut self, deflate: Option<DeflateParams>) {
        self.phase = Phase::Open;
        self.decoder = ClientDecoder::new(deflate.is_some());
        self.deflate =
            deflate.map(|params| Box::new(ClientDeflate::new(params, self.config.one_message)));
    }

    fn on_piece<'a>(
        &'a mut self,
        piece: Piece<'a>,
        shared: &'a mut Shared,
    ) -> Result<Option<Event<'a>>, ClientError> {
        if matches!(self.phase, Phase::CloseReceived) {
            return Err(ClientError::AfterClose);
        }
        if piece.header.opcode.is_control() {
            return self.on_control(piece, &mut shared.rng);
        }
        let header = piece.header;
        let whole = piece.is_first() && piece.is_last() && header.fin;
        if whole
            && self.message.is_none()
            && header.rsv == 0
            && header.opcode != OpCode::Continuation
        {
            // The common case, a whole uncompressed message in one piece: nothing to keep.
            return Ok(Some(Event::Data(Data {
                opcode: header.opcode,
                offset: 0,
                bytes: piece.data,
                last: true,
                wire: piece.wire_len(),
            })));
        }
        if piece.is_first() {
            self.start_frame(&piece)?;
        }
        let Some(message) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation.into());
        };
        let last = piece.is_last() && piece.header.fin;
        let opcode = message.opcode;
        if !message.compressed {
            let offset = message.offset;
            message.offset += piece.data.len() as u64;
            if last {
                self.message = None;
            }
            return Ok(Some(Event::Data(Data {
                opcode,
                offset,
                bytes: piece.data,
                last,
                wire: piece.wire_len(),
            })));
        }
        message.wire += piece.wire_len();
        let wire = message.wire;
        // Deflate never grows data by more than a few bytes per 16 KiB block.
        let most = self.config.max_message + self.config.max_message / 8 + 1024;
        if self.packed.len() + piece.data.len() > most {
            return Err(ClientError::Inflate(ProtocolError::MessageTooBig));
        }
        self.packed.extend_from_slice(piece.data);
        if !last {
            return Ok(None);
        }
        self.message = None;
        self.inflate(shared)?;
        Ok(Some(Event::Data(Data {
            opcode,
            offset: 0,
            bytes: &shared.inflated,
            last: true,
            wire,
        })))
    }

    /// The fragmentation rules (§5.4), at each data frame's start.
    fn start_frame(&mut self, piece: &Piece<'_>) -> Result<(), ProtocolError> {
        let opcode = piece.header.opcode;
        match (opcode, &self.message) {
            (OpCode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(ProtocolError::ExpectedContinuation),
            (OpCode::Text | OpCode::Binary, None) => {
                self.message = Some(Message {
                    opcode,
                    compressed: piece.header.rsv & RSV1 != 0,
                    offset: 0,
                    wire: 0,
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Inflates the compressed message gathered in `packed` into `shared.inflated`.
    fn inflate(&mut self, shared: &mut Shared) -> Result<(), ClientError> {
        let deflate = self
            .deflate
            .as_mut()
            .ok_or(ClientError::Protocol(ProtocolError::ReservedBits))?;
        shared.inflated.clear();
        let result = deflate.inflate(
            &mut shared.deflate,
            &self.packed,
            &mut shared.inflated,
            self.config.max_message,
        );
        // Keep a small buffer for the next message; give a large one back.
        if self.packed.capacity() > 64 << 10 {
            self.packed = Vec::new();
        } else {
            self.packed.clear();
        }
        result.map_err(ClientError::Inflate)
    }

    /// A control frame (whole, or its last piece): the one place pings and closes are
    /// answered.
    fn on_control<'a>(
        &'a mut self,
        piece: Piece<'a>,
        rng: &mut SmallRng,
    ) -> Result<Option<Event<'a>>, ClientError> {
        let gathered = !(piece.is_first() && piece.is_last());
        if gathered {
            if piece.is_first() {
                self.control.clear();
            }
            self.control.extend_from_slice(piece.data);
            if !piece.is_last() {
                return Ok(None);
            }
        }
        let payload: &'a [u8] = if gathered { &self.control } else { piece.data };
        match piece.header.opcode {
            // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            // response ... [with] identical Application data".
            OpCode::Ping => {
                let key = rng.random();
                self.out.push_frame(OpCode::Pong, false, payload, key);
                Ok(None)
            }
            OpCode::Pong => Ok(Some(Event::Pong(payload))),
            _ => {
                let code = parse_close_payload(payload)?.code;
                let client_first = matches!(self.phase, Phase::CloseSent);
                if !client_first {
                    // §5.5.1: the endpoint "MUST send a Close frame in response", typically
                    // echoing the status code it received.
                    let reply = code.map(|c| c.0.to_be_bytes());
                    let key = rng.random();
                    let reply = reply.as_ref().map_or(&[][..], |r| &r[..]);
                    self.out.push_frame(OpCode::Close, false, reply, key);
                }
                self.phase = Phase::CloseReceived;
                let code = code.unwrap_or(CloseCode::NO_STATUS).0;
                Ok(Some(Event::Close { code, client_first }))
            }
        }
    }

    /// Queues one message, compressed when permessage-deflate was agreed; returns the bytes
    /// it takes on the wire. Nothing is queued unless the connection [is open](Self::is_open).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], shared: &mut Shared) -> u64 {
        if !self.is_open() {
            return 0;
        }
        let key = shared.rng.random();
        let added = match self.deflate.as_mut() {
            Some(deflate) => {
                shared.packed.clear();
                deflate.compress(&mut shared.deflate, payload, &mut shared.packed);
                let packed = &shared.packed;
                self.out.push_frame(opcode, true, packed, key)
            }
            None => self.out.push_frame(opcode, false, payload, key),
        };
        added as u64
    }

    /// Queues `count` copies of `strip`'s frame (pre-encoded, uncompressed). Nothing is
    /// queued unless the connection [is open](Self::is_open).
    pub fn send_strip(&mut self, strip: &Rc<Strip>, count: usize) {
        if self.is_open() {
            self.out.push_strip(strip, count);
        }
    }

    /// Queues a ping carrying `payload` (at most 125 bytes, §5.5).
    pub fn ping(&mut self, payload: &[u8], rng: &mut impl Rng) {
        if self.is_open() {
            let key = rng.random();
            let payload = payload.get(..payload.len().min(125)).unwrap_or_default();
            self.out.push_frame(OpCode::Ping, false, payload, key);
        }
    }

    /// Starts the close handshake with `code` (§7.1.2); the server's close frame and then
    /// the end of the stream should follow. Nothing happens unless the connection is open.
    pub fn close(&mut self, code: CloseCode, rng: &mut impl Rng) {
        if self.is_open() {
            let key = rng.random();
            let payload = code.0.to_be_bytes();
            self.out.push_frame(OpCode::Close, false, &payload, key);
            self.phase = Phase::CloseSent;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use decoder::tests::server_frame;
    use wsloop_proto::deflate::{Deflater, Inflater};

    /// Shared state with a fixed seed.
    pub(crate) fn shared() -> Shared {
        Shared {
            rng: SmallRng::seed_from_u64(5),
            ..Shared::new()
        }
    }

    /// Unmasks the client frames in `wire`: (first byte, payload) each.
    pub(crate) fn client_frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (len, at) = match wire[1] & 0x7f {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let key = [wire[at], wire[at + 1], wire[at + 2], wire[at + 3]];
            let mut payload = wire[at + 4..at + 4 + len].to_vec();
            wsloop_proto::mask::apply_mask(&mut payload, key, 0);
            frames.push((wire[0], payload));
            wire = &wire[at + 4 + len..];
        }
        frames
    }

    /// Everything queued, taken off the queue.
    pub(crate) fn take_out(conn: &mut ClientConn) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
        let n = conn.out.slices(&mut iov);
        for slice in &iov[..n] {
            wire.extend_from_slice(slice);
        }
        conn.out.advance(wire.len());
        wire
    }

    /// The key of the request `conn` queued.
    fn request_key(request: &[u8]) -> String {
        let text = std::str::from_utf8(request).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Sec-WebSocket-Key: "))
            .unwrap();
        line["Sec-WebSocket-Key: ".len()..].to_owned()
    }

    /// An open connection (the server's answer given `extensions`), its request taken.
    pub(crate) fn open_conn(
        config: ConnConfig,
        extensions: Option<&str>,
        shared: &mut Shared,
    ) -> ClientConn {
        let mut conn = ClientConn::new("127.0.0.1:9", "/", config, &mut shared.rng);
        let key = request_key(&take_out(&mut conn));
        let mut answer = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut answer, &key, None, extensions);
        let mut input = &answer[..];
        let event = conn.poll_event(&mut input, shared).unwrap();
        assert!(matches!(event, Some(Event::Opened { .. })), "{event:?}");
        assert!(input.is_empty());
        conn
    }

    /// An event, owned.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Seen {
        Data(OpCode, u64, Vec<u8>, bool, u64),
        Pong(Vec<u8>),
        Other(String),
    }

    /// Every event `input` makes, fed in chunks of `chunk` bytes.
    fn events(conn: &mut ClientConn, shared: &mut Shared, input: &[u8], chunk: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        for part in input.chunks(chunk) {
            let mut rest = part;
            while !rest.is_empty() {
                let Some(event) = conn.poll_event(&mut rest, shared).unwrap() else {
                    continue;
                };
                seen.push(match event {
                    Event::Data(d) => {
                        Seen::Data(d.opcode, d.offset, d.bytes.to_vec(), d.last, d.wire)
                    }
                    Event::Pong(p) => Seen::Pong(p.to_vec()),
                    other => Seen::Other(format!("{other:?}")),
                });
            }
        }
        seen
    }

    fn other(text: &str) -> Seen {
        Seen::Other(text.to_owned())
    }

    #[test]
    fn the_answer_may_come_in_pieces_and_frames_may_follow_it_in_the_same_read() {
        let mut shared = shared();
        for chunk in [1, 5, 1000] {
            let mut conn = ClientConn::new("h", "/chat", ConnConfig::default(), &mut shared.rng);
            assert!(conn.is_upgrading() && !conn.is_open());
            let request = take_out(&mut conn);
            assert!(request.starts_with(b"GET /chat HTTP/1.1\r\nHost: h\r\n"));
            let mut wire = Vec::new();
            wsloop_proto::handshake::write_accept_response(
                &mut wire,
                &request_key(&request),
                None,
                None,
            );
            wire.extend(server_frame(OpCode::Text, b"hi"));
            let seen = events(&mut conn, &mut shared, &wire, chunk);
            assert_eq!(seen[0], other("Opened { deflate: None }"));
            let expected = if chunk == 1 {
                vec![
                    Seen::Data(OpCode::Text, 0, b"h".to_vec(), false, 3),
                    Seen::Data(OpCode::Text, 1, b"i".to_vec(), true, 1),
                ]
            } else {
                vec![Seen::Data(OpCode::Text, 0, b"hi".to_vec(), true, 4)]
            };
            assert_eq!(seen[1..], expected, "chunk {chunk}");
            assert!(conn.is_open());
        }
    }

    #[test]
    fn a_wrong_answer_fails_the_upgrade() {
        let mut shared = shared();
        let mut conn = ClientConn::new("h", "/", ConnConfig::default(), &mut shared.rng);
        let mut input = &b"HTTP/1.1 503 Busy\r\n\r\n"[..];
        assert_eq!(
            conn.poll_event(&mut input, &mut shared).unwrap_err(),
            ClientError::Upgrade(UpgradeError::Status(503))
        );
        let mut conn = ClientConn::new("h", "/", ConnConfig::default(), &mut shared.rng);
        let endless = vec![b'a'; 3 * MAX_RESPONSE_HEAD];
        for part in endless.chunks(1000) {
            let mut input = part;
            if let Err(e) = conn.poll_event(&mut input, &mut shared) {
                assert_eq!(e, ClientError::Upgrade(UpgradeError::HeadTooLong));
                return;
            }
        }
        panic!("an endless head was accepted");
    }

    #[test]
    fn fragments_are_one_message_with_offsets_and_pings_between_are_answered() {
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut first = server_frame(OpCode::Text, b"abc");
        first[0] &= 0x7f; // not FIN
        let wire = [
            first,
            server_frame(OpCode::Ping, b"p1"),
            server_frame(OpCode::Continuation, b"defg"),
            server_frame(OpCode::Pong, b"back"),
        ]
        .concat();
        let data_wire = (2 + 3 + 2 + 4) as u64;
        for chunk in [1, 3, 100] {
            let seen = events(&mut conn, &mut shared, &wire, chunk);
            let mut message = Vec::new();
            let mut wire_sum = 0;
            for (i, event) in seen.iter().enumerate() {
                if let Seen::Data(opcode, offset, bytes, last, wire) = event {
                    assert_eq!(*opcode, OpCode::Text, "the first frame's opcode");
                    assert_eq!(*offset, message.len() as u64);
                    message.extend_from_slice(bytes);
                    wire_sum += wire;
                    assert_eq!(*last, message.len() == 7, "{i}: {seen:?}");
                }
            }
            assert_eq!(message, b"abcdefg", "chunk {chunk}");
            assert_eq!(wire_sum, data_wire);
            assert_eq!(seen.last().unwrap(), &Seen::Pong(b"back".to_vec()));
            let pongs = client_frames(&take_out(&mut conn));
            assert_eq!(
                pongs,
                vec![(0x8A, b"p1".to_vec())],
                "the ping answered once"
            );
        }
    }

    #[test]
    fn frames_out_of_sequence_fail_the_connection() {
        let mut shared = shared();
        for (wire, error) in [
            (
                server_frame(OpCode::Continuation, b"x"),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [
                    {
                        let mut f = server_frame(OpCode::Text, b"a");
                        f[0] &= 0x7f;
                        f
                    },
                    server_frame(OpCode::Binary, b"b"),
                ]
                .concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (vec![0x81, 0x81, 1, 2, 3, 4, 5], ProtocolError::MaskedFrame),
        ] {
            let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
            let mut input = &wire[..];
            let got = loop {
                match conn.poll_event(&mut input, &mut shared) {
                    Ok(_) if input.is_empty() => panic!("accepted {wire:02x?}"),
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            assert_eq!(got, ClientError::Protocol(error));
        }
    }

    #[test]
    fn a_server_close_is_answered_once_and_ends_the_frames() {
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let close = server_frame(OpCode::Close, &1001u16.to_be_bytes());
        assert_eq!(
            events(&mut conn, &mut shared, &close, 100),
            vec![other("Close { code: 1001, client_first: false }")]
        );
        assert!(conn.closed_cleanly() && !conn.is_open());
        assert_eq!(
            client_frames(&take_out(&mut conn)),
            vec![(0x88, 1001u16.to_be_bytes().to_vec())]
        );
        let mut input = &server_frame(OpCode::Text, b"late")[..];
        assert_eq!(
            conn.poll_event(&mut input, &mut shared).unwrap_err(),
            ClientError::AfterClose
        );
        // The client closing first: no second close frame from it.
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        conn.close(CloseCode::NORMAL, &mut shared.rng);
        conn.close(CloseCode::NORMAL, &mut shared.rng);
        assert_eq!(client_frames(&take_out(&mut conn)).len(), 1);
        assert!(conn.awaiting_close() && !conn.closed_cleanly());
        let empty = server_frame(OpCode::Close, b"");
        assert_eq!(
            events(&mut conn, &mut shared, &empty, 1),
            vec![other("Close { code: 1005, client_first: true }")]
        );
        assert!(take_out(&mut conn).is_empty());
        assert!(conn.closed_cleanly());
        // A close payload no server may send.
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut input = &server_frame(OpCode::Close, &[0x03])[..];
        assert_eq!(
            conn.poll_event(&mut input, &mut shared).unwrap_err(),
            ClientError::Protocol(ProtocolError::InvalidClosePayload)
        );
    }

    #[test]
    fn every_frame_gets_a_fresh_mask_key() {
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        for _ in 0..3 {
            conn.send(OpCode::Binary, b"same", &mut shared);
        }
        conn.ping(b"p", &mut shared.rng);
        let wire = take_out(&mut conn);
        let frames = client_frames(&wire);
        assert_eq!(frames.len(), 4);
        assert!(frames[..3].iter().all(|f| f == &(0x82, b"same".to_vec())));
        let keys: std::collections::HashSet<_> =
            wire.chunks(10).take(3).map(|f| &f[2..6]).collect();
        assert_eq!(keys.len(), 3, "three distinct keys");
    }

    #[test]
    fn compressed_messages_out_and_inflated_messages_in() {
        let mut shared = shared();
        let config = ConnConfig {
            offer_deflate: true,
            max_message: 4096,
            ..ConnConfig::default()
        };
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let mut conn = open_conn(config, Some(answer), &mut shared);
        assert!(conn.deflate.is_some());
        let message = br#"{"user":"ann","text":"hello hello hello"}"#.repeat(20);
        let wire_len = conn.send(OpCode::Text, &message, &mut shared);
        let out = take_out(&mut conn);
        assert_eq!(wire_len, out.len() as u64);
        let frames = client_frames(&out);
        assert_eq!(frames[0].0, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        let mut inflated = Vec::new();
        Inflater::new()
            .inflate(&frames[0].1, &mut inflated, 1 << 20, true)
            .unwrap();
        assert_eq!(inflated, message);

        // The server's echo, compressed and split over two frames: one event, inflated.
        let mut packed = Vec::new();
        Deflater::new(15, 1).compress(&message, &mut packed, true);
        let mut head = server_frame(OpCode::Text, &packed[..10]);
        head[0] = 0x40 | 0x1; // RSV1, not FIN
        let wire = [head, server_frame(OpCode::Continuation, &packed[10..])].concat();
        for chunk in [7, 1000] {
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                let mut rest = part;
                while !rest.is_empty() {
                    let Some(event) = conn.poll_event(&mut rest, &mut shared).unwrap() else {
                        continue;
                    };
                    let Event::Data(d) = event else {
                        panic!("{event:?}")
                    };
                    assert!(d.last && d.offset == 0);
                    assert_eq!(d.wire, wire.len() as u64);
                    got.push(d.bytes.to_vec());
                }
            }
            assert_eq!(got, vec![message.clone()]);
        }

        // Over the limit: refused, whether it says so when gathered or when inflated.
        let mut big = Vec::new();
        Deflater::new(15, 1).compress(&[b'a'; 5000], &mut big, true);
        let mut frame = server_frame(OpCode::Text, &big);
        frame[0] |= 0x40;
        let mut input = &frame[..];
        assert_eq!(
            conn.poll_event(&mut input, &mut shared).unwrap_err(),
            ClientError::Inflate(ProtocolError::MessageTooBig)
        );
    }
}
