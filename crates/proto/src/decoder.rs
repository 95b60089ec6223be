//! Turns a client's byte stream into WebSocket events (RFC 6455 §5–§8), sans-IO.
//!
//! # Contract
//! Call [`Decoder::decode`] with the bytes that just arrived (a mutable slice: payloads are
//! unmasked in place). It consumes bytes and returns at most one event per call; call it again
//! with the rest of the slice until it reports [`Outcome::NeedMore`], which means every byte
//! was consumed and stored. The decoder keeps only what a frame boundary forces it to keep: up
//! to 13 bytes of a partial header, the payload of a message still in progress, and the payload
//! of a partial control frame. A complete single-frame message is returned as a range of the
//! caller's slice — no copy.
//!
//! # Large messages
//! A message that reaches the [`BufferPool`]'s large size is assembled in a pooled buffer, and
//! a frame that takes it there has its whole payload reserved from its header (after the size
//! limits are checked). While such a frame is arriving, [`Decoder::read_target`] lends the
//! unfilled part of its payload, so a caller can read the next bytes straight into it instead
//! of into its own buffer, then hand the count to [`Decoder::decode_target`], which unmasks
//! them in place and validates text as [`Decoder::decode`] does: each payload byte is then
//! copied by the kernel only. The two ways in may alternate at will; bytes go in the order
//! they arrived either way.
//!
//! # Errors
//! The first protocol error is returned as [`Outcome::Error`] and is sticky: later calls
//! consume and ignore all input. Size limits are checked from the header, before a byte of the
//! payload is stored. Text is validated as it arrives, so invalid UTF-8 is reported on the
//! chunk that carries it.

use std::ops::Range;

use super::close::{parse_close_payload, CloseCode};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::pool::BufferPool;
use super::utf8::Utf8Validator;

mod state;

/// Size limits, checked from frame headers before any payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame payload accepted.
    pub max_frame: u64,
    /// The largest message (all fragments together) accepted.
    pub max_message: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_message: 16 << 20,
        }
    }
}

/// Whether a data message is text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (already validated when delivered, unless the caller deferred it: see
    /// [`Decoder::defer_whole_text_validation`]).
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// Where an event's payload lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A range of the slice passed to this `decode` call, already unmasked (zero copy).
    Input(Range<usize>),
    /// Bytes the decoder assembled across calls or fragments, now owned by the caller (the
    /// decoder keeps no buffer once a message is delivered: idle connections own nothing).
    Owned(Vec<u8>),
}

impl Payload {
    /// The payload bytes, given the slice passed to the `decode` call that returned it.
    pub fn bytes<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        match self {
            Payload::Input(range) => input.get(range.clone()).unwrap_or_default(),
            Payload::Owned(bytes) => bytes,
        }
    }
}

/// One thing a client said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text or binary message (text already validated as UTF-8, except whole
    /// single-frame text after [`Decoder::defer_whole_text_validation`]).
    Message(MessageKind, Payload),
    /// A complete message sent compressed (RSV1, permessage-deflate): inflate it within the
    /// message limit, then validate text as UTF-8 — the decoder cannot, it sees deflate bytes.
    Compressed(MessageKind, Payload),
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(Payload),
    /// A pong.
    Pong(Payload),
    /// A close frame, already validated; `payload` is the whole close payload.
    Close {
        /// The code, or `None` for an empty close frame.
        code: Option<CloseCode>,
        /// Code and reason as received (see [`parse_close_payload`]).
        payload: Payload,
    },
}

/// What one `decode` call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All input was consumed; no event is complete yet.
    NeedMore,
    /// An event; more input may follow it.
    Event(Event),
    /// The peer broke the protocol; close with `CloseCode::from(&error)`.
    Error(ProtocolError),
}

/// The result of one `decode` call: how many bytes it consumed and what they made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Decoded {
    /// Bytes of the input consumed (the next call starts after them).
    pub consumed: usize,
    /// The event, error, or `NeedMore`.
    pub outcome: Outcome,
}

/// The RSV1 bit as `FrameHeader::rsv` holds it (RFC 7692 uses it as "Per-Message Compressed").
const RSV1: u8 = 0x4;

/// A frame whose header has been read and whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes seen so far (the mask offset).
    done: u64,
    len: u64,
}

/// The decoder's state between calls. Small (32 bytes): it lives in every connection, and
/// everything that exists only while a frame or message is partly received sits behind one
/// box that is freed as soon as the message is complete.
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    failed: bool,
    /// RSV bits allowed by a negotiated extension.
    allowed_rsv: u8,
    /// Whole single-frame text is left for the caller to validate (see
    /// [`Decoder::defer_whole_text_validation`]).
    defer_whole_text: bool,
    partial: Option<Box<Partial>>,
}

/// State of a frame or message in progress.
#[derive(Debug, Default)]
struct Partial {
    frame: Option<FrameInProgress>,
    /// The message in progress is compressed (its first frame had RSV1).
    compressed: bool,
    /// The data message in progress, if a first fragment (or partial frame) arrived.
    message: Option<MessageKind>,
    utf8: Utf8Validator,
    /// Assembled payload of the message in progress.
    data: Assembly,
    /// Payload of a control frame split across reads (at most 125 bytes).
    control: Vec<u8>,
}

impl Partial {
    fn is_idle(&self) -> bool {
        self.frame.is_none()
            && self.message.is_none()
            && self.data.held() == 0
            && self.control.capacity() == 0
    }
}

/// The payload of the data message in progress.
#[derive(Debug)]
enum Assembly {
    /// Under the pool's large size: a `Vec` holding exactly the bytes so far, grown as they
    /// arrive.
    Small(Vec<u8>),
    /// From the large size on: a pooled buffer, `buf[..filled]` the bytes so far and
    /// `buf[filled..]` initialized room, reserved from the frame header for the rest of the
    /// frame, that a caller may read into ([`Decoder::read_target`]).
    Large { buf: Vec<u8>, filled: usize },
}

impl Default for Assembly {
    fn default() -> Self {
        Assembly::Small(Vec::new())
    }
}

impl Assembly {
    /// Payload bytes so far.
    fn len(&self) -> usize {
        match self {
            Assembly::Small(bytes) => bytes.len(),
            Assembly::Large { filled, .. } => *filled,
        }
    }

    /// Heap bytes held.
    fn held(&self) -> usize {
        match self {
            Assembly::Small(bytes) => bytes.capacity(),
            Assembly::Large { buf, .. } => buf.capacity(),
        }
    }

    /// The payload so far.
    fn bytes(&self) -> &[u8] {
        match self {
            Assembly::Small(bytes) => bytes,
            Assembly::Large { buf, filled } => buf.get(..*filled).unwrap_or_default(),
        }
    }

    /// Makes room for `more` bytes, growing geometrically but never past `cap` (unless the
    /// bytes themselves need more), so a message at the size limit never holds twice the
    /// limit. From the pool's large size on, the room is a pooled buffer's initialized bytes,
    /// which a read can land in.
    fn reserve(&mut self, more: usize, cap: usize, pool: &mut BufferPool) {
        let len = self.len();
        let need = len.saturating_add(more);
        let room = match self {
            Assembly::Small(bytes) => bytes.capacity(),
            Assembly::Large { buf, .. } => buf.len(),
        };
        if room >= need {
            return;
        }
        let target = need.max(room.saturating_mul(2)).min(cap.max(need));
        match self {
            Assembly::Small(bytes) if target < pool.large() => {
                bytes.reserve_exact(target - len);
            }
            Assembly::Large { buf, .. } if buf.capacity() >= target => buf.resize(target, 0),
            _ => {
                let mut bigger = pool.take(target);
                if let Some(dst) = bigger.get_mut(..len) {
                    dst.copy_from_slice(self.bytes());
                }
                let old = std::mem::replace(
                    self,
                    Assembly::Large {
                        buf: bigger,
                        filled: len,
                    },
                );
                pool.give(old.into_vec());
            }
        }
    }

    /// Appends `chunk` (after making room for it).
    fn append(&mut self, chunk: &[u8], cap: usize, pool: &mut BufferPool) {
        self.reserve(chunk.len(), cap, pool);
        match self {
            Assembly::Small(bytes) => bytes.extend_from_slice(chunk),
            Assembly::Large { buf, filled } => {
                match buf.get_mut(*filled..*filled + chunk.len()) {
                    Some(room) => room.copy_from_slice(chunk),
                    None => {
                        buf.truncate(*filled);
                        buf.extend_from_slice(chunk);
                    }
                }
                *filled += chunk.len();
            }
        }
    }

    /// The first `len` bytes of the room, for a read to land in (none for a small message).
    fn room(&mut self, len: usize) -> Option<&mut [u8]> {
        match self {
            Assembly::Small(_) => None,
            Assembly::Large { buf, filled } => buf.get_mut(*filled..filled.checked_add(len)?),
        }
    }

    /// Counts the first `n` bytes of the room (a read landed there) as payload; returns how
    /// many it could (at most the room there is).
    fn commit(&mut self, n: usize) -> usize {
        match self {
            Assembly::Small(_) => 0,
            Assembly::Large { buf, filled } => {
                let n = n.min(buf.len() - *filled);
                *filled += n;
                n
            }
        }
    }

    /// The last `n` payload bytes, to unmask and validate in place.
    fn tail_mut(&mut self, n: usize) -> &mut [u8] {
        let (bytes, len) = match self {
            Assembly::Small(bytes) => {
                let len = bytes.len();
                (bytes.as_mut_slice(), len)
            }
            Assembly::Large { buf, filled } => (buf.as_mut_slice(), *filled),
        };
        bytes
            .get_mut(len.saturating_sub(n)..len)
            .unwrap_or_default()
    }

    /// The whole message, leaving nothing held.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(self).into_vec()
    }

    /// The payload as a `Vec` of exactly its bytes.
    fn into_vec(self) -> Vec<u8> {
        match self {
            Assembly::Small(bytes) => bytes,
            Assembly::Large { mut buf, filled } => {
                buf.truncate(filled);
                buf
            }
        }
    }
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Bytes held between calls (partial message and control payloads), for memory budgets.
    pub fn buffered(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |p| p.data.held() + p.control.capacity())
    }

    /// Accepts RSV1 on the first frame of a data message: permessage-deflate was negotiated.
    pub fn enable_compression(&mut self) {
        self.allowed_rsv |= RSV1;
    }

    /// Hands whole single-frame text messages found in one input slice (the zero-copy
    /// [`Payload::Input`] case) out without validating them: the caller validates them once,
    /// when it makes the `&str` it delivers (a failure there is [`ProtocolError::InvalidUtf8`],
    /// found in the same call, so nothing is lost in fail-fast terms). Text that streams in
    /// (fragments, or a frame split across calls) is still validated chunk by chunk.
    pub fn defer_whole_text_validation(&mut self) {
        self.defer_whole_text = true;
    }

    /// Whether RSV1 (a compressed message) is accepted: [`Decoder::enable_compression`].
    pub fn accepts_compressed(&self) -> bool {
        self.allowed_rsv & RSV1 != 0
    }

    /// Whether a message or frame is partly received.
    pub fn is_mid_message(&self) -> bool {
        self.frame().is_some() || self.message().is_some() || self.header_len != 0
    }

    fn frame(&self) -> Option<FrameInProgress> {
        self.partial.as_ref().and_then(|p| p.frame)
    }

    fn message(&self) -> Option<MessageKind> {
        self.partial.as_ref().and_then(|p| p.message)
    }

    fn partial_mut(&mut self) -> &mut Partial {
        self.partial.get_or_insert_with(Box::default)
    }

    /// Frees the partial state once nothing is in progress: idle connections own nothing.
    fn release_if_idle(&mut self) {
        if self.partial.as_ref().is_some_and(|p| p.is_idle()) {
            self.partial = None;
        }
    }

    /// Decodes from `input` (see the module docs for the contract); a large message is
    /// assembled in a buffer from `pool`.
    pub fn decode(&mut self, limits: &Limits, pool: &mut BufferPool, input: &mut [u8]) -> Decoded {
        if self.failed {
            return Decoded {
                consumed: input.len(),
                outcome: Outcome::NeedMore,
            };
        }
        let mut pos = 0;
        loop {
            let step = match self.frame() {
                None => self.start_frame(limits, pool, input, &mut pos),
                Some(frame) => self.continue_frame(limits, pool, frame, input, &mut pos),
            };
            match step {
                // Go on while input remains, or when a zero-length frame can complete now.
                Ok(None) if pos < input.len() || self.frame().is_some_and(|f| f.done == f.len) => {
                    continue
                }
                Ok(None) => {
                    return Decoded {
                        consumed: pos,
                        outcome: Outcome::NeedMore,
                    }
                }
                Ok(Some(event)) => {
                    return Decoded {
                        consumed: pos,
                        outcome: Outcome::Event(event),
                    }
                }
                Err(error) => {
                    return Decoded {
                        consumed: input.len(),
                        outcome: self.fail(error),
                    };
                }
            }
        }
    }

    /// Where the next bytes of a large frame's payload may be read: the unfilled part of it,
    /// reserved in its message buffer, when at least `min` bytes of it are still to come.
    /// `None`: read into the caller's buffer and [`decode`](Decoder::decode) as usual.
    ///
    /// Why a minimum: a read into the caller's buffer takes the rest of the frame and whatever
    /// follows it in one call, so reading a short rest directly would cost an extra read.
    pub fn read_target(&mut self, min: usize) -> Option<&mut [u8]> {
        if self.failed {
            return None;
        }
        let partial = self.partial.as_deref_mut()?;
        let frame = partial.frame.filter(|f| !f.opcode.is_control())?;
        let left = usize::try_from(frame.len - frame.done).ok()?;
        if left == 0 || left < min {
            return None;
        }
        partial.data.room(left)
    }

    /// Decodes the first `n` bytes of the slice [`read_target`](Decoder::read_target) lent,
    /// which a read has filled: unmasks them in place, validates text, and completes the
    /// frame (and the message) when they are its last. `n` beyond that slice is cut to it.
    pub fn decode_target(&mut self, n: usize) -> Outcome {
        if self.failed {
            return Outcome::NeedMore;
        }
        let Some(frame) = self.frame().filter(|f| !f.opcode.is_control()) else {
            return Outcome::NeedMore;
        };
        let left = usize::try_from(frame.len - frame.done).unwrap_or(usize::MAX);
        let n = self.partial_mut().data.commit(n.min(left));
        if n == 0 {
            return Outcome::NeedMore;
        }
        match self.absorb(frame, n) {
            Ok(None) => Outcome::NeedMore,
            Ok(Some(event)) => Outcome::Event(event),
            Err(error) => self.fail(error),
        }
    }

    /// The first protocol error: sticky, and nothing partial is kept.
    fn fail(&mut self, error: ProtocolError) -> Outcome {
        self.failed = true;
        self.partial = None;
        Outcome::Error(error)
    }

    /// Reads a header (possibly completing a stored partial one) and either returns a whole
    /// frame found in `input` as an event or starts streaming its payload.
    fn start_frame(
        &mut self,
        limits: &Limits,
        pool: &mut BufferPool,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, ProtocolError> {
        let rest = input.get(*pos..).unwrap_or_default();
        let (header, header_bytes) = if self.header_len == 0 {
            match FrameHeader::parse(rest, Role::Server, self.allowed_rsv)? {
                Some(found) => found,
                None => {
                    self.store_partial_header(rest);
                    *pos = input.len();
                    return Ok(None);
                }
            }
        } else {
            let have = usize::from(self.header_len);
            let take = (MAX_HEADER_LEN - have).min(rest.len());
            let mut joined = self.header;
            if let (Some(dst), Some(src)) = (joined.get_mut(have..have + take), rest.get(..take)) {
                dst.copy_from_slice(src);
            }
            let joined = joined.get(..have + take).unwrap_or_default();
            match FrameHeader::parse(joined, Role::Server, self.allowed_rsv)? {
                Some((header, len)) => {
                    self.header_len = 0;
                    (header, len - have)
                }
                None => {
                    self.store_partial_header(joined);
                    *pos = input.len();
                    return Ok(None);
                }
            }
        };
        *pos += header_bytes;
        self.check_sequence(limits, &header)?;
        // RFC 7692 §6.1: RSV1 marks the first frame of a compressed message (the header parser
        // refuses it on control frames and continuations).
        let compressed = header.rsv & RSV1 != 0;
        let mask = header.mask.unwrap_or_default();
        let available = (input.len() - *pos) as u64;
        let kind = match header.opcode {
            OpCode::Text => Some(MessageKind::Text),
            OpCode::Binary => Some(MessageKind::Binary),
            _ => None,
        };
        // The fast path: a whole control frame, or a whole unfragmented message, in `input`.
        if header.payload_len <= available
            && (header.opcode.is_control() || (header.fin && kind.is_some()))
        {
            let range = *pos..*pos + header.payload_len as usize;
            *pos = range.end;
            let payload = input.get_mut(range.clone()).unwrap_or_default();
            apply_mask(payload, mask, 0);
            return match kind {
                Some(kind) if compressed => {
                    Ok(Some(Event::Compressed(kind, Payload::Input(range))))
                }
                Some(kind) => {
                    if kind == MessageKind::Text && !self.defer_whole_text {
                        super::utf8::validate(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    Ok(Some(Event::Message(kind, Payload::Input(range))))
                }
                None => control_event(header.opcode, Payload::Input(range), input).map(Some),
            };
        }
        let partial = self.partial_mut();
        if let Some(kind) = kind {
            partial.message = Some(kind);
            partial.compressed = compressed;
        }
        let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        if !header.opcode.is_control()
            && partial.data.len().saturating_add(payload_len) >= pool.large()
        {
            // A large message: its frame's whole payload is reserved now (the limits allowed
            // it above), so that it can be read straight into place.
            partial.data.reserve(payload_len, max_message(limits), pool);
        }
        partial.frame = Some(FrameInProgress {
            opcode: header.opcode,
            fin: header.fin,
            mask,
            done: 0,
            len: header.payload_len,
        });
        Ok(None)
    }

    /// The fragmentation and size rules that depend on the message in progress (§5.4).
    fn check_sequence(&self, limits: &Limits, header: &FrameHeader) -> Result<(), ProtocolError> {
        if header.payload_len > limits.max_frame && !header.opcode.is_control() {
            return Err(ProtocolError::FrameTooBig);
        }
        let assembled = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
        match (header.opcode, self.message()) {
            (OpCode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(ProtocolError::ExpectedContinuation),
            (OpCode::Continuation, Some(_))
                if assembled.saturating_add(header.payload_len) > limits.max_message =>
            {
                Err(ProtocolError::MessageTooBig)
            }
            (OpCode::Text | OpCode::Binary, None) if header.payload_len > limits.max_message => {
                Err(ProtocolError::MessageTooBig)
            }
            _ => Ok(()),
        }
    }

    /// Streams the next part of a frame's payload into the message or control buffer.
    fn continue_frame(
        &mut self,
        limits: &Limits,
        pool: &mut BufferPool,
        frame: FrameInProgress,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, ProtocolError> {
        let available = (input.len() - *pos) as u64;
        let take = (frame.len - frame.done).min(available) as usize;
        let range = *pos..*pos + take;
        *pos += take;
        if !frame.opcode.is_control() {
            let chunk = input.get(range).unwrap_or_default();
            self.partial_mut()
                .data
                .append(chunk, max_message(limits), pool);
            return self.absorb(frame, take);
        }
        let chunk = input.get_mut(range).unwrap_or_default();
        apply_mask(chunk, frame.mask, (frame.done % 4) as usize);
        let mut frame = frame;
        frame.done += take as u64;
        let complete = frame.done == frame.len;
        let partial = self.partial_mut();
        partial.frame = (!complete).then_some(frame);
        append_bounded(&mut partial.control, chunk, MAX_CONTROL_PAYLOAD);
        if !complete {
            return Ok(None);
        }
        let payload = Payload::Owned(std::mem::take(&mut partial.control));
        self.release_if_idle();
        control_event(frame.opcode, payload, input).map(Some)
    }

    /// Takes in the last `n` bytes of the message buffer, the next (still masked) payload of
    /// data frame `frame`: unmasks them in place, validates text (§8.1, fail-fast), and ends
    /// the frame, and with its last frame the message, when they complete it.
    fn absorb(
        &mut self,
        mut frame: FrameInProgress,
        n: usize,
    ) -> Result<Option<Event>, ProtocolError> {
        let partial = self.partial_mut();
        let fresh = partial.data.tail_mut(n);
        apply_mask(fresh, frame.mask, (frame.done % 4) as usize);
        if partial.message == Some(MessageKind::Text) && !partial.compressed {
            partial
                .utf8
                .feed(fresh)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        frame.done += n as u64;
        let complete = frame.done == frame.len;
        partial.frame = (!complete).then_some(frame);
        if !complete || !frame.fin {
            return Ok(None);
        }
        let kind = partial.message.take().unwrap_or(MessageKind::Binary);
        if std::mem::take(&mut partial.compressed) {
            let data = partial.data.take();
            self.release_if_idle();
            return Ok(Some(Event::Compressed(kind, Payload::Owned(data))));
        }
        if kind == MessageKind::Text {
            partial
                .utf8
                .finish()
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        let data = partial.data.take();
        self.release_if_idle();
        Ok(Some(Event::Message(kind, Payload::Owned(data))))
    }

    fn store_partial_header(&mut self, bytes: &[u8]) {
        let len = bytes.len().min(MAX_HEADER_LEN);
        if let (Some(dst), Some(src)) = (self.header.get_mut(..len), bytes.get(..len)) {
            dst.copy_from_slice(src);
        }
        self.header_len = len as u8;
    }
}

/// The message limit as a buffer size.
fn max_message(limits: &Limits) -> usize {
    usize::try_from(limits.max_message).unwrap_or(usize::MAX)
}

/// Appends `chunk`, growing capacity geometrically but never past `cap` (unless the bytes
/// themselves need more), so a control payload never holds more than its limit.
fn append_bounded(buf: &mut Vec<u8>, chunk: &[u8], cap: usize) {
    let needed = buf.len() + chunk.len();
    if needed > buf.capacity() {
        let target = buf
            .capacity()
            .saturating_mul(2)
            .max(needed)
            .min(cap.max(needed));
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(chunk);
}

/// Validates a complete control frame (unmasked already) and makes its event.
fn control_event(opcode: OpCode, payload: Payload, input: &[u8]) -> Result<Event, ProtocolError> {
    Ok(match opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => {
            let code = parse_close_payload(payload.bytes(input))?.code;
            Event::Close { code, payload }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_CONTROL_PAYLOAD;
    use rand::{Rng as _, SeedableRng};

    // ---------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------

    /// An event reduced to what a test compares: its kind and its payload bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Kind {
        Text,
        Binary,
        Compressed(MessageKind),
        Ping,
        Pong,
        Close(Option<u16>),
    }

    type Got = Result<(Kind, Vec<u8>), ProtocolError>;

    fn resolve(event: &Event, input: &[u8]) -> (Kind, Vec<u8>) {
        let (kind, payload) = match event {
            Event::Message(MessageKind::Text, p) => (Kind::Text, p),
            Event::Message(MessageKind::Binary, p) => (Kind::Binary, p),
            Event::Compressed(kind, p) => (Kind::Compressed(*kind), p),
            Event::Ping(p) => (Kind::Ping, p),
            Event::Pong(p) => (Kind::Pong, p),
            Event::Close { code, payload } => (Kind::Close(code.map(|c| c.0)), payload),
        };
        if let Payload::Input(range) = payload {
            assert!(range.end <= input.len(), "{range:?} outside input");
        }
        (kind, payload.bytes(input).to_vec())
    }

    /// Feeds `bytes` as ONE read: calls `decode` until `NeedMore`, checking the contract on
    /// every call, and stops after the first error.
    fn decode_all(decoder: &mut Decoder, limits: &Limits, bytes: &[u8]) -> Vec<Got> {
        decode_all_in(decoder, limits, &mut BufferPool::default(), bytes)
    }

    /// [`decode_all`] with large messages in `pool`.
    fn decode_all_in(
        decoder: &mut Decoder,
        limits: &Limits,
        pool: &mut BufferPool,
        bytes: &[u8],
    ) -> Vec<Got> {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let remaining = buf.len() - pos;
            let decoded = decoder.decode(limits, pool, &mut buf[pos..]);
            assert!(decoded.consumed <= remaining, "consumed past the input");
            match decoded.outcome {
                Outcome::NeedMore => {
                    assert_eq!(decoded.consumed, remaining, "NeedMore must consume all");
                    return out;
                }
                Outcome::Event(event) => {
                    assert!(decoded.consumed > 0, "an event must consume bytes");
                    out.push(Ok(resolve(&event, &buf[pos..])));
                    pos += decoded.consumed;
                }
                Outcome::Error(error) => {
                    assert_eq!(decoded.consumed, remaining, "an error consumes all input");
                    out.push(Err(error));
                    return out;
                }
            }
        }
    }

    /// Feeds `bytes` as several reads, cut at the (sorted) positions in `cuts`.
    fn decode_chunks(
        decoder: &mut Decoder,
        limits: &Limits,
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<Got> {
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            out.extend(decode_all(decoder, limits, &bytes[start..end]));
            start = end;
            if matches!(out.last(), Some(Err(_))) {
                break;
            }
        }
        out
    }

    /// Feeds `bytes` as a reactor with direct reads does: the stream arrives in the pieces
    /// cut at `cuts`, and each read lands in the decoder's read target (at most its length,
    /// the rest of the piece left for the next read) when it offers one, else in a buffer of
    /// its own decoded as usual. Returns the events and how many reads went into a target.
    fn decode_reads(
        decoder: &mut Decoder,
        limits: &Limits,
        pool: &mut BufferPool,
        bytes: &[u8],
        cuts: &[usize],
    ) -> (Vec<Got>, usize) {
        let mut out = Vec::new();
        let mut direct = 0;
        let mut pos = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            while pos < end {
                let Some(target) = decoder.read_target(pool.large()) else {
                    out.extend(decode_all_in(decoder, limits, pool, &bytes[pos..end]));
                    pos = end;
                    break;
                };
                let n = target.len().min(end - pos);
                target[..n].copy_from_slice(&bytes[pos..pos + n]);
                pos += n;
                direct += 1;
                match decoder.decode_target(n) {
                    Outcome::NeedMore => {}
                    Outcome::Event(event) => out.push(Ok(resolve(&event, &[]))),
                    Outcome::Error(error) => out.push(Err(error)),
                }
            }
            if matches!(out.last(), Some(Err(_))) {
                break;
            }
        }
        (out, direct)
    }

    fn one_shot(bytes: &[u8]) -> Vec<Got> {
        decode_all(&mut Decoder::new(), &Limits::default(), bytes)
    }

    /// Decodes with a fresh decoder and expects exactly one error, the first event.
    fn expect_error(bytes: &[u8], error: ProtocolError, code: u16) {
        let got = one_shot(bytes);
        assert_eq!(got, vec![Err(error)], "{bytes:02x?}");
        assert_eq!(CloseCode::from(&error), CloseCode(code), "{error:?}");
    }

    /// Feeds one decoder each step's bytes as one read, checking what each read decodes to;
    /// afterwards nothing is buffered (every sequence here ends in an error or a message).
    fn expect_reads(steps: &[(Vec<u8>, Vec<Got>)]) {
        let mut decoder = Decoder::new();
        for (i, (bytes, want)) in steps.iter().enumerate() {
            let got = decode_all(&mut decoder, &Limits::default(), bytes);
            assert_eq!(&got, want, "read {i}");
        }
        assert_eq!(decoder.buffered(), 0);
    }

    /// `payload` as a text message of one-byte fragments.
    fn text_byte_by_byte(payload: &[u8]) -> Vec<u8> {
        let mut stream = Vec::new();
        for (i, b) in payload.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            stream.extend(frame(i + 1 == payload.len(), op, &[*b]));
        }
        stream
    }

    /// `bytes` fail with `error` (close code `code`) from their header, and nothing of them
    /// stays buffered.
    fn expect_refused(
        decoder: &mut Decoder,
        limits: &Limits,
        bytes: &[u8],
        error: ProtocolError,
        code: u16,
    ) {
        assert_eq!(decode_all(decoder, limits, bytes), vec![Err(error)]);
        assert_eq!(CloseCode::from(&error), CloseCode(code), "{error:?}");
        assert_eq!(decoder.buffered(), 0);
    }

    /// `bytes` fail with `error` however they are cut in two reads (the held-back path too).
    fn expect_error_at_every_cut(bytes: &[u8], error: ProtocolError) {
        for cut in 0..bytes.len() {
            let got = decode_chunks(&mut Decoder::new(), &Limits::default(), bytes, &[cut]);
            assert_eq!(got, vec![Err(error)], "{bytes:02x?} cut at {cut}");
        }
    }

    fn text(bytes: impl AsRef<[u8]>) -> Got {
        Ok((Kind::Text, bytes.as_ref().to_vec()))
    }
    fn binary(bytes: impl AsRef<[u8]>) -> Got {
        Ok((Kind::Binary, bytes.as_ref().to_vec()))
    }
    fn ping(bytes: impl AsRef<[u8]>) -> Got {
        Ok((Kind::Ping, bytes.as_ref().to_vec()))
    }
    fn pong(bytes: impl AsRef<[u8]>) -> Got {
        Ok((Kind::Pong, bytes.as_ref().to_vec()))
    }
    fn close(code: Option<u16>, payload: impl AsRef<[u8]>) -> Got {
        Ok((Kind::Close(code), payload.as_ref().to_vec()))
    }

    /// A masking key that varies with the frame (a small FNV-style hash of it).
    fn key_for(fin: bool, opcode: OpCode, payload: &[u8]) -> [u8; 4] {
        let mut h = 0x811c_9dc5_u32 ^ (payload.len() as u32) ^ (u32::from(opcode.bits()) << 24);
        if fin {
            h ^= 0x5a5a;
        }
        for &b in payload.iter().take(32) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h.to_le_bytes()
    }

    /// The header of a masked client frame declaring `len` payload bytes.
    fn header(fin: bool, opcode: OpCode, len: u64, key: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: Some(key),
            payload_len: len,
        };
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut out);
        out[..n].to_vec()
    }

    /// A whole masked client frame.
    fn frame_with_key(fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut bytes = header(fin, opcode, payload.len() as u64, key);
        let start = bytes.len();
        bytes.extend_from_slice(payload);
        apply_mask(&mut bytes[start..], key, 0);
        bytes
    }

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        frame_with_key(fin, opcode, payload, key_for(fin, opcode, payload))
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        frame(true, OpCode::Close, &payload)
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    /// A payload whose bytes depend on their position (so misplaced bytes show up).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Seeded, so every run decodes the same streams.
    type Rng = rand::rngs::SmallRng;

    // ---------------------------------------------------------------------------------------
    // RFC 6455 §5.7 examples
    // ---------------------------------------------------------------------------------------

    #[test]
    fn rfc_masked_hello_is_zero_copy() {
        let mut bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut decoder = Decoder::new();
        let decoded = decoder.decode(&Limits::default(), &mut BufferPool::default(), &mut bytes);
        assert_eq!(
            decoded,
            Decoded {
                consumed: 11,
                outcome: Outcome::Event(Event::Message(MessageKind::Text, Payload::Input(6..11))),
            }
        );
        // Unmasked in place.
        assert_eq!(&bytes[6..], b"Hello");
        assert_eq!(decoder.buffered(), 0);
        assert!(!decoder.is_mid_message());
        // The helper builds the same bytes.
        assert_eq!(
            frame_with_key(true, OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn rfc_fragmented_hel_lo() {
        // The RFC's unmasked "Hel" + "lo", masked with 37 fa 21 3d.
        let first = [0x01, 0x83, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d];
        let last = [0x80, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x5b, 0x95];
        assert_eq!(
            first[..],
            frame_with_key(false, OpCode::Text, b"Hel", [0x37, 0xfa, 0x21, 0x3d])
        );
        assert_eq!(
            last[..],
            frame_with_key(true, OpCode::Continuation, b"lo", [0x37, 0xfa, 0x21, 0x3d])
        );

        let limits = Limits::default();
        // In one buffer.
        assert_eq!(
            one_shot(&[&first[..], &last[..]].concat()),
            vec![text("Hello")]
        );
        // As two reads: nothing after the first, the message after the second.
        let mut decoder = Decoder::new();
        assert_eq!(decode_all(&mut decoder, &limits, &first), vec![]);
        assert!(decoder.is_mid_message());
        assert!(decoder.buffered() > 0);
        assert_eq!(
            decode_all(&mut decoder, &limits, &last),
            vec![text("Hello")]
        );
        assert!(!decoder.is_mid_message());
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn rfc_ping_and_pong_hello() {
        // Masked ping "Hello", and the RFC's masked pong "Hello".
        let ping_bytes = [
            0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let pong_bytes = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(one_shot(&ping_bytes), vec![ping("Hello")]);
        assert_eq!(one_shot(&pong_bytes), vec![pong("Hello")]);
        // The RFC's unmasked examples are refused from a client.
        expect_error(
            &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            ProtocolError::UnmaskedFrame,
            1002,
        );
        expect_error(
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            ProtocolError::UnmaskedFrame,
            1002,
        );
    }

    #[test]
    fn rfc_256_byte_binary() {
        let payload = pattern(256);
        let bytes = frame_with_key(true, OpCode::Binary, &payload, [1, 2, 3, 4]);
        assert_eq!(bytes[..8], [0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4]);
        assert_eq!(bytes.len(), 8 + 256);
        let mut buf = bytes.clone();
        let decoded =
            Decoder::new().decode(&Limits::default(), &mut BufferPool::default(), &mut buf);
        assert_eq!(decoded.consumed, bytes.len());
        assert_eq!(
            decoded.outcome,
            Outcome::Event(Event::Message(MessageKind::Binary, Payload::Input(8..264)))
        );
        assert_eq!(buf[8..], payload[..]);
    }

    #[test]
    fn rfc_64k_binary() {
        let payload = pattern(65536);
        let bytes = frame_with_key(true, OpCode::Binary, &payload, [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            bytes[..14],
            [0x82, 0xff, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(one_shot(&bytes), vec![binary(&payload)]);
        // And in uneven reads.
        let got = decode_chunks(
            &mut Decoder::new(),
            &Limits::default(),
            &bytes,
            &[1, 9, 13, 14, 4097, 30001],
        );
        assert_eq!(got, vec![binary(&payload)]);
    }

    // ---------------------------------------------------------------------------------------
    // Streams: many frames, every split, one byte at a time
    // ---------------------------------------------------------------------------------------

    /// A stream with every frame shape, and the events it must produce.
    fn mixed_stream() -> (Vec<u8>, Vec<Got>) {
        let long = pattern(300);
        let bytes = concat(&[
            frame(true, OpCode::Text, "héllo €😀".as_bytes()),
            frame(true, OpCode::Binary, &[]),
            frame(true, OpCode::Ping, b"p1"),
            frame(false, OpCode::Binary, &long[..100]),
            frame(true, OpCode::Pong, &[]),
            frame(false, OpCode::Continuation, &[]),
            frame(true, OpCode::Ping, &pattern(MAX_CONTROL_PAYLOAD)),
            frame(true, OpCode::Continuation, &long[100..]),
            frame(false, OpCode::Text, &[0xF0, 0x9F]),
            frame(true, OpCode::Continuation, &[0x98, 0x80, b'!']),
            frame(true, OpCode::Text, &[]),
            close_frame(1000, b"bye"),
        ]);
        let expected = vec![
            text("héllo €😀"),
            binary([]),
            ping("p1"),
            pong([]),
            ping(pattern(MAX_CONTROL_PAYLOAD)),
            binary(&long),
            text("😀!"),
            text(""),
            close(Some(1000), b"\x03\xe8bye"),
        ];
        (bytes, expected)
    }

    #[test]
    fn many_frames_in_one_buffer() {
        let (bytes, expected) = mixed_stream();
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(&mut decoder, &Limits::default(), &bytes),
            expected
        );
        assert_eq!(decoder.buffered(), 0);
        assert!(!decoder.is_mid_message());
    }

    #[test]
    fn split_at_every_byte_position() {
        let (bytes, expected) = mixed_stream();
        for cut in 0..=bytes.len() {
            let mut decoder = Decoder::new();
            let got = decode_chunks(&mut decoder, &Limits::default(), &bytes, &[cut]);
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(decoder.buffered(), 0, "cut at {cut}");
        }
    }

    #[test]
    fn split_at_every_pair_of_positions_in_a_small_stream() {
        let bytes = concat(&[
            frame(false, OpCode::Text, "aé".as_bytes()),
            frame(true, OpCode::Ping, b"x"),
            frame(true, OpCode::Continuation, "€".as_bytes()),
            frame(true, OpCode::Binary, &pattern(130)),
        ]);
        let expected = vec![ping("x"), text("aé€"), binary(pattern(130))];
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let got = decode_chunks(&mut Decoder::new(), &Limits::default(), &bytes, &[a, b]);
                assert_eq!(got, expected, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (bytes, expected) = mixed_stream();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_chunks(&mut decoder, &Limits::default(), &bytes, &cuts),
            expected
        );
        assert_eq!(decoder.buffered(), 0);

        // Each event arrives exactly with its last byte.
        let hello = frame(true, OpCode::Text, b"Hello");
        let mut decoder = Decoder::new();
        for (i, &byte) in hello.iter().enumerate() {
            let got = decode_all(&mut decoder, &Limits::default(), &[byte]);
            if i + 1 < hello.len() {
                assert_eq!(got, vec![], "byte {i}");
            } else {
                assert_eq!(got, vec![text("Hello")]);
            }
        }
    }

    #[test]
    fn empty_input_is_a_no_op() {
        let mut decoder = Decoder::new();
        let decoded = decoder.decode(&Limits::default(), &mut BufferPool::default(), &mut []);
        assert_eq!(
            decoded,
            Decoded {
                consumed: 0,
                outcome: Outcome::NeedMore
            }
        );
        // Also between the bytes of a header and of a payload.
        let bytes = frame(true, OpCode::Binary, b"abc");
        let limits = Limits::default();
        assert_eq!(decode_all(&mut decoder, &limits, &bytes[..3]), vec![]);
        assert_eq!(decode_all(&mut decoder, &limits, &[]), vec![]);
        assert_eq!(decode_all(&mut decoder, &limits, &bytes[3..7]), vec![]);
        assert_eq!(decode_all(&mut decoder, &limits, &[]), vec![]);
        assert_eq!(
            decode_all(&mut decoder, &limits, &bytes[7..]),
            vec![binary("abc")]
        );
    }

    // ---------------------------------------------------------------------------------------
    // Differential property test: random streams, random cuts
    // ---------------------------------------------------------------------------------------

    /// Text of exactly `len` bytes, mixing 1- to 4-byte characters.
    fn random_text(rng: &mut Rng, len: usize) -> Vec<u8> {
        const CHARS: [&str; 8] = ["a", "Z", " ", "é", "κ", "€", "你", "😀"];
        let mut out = String::with_capacity(len);
        while len - out.len() >= 4 {
            out.push_str(CHARS[rng.random_range(0..CHARS.len())]);
        }
        while out.len() < len {
            out.push('x');
        }
        out.into_bytes()
    }

    /// A message length. With `big` set (then cleared), one of the 64 KiB boundary lengths:
    /// the caller asks for that in a few streams only, to keep the test fast in debug builds.
    fn random_len(rng: &mut Rng, big: &mut bool) -> usize {
        const SMALL: [usize; 9] = [0, 0, 1, 2, 3, 5, 17, 125, 126];
        if *big {
            *big = false;
            [65535, 65536][rng.random_range(0..2)]
        } else if rng.random_ratio(1, 6) {
            [127, 200, 1000, 4099][rng.random_range(0..4)]
        } else {
            SMALL[rng.random_range(0..SMALL.len())]
        }
    }

    /// A random control frame that is valid between fragments, and its event.
    fn random_control(rng: &mut Rng, out: &mut Vec<u8>, expected: &mut Vec<Got>) {
        let len = [0, 1, 4, 125][rng.random_range(0..4)];
        let mut payload = pattern(len);
        if let Some(first) = payload.first_mut() {
            *first = rng.random::<u8>();
        }
        if rng.random_ratio(1, 2) {
            out.extend(frame_with_key(
                true,
                OpCode::Ping,
                &payload,
                rng.random::<[u8; 4]>(),
            ));
            expected.push(ping(payload));
        } else {
            out.extend(frame_with_key(
                true,
                OpCode::Pong,
                &payload,
                rng.random::<[u8; 4]>(),
            ));
            expected.push(pong(payload));
        }
    }

    /// A random stream of valid client frames and the events it must produce.
    /// With `big`, the first data message is 65535 or 65536 bytes long.
    fn random_stream(rng: &mut Rng, mut big: bool) -> (Vec<u8>, Vec<Got>) {
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + rng.random_range(0..6) {
            match rng.random_range(0..8) {
                0 | 1 => random_control(rng, &mut out, &mut expected),
                2 => {
                    let codes = [1000, 1001, 1003, 1011, 3000, 4999];
                    let code: u16 = codes[rng.random_range(0..codes.len())];
                    let reason_len = rng.random_range(0..124);
                    let reason = random_text(rng, reason_len);
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend_from_slice(&reason);
                    out.extend(frame_with_key(
                        true,
                        OpCode::Close,
                        &payload,
                        rng.random::<[u8; 4]>(),
                    ));
                    expected.push(close(Some(code), payload));
                }
                _ => {
                    let is_text = rng.random_ratio(1, 2);
                    let len = random_len(rng, &mut big);
                    let payload = if is_text {
                        random_text(rng, len)
                    } else {
                        pattern(len)
                    };
                    let (opcode, kind) = if is_text {
                        (OpCode::Text, Kind::Text)
                    } else {
                        (OpCode::Binary, Kind::Binary)
                    };
                    // 1 to 5 fragments cut at random bytes (code points may be split).
                    let mut cuts: Vec<usize> = (0..rng.random_range(0..5))
                        .map(|_| rng.random_range(0..len + 1))
                        .collect();
                    cuts.sort_unstable();
                    cuts.push(len);
                    let mut start = 0;
                    for (i, &end) in cuts.iter().enumerate() {
                        let op = if i == 0 { opcode } else { OpCode::Continuation };
                        let fin = i + 1 == cuts.len();
                        out.extend(frame_with_key(
                            fin,
                            op,
                            &payload[start..end],
                            rng.random::<[u8; 4]>(),
                        ));
                        start = end;
                        while !fin && rng.random_ratio(1, 3) {
                            random_control(rng, &mut out, &mut expected);
                        }
                    }
                    expected.push(Ok((kind, payload)));
                }
            }
        }
        (out, expected)
    }

    #[test]
    fn differential_random_cuts_match_one_shot() {
        let limits = Limits::default();
        let mut rng = Rng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
        let mut iterations = 0;
        let mut direct_reads = 0;
        for round in 0..600 {
            let (bytes, expected) = random_stream(&mut rng, round % 24 == 0);
            let whole = decode_all(&mut Decoder::new(), &limits, &bytes);
            assert_eq!(
                whole, expected,
                "one-shot decoding disagrees with the model"
            );
            for _ in 0..6 {
                let n = match rng.random_range(0..4) {
                    0 => 1,
                    1 => 1 + rng.random_range(0..4),
                    2 => 1 + rng.random_range(0..16),
                    _ => 1 + rng.random_range(0..64),
                };
                let mut cuts: Vec<usize> = (0..n)
                    .map(|_| rng.random_range(0..bytes.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut decoder = Decoder::new();
                let got = decode_chunks(&mut decoder, &limits, &bytes, &cuts);
                assert_eq!(
                    got,
                    whole,
                    "stream of {} bytes cut at {cuts:?}",
                    bytes.len()
                );
                assert_eq!(decoder.buffered(), 0);
                assert!(!decoder.is_mid_message());
                // The same reads with direct reads into place, messages of 64 bytes and more
                // being large (the pool lends them, and takes them back once delivered).
                let mut pool = BufferPool::new(64, 1 << 20);
                let mut decoder = Decoder::new();
                let (got, direct) = decode_reads(&mut decoder, &limits, &mut pool, &bytes, &cuts);
                assert_eq!(got, whole, "direct reads, cut at {cuts:?}");
                direct_reads += direct;
                assert_eq!(decoder.buffered(), 0);
                iterations += 1;
            }
        }
        assert_eq!(iterations, 3600);
        assert!(
            direct_reads > 1000,
            "only {direct_reads} reads went into place"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Every rule: the exact error and its close code
    // ---------------------------------------------------------------------------------------

    #[test]
    fn unmasked_frame_is_1002() {
        expect_error(&[0x82, 0x00], ProtocolError::UnmaskedFrame, 1002);
        expect_error(
            &[0x88, 0x02, 0x03, 0xe8],
            ProtocolError::UnmaskedFrame,
            1002,
        );
        // Also after a valid frame, and as a continuation.
        let mut bytes = frame(false, OpCode::Text, b"a");
        bytes.extend([0x80, 0x01, b'b']);
        assert_eq!(one_shot(&bytes), vec![Err(ProtocolError::UnmaskedFrame)]);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            for opcode in [
                OpCode::Text,
                OpCode::Binary,
                OpCode::Continuation,
                OpCode::Ping,
                OpCode::Close,
            ] {
                let mut bytes = frame(true, opcode, b"");
                bytes[0] |= rsv;
                expect_error(&bytes, ProtocolError::ReservedBits, 1002);
            }
        }
        // Literal: RSV1 on the RFC's masked "Hello".
        expect_error(
            &[
                0xc1, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            ProtocolError::ReservedBits,
            1002,
        );
    }

    #[test]
    fn reserved_opcodes_are_1002() {
        for op in [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            for fin in [0x80, 0x00] {
                expect_error(
                    &[fin | op, 0x80, 1, 2, 3, 4],
                    ProtocolError::ReservedOpcode,
                    1002,
                );
                // From the first two bytes alone.
                expect_error(&[fin | op, 0x80], ProtocolError::ReservedOpcode, 1002);
            }
        }
        // Inside a fragmented message too.
        let mut bytes = frame(false, OpCode::Binary, b"ab");
        bytes.extend([0x83, 0x80, 0, 0, 0, 0]);
        assert_eq!(one_shot(&bytes), vec![Err(ProtocolError::ReservedOpcode)]);
    }

    #[test]
    fn control_frames_over_125_are_1002() {
        for opcode in [0x88, 0x89, 0x8a] {
            // 126 bytes, 16-bit length: refused from the first two bytes.
            expect_error(&[opcode, 0xfe], ProtocolError::ControlFrameTooLong, 1002);
            expect_error(
                &[opcode, 0xfe, 0x00, 0x7e, 1, 2, 3, 4],
                ProtocolError::ControlFrameTooLong,
                1002,
            );
            // 64-bit length.
            expect_error(&[opcode, 0xff], ProtocolError::ControlFrameTooLong, 1002);
        }
        // A whole 126-byte ping built by the helper.
        expect_error(
            &frame(true, OpCode::Ping, &pattern(126)),
            ProtocolError::ControlFrameTooLong,
            1002,
        );
        // 125 is fine.
        assert_eq!(
            one_shot(&frame(true, OpCode::Ping, &pattern(125))),
            vec![ping(pattern(125))]
        );
        assert_eq!(
            one_shot(&frame(true, OpCode::Pong, &pattern(125))),
            vec![pong(pattern(125))]
        );
    }

    #[test]
    fn fragmented_control_frames_are_1002() {
        for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            expect_error(
                &frame(false, opcode, b""),
                ProtocolError::FragmentedControlFrame,
                1002,
            );
            expect_error(
                &frame(false, opcode, b"\x03\xe8"),
                ProtocolError::FragmentedControlFrame,
                1002,
            );
        }
        expect_error(&[0x09, 0x80], ProtocolError::FragmentedControlFrame, 1002);
    }

    #[test]
    fn length_with_top_bit_set_is_1002() {
        for top in [0x80, 0xff] {
            expect_error(
                &[0x82, 0xff, top, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                ProtocolError::LengthOverflow,
                1002,
            );
            // Decided at the 10th header byte, before the mask arrives.
            expect_error(
                &[0x82, 0xff, top, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::LengthOverflow,
                1002,
            );
        }
        // As a continuation frame, too.
        let mut bytes = frame(false, OpCode::Text, b"a");
        bytes.extend([0x80, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9]);
        assert_eq!(one_shot(&bytes), vec![Err(ProtocolError::LengthOverflow)]);
        // The header split across reads.
        let header = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        expect_error_at_every_cut(&header, ProtocolError::LengthOverflow);
    }

    #[test]
    fn continuation_without_a_message_is_1002() {
        for fin in [true, false] {
            expect_error(
                &frame(fin, OpCode::Continuation, b""),
                ProtocolError::UnexpectedContinuation,
                1002,
            );
            expect_error(
                &frame(fin, OpCode::Continuation, b"abc"),
                ProtocolError::UnexpectedContinuation,
                1002,
            );
        }
        // After what came before it ended: (frames, what they decode to).
        let cases = [
            // A complete fragmented message.
            (
                vec![
                    frame(false, OpCode::Text, b"a"),
                    frame(true, OpCode::Continuation, b"b"),
                    frame(true, OpCode::Continuation, b"c"),
                ],
                text("ab"),
            ),
            // A single-frame message.
            (
                vec![
                    frame(true, OpCode::Binary, b"a"),
                    frame(false, OpCode::Continuation, b"b"),
                ],
                binary("a"),
            ),
            // A control frame.
            (
                vec![
                    frame(true, OpCode::Ping, b""),
                    frame(true, OpCode::Continuation, b""),
                ],
                ping(""),
            ),
        ];
        for (frames, first) in cases {
            assert_eq!(
                one_shot(&concat(&frames)),
                vec![first, Err(ProtocolError::UnexpectedContinuation)]
            );
        }
    }

    #[test]
    fn new_message_inside_a_fragmented_message_is_1002() {
        for first in [OpCode::Text, OpCode::Binary] {
            for second in [OpCode::Text, OpCode::Binary] {
                for fin in [true, false] {
                    let bytes = concat(&[frame(false, first, b"ab"), frame(fin, second, b"cd")]);
                    expect_error(&bytes, ProtocolError::ExpectedContinuation, 1002);
                }
            }
        }
        // Even after a continuation and a control frame.
        let bytes = concat(&[
            frame(false, OpCode::Text, b"a"),
            frame(false, OpCode::Continuation, b"b"),
            frame(true, OpCode::Ping, b"p"),
            frame(true, OpCode::Text, b"c"),
        ]);
        assert_eq!(
            one_shot(&bytes),
            vec![ping("p"), Err(ProtocolError::ExpectedContinuation)]
        );
    }

    #[test]
    fn close_payload_of_one_byte_is_1002() {
        expect_error(
            &frame(true, OpCode::Close, &[0x03]),
            ProtocolError::InvalidClosePayload,
            1002,
        );
        // Literal, masked with 00 00 00 00.
        expect_error(
            &[0x88, 0x81, 0, 0, 0, 0, 0x03],
            ProtocolError::InvalidClosePayload,
            1002,
        );
        // Split across reads: the Owned path validates too.
        let bytes = frame(true, OpCode::Close, &[0x03]);
        expect_error_at_every_cut(&bytes, ProtocolError::InvalidClosePayload);
    }

    #[test]
    fn invalid_close_codes_are_1002() {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            expect_error(
                &close_frame(code, b""),
                ProtocolError::InvalidClosePayload,
                1002,
            );
            expect_error(
                &close_frame(code, b"reason"),
                ProtocolError::InvalidClosePayload,
                1002,
            );
            // Split in the middle of the code.
            let bytes = close_frame(code, b"");
            let got = decode_chunks(
                &mut Decoder::new(),
                &Limits::default(),
                &bytes,
                &[bytes.len() - 1],
            );
            assert_eq!(got, vec![Err(ProtocolError::InvalidClosePayload)], "{code}");
        }
    }

    #[test]
    fn valid_close_frames() {
        assert_eq!(
            one_shot(&frame(true, OpCode::Close, b"")),
            vec![close(None, b"")]
        );
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let bytes = close_frame(code, "ciao 😀".as_bytes());
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("ciao 😀".as_bytes());
            assert_eq!(
                one_shot(&bytes),
                vec![close(Some(code), &payload)],
                "{code}"
            );
        }
        // The longest reason, delivered zero copy.
        let reason = "r".repeat(123);
        let mut buf = close_frame(1000, reason.as_bytes());
        let decoded =
            Decoder::new().decode(&Limits::default(), &mut BufferPool::default(), &mut buf);
        assert_eq!(decoded.consumed, buf.len());
        match decoded.outcome {
            Outcome::Event(Event::Close {
                code: Some(CloseCode::NORMAL),
                payload: Payload::Input(range),
            }) => {
                assert_eq!(range, 6..131);
                assert_eq!(&buf[range.start + 2..range.end], reason.as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_reason_with_invalid_utf8_is_1007() {
        for reason in [
            &[0xff][..],
            &[0xc3],
            &[0xed, 0xa0, 0x80],
            &[b'o', b'k', 0xc0, 0x80],
            &[0xe2, 0x82],
        ] {
            let bytes = close_frame(1000, reason);
            expect_error(&bytes, ProtocolError::InvalidUtf8, 1007);
            expect_error_at_every_cut(&bytes, ProtocolError::InvalidUtf8);
        }
    }

    #[test]
    fn invalid_utf8_in_text_is_1007() {
        let bad: [&[u8]; 9] = [
            &[0xff],
            &[0x80],
            &[0xc0, 0x80],             // overlong NUL
            &[0xe0, 0x80, 0x80],       // overlong
            &[0xed, 0xa0, 0x80],       // surrogate
            &[0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
            &[0xf5, 0x80, 0x80, 0x80],
            &[0xc2, 0x41],
            &[
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
        ];
        for bytes in bad {
            // One frame (fast path).
            expect_error(
                &frame(true, OpCode::Text, bytes),
                ProtocolError::InvalidUtf8,
                1007,
            );
            // One frame, one byte at a time (streaming path).
            let whole = frame(true, OpCode::Text, bytes);
            let cuts: Vec<usize> = (1..whole.len()).collect();
            let got = decode_chunks(&mut Decoder::new(), &Limits::default(), &whole, &cuts);
            assert_eq!(got, vec![Err(ProtocolError::InvalidUtf8)], "{bytes:02x?}");
            // As fragments of one byte each.
            let stream = text_byte_by_byte(bytes);
            assert_eq!(
                one_shot(&stream),
                vec![Err(ProtocolError::InvalidUtf8)],
                "{bytes:02x?}"
            );
        }
        // Binary is not validated.
        assert_eq!(
            one_shot(&frame(true, OpCode::Binary, &[0xff, 0xc0])),
            vec![binary([0xff, 0xc0])]
        );
    }

    #[test]
    fn deferred_validation_leaves_only_whole_text_frames_to_the_caller() {
        let limits = Limits::default();
        let deferring = || {
            let mut decoder = Decoder::new();
            decoder.defer_whole_text_validation();
            decoder
        };
        // A whole invalid text frame in one slice is handed out for the caller to check.
        let bad = frame(true, OpCode::Text, &[b'a', 0xff]);
        let mut buf = bad.clone();
        assert_eq!(
            deferring()
                .decode(&limits, &mut BufferPool::default(), &mut buf)
                .outcome,
            Outcome::Event(Event::Message(MessageKind::Text, Payload::Input(6..8)))
        );
        // Streamed text still fails fast: split across reads, and fragmented.
        let cuts: Vec<usize> = (1..bad.len()).collect();
        assert_eq!(
            decode_chunks(&mut deferring(), &limits, &bad, &cuts),
            vec![Err(ProtocolError::InvalidUtf8)]
        );
        let fragments = concat(&[
            frame(false, OpCode::Text, b"a"),
            frame(true, OpCode::Continuation, &[0xff]),
        ]);
        assert_eq!(
            decode_all(&mut deferring(), &limits, &fragments),
            vec![Err(ProtocolError::InvalidUtf8)]
        );
        // Close reasons are always checked.
        assert_eq!(
            decode_all(&mut deferring(), &limits, &close_frame(1000, &[0xff])),
            vec![Err(ProtocolError::InvalidUtf8)]
        );
    }

    // ---------------------------------------------------------------------------------------
    // Fail-fast UTF-8
    // ---------------------------------------------------------------------------------------

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_carries_it() {
        let bad = || vec![Err(ProtocolError::InvalidUtf8)];
        // The bad fragment is not final; no later fragment is needed to see the error.
        expect_reads(&[
            (frame(false, OpCode::Text, "κόσμε".as_bytes()), vec![]),
            (frame(false, OpCode::Continuation, b"ok"), vec![]),
            (
                frame(false, OpCode::Continuation, &[b'a', 0xff, b'b']),
                bad(),
            ),
        ]);
        // A code point made invalid by the first byte of the next fragment: F4 | 90.
        expect_reads(&[
            (frame(false, OpCode::Text, &[b'a', 0xf4]), vec![]),
            (frame(false, OpCode::Continuation, &[0x90]), bad()),
        ]);
        // An invalid first fragment fails by itself.
        expect_reads(&[(frame(false, OpCode::Text, &[0xed, 0xa0]), bad())]);
    }

    #[test]
    fn invalid_utf8_fails_at_the_read_that_carries_it() {
        // One unfragmented text frame of 64 bytes with a bad byte at `bad`, fed in three reads.
        let limits = Limits::default();
        for bad in [0usize, 1, 30, 63] {
            let mut payload =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/".to_vec();
            payload[bad] = 0xff;
            let bytes = frame(true, OpCode::Text, &payload);
            let header_len = bytes.len() - payload.len();
            let at = header_len + bad; // stream offset of the bad byte
            for a in 1..bytes.len() {
                for b in a + 1..bytes.len() {
                    let mut decoder = Decoder::new();
                    let reads = [&bytes[..a], &bytes[a..b], &bytes[b..]];
                    let ends = [a, b, bytes.len()];
                    for (read, end) in reads.iter().zip(ends) {
                        let got = decode_all(&mut decoder, &limits, read);
                        if end <= at {
                            assert_eq!(got, vec![], "bad {bad} cuts {a},{b}: too early");
                        } else {
                            assert_eq!(
                                got,
                                vec![Err(ProtocolError::InvalidUtf8)],
                                "bad {bad} cuts {a},{b}"
                            );
                            break;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_code_point_mid_frame_fails_when_the_next_byte_arrives() {
        // E2 82 then 'A' (not a continuation byte), in one frame fed byte by byte.
        let limits = Limits::default();
        let bytes = frame(true, OpCode::Text, &[b'x', 0xe2, 0x82, b'A', b'y']);
        let mut decoder = Decoder::new();
        let start = bytes.len() - 5;
        assert_eq!(
            decode_all(&mut decoder, &limits, &bytes[..start + 3]),
            vec![]
        );
        assert_eq!(
            decode_all(&mut decoder, &limits, &bytes[start + 3..start + 4]),
            vec![Err(ProtocolError::InvalidUtf8)]
        );
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        let emoji = "😀".as_bytes(); // F0 9F 98 80
        for a in 0..=4 {
            for b in a..=4 {
                let bytes = concat(&[
                    frame(false, OpCode::Text, &emoji[..a]),
                    frame(true, OpCode::Ping, b"between"),
                    frame(false, OpCode::Continuation, &emoji[a..b]),
                    frame(true, OpCode::Continuation, &emoji[b..]),
                ]);
                assert_eq!(
                    one_shot(&bytes),
                    vec![ping("between"), text("😀")],
                    "split {a},{b}"
                );
            }
        }
        // One byte per fragment, for several multi-byte characters, and every read split.
        let word = "é€😀κ".as_bytes();
        let bytes = text_byte_by_byte(word);
        for cut in 0..=bytes.len() {
            let got = decode_chunks(&mut Decoder::new(), &Limits::default(), &bytes, &[cut]);
            assert_eq!(got, vec![text(word)], "cut {cut}");
        }
    }

    #[test]
    fn message_ending_mid_code_point_fails_at_its_final_fragment() {
        let limits = Limits::default();
        let bad = || vec![Err(ProtocolError::InvalidUtf8)];
        // The incomplete code point is valid so far: nothing until the final fragment.
        expect_reads(&[
            (frame(false, OpCode::Text, &[b'a', 0xe2, 0x82]), vec![]),
            (frame(true, OpCode::Ping, b""), vec![ping("")]),
            (frame(true, OpCode::Continuation, b""), bad()),
        ]);
        // Final fragment carrying the truncated start.
        expect_reads(&[
            (frame(false, OpCode::Text, b"ab"), vec![]),
            (
                frame(true, OpCode::Continuation, &[0xf0, 0x9f, 0x98]),
                bad(),
            ),
        ]);
        // An unfragmented frame ending mid-code-point: whole, and split at every position.
        let bytes = frame(true, OpCode::Text, &[b'a', 0xf0, 0x9f]);
        expect_error(&bytes, ProtocolError::InvalidUtf8, 1007);
        for cut in 1..bytes.len() {
            let mut decoder = Decoder::new();
            assert_eq!(
                decode_all(&mut decoder, &limits, &bytes[..cut]),
                vec![],
                "cut {cut}"
            );
            assert_eq!(
                decode_all(&mut decoder, &limits, &bytes[cut..]),
                vec![Err(ProtocolError::InvalidUtf8)],
                "cut {cut}"
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Size limits, from the header
    // ---------------------------------------------------------------------------------------

    #[test]
    fn frame_over_max_frame_fails_from_the_header_alone() {
        let limits = Limits {
            max_frame: 1000,
            max_message: 1 << 20,
        };
        for opcode in [OpCode::Text, OpCode::Binary] {
            for len in [1001u64, 65536, 1 << 32] {
                let mut decoder = Decoder::new();
                let bytes = header(true, opcode, len, [9, 8, 7, 6]);
                expect_refused(
                    &mut decoder,
                    &limits,
                    &bytes,
                    ProtocolError::FrameTooBig,
                    1009,
                );
            }
            // Exactly the limit is fine.
            let payload = vec![b'a'; 1000];
            let got = decode_all(&mut Decoder::new(), &limits, &frame(true, opcode, &payload));
            let kind = if opcode == OpCode::Text {
                Kind::Text
            } else {
                Kind::Binary
            };
            assert_eq!(got, vec![Ok((kind, payload))]);
        }
        // A continuation frame over the limit (and under max_message) fails at its header.
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(
                &mut decoder,
                &limits,
                &frame(false, OpCode::Binary, &pattern(10))
            ),
            vec![]
        );
        assert_eq!(
            decode_all(
                &mut decoder,
                &limits,
                &header(true, OpCode::Continuation, 1001, [1, 1, 1, 1])
            ),
            vec![Err(ProtocolError::FrameTooBig)]
        );
        assert_eq!(decoder.buffered(), 0);
        // Control frames are bounded by 125 alone.
        let tiny = Limits {
            max_frame: 10,
            max_message: 10,
        };
        assert_eq!(
            decode_all(
                &mut Decoder::new(),
                &tiny,
                &frame(true, OpCode::Ping, &pattern(100))
            ),
            vec![ping(pattern(100))]
        );
    }

    #[test]
    fn fragments_over_max_message_fail_at_the_offending_header() {
        let limits = Limits {
            max_frame: 1000,
            max_message: 100,
        };
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(
                &mut decoder,
                &limits,
                &frame(false, OpCode::Text, &[b'a'; 40])
            ),
            vec![]
        );
        assert_eq!(
            decode_all(
                &mut decoder,
                &limits,
                &frame(false, OpCode::Continuation, &[b'b'; 40])
            ),
            vec![]
        );
        assert_eq!(
            decode_all(
                &mut decoder,
                &limits,
                &frame(true, OpCode::Ping, &[b'p'; 50])
            ),
            vec![ping([b'p'; 50])]
        );
        // 80 + 21 > 100: refused at the header, before its payload arrives.
        let offending = header(true, OpCode::Continuation, 21, [3, 1, 4, 1]);
        expect_refused(
            &mut decoder,
            &limits,
            &offending,
            ProtocolError::MessageTooBig,
            1009,
        );

        // 80 + 20 == 100 is fine.
        let bytes = concat(&[
            frame(false, OpCode::Binary, &[1; 40]),
            frame(false, OpCode::Continuation, &[2; 40]),
            frame(true, OpCode::Continuation, &[3; 20]),
        ]);
        let expected = [vec![1u8; 40], vec![2; 40], vec![3; 20]].concat();
        assert_eq!(
            decode_all(&mut Decoder::new(), &limits, &bytes),
            vec![binary(&expected)]
        );

        // A first frame over max_message (but under max_frame).
        for fin in [true, false] {
            let mut decoder = Decoder::new();
            let bytes = header(fin, OpCode::Binary, 101, [5, 5, 5, 5]);
            assert_eq!(
                decode_all(&mut decoder, &limits, &bytes),
                vec![Err(ProtocolError::MessageTooBig)]
            );
            assert_eq!(decoder.buffered(), 0);
        }

        // The offending header split across reads: refused when its last byte arrives.
        let mut stream = concat(&[frame(false, OpCode::Text, &[b'a'; 90])]);
        let offending = header(false, OpCode::Continuation, 11, [7, 7, 7, 7]);
        stream.extend(&offending);
        stream.extend([b'z'; 11]);
        let end_of_header = stream.len() - 11;
        for cut in 0..stream.len() {
            let mut decoder = Decoder::new();
            let first = decode_all(&mut decoder, &limits, &stream[..cut]);
            if cut < end_of_header {
                assert_eq!(first, vec![], "cut {cut}");
                assert_eq!(
                    decode_all(&mut decoder, &limits, &stream[cut..]),
                    vec![Err(ProtocolError::MessageTooBig)],
                    "cut {cut}"
                );
            } else {
                assert_eq!(first, vec![Err(ProtocolError::MessageTooBig)], "cut {cut}");
            }
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn huge_declared_lengths_are_refused_from_the_header() {
        let limits = Limits::default();
        for len in [(1u64 << 63) - 1, 1 << 62, 1 << 32, u64::from(u32::MAX) + 1] {
            for opcode in [OpCode::Text, OpCode::Binary] {
                for fin in [true, false] {
                    let bytes = header(fin, opcode, len, [0xaa, 0xbb, 0xcc, 0xdd]);
                    assert_eq!(bytes.len(), 14);
                    let mut decoder = Decoder::new();
                    assert_eq!(
                        decode_all(&mut decoder, &limits, &bytes),
                        vec![Err(ProtocolError::FrameTooBig)]
                    );
                    assert_eq!(decoder.buffered(), 0);
                    // With some payload bytes after the header too.
                    let mut with_payload = bytes.clone();
                    with_payload.extend([0u8; 64]);
                    let mut decoder = Decoder::new();
                    assert_eq!(
                        decode_all(&mut decoder, &limits, &with_payload),
                        vec![Err(ProtocolError::FrameTooBig)]
                    );
                    assert_eq!(decoder.buffered(), 0);
                }
            }
            // As a continuation.
            let mut decoder = Decoder::new();
            assert_eq!(
                decode_all(&mut decoder, &limits, &frame(false, OpCode::Text, b"abc")),
                vec![]
            );
            let bytes = header(true, OpCode::Continuation, len, [1, 2, 3, 4]);
            assert_eq!(
                decode_all(&mut decoder, &limits, &bytes),
                vec![Err(ProtocolError::FrameTooBig)]
            );
            assert_eq!(decoder.buffered(), 0);
        }
        // Literal 2^63 - 1 and 2^62.
        expect_error(
            &[
                0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
            ],
            ProtocolError::FrameTooBig,
            1009,
        );
        expect_error(
            &[0x81, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            ProtocolError::FrameTooBig,
            1009,
        );
        // With limits that let every frame through, the message limit still refuses the sum
        // from the header (and the sum does not overflow).
        let open = Limits {
            max_frame: u64::MAX,
            max_message: (1 << 63) - 1,
        };
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(&mut decoder, &open, &frame(false, OpCode::Binary, b"ab")),
            vec![]
        );
        let bytes = header(true, OpCode::Continuation, (1 << 63) - 1, [1, 2, 3, 4]);
        assert_eq!(
            decode_all(&mut decoder, &open, &bytes),
            vec![Err(ProtocolError::MessageTooBig)]
        );
        assert_eq!(decoder.buffered(), 0);
    }

    // ---------------------------------------------------------------------------------------
    // Sticky errors
    // ---------------------------------------------------------------------------------------

    #[test]
    fn errors_are_sticky() {
        let limits = Limits::default();
        let valid = concat(&[
            frame(true, OpCode::Text, b"after"),
            frame(true, OpCode::Ping, b"p"),
            close_frame(1000, b""),
        ]);
        let breakers = [
            vec![0x82, 0x00],                        // unmasked
            frame(true, OpCode::Continuation, b"x"), // unexpected continuation
            frame(true, OpCode::Text, &[0xff]),      // invalid UTF-8
            frame(true, OpCode::Close, &[0x03]),     // 1-byte close
            header(true, OpCode::Binary, 1 << 40, [0; 4]),
        ];
        for breaker in breakers {
            let mut decoder = Decoder::new();
            // The error, with valid frames after it in the same read: all consumed.
            let mut bytes = breaker.clone();
            bytes.extend(&valid);
            let mut buf = bytes.clone();
            let decoded = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
            assert_eq!(decoded.consumed, bytes.len());
            assert!(
                matches!(decoded.outcome, Outcome::Error(_)),
                "{breaker:02x?}"
            );
            // Later reads: consumed, NeedMore, no event, whatever they hold.
            for _ in 0..3 {
                let mut buf = valid.clone();
                let decoded = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
                assert_eq!(
                    decoded,
                    Decoded {
                        consumed: valid.len(),
                        outcome: Outcome::NeedMore
                    }
                );
                assert_eq!(decode_all(&mut decoder, &limits, &[0x82, 0x00]), vec![]);
                assert_eq!(decode_all(&mut decoder, &limits, &[]), vec![]);
            }
            assert_eq!(decoder.buffered(), 0);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Control frames within fragmented messages
    // ---------------------------------------------------------------------------------------

    #[test]
    fn control_frames_between_fragments_are_delivered_in_order() {
        let bytes = concat(&[
            frame(true, OpCode::Ping, b"0"),
            frame(false, OpCode::Text, "fragé".as_bytes()),
            frame(true, OpCode::Ping, b"1"),
            frame(true, OpCode::Pong, b"2"),
            frame(false, OpCode::Continuation, b"-"),
            frame(true, OpCode::Ping, b""),
            close_frame(1001, b"going"),
            frame(true, OpCode::Continuation, "mented".as_bytes()),
            frame(true, OpCode::Pong, b"3"),
        ]);
        let expected = vec![
            ping("0"),
            ping("1"),
            pong("2"),
            ping(""),
            close(Some(1001), b"\x03\xe9going"),
            text("fragé-mented"),
            pong("3"),
        ];
        assert_eq!(one_shot(&bytes), expected);
        for cut in 0..=bytes.len() {
            let got = decode_chunks(&mut Decoder::new(), &Limits::default(), &bytes, &[cut]);
            assert_eq!(got, expected, "cut {cut}");
        }
    }

    #[test]
    fn control_frame_split_across_reads_is_delivered_whole() {
        let limits = Limits::default();
        let payload = pattern(125);
        let control = frame_with_key(true, OpCode::Ping, &payload, [0x11, 0x22, 0x33, 0x44]);
        let first = frame(false, OpCode::Binary, b"AB");
        let last = frame(true, OpCode::Continuation, b"CD");
        for a in 0..=control.len() {
            for b in a..=control.len() {
                let mut decoder = Decoder::new();
                assert_eq!(decode_all(&mut decoder, &limits, &first), vec![]);
                let mut got = decode_all(&mut decoder, &limits, &control[..a]);
                got.extend(decode_all(&mut decoder, &limits, &control[a..b]));
                // The ping arrives with its last byte, in one piece.
                if b < control.len() {
                    assert_eq!(got, vec![], "cuts {a},{b}");
                }
                got.extend(decode_all(&mut decoder, &limits, &control[b..]));
                assert_eq!(got, vec![ping(&payload)], "cuts {a},{b}");
                assert_eq!(
                    decode_all(&mut decoder, &limits, &last),
                    vec![binary("ABCD")],
                    "cuts {a},{b}"
                );
                assert_eq!(decoder.buffered(), 0);
            }
        }
        // A split control frame is assembled (Owned), and the control buffer is released.
        let mut decoder = Decoder::new();
        assert_eq!(decode_all(&mut decoder, &limits, &control[..10]), vec![]);
        assert!(decoder.is_mid_message());
        let mut rest = control[10..].to_vec();
        let decoded = decoder.decode(&limits, &mut BufferPool::default(), &mut rest);
        assert_eq!(decoded.consumed, rest.len());
        assert_eq!(
            decoded.outcome,
            Outcome::Event(Event::Ping(Payload::Owned(payload.clone())))
        );
        assert_eq!(decoder.buffered(), 0);
        assert!(!decoder.is_mid_message());
    }

    // ---------------------------------------------------------------------------------------
    // Zero copy, assembly, buffering
    // ---------------------------------------------------------------------------------------

    #[test]
    fn single_frame_fast_path_is_zero_copy() {
        let limits = Limits::default();
        let mut decoder = Decoder::new();
        // Preceded by a partial frame's tail, so the ranges do not start at 0.
        let mut buf = concat(&[
            frame(true, OpCode::Text, b"one"),
            frame(true, OpCode::Binary, &pattern(200)),
            frame(true, OpCode::Pong, b"pg"),
        ]);
        let d1 = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
        assert_eq!(d1.consumed, 9);
        assert_eq!(
            d1.outcome,
            Outcome::Event(Event::Message(MessageKind::Text, Payload::Input(6..9)))
        );
        let d2 = decoder.decode(&limits, &mut BufferPool::default(), &mut buf[9..]);
        assert_eq!(d2.consumed, 8 + 200);
        assert_eq!(
            d2.outcome,
            Outcome::Event(Event::Message(MessageKind::Binary, Payload::Input(8..208)))
        );
        assert_eq!(buf[9 + 8..9 + 208], pattern(200)[..]);
        let d3 = decoder.decode(&limits, &mut BufferPool::default(), &mut buf[217..]);
        assert_eq!(
            d3.outcome,
            Outcome::Event(Event::Pong(Payload::Input(6..8)))
        );
        assert_eq!(
            decoder
                .decode(
                    &limits,
                    &mut BufferPool::default(),
                    &mut buf[217 + d3.consumed..]
                )
                .outcome,
            Outcome::NeedMore
        );
        assert_eq!(decoder.buffered(), 0);

        // A frame whose header was split is still zero copy once the payload is all here:
        // the range is relative to the second read.
        let bytes = frame(true, OpCode::Binary, b"payload");
        let mut decoder = Decoder::new();
        assert_eq!(decode_all(&mut decoder, &limits, &bytes[..3]), vec![]);
        let mut rest = bytes[3..].to_vec();
        let decoded = decoder.decode(&limits, &mut BufferPool::default(), &mut rest);
        assert_eq!(decoded.consumed, rest.len());
        assert_eq!(
            decoded.outcome,
            Outcome::Event(Event::Message(MessageKind::Binary, Payload::Input(3..10)))
        );
        assert_eq!(&rest[3..], b"payload");
    }

    #[test]
    fn assembled_messages_are_owned_and_release_the_buffer() {
        let limits = Limits::default();
        // Fragmented, in one read: Owned.
        let mut buf = concat(&[
            frame(false, OpCode::Binary, b"ab"),
            frame(true, OpCode::Continuation, b"cd"),
            frame(true, OpCode::Text, b"next"),
        ]);
        let mut decoder = Decoder::new();
        let d = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
        assert_eq!(d.consumed, 8 + 8);
        assert_eq!(
            d.outcome,
            Outcome::Event(Event::Message(
                MessageKind::Binary,
                Payload::Owned(b"abcd".to_vec())
            ))
        );
        assert_eq!(decoder.buffered(), 0);
        let d = decoder.decode(&limits, &mut BufferPool::default(), &mut buf[16..]);
        assert_eq!(
            d.outcome,
            Outcome::Event(Event::Message(MessageKind::Text, Payload::Input(6..10)))
        );

        // One frame split across reads: Owned, buffered while in progress, 0 after.
        let payload = pattern(1000);
        let bytes = frame(true, OpCode::Binary, &payload);
        let mut decoder = Decoder::new();
        assert_eq!(decode_all(&mut decoder, &limits, &bytes[..500]), vec![]);
        assert!(decoder.buffered() >= 500 - 8);
        assert!(decoder.is_mid_message());
        let mut rest = bytes[500..].to_vec();
        let d = decoder.decode(&limits, &mut BufferPool::default(), &mut rest);
        assert_eq!(d.consumed, rest.len());
        assert_eq!(
            d.outcome,
            Outcome::Event(Event::Message(MessageKind::Binary, Payload::Owned(payload)))
        );
        assert_eq!(decoder.buffered(), 0);
        assert!(!decoder.is_mid_message());

        // And again on the same decoder: the state is clean for the next message.
        let bytes = concat(&[
            frame(false, OpCode::Text, "é".as_bytes()),
            frame(true, OpCode::Continuation, b"!"),
        ]);
        assert_eq!(decode_all(&mut decoder, &limits, &bytes), vec![text("é!")]);
        assert_eq!(decoder.buffered(), 0);
    }

    // ---------------------------------------------------------------------------------------
    // Zero-length frames
    // ---------------------------------------------------------------------------------------

    #[test]
    fn zero_length_final_continuation_completes_in_the_same_call() {
        let limits = Limits::default();
        let first = frame(false, OpCode::Text, b"abc");
        let last = frame(true, OpCode::Continuation, b"");
        assert_eq!(last.len(), 6);

        // Last bytes of the input, in one read with the first fragment.
        let mut buf = concat(&[first.clone(), last.clone()]);
        let d = Decoder::new().decode(&limits, &mut BufferPool::default(), &mut buf);
        assert_eq!(d.consumed, buf.len());
        assert_eq!(
            d.outcome,
            Outcome::Event(Event::Message(
                MessageKind::Text,
                Payload::Owned(b"abc".to_vec())
            ))
        );

        // Alone in its read.
        let mut decoder = Decoder::new();
        assert_eq!(decode_all(&mut decoder, &limits, &first), vec![]);
        let mut buf = last.clone();
        let d = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
        assert_eq!(d.consumed, 6);
        assert_eq!(
            d.outcome,
            Outcome::Event(Event::Message(
                MessageKind::Text,
                Payload::Owned(b"abc".to_vec())
            ))
        );
        assert_eq!(decoder.buffered(), 0);

        // Its header completed by the last byte of a read.
        for cut in 0..last.len() {
            let mut decoder = Decoder::new();
            assert_eq!(decode_all(&mut decoder, &limits, &first), vec![]);
            assert_eq!(decode_all(&mut decoder, &limits, &last[..cut]), vec![]);
            let mut buf = last[cut..].to_vec();
            let d = decoder.decode(&limits, &mut BufferPool::default(), &mut buf);
            assert_eq!(d.consumed, buf.len(), "cut {cut}");
            assert_eq!(
                d.outcome,
                Outcome::Event(Event::Message(
                    MessageKind::Text,
                    Payload::Owned(b"abc".to_vec())
                )),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn zero_length_frames_of_every_kind() {
        let bytes = concat(&[
            frame(true, OpCode::Text, b""),
            frame(true, OpCode::Binary, b""),
            frame(true, OpCode::Ping, b""),
            frame(true, OpCode::Pong, b""),
            frame(false, OpCode::Binary, b""),
            frame(false, OpCode::Continuation, b""),
            frame(true, OpCode::Continuation, b""),
            frame(false, OpCode::Text, b""),
            frame(true, OpCode::Continuation, b""),
            frame(true, OpCode::Close, b""),
        ]);
        let expected = vec![
            text(""),
            binary(""),
            ping(""),
            pong(""),
            binary(""),
            text(""),
            close(None, b""),
        ];
        assert_eq!(one_shot(&bytes), expected);
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            decode_chunks(&mut Decoder::new(), &Limits::default(), &bytes, &cuts),
            expected
        );
        // Literal: a masked empty text frame is zero copy with an empty range at its end.
        let mut buf = [0x81, 0x80, 0x12, 0x34, 0x56, 0x78];
        let d = Decoder::new().decode(&Limits::default(), &mut BufferPool::default(), &mut buf);
        assert_eq!(
            d,
            Decoded {
                consumed: 6,
                outcome: Outcome::Event(Event::Message(MessageKind::Text, Payload::Input(6..6)))
            }
        );
    }

    #[test]
    fn default_limits() {
        let limits = Limits::default();
        assert_eq!(limits.max_frame, 16 << 20);
        assert_eq!(limits.max_message, 16 << 20);
    }

    // ---------------------------------------------------------------------------------------
    // permessage-deflate: RSV1
    // ---------------------------------------------------------------------------------------

    /// `frame` with RSV1 set (the first byte's 0x40 bit).
    fn rsv1(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes[0] |= 0x40;
        bytes
    }

    #[test]
    fn rsv1_is_refused_without_compression() {
        expect_error(
            &rsv1(frame(true, OpCode::Text, b"x")),
            ProtocolError::ReservedBits,
            1002,
        );
    }

    #[test]
    fn compressed_messages_skip_utf8_and_are_marked() {
        let mut decoder = Decoder::new();
        decoder.enable_compression();
        let limits = Limits::default();
        // Deflate bytes are not UTF-8; the decoder must not judge them.
        let whole = rsv1(frame(
            true,
            OpCode::Text,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        ));
        let got = decode_all(&mut decoder, &limits, &whole);
        assert_eq!(
            got,
            vec![Ok((
                Kind::Compressed(MessageKind::Text),
                vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
            ))]
        );
        // Fragmented: RSV1 on the first frame only, with a ping in between.
        let stream = concat(&[
            rsv1(frame(false, OpCode::Binary, &[0xff, 0x01])),
            frame(true, OpCode::Ping, b"p"),
            frame(true, OpCode::Continuation, &[0x02]),
        ]);
        let got = decode_chunks(&mut Decoder::new_compressed(), &limits, &stream, &[3, 9]);
        assert_eq!(
            got,
            vec![
                ping("p"),
                Ok((
                    Kind::Compressed(MessageKind::Binary),
                    vec![0xff, 0x01, 0x02]
                ))
            ]
        );
        // Uncompressed messages on the same connection are still validated.
        let got = decode_all(&mut decoder, &limits, &frame(true, OpCode::Text, &[0xff]));
        assert_eq!(got, vec![Err(ProtocolError::InvalidUtf8)]);
    }

    #[test]
    fn rsv1_on_control_or_continuation_is_an_error() {
        let limits = Limits::default();
        let mut decoder = Decoder::new_compressed();
        let got = decode_all(&mut decoder, &limits, &rsv1(frame(true, OpCode::Ping, b"")));
        assert_eq!(got, vec![Err(ProtocolError::ReservedBits)]);
        let stream = concat(&[
            rsv1(frame(false, OpCode::Text, b"a")),
            rsv1(frame(true, OpCode::Continuation, b"b")),
        ]);
        let got = decode_all(&mut Decoder::new_compressed(), &limits, &stream);
        assert_eq!(got, vec![Err(ProtocolError::ReservedBits)]);
        // RSV2 and RSV3 stay reserved.
        let mut bad = frame(true, OpCode::Text, b"a");
        bad[0] |= 0x20;
        let got = decode_all(&mut Decoder::new_compressed(), &limits, &bad);
        assert_eq!(got, vec![Err(ProtocolError::ReservedBits)]);
    }

    impl Decoder {
        fn new_compressed() -> Decoder {
            let mut d = Decoder::new();
            d.enable_compression();
            d
        }
    }

    #[test]
    fn buffered_never_exceeds_the_message_limit() {
        // A 600 + 400 byte message with the last byte withheld, fed one byte at a time.
        let limits = Limits {
            max_frame: 1000,
            max_message: 1000,
        };
        let stream = concat(&[
            frame(false, OpCode::Binary, &[7; 600]),
            frame(true, OpCode::Continuation, &[8; 400]),
        ]);
        let mut decoder = Decoder::new();
        let mut most = 0;
        for byte in &stream[..stream.len() - 1] {
            let _ = decode_all(&mut decoder, &limits, &[*byte]);
            most = most.max(decoder.buffered());
        }
        assert!(most <= 1000 + MAX_CONTROL_PAYLOAD, "held {most} bytes");
        let got = decode_all(&mut decoder, &limits, &stream[stream.len() - 1..]);
        assert_eq!(got.len(), 1);
    }

    // ---------------------------------------------------------------------------------------
    // Large messages: reserved from the header, read into place, pooled
    // ---------------------------------------------------------------------------------------

    const LARGE: usize = 1 << 20;

    #[test]
    fn a_large_frame_is_reserved_from_its_header_and_read_into_place() {
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let payload = pattern(LARGE);
        let wire = frame(true, OpCode::Binary, &payload);
        let mut decoder = Decoder::new();
        // The header and 100 payload bytes arrive in the caller's buffer.
        let first = 10 + 4 + 100;
        assert_eq!(
            decode_all_in(&mut decoder, &limits, &mut pool, &wire[..first]),
            vec![]
        );
        assert!(decoder.buffered() >= LARGE, "reserved from the header");
        let target = decoder.read_target(pool.large()).expect("a read target");
        assert_eq!(target.len(), LARGE - 100, "the rest of the payload");
        let base = target.as_ptr() as usize - 100;
        // The rest in two reads straight into place.
        let half = (wire.len() - first) / 2;
        target[..half].copy_from_slice(&wire[first..first + half]);
        assert_eq!(decoder.decode_target(half), Outcome::NeedMore);
        let target = decoder.read_target(0).expect("the rest");
        let rest = &wire[first + half..];
        target.copy_from_slice(rest);
        let Outcome::Event(Event::Message(MessageKind::Binary, Payload::Owned(got))) =
            decoder.decode_target(rest.len())
        else {
            panic!("no message");
        };
        assert!(got == payload, "payload differs");
        assert_eq!(
            got.as_ptr() as usize,
            base,
            "delivered from the buffer read into"
        );
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.read_target(0), None);
    }

    #[test]
    fn read_targets_only_for_the_payload_of_large_data_frames() {
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let mut decoder = Decoder::new();
        // A small frame (under the large size) is assembled as before: no target.
        let small = frame(true, OpCode::Binary, &pattern(1000));
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &small[..20]);
        assert_eq!(decoder.read_target(0), None);
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &small[20..]);
        // A partial header of a large frame: nothing to read into yet.
        let large = frame(true, OpCode::Text, &vec![b'a'; LARGE]);
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &large[..5]);
        assert_eq!(decoder.read_target(0), None);
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &large[5..LARGE]);
        // Less than the minimum still to come: read it into the caller's buffer.
        assert_eq!(decoder.read_target(pool.large()), None);
        assert_eq!(decoder.read_target(14).map(|t| t.len()), Some(14));
        // Control frames between fragments never get one.
        let ping = frame(true, OpCode::Ping, b"p");
        let mut decoder = Decoder::new();
        let first = frame(false, OpCode::Binary, &pattern(LARGE));
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &first);
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &ping[..3]);
        assert_eq!(decoder.read_target(0), None);
    }

    #[test]
    fn invalid_text_read_into_place_fails_at_the_read_that_carries_it() {
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let mut text = vec![b'a'; LARGE];
        text[LARGE / 2] = 0xff;
        let wire = frame(true, OpCode::Text, &text);
        let mut decoder = Decoder::new();
        let _ = decode_all_in(&mut decoder, &limits, &mut pool, &wire[..14]);
        let target = decoder.read_target(0).unwrap();
        let first = LARGE / 4;
        target[..first].copy_from_slice(&wire[14..14 + first]);
        assert_eq!(decoder.decode_target(first), Outcome::NeedMore);
        let target = decoder.read_target(0).unwrap();
        target[..first * 2].copy_from_slice(&wire[14 + first..14 + 3 * first]);
        assert_eq!(
            decoder.decode_target(first * 2),
            Outcome::Error(ProtocolError::InvalidUtf8),
            "before the frame ends"
        );
        assert_eq!(decoder.read_target(0), None, "sticky");
        assert_eq!(decoder.decode_target(10), Outcome::NeedMore);
    }

    #[test]
    fn fragments_of_a_large_message_grow_one_pooled_buffer() {
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let message = pattern(4 * LARGE);
        let mut wire = Vec::new();
        for (i, part) in message.chunks(LARGE).enumerate() {
            let opcode = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            wire.extend(frame(i == 3, opcode, part));
        }
        let mut decoder = Decoder::new();
        let cuts: Vec<usize> = (1..40).map(|i| i * wire.len() / 40).collect();
        let (got, direct) = decode_reads(&mut decoder, &limits, &mut pool, &wire, &cuts);
        assert_eq!(got, vec![binary(&message)]);
        assert!(direct > 4, "{direct} reads into place");
        // A message limit below the growth target caps it.
        let limits = Limits {
            max_frame: 4 * LARGE as u64,
            max_message: (3 * LARGE + LARGE / 2) as u64,
        };
        let mut decoder = Decoder::new();
        let got = decode_all_in(&mut decoder, &limits, &mut pool, &wire[..wire.len() - 1]);
        assert_eq!(got, vec![Err(ProtocolError::MessageTooBig)]);
    }

    #[test]
    fn a_delivered_buffer_given_back_serves_the_next_large_message() {
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let wire = frame(true, OpCode::Binary, &pattern(LARGE));
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        let mut buffers = Vec::new();
        for _ in 0..3 {
            let mut buf = wire.clone();
            let d = decoder.decode(&limits, &mut pool, &mut buf[..20]);
            assert_eq!(d.outcome, Outcome::NeedMore);
            let target = decoder.read_target(0).unwrap();
            buffers.push(target.as_ptr() as usize);
            target.copy_from_slice(&buf[20..]);
            let Outcome::Event(Event::Message(_, Payload::Owned(message))) =
                decoder.decode_target(wire.len() - 20)
            else {
                panic!("no message");
            };
            got.push(message.len());
            pool.give(message);
        }
        assert_eq!(got, [LARGE; 3]);
        assert!(buffers.windows(2).all(|w| w[0] == w[1]), "{buffers:x?}");
    }
}
